"""Reloading TLS: new handshakes get the new certificate and settings; the listener and open connections stay."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from stockade.errors import ConfigError
from stockade.testing import TestGateway, gateway_with_upstream, read_responses
from tests.proxy.helpers import wait_for
from tests.tlsutil import Pki, client_context, https_get, listener_yaml, make_pki, tls_connect, try_get

V = ssl.TLSVersion

UPSTREAM_ROUTE = """
  - id: api
    match: {path: /**}
    upstream: {url: "{upstream}"}
    stages: [{use: anonymous}]
  - id: local
    match: {path: /local}
    handler: {use: static, config: {status: 200}}
    stages: [{use: anonymous}]
"""


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@pytest.mark.parametrize("files", ["new-files", "same-files-rewritten"])
def test_reload_rotates_certificate_without_dropping_connections(pki: Pki, files: str) -> None:
    old = pki.ca.issue("rotating", file="live")
    client = client_context(pki.ca.pem)
    with gateway_with_upstream(listener_yaml(old, routes=UPSTREAM_ROUTE)) as (gw, up):
        listener, port = gw.server.tls, gw.port
        with tls_connect(port, client) as kept:
            assert kept.getpeercert(binary_form=True) == old.der
            assert https_get(kept, "/before")[0] == 200
            up.stall()
            kept.sendall(b"GET /in-flight HTTP/1.1\r\nHost: localhost\r\n\r\n")  # answered after the reload
            new = pki.ca.issue("rotated", key_type="ec", file="live" if files == "same-files-rewritten" else None)
            gw.reload(listener_yaml(new, routes=UPSTREAM_ROUTE).replace("{upstream}", up.url))
            with tls_connect(port, client) as fresh:
                assert fresh.getpeercert(binary_form=True) == new.der
                assert https_get(fresh, "/local", close=True)[0] == 200  # the upstream is stalled
            up.release()
            assert read_responses(kept, 1)[0][0] == 200
            assert https_get(kept, "/after", close=True)[0] == 200  # the old connection carries on
            assert kept.getpeercert(binary_form=True) == old.der
        assert gw.server.tls is listener and gw.server.ports == [port]  # same listening socket throughout
    assert [r.target for r in up.received] == ["/before", "/in-flight", "/after"]


def test_reload_applies_client_auth_to_new_handshakes(pki: Pki) -> None:
    anonymous = client_context(pki.ca.pem)
    with TestGateway(listener_yaml(pki.rsa)) as gw:
        with tls_connect(gw.port, anonymous) as kept:
            assert https_get(kept)[0] == 200
            gw.reload(listener_yaml(pki.rsa, tls_extra=f"client_ca: '{pki.ca.pem}', client_auth: required"))
            assert try_get(gw.port, anonymous) is None
            assert try_get(gw.port, client_context(pki.ca.pem, cert=pki.client)) == 200
            assert closed(kept)  # it was let in by rules that no longer hold (below)


def closed(sock: ssl.SSLSocket, wait: float = 5.0) -> bool:
    """Whether the gateway has closed `sock` (waiting up to `wait` seconds for it to)."""
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except (ssl.SSLError, ConnectionResetError):
        return True


def mtls(pki: Pki, ca: Path, auth: str = "required") -> str:
    return listener_yaml(pki.rsa, tls_extra=f"client_ca: '{ca}', client_auth: {auth}", routes=UPSTREAM_ROUTE)


@pytest.mark.parametrize(
    ("change", "retired"),
    [
        ("other-ca", True),  # the operator stops trusting a CA
        ("same-file-rewritten", True),  # the same path, other contents
        ("optional", True),  # required -> optional
        ("certificate-only", False),  # rotation: nothing about client certificates changed
    ],
)
@pytest.mark.parametrize("state", ["idle", "in-flight", "no-request-yet"])
def test_reload_that_changes_client_verification_ends_connections_it_let_in(
    pki: Pki, tmp_path: Path, change: str, retired: bool, state: str
) -> None:
    """A connection verified under the old client CA kept serving for up to keepalive_requests x
    keepalive_timeout (about 20 hours by default) after the operator stopped trusting that CA. Idle ones are
    closed at once; a request in flight is answered, with `Connection: close`; a connection that has sent
    nothing yet gets that on its first response."""
    ca = tmp_path / "clients.pem"
    ca.write_bytes(pki.ca.pem.read_bytes())
    client = client_context(pki.ca.pem, cert=pki.client)
    with gateway_with_upstream(mtls(pki, ca)) as (gw, up):
        after = {
            "other-ca": mtls(pki, pki.other_ca.pem),
            "same-file-rewritten": mtls(pki, ca),
            "optional": mtls(pki, ca, "optional"),
            "certificate-only": listener_yaml(
                pki.ec, tls_extra=f"client_ca: '{ca}', client_auth: required", routes=UPSTREAM_ROUTE
            ),
        }[change].replace("{upstream}", up.url)
        with tls_connect(gw.port, client) as kept:
            if state != "no-request-yet":
                assert https_get(kept, "/before")[0] == 200
            if state == "in-flight":
                up.stall()
                kept.sendall(b"GET /in-flight HTTP/1.1\r\nHost: localhost\r\n\r\n")
                wait_for(lambda: len(up.received) == 2)
            if change == "same-file-rewritten":
                ca.write_bytes(pki.ca.pem.read_bytes() + pki.other_ca.pem.read_bytes())
            gw.reload(after)
            if state == "in-flight":
                up.release()
                status, headers, _ = read_responses(kept, 1)[0]
                assert status == 200  # what was under way is answered
                assert (headers.get("connection") == "close") is retired
                assert closed(kept, 5 if retired else 0.3) is retired
            elif state == "idle":
                assert closed(kept, 5 if retired else 0.3) is retired
            else:
                status, headers, _ = https_get(kept, "/first")
                assert status == 200 and (headers.get("connection") == "close") is retired
                assert closed(kept, 5 if retired else 0.3) is retired


def test_a_handshake_begun_before_the_reload_is_retired_too(pki: Pki, tmp_path: Path) -> None:
    """A connection accepted before the reload completes its handshake under the old context afterwards: its
    first response is its last, as soon as it is established (no sweep needed)."""
    with gateway_with_upstream(mtls(pki, pki.ca.pem)) as (gw, up):
        raw = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        wait_for(lambda: gw.bg.call(lambda: len(gw.server.tls.handshakes)) >= 1)
        gw.reload(mtls(pki, pki.other_ca.pem).replace("{upstream}", up.url))
        with client_context(pki.ca.pem, cert=pki.client).wrap_socket(raw, server_hostname="localhost") as late:
            wait_for(lambda: gw.bg.call(lambda: len(gw.server.connections)) == 1)
            status, headers, _ = https_get(late, "/late")
            assert status == 200 and headers.get("connection") == "close"


def test_reload_new_client_ca_is_not_bypassed_by_session_resumption(pki: Pki) -> None:
    client = client_context(pki.ca.pem, maximum=V.TLSv1_2, cert=pki.client)
    with TestGateway(listener_yaml(pki.rsa, tls_extra=f"client_ca: '{pki.ca.pem}', client_auth: required")) as gw:
        with tls_connect(gw.port, client) as first:
            assert https_get(first, close=True)[0] == 200
            session = first.session
        with tls_connect(gw.port, client, session=session) as again:
            assert again.session_reused  # resumption works while the CA is trusted
            assert https_get(again, close=True)[0] == 200
        # The operator stops trusting the CA: a session cached under the old settings must not let the
        # client in without presenting a certificate the new CA signed.
        gw.reload(listener_yaml(pki.rsa, tls_extra=f"client_ca: '{pki.other_ca.pem}', client_auth: required"))
        assert try_get(gw.port, client, session=session) is None


@pytest.mark.parametrize("broken", ["missing-key", "key-of-another-cert"])
def test_reload_with_unusable_certificate_changes_nothing(pki: Pki, broken: str) -> None:
    other = pki.ca.issue("other")
    with TestGateway(listener_yaml(pki.rsa)) as gw:
        cfg = listener_yaml(pki.ec)
        cfg = cfg.replace(str(pki.ec.key), str(pki.dir / "nope.key") if broken == "missing-key" else str(other.key))
        with pytest.raises(ConfigError, match=r"field 'listen\.tls\.key'"):
            gw.reload(cfg)
        with tls_connect(gw.port, client_context(pki.ca.pem)) as sock:
            assert sock.getpeercert(binary_form=True) == pki.rsa.der
            assert https_get(sock, close=True)[0] == 200
