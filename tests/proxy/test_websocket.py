"""WebSocket upgrades pass through only on routes that allow them, after the pipeline allowed the request."""

from __future__ import annotations

import socket

import pytest

from stockade.testing import TestGateway, TestUpstream, read_responses
from tests.conftest import GatewayFactory
from tests.proxy.helpers import closed, still_open, wait_for

CONFIG = """
routes:
  - id: ws
    match: {path: /ws, methods: [GET]}
    upstream: {upstream}
    websocket: true
    stages: [{use: anonymous}]
  - id: plain
    match: {path: "/api/**"}
    upstream: {upstream}
    stages: [{use: anonymous}]
  - id: guarded
    match: {path: /guarded}
    upstream: {upstream}
    websocket: true
    stages: [{use: ip_filter, config: {allow: [10.0.0.0/8]}}, {use: anonymous}]
"""

UPGRADE = (
    b"GET %s HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def test_upgrade_is_tunnelled(make_gateway: GatewayFactory, upstream: TestUpstream) -> None:
    gw = make_gateway(CONFIG)
    with gw.connect() as sock:
        sock.sendall(UPGRADE % b"/ws")
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 101")
        assert b"upgrade: websocket" in head.lower()
        sock.sendall(b"frame-1")
        got = b""
        while len(got) < len(b"echo:frame-1"):
            got += sock.recv(4096)
        assert got == b"echo:frame-1"
    forwarded = upstream.received[0]
    assert forwarded.header("upgrade") == "websocket"
    assert forwarded.header("sec-websocket-key") == "dGhlIHNhbXBsZSBub25jZQ=="


@pytest.mark.parametrize(
    ("target", "version"),
    [
        pytest.param(b"/api/ws", b"1.1", id="route-without-websocket"),
        pytest.param(b"/ws", b"1.0", id="http-1.0"),  # RFC 9110 7.8: Upgrade in an HTTP/1.0 request is ignored
    ],
)
def test_upgrade_that_cannot_be_honoured_is_a_plain_request(
    make_gateway: GatewayFactory, upstream: TestUpstream, target: bytes, version: bytes
) -> None:
    gw = make_gateway(CONFIG)
    with gw.connect() as sock:
        sock.sendall((UPGRADE % target).replace(b"HTTP/1.1", b"HTTP/" + version, 1))
        responses = read_responses(sock, 1)
    assert responses[0][0] == 200
    forwarded = upstream.received[0]
    assert forwarded.header("upgrade") is None
    assert forwarded.header("connection") != "upgrade"


def test_h2c_upgrade_is_never_forwarded(make_gateway: GatewayFactory, upstream: TestUpstream) -> None:
    gw = make_gateway(CONFIG)
    with gw.connect() as sock:
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        )
        responses = read_responses(sock, 1)
    assert responses[0][0] == 200
    got = upstream.received[0]
    assert got.header("upgrade") is None and got.header("http2-settings") is None


def test_denied_upgrade_never_reaches_upstream(make_gateway: GatewayFactory, upstream: TestUpstream) -> None:
    gw = make_gateway(CONFIG)
    with gw.connect() as sock:
        sock.sendall(UPGRADE % b"/guarded")
        responses = read_responses(sock, 1)
    assert responses[0][0] == 403
    assert upstream.received == []


def _open_ws(gw: TestGateway) -> tuple[socket.socket, bytes]:
    sock = gw.connect()
    sock.sendall(UPGRADE % b"/ws")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, head


def test_a_websocket_holds_its_concurrency_slot_until_it_closes(
    make_gateway: GatewayFactory, upstream: TestUpstream
) -> None:
    """The slot was released at the 101: any number of WebSockets passed a concurrency limit of one."""

    gw = make_gateway(
        "routes:\n  - id: limited\n    match: {path: /ws}\n    upstream: {upstream}\n    websocket: true\n"
        "    stages:\n      - use: anonymous\n      - use: rate_limit\n"
        "        config: {limits: [{concurrency: 1, key: ip}]}\n"
    )
    first, head = _open_ws(gw)
    assert head.startswith(b"HTTP/1.1 101")
    second, head = _open_ws(gw)
    assert head.startswith(b"HTTP/1.1 429")
    second.close()
    first.close()
    wait_for(lambda: not any(c.tunnel for c in gw.server.connections))
    third, head = _open_ws(gw)  # the first one's close released the slot
    assert head.startswith(b"HTTP/1.1 101")
    third.close()


