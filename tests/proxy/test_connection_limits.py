"""How many client connections a process holds (limits.max_client_connections) and how long a TLS handshake may
take (limits.tls_handshake_timeout): half-open handshakes cost memory, so they count, and are refused first."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from stockade.testing import TestGateway
from tests.proxy.helpers import wait_for
from tests.tlsutil import Pki, client_context, https_get, listener_yaml, make_pki, tls_connect, try_get

ROUTE = """
routes:
  - id: hello
    match: {path: /**}
    handler: {use: static, config: {status: 200, body: hi}}
    stages: [{use: anonymous}]
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def closed_at_once(port: int, hello: bytes) -> bool:
    """Whether a new connection (sending `hello`) is closed by the gateway within a second."""
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        try:
            s.sendall(hello)
            return s.recv(1) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True


def refused(gw: TestGateway) -> int:
    return gw.bg.call(lambda: gw.server.metrics.events.get(("client_connections", "refused"), 0))


@pytest.fixture
def half_open() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
def test_connections_over_the_cap_are_closed_at_once_and_counted(
    pki: Pki, tls: bool, half_open: list[socket.socket]
) -> None:
    """8000 half-open TLS handshakes took 526 MB: pending handshakes count against the cap like open connections,
    and one over it is closed before any handshake work."""
    extra = "limits: {max_client_connections: 3}\n"
    text = listener_yaml(pki.rsa, extra=extra) if tls else extra + "routes:" + ROUTE.split("routes:", 1)[1]
    hello = b"\x16\x03\x01" if tls else b"GET / HTTP/1.1\r\n"  # a handshake, a request head: both unfinished
    with TestGateway(text) as gw:
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
            s.sendall(hello)
            half_open.append(s)
        if tls:
            wait_for(lambda: gw.bg.call(lambda: len(gw.server.tls.handshakes)) == 3)
        else:
            wait_for(lambda: gw.bg.call(lambda: len(gw.server.connections)) == 3)
        assert closed_at_once(gw.port, hello)
        assert refused(gw) == 1
        for s in half_open:
            s.close()
        half_open.clear()
        wait_for(lambda: not gw.bg.call(lambda: len(gw.server.connections)))
        if tls:
            wait_for(lambda: try_get(gw.port, client_context(pki.ca.pem)) == 200)
        else:
            assert gw.request("GET", "/")[0] == 200


def test_established_tls_connections_count_and_free_their_place(pki: Pki) -> None:
    with TestGateway(listener_yaml(pki.rsa, extra="limits: {max_client_connections: 2}\n")) as gw:
        ctx = client_context(pki.ca.pem)
        with tls_connect(gw.port, ctx) as a, tls_connect(gw.port, ctx) as b:
            assert https_get(a)[0] == https_get(b)[0] == 200
            assert try_get(gw.port, ctx) is None
        wait_for(lambda: try_get(gw.port, ctx) == 200)


def test_an_established_tls_connection_is_counted_once_not_also_as_a_handshake(pki: Pki) -> None:
    """A connection stayed in the handshakes until the next sweep (250 ms) while also counted as a connection, so
    a burst of new TLS clients was refused at about half the cap."""
    cap = 6
    with TestGateway(listener_yaml(pki.rsa, extra=f"limits: {{max_client_connections: {cap}}}\n")) as gw:
        ctx = client_context(pki.ca.pem)
        held = [tls_connect(gw.port, ctx) for _ in range(cap)]  # faster than a sweep: no prune in between
        try:
            assert [https_get(s)[0] for s in held] == [200] * cap
            assert refused(gw) == 0
            assert gw.bg.call(lambda: len(gw.server.tls.handshakes)) == 0
        finally:
            for s in held:
                s.close()


@pytest.mark.parametrize(
    ("limits", "closed_within"),
    [("{tls_handshake_timeout: 0.5}", 3.0), ("{header_timeout: 0.5}", 3.0)],
    ids=["tls_handshake_timeout", "header_timeout-as-before"],
)
def test_an_unfinished_handshake_is_dropped_after_the_handshake_timeout(
    pki: Pki, limits: str, closed_within: float
) -> None:
    with TestGateway(listener_yaml(pki.rsa, extra=f"limits: {limits}\n")) as gw:
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", gw.port), timeout=closed_within) as s:
            s.sendall(b"\x16\x03\x01")
            assert s.recv(1) == b""
        assert time.monotonic() - start < closed_within


def test_max_client_connections_is_checked_at_load() -> None:
    from stockade.config.loader import load_config_text
    from stockade.errors import ConfigError

    with pytest.raises(ConfigError, match="max_client_connections"):
        load_config_text("limits: {max_client_connections: 0}\nroutes: []\n", env={})
