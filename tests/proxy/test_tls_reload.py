"""Reloading TLS: new handshakes get the new certificate and settings; the listener and open connections stay."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from stockade.errors import ConfigError
from stockade.testing import TestGateway, gateway_with_upstream, read_responses
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
            assert https_get(kept, close=True)[0] == 200  # authenticated by the rules it connected under


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