def test_a_refused_upgrade_does_not_return_its_connection_to_the_pool(
    make_gateway: GatewayFactory, upstream: TestUpstream
) -> None:
    """Node hands a socket to its 'upgrade' handler and stops reading HTTP on it: pooled after a refusal, the next
    client's request (credentials and all) went into that handler."""
    from stockade.testing import Reply

    gw = make_gateway(CONFIG)
    upstream.reply("/ws", Reply(403, [("Content-Length", "7")], b"refused"))
    with gw.connect() as sock:
        sock.sendall(UPGRADE % b"/ws")
        (status, _, body), *_ = read_responses(sock, 1)
    assert (status, body) == (403, b"refused")
    assert gw.request("GET", "/api/next")[0] == 200
    assert upstream.connections == 2


# -- idle tunnels -------------------------------------------------------------------------------------------------

IDLE = 5.0
IDLE_CONFIG = CONFIG + f"limits: {{tunnel_idle_timeout: {IDLE}}}\n"


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    got = b""
    while len(got) < size:
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


def _traffic(upstream: TestUpstream, sock: socket.socket, direction: str) -> None:
    """One message through the tunnel in one direction only, waited for at its far end."""
    if direction == "client":
        before = len(upstream.tunnel_received)
        sock.sendall(b"ping")
        wait_for(lambda: len(upstream.tunnel_received) == before + 4)
    else:
        upstream.push(b"news")
        assert _read_exactly(sock, 4) == b"news"


@pytest.mark.parametrize("direction", ["client", "upstream"])
def test_traffic_either_way_defers_the_tunnel_idle_timeout(
    make_gateway: GatewayFactory, upstream: TestUpstream, direction: str
) -> None:
    upstream.tunnel_echo = False  # so each message goes one way only
    gw = make_gateway(IDLE_CONFIG)
    sock, head = _open_ws(gw)
    with sock:
        assert head.startswith(b"HTTP/1.1 101")
        for _ in range(3):  # longer in all than the timeout, never idle as long
            gw.advance(IDLE - 1)
            _traffic(upstream, sock, direction)
        gw.advance(IDLE - 1)
        assert still_open(sock)
        gw.advance(2.0)
        assert closed(sock)


def test_idle_tunnel_is_closed_on_both_sides_and_its_end_recorded(
    make_gateway: GatewayFactory, upstream: TestUpstream
) -> None:
    """nginx closes an idle upgraded connection after proxy_read_timeout; a tunnel had no deadline at all."""
    gw = make_gateway(
        f"limits: {{tunnel_idle_timeout: {IDLE}}}\n"
        "routes:\n  - id: limited\n    match: {path: /ws}\n"
        "    upstream: {upstream}\n    websocket: true\n"
        "    stages:\n      - use: anonymous\n      - use: rate_limit\n"
        "        config: {limits: [{concurrency: 1, key: ip}]}\n"
    )
    sock, head = _open_ws(gw)
    with sock:
        assert head.startswith(b"HTTP/1.1 101")
        wait_for(lambda: upstream.tunnels)
        gw.advance(IDLE - 1)
        assert still_open(sock)
        gw.advance(2.0)
        assert closed(sock)
    wait_for(lambda: not upstream.tunnels)  # the upstream side was closed too
    wait_for(lambda: not gw.server.connections)
    assert gw.server.metrics.events[("tunnel_idle_timeout", "limited")] == 1
    again, head = _open_ws(gw)  # its completion hooks ran: the concurrency slot is free
    with again:
        assert head.startswith(b"HTTP/1.1 101")


def test_reload_applies_the_new_tunnel_idle_timeout_to_open_tunnels(
    make_gateway: GatewayFactory, upstream: TestUpstream
) -> None:
    upstream.tunnel_echo = False
    gw = make_gateway(CONFIG + "limits: {tunnel_idle_timeout: 60}\n")
    sock, head = _open_ws(gw)
    with sock:
        assert head.startswith(b"HTTP/1.1 101")
        gw.reload((CONFIG + f"limits: {{tunnel_idle_timeout: {IDLE}}}\n").replace("{upstream}", upstream.url))
        _traffic(upstream, sock, "upstream")  # the next message re-arms the timer with the new value
        gw.advance(IDLE + 1)
        assert closed(sock)
