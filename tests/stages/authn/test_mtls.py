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

from stockade.pipeline.verdict import Continue
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


@pytest.mark.parametrize(
    ("principal_from", "sans"),
    [
        ("san_dns", [x509.DNSName("bob.example"), x509.DNSName("alice.example")]),
        ("san_uri", [x509.UniformResourceIdentifier("spiffe://td/a"), x509.UniformResourceIdentifier("spiffe://td/b")]),
        ("san_email", [x509.RFC822Name("a@example.com"), x509.RFC822Name("b@example.com")]),
    ],
    ids=["dns", "uri", "email"],
)
def test_several_sans_of_the_chosen_type_are_not_an_identity(
    tmp_path: Path, principal_from: str, sans: list[x509.GeneralName]
) -> None:
    """Like several CNs: the first silently won, and a CA approving `bob.example` may have added `alice.example`."""
    for client, up, _ in start(tmp_path, principal_from):
        client.pki.issue("multi", sans=sans)
        status, _, body = client.request("GET", "/svc", "multi")
        assert (status, orjson.loads(body)["reason"]) == (401, "auth.invalid_certificate")
        assert up.received == []


TWO_CAS = """
listen:
  tls: {cert: DIR/root/server.pem, key: DIR/root/server.key, client_ca: DIR/bundle.pem, client_auth: required}
routes:
  - id: svc
    match: {path: /svc}
    upstream: "{upstream}"
    stages:
      - use: mtls
        config: {allowed: [admin], STAGE}
"""


class TwoCas:
    """A gateway trusting two CAs (ours and a partner's), each of which issued a `CN=admin` certificate."""

    def __init__(self, gw: TestGateway, root: Pki, partner: Pki) -> None:
        self.gw = gw
        self.pkis = {"root": root, "partner": partner}

    def request(self, ca: str) -> tuple[int, dict[str, str], bytes]:
        pki = self.pkis[ca]
        ctx = ssl.create_default_context(cafile=str(self.pkis["root"].ca_file))
        ctx.load_cert_chain(pki.dir / "admin.pem", pki.dir / "admin.key")
        raw = b"GET /svc HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        with socket.create_connection(("127.0.0.1", self.gw.port), timeout=10) as plain:
            with ctx.wrap_socket(plain, server_hostname="localhost") as sock:
                return http_request(sock, raw)[0]


def two_cas(tmp_path: Path, stage: str) -> Iterator[tuple[TwoCas, TestUpstream]]:
    (tmp_path / "root").mkdir()
    (tmp_path / "partner").mkdir()
    root, partner = Pki(tmp_path / "root", "Root CA"), Pki(tmp_path / "partner", "Partner CA")
    root.issue("server", server=True)
    root.issue("admin")
    partner.issue("admin")
    (tmp_path / "bundle.pem").write_bytes(root.ca_file.read_bytes() + partner.ca_file.read_bytes())
    bg = BackgroundLoop()
    try:
        with TestUpstream(bg) as up:
            text = TWO_CAS.replace("{upstream}", up.url).replace("STAGE", stage).replace("DIR", str(tmp_path))
            with TestGateway(text, loop=bg, base_dir=tmp_path) as gw:
                yield TwoCas(gw, root, partner), up
    finally:
        bg.stop()


@pytest.mark.parametrize(
    ("stage", "ca", "status"),
    [
        ("principal_from: subject_cn", "root", 200),
        ("principal_from: subject_cn", "partner", 200),  # no restriction: every CA of client_ca
        ("issuers: [partner/ca.pem]", "partner", 200),
        ("issuers: [partner/ca.pem]", "root", 401),  # trusted by the listener, not by this route
        ("issuers: [root/ca.pem, partner/ca.pem]", "root", 200),
        ("issuers: [root/ca.pem, partner/ca.pem]", "partner", 200),
    ],
    ids=["any-root", "any-partner", "partner-only-partner", "partner-only-root", "both-root", "both-partner"],
)
def test_mtls_issuers_restrict_which_ca_may_authenticate(tmp_path: Path, stage: str, ca: str, status: int) -> None:
    """A `CN=admin` from any CA of `client_ca` passed `allowed: [admin]`: one partner could be another's admin."""
    for client, up in two_cas(tmp_path, stage):
        got, _, body = client.request(ca)
        assert got == status, body
        if status == 401:
            assert orjson.loads(body)["reason"] == "auth.invalid_certificate"
            assert up.received == []


@pytest.mark.parametrize("stage", ["principal_from: subject_cn", "issuers: [root/ca.pem, partner/ca.pem]"])
def test_mtls_issuer_is_part_of_the_identity(tmp_path: Path, stage: str) -> None:
    """`admin` of one CA is not `admin` of another: the upstream is told which CA vouches for the name."""
    for client, up in two_cas(tmp_path, stage):
        assert client.request("root")[0] == 200
        assert client.request("partner")[0] == 200
        root, partner = up.received
        assert root.header("x-stockade-principal") == partner.header("x-stockade-principal") == "admin"
        assert (root.header("x-stockade-issuer"), partner.header("x-stockade-issuer")) == (
            "CN=Root CA",
            "CN=Partner CA",
        )


