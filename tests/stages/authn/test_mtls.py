"""`mtls` end to end over a real TLS listener with a CA made in the test, and RFC 8705 certificate-bound tokens."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import orjson
import pytest
from cryptography import x509

from stockade.testing import BackgroundLoop, TestGateway, TestUpstream, http_request
from tests.oauth2.flow import basic, create_client
from tests.stages.authn.certs import Pki

CONFIG = """
storage: sqlite:///stockade.db
listen:
  tls: {cert: DIR/server.pem, key: DIR/server.key, client_ca: DIR/ca.pem, client_auth: optional}
oauth2_server:
  issuer: "http://127.0.0.1"
  audiences: [api]
routes:
  - id: svc
    match: {path: /svc}
    upstream: "{upstream}"
    stages:
      - use: mtls
        config: {principal_from: PRINCIPAL_FROM}
  - id: books
    match: {path: /books}
    upstream: "{upstream}"
    stages:
      - use: jwt
        config:
          issuers: [{issuer: "http://127.0.0.1", gateway: true, audiences: [api]}]
"""


class Tls:
    def __init__(self, gw: TestGateway, pki: Pki) -> None:
        self.gw = gw
        self.pki = pki

    def request(
        self, method: str, path: str, client: str | None, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_file))
        if client is not None:
            ctx.load_cert_chain(self.pki.dir / f"{client}.pem", self.pki.dir / f"{client}.key")
        hdrs = {"Host": "localhost", "Connection": "close", **(headers or {})}
        if body:
            hdrs["Content-Length"] = str(len(body))
        raw = f"{method} {path} HTTP/1.1\r\n".encode() + b"".join(f"{k}: {v}\r\n".encode() for k, v in hdrs.items())
        with socket.create_connection(("127.0.0.1", self.gw.port), timeout=10) as plain:
            with ctx.wrap_socket(plain, server_hostname="localhost") as sock:
                return http_request(sock, raw + b"\r\n" + body)[0]


def start(tmp_path: Path, principal_from: str = "subject_cn") -> Iterator[tuple[Tls, TestUpstream, Path]]:
    pki = Pki(tmp_path)
    pki.issue("server", server=True)
    pki.issue("svc-a", sans=[x509.DNSName("a.svc.internal"), x509.UniformResourceIdentifier("spiffe://td/a")])
    pki.issue("svc-b")
    pki.issue("guest", more_cns=("admin",))
    pki.issue("svc-c", sans=[x509.DNSName("C.Svc.Internal."), x509.RFC822Name("Ops@Example.COM")])
    pki.issue("svc-w", sans=[x509.DNSName("*.svc.internal")])
    bg = BackgroundLoop()
    try:
        with TestUpstream(bg) as up:
            config = tmp_path / "stockade.yaml"
            config.write_text(
                CONFIG.replace("{upstream}", up.url)
                .replace("PRINCIPAL_FROM", principal_from)
                .replace("DIR", str(tmp_path))
            )
            with TestGateway(config.read_text(), loop=bg, base_dir=tmp_path) as gw:
                yield Tls(gw, pki), up, config
    finally:
        bg.stop()


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[tuple[Tls, TestUpstream, Path]]:
    yield from start(tmp_path)


@pytest.mark.parametrize(
    ("principal_from", "expected"),
    [("subject_cn", "svc-a"), ("san_dns", "a.svc.internal"), ("san_uri", "spiffe://td/a")],
    ids=["cn", "san-dns", "san-uri"],
)
def test_mtls_principal_from_verified_certificate(tmp_path: Path, principal_from: str, expected: str) -> None:
    for client, up, _ in start(tmp_path, principal_from):
        status, _, _ = client.request("GET", "/svc", "svc-a")
        assert status == 200
        assert up.received[-1].header("x-stockade-principal") == expected
        assert up.received[-1].header("x-stockade-auth") == "mtls"


def test_mtls_without_certificate_is_401_with_challenge(tls: tuple[Tls, TestUpstream, Path]) -> None:
    client, _, _ = tls
    status, headers, body = client.request("GET", "/svc", None)
    assert status == 401 and orjson.loads(body)["reason"] == "auth.required"
    assert headers["www-authenticate"] == 'Mutual realm="stockade"'


def test_mtls_san_missing_is_401(tmp_path: Path) -> None:
    for client, _, _ in start(tmp_path, "san_email"):
        status, _, body = client.request("GET", "/svc", "svc-a")
        assert status == 401 and orjson.loads(body)["reason"] == "auth.invalid_certificate"


def test_certificate_bound_token_only_works_over_its_certificate(tls: tuple[Tls, TestUpstream, Path]) -> None:
    client, _, config = tls
    client_id, secret = create_client(config, "--name", "bound", "--scopes", "books:read")
    assert secret is not None
    form = urlencode({"grant_type": "client_credentials"}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", **basic(client_id, secret)}
    status, _, body = client.request("POST", "/oauth2/token", "svc-a", headers, form)
    assert status == 200, body
    token = orjson.loads(body)["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    assert client.request("GET", "/books", "svc-a", auth)[0] == 200
    assert client.request("GET", "/books", "svc-b", auth)[0] == 401  # presented over another certificate
    assert client.request("GET", "/books", None, auth)[0] == 401
    assert client.request("GET", "/books", "svc-a", auth)[0] == 200


def test_mtls_stage_requires_client_ca_on_the_listener() -> None:
    from stockade.config.loader import load_config_text
    from stockade.errors import ConfigError

    text = "routes:\n  - {id: r, match: {path: /}, upstream: 'http://127.0.0.1:1', stages: [{use: mtls}]}\n"
    with pytest.raises(ConfigError, match=r"mtls needs `listen\.tls`"):
        load_config_text(text, env={})


def test_the_validity_period_is_checked_on_every_request(tls: tuple[Tls, TestUpstream, Path]) -> None:
    """A resumed TLS session, or a long keep-alive connection, skips the handshake's check: an expired
    certificate kept authenticating for up to two hours."""
    client, _, _ = tls
    assert client.request("GET", "/svc", "svc-a")[0] == 200
    gw_clock = client.gw.clock
    gw_clock.advance(4_200_000_000 - gw_clock.time())  # past the certificate's notAfter (2100)
    status, _, body = client.request("GET", "/svc", "svc-a")
    assert (status, orjson.loads(body)["reason"]) == (401, "auth.invalid_certificate")


def test_a_certificate_with_several_cns_is_not_an_identity(tls: tuple[Tls, TestUpstream, Path]) -> None:
    """Go reads the last CN, OpenSSL-based code the first: a CA approving `guest` may have issued `admin`."""
    client, up, _ = tls
    status, _, body = client.request("GET", "/svc", "guest")
    assert (status, orjson.loads(body)["reason"]) == (401, "auth.invalid_certificate")
    assert up.received == []


@pytest.mark.parametrize(
    ("principal_from", "client", "expected"),
    [("san_dns", "svc-c", "c.svc.internal"), ("san_email", "svc-c", "Ops@example.com"), ("san_dns", "svc-w", None)],
    ids=["dns-case-and-dot", "email-domain-case", "wildcard-dns"],
)
def test_san_identities_are_normalised(tmp_path: Path, principal_from: str, client: str, expected: str | None) -> None:
    for tls_client, up, _ in start(tmp_path, principal_from):
        status, _, _ = tls_client.request("GET", "/svc", client)
        if expected is None:
            assert status == 401
        else:
            assert status == 200 and up.received[-1].header("x-stockade-principal") == expected
