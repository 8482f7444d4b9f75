"""Client certificates at the listener: requested, verified against `client_ca`, and handed to the connection."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator

import pytest

from stockade.testing import TestGateway
from tests.tlsutil import Issued, Pki, client_context, https_get, listener_yaml, make_pki, tls_connect, try_get

V = ssl.TLSVersion


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def expired_client(pki: Pki) -> Issued:
    return pki.ca.issue("expired-client", client=True, hosts=(), days=-1)


@pytest.fixture(scope="module")
def gateways(pki: Pki) -> Iterator[dict[str, TestGateway]]:
    mtls = f"client_ca: '{pki.ca.pem}', client_auth"
    with (
        TestGateway(listener_yaml(pki.rsa, tls_extra=f"{mtls}: required")) as required,
        TestGateway(listener_yaml(pki.rsa, tls_extra=f"{mtls}: optional")) as optional,
        TestGateway(listener_yaml(pki.rsa)) as none,
    ):
        yield {"required": required, "optional": optional, "none": none}


def peer_certs(gw: TestGateway, sock: ssl.SSLSocket) -> list[tuple[dict[str, object] | None, bytes | None]]:
    """(peer_cert, peer_cert_der) of the gateway's connection(s) from `sock`, read on the gateway's loop."""
    port = sock.getsockname()[1]

    def find() -> list[tuple[dict[str, object] | None, bytes | None]]:
        conns = [c for c in gw.server.connections if c.transport and c.transport.get_extra_info("peername")[1] == port]
        return [(c.peer_cert, c.peer_cert_der) for c in conns]

    return gw.bg.call(find)


@pytest.mark.parametrize("version", [V.TLSv1_2, V.TLSv1_3], ids=["tls1.2", "tls1.3"])
@pytest.mark.parametrize(
    ("mode", "presented", "accepted"),
    [
        pytest.param("required", None, False, id="required-no-cert-refused"),
        pytest.param("required", "client", True, id="required-ca-signed-accepted"),
        pytest.param("required", "rogue_client", False, id="required-other-ca-refused"),
        pytest.param("required", "expired", False, id="required-expired-refused"),
        pytest.param("optional", None, True, id="optional-no-cert-accepted"),
        pytest.param("optional", "client", True, id="optional-ca-signed-accepted"),
        pytest.param("optional", "rogue_client", False, id="optional-other-ca-refused"),
        pytest.param("none", "client", True, id="none-cert-not-requested"),
    ],
)
def test_listener_client_certificate(
    pki: Pki,
    gateways: dict[str, TestGateway],
    expired_client: Issued,
    mode: str,
    presented: str | None,
    accepted: bool,
    version: V,
) -> None:
    cert = expired_client if presented == "expired" else getattr(pki, presented) if presented else None
    ctx = client_context(pki.ca.pem, maximum=version, cert=cert)
    gw = gateways[mode]
    if not accepted:
        assert try_get(gw.port, ctx) is None
        return
    with tls_connect(gw.port, ctx) as sock:
        assert https_get(sock)[0] == 200
        ((peer_cert, peer_der),) = peer_certs(gw, sock)  # the connection stays open while we look
    if mode != "none" and cert is not None:
        assert peer_der == cert.der
        assert peer_cert is not None and (("commonName", "client"),) in peer_cert["subject"]  # type: ignore[operator]
    else:
        assert (peer_cert, peer_der) == (None, None)  # nothing unverified ever reaches the pipeline


def test_listener_client_certificate_survives_session_resumption(pki: Pki, gateways: dict[str, TestGateway]) -> None:
    ctx = client_context(pki.ca.pem, maximum=V.TLSv1_2, cert=pki.client)
    gw = gateways["required"]
    with tls_connect(gw.port, ctx) as first:
        assert https_get(first)[0] == 200
        session = first.session
    with tls_connect(gw.port, ctx, session=session) as resumed:
        assert resumed.session_reused
        assert https_get(resumed)[0] == 200
        ((_, peer_der),) = peer_certs(gw, resumed)
    assert peer_der == pki.client.der


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_listener_announces_accepted_client_cas(pki: Pki, gateways: dict[str, TestGateway]) -> None:
    # Clients holding several certificates (browsers, OS key stores) choose by these names.
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{gateways['optional'].port}", "-tls1_2", "-CAfile", pki.ca.pem],
        input=b"",
        capture_output=True,
        timeout=30,
        check=False,
    ).stdout.decode()
    assert "Acceptable client certificate CA names\nCN = Stockade Test CA ca\n" in out, out