def test_mtls_issuer_separates_lockout_and_rate_limit_keys(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    from stockade.clock import SYSTEM_CLOCK
    from stockade.pipeline.context import AUTH_IDENTITY
    from stockade.pipeline.stage import Services, StageEnv
    from stockade.ratelimit.keys import extractor
    from stockade.stages.authn.mtls import MtlsAuthenticator, MtlsConfig
    from stockade.testing import make_context, run_stage

    env = StageEnv(route_id="r", base_dir=tmp_path, services=Services(clock=SYSTEM_CLOCK))
    stage = MtlsAuthenticator(MtlsConfig(), env)
    principal_key = extractor("principal")
    seen = []
    for name in ("Root CA", "Partner CA"):
        (tmp_path / name).mkdir()
        pki = Pki(tmp_path / name, name)
        cert_path, _ = pki.issue("admin")
        der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(serialization.Encoding.DER)
        ctx = make_context()
        ctx.peer_cert = ssl._ssl._test_decode_cert(str(cert_path))  # type: ignore[attr-defined]
        ctx.peer_cert_der = der
        verdict = run_stage(stage, ctx)
        assert isinstance(verdict, Continue) and verdict.principal is not None
        assert verdict.principal.id == "admin"
        ctx.principal = verdict.principal
        seen.append((ctx.state[AUTH_IDENTITY], principal_key(ctx)))
    assert seen[0][0] != seen[1][0] and seen[0][1] != seen[1][1]


@pytest.mark.parametrize(
    ("issuers", "expected"),
    [
        ("[nope.pem]", r"issuers\[0\].*no such file"),
        ("[root/admin.pem]", r"issuers\[0\].*not a CA certificate"),
        ("[garbage.pem]", r"issuers\[0\].*no PEM certificate"),
        ("[root/ca.pem, again/ca.pem]", r"issuers\[1\].*same subject as one in .*\(CN=Root CA\)"),
    ],
    ids=["missing", "not-a-ca", "not-pem", "same-subject"],
)
def test_mtls_issuers_are_checked_at_load(tmp_path: Path, issuers: str, expected: str) -> None:
    from stockade.clock import SYSTEM_CLOCK
    from stockade.config.loader import load_config_text
    from stockade.errors import ConfigError
    from stockade.pipeline.stage import Services
    from stockade.runtime import build_runtime

    for d in ("root", "again"):
        (tmp_path / d).mkdir()
    root = Pki(tmp_path / "root", "Root CA")
    Pki(tmp_path / "again", "Root CA")  # another key, the same name: the upstream could not tell them apart
    root.issue("server", server=True)
    root.issue("admin")
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    text = (
        TWO_CAS.replace("{upstream}", "http://127.0.0.1:1")
        .replace("STAGE", f"issuers: {issuers}")
        .replace("DIR/bundle.pem", "DIR/root/ca.pem")
        .replace("DIR", str(tmp_path))
    )
    with pytest.raises(ConfigError, match=expected):
        build_runtime(load_config_text(text, base_dir=tmp_path, env={}), Services(clock=SYSTEM_CLOCK, dry_run=True))


@pytest.mark.parametrize(
    ("issuers", "outcome"),
    [(False, "CN=Legacy CA,O=corp_it@example"), (True, "cannot be read to check")],
    ids=["no-issuers", "issuers"],
)
def test_a_certificate_openssl_verified_but_cryptography_cannot_read(
    tmp_path: Path, issuers: bool, outcome: str
) -> None:
    """Older PKIs encode names in ways OpenSSL accepts and `cryptography` refuses (an `@` in a PrintableString).
    Such a client authenticated before `issuers` existed and must still, by the name OpenSSL read; only a stage
    that must check which CA issued it has to refuse, and says why."""
    from stockade.clock import SYSTEM_CLOCK
    from stockade.pipeline.stage import Services, StageEnv
    from stockade.pipeline.verdict import Deny
    from stockade.stages.authn.mtls import MtlsAuthenticator, MtlsConfig
    from stockade.testing import make_context, run_stage

    root = Pki(tmp_path, "Root CA")
    config = MtlsConfig(issuers=[str(root.ca_file)]) if issuers else MtlsConfig()
    stage = MtlsAuthenticator(config, StageEnv(route_id="r", base_dir=tmp_path, services=Services(clock=SYSTEM_CLOCK)))
    ctx = make_context()
    ctx.peer_cert = {  # what OpenSSL read (getpeercert)
        "subject": ((("commonName", "dave"),),),
        "issuer": ((("organizationName", "corp_it@example"),), (("commonName", "Legacy CA"),)),
        "notBefore": "Jan  1 00:00:00 2020 GMT",
        "notAfter": "Jan  1 00:00:00 2040 GMT",
    }
    ctx.peer_cert_der = b"0\x03\x02\x01\x00"  # DER that cryptography cannot read as a certificate
    verdict = run_stage(stage, ctx)
    if issuers:
        assert isinstance(verdict, Deny) and verdict.status == 401
        assert outcome in (verdict.detail or "")
    else:
        assert isinstance(verdict, Continue) and verdict.principal is not None
        assert (verdict.principal.id, verdict.principal.issuer) == ("dave", outcome)


@pytest.mark.parametrize("value", ["Legacy CA", "a=b", "A, Inc.", 'q"uote', "t\x00z", "semi;colon", "#lead", "trail "])
def test_a_name_openssl_read_is_written_as_cryptography_writes_it(value: str) -> None:
    """The fallback for certificates cryptography cannot read spells the issuer as it would have: an upstream
    matching `x-stockade-issuer` sees one spelling whichever library read the certificate."""
    from cryptography.x509.oid import NameOID

    from stockade.stages.authn.mtls import _rfc4514

    name = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Org"), x509.NameAttribute(NameOID.COMMON_NAME, value)]
    )
    as_openssl_reads_it = ((("organizationName", "Org"),), (("commonName", value),))
    assert _rfc4514(as_openssl_reads_it) == name.rfc4514_string()
