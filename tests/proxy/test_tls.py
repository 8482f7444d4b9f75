"""TLS on the listener: certificates, protocol versions, ciphers, groups, the Mozilla check, HSTS, bad clients.

Every refusal is paired with a control handshake against a permissive server, which shows the client really
offered what the gateway refused (a client that cannot even try an old protocol would pass vacuously).
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from stockade.testing import TestGateway, TestUpstream, gateway_with_upstream
from tests.tlsutil import (
    Pki,
    client_context,
    handshake_in_memory,
    https_get,
    listener_yaml,
    make_pki,
    permissive_server,
    tls_connect,
    try_get,
)

V = ssl.TLSVersion

UPSTREAM_ROUTE = """
  - id: api
    match: {path: /**}
    upstream: {url: "{upstream}"}
    stages: [{use: anonymous}, {use: security_headers}]
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def gateways(pki: Pki) -> Iterator[dict[str, TestGateway]]:
    with TestGateway(listener_yaml(pki.rsa)) as rsa_gw, TestGateway(listener_yaml(pki.ec)) as ec_gw:
        yield {"rsa": rsa_gw, "ec": ec_gw}


@pytest.fixture(scope="module")
def permissive(pki: Pki) -> dict[str, ssl.SSLContext]:
    return {"rsa": permissive_server(pki.rsa, pki.dir), "ec": permissive_server(pki.ec, pki.dir)}


# -- the certificate -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_listener_https_presents_configured_certificate(pki: Pki, kind: str) -> None:
    cert = getattr(pki, kind)
    with gateway_with_upstream(listener_yaml(cert, routes=UPSTREAM_ROUTE)) as (gw, up):
        with tls_connect(gw.port, client_context(pki.ca.pem)) as sock:
            assert sock.getpeercert(binary_form=True) == cert.der
            status, _, body = https_get(sock, "/items?x=1")
            status2, _, _ = https_get(sock, "/again", close=True)  # keep-alive over TLS
    assert (status, status2) == (200, 200)
    assert orjson.loads(body)["target"] == "/items?x=1"
    assert up.received[0].header("x-forwarded-proto") == "https"


# -- protocol versions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "name", "accepted"),
    [
        pytest.param(V.TLSv1, "TLSv1", False, id="tls1.0-refused"),
        pytest.param(V.TLSv1_1, "TLSv1.1", False, id="tls1.1-refused"),
        pytest.param(V.TLSv1_2, "TLSv1.2", True, id="tls1.2-accepted"),
        pytest.param(V.TLSv1_3, "TLSv1.3", True, id="tls1.3-accepted"),
    ],
)
def test_listener_protocol_version(
    pki: Pki,
    gateways: dict[str, TestGateway],
    permissive: dict[str, ssl.SSLContext],
    version: V,
    name: str,
    accepted: bool,
) -> None:
    def client() -> ssl.SSLContext:  # security level 0, or OpenSSL 3 will not even offer TLS 1.0/1.1
        return client_context(pki.ca.pem, minimum=version, maximum=version, ciphers="DEFAULT:@SECLEVEL=0")

    assert handshake_in_memory(client(), permissive["rsa"]) == name
    with_gateway = try_get(gateways["rsa"].port, client())
    assert with_gateway == (200 if accepted else None)


def test_listener_min_version_13_refuses_tls12(pki: Pki) -> None:
    with TestGateway(listener_yaml(pki.rsa, tls_extra="min_version: '1.3'")) as gw:
        assert try_get(gw.port, client_context(pki.ca.pem, maximum=V.TLSv1_2)) is None
        with tls_connect(gw.port, client_context(pki.ca.pem)) as sock:
            assert sock.version() == "TLSv1.3"


# -- TLS 1.2 cipher suites -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "cipher", "accepted"),
    [
        pytest.param("rsa", "ECDHE-RSA-AES128-GCM-SHA256", True, id="ecdhe-rsa-aes128-gcm"),
        pytest.param("rsa", "ECDHE-RSA-AES256-GCM-SHA384", True, id="ecdhe-rsa-aes256-gcm"),
        pytest.param("rsa", "ECDHE-RSA-CHACHA20-POLY1305", True, id="ecdhe-rsa-chacha20"),
        pytest.param("ec", "ECDHE-ECDSA-AES128-GCM-SHA256", True, id="ecdhe-ecdsa-aes128-gcm"),
        pytest.param("ec", "ECDHE-ECDSA-AES256-GCM-SHA384", True, id="ecdhe-ecdsa-aes256-gcm"),
        pytest.param("ec", "ECDHE-ECDSA-CHACHA20-POLY1305", True, id="ecdhe-ecdsa-chacha20"),
        pytest.param("rsa", "ECDHE-RSA-AES128-SHA", False, id="cbc-sha1-refused"),
        pytest.param("rsa", "ECDHE-RSA-AES256-SHA384", False, id="cbc-sha384-refused"),
        pytest.param("ec", "ECDHE-ECDSA-AES128-SHA256", False, id="ecdsa-cbc-refused"),
        pytest.param("rsa", "AES128-GCM-SHA256", False, id="rsa-key-exchange-refused"),
        pytest.param("rsa", "ECDHE-RSA-NULL-SHA", False, id="null-encryption-refused"),
        pytest.param("rsa", "DHE-RSA-AES128-GCM-SHA256", False, id="dhe-refused"),
    ],
)
def test_listener_tls12_cipher(
    gateways: dict[str, TestGateway],
    permissive: dict[str, ssl.SSLContext],
    pki: Pki,
    kind: str,
    cipher: str,
    accepted: bool,
) -> None:
    def client() -> ssl.SSLContext:
        return client_context(pki.ca.pem, maximum=V.TLSv1_2, ciphers=f"{cipher}:@SECLEVEL=0")

    assert handshake_in_memory(client(), permissive[kind]) == "TLSv1.2"  # the client offers this one suite
    port = gateways[kind].port
    if accepted:
        with tls_connect(port, client()) as sock:
            assert sock.cipher()[0] == cipher
            assert https_get(sock, close=True)[0] == 200
    else:
        assert try_get(port, client()) is None


def test_listener_lets_the_client_order_decide(pki: Pki, gateways: dict[str, TestGateway]) -> None:
    # Mozilla intermediate: no server preference. The gateway's own list puts AES-GCM before ChaCha20.
    ctx = client_context(
        pki.ca.pem, maximum=V.TLSv1_2, ciphers="ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256"
    )
    with tls_connect(gateways["rsa"].port, ctx) as sock:
        assert sock.cipher()[0] == "ECDHE-RSA-CHACHA20-POLY1305"


# -- key-exchange groups -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("curve", "version", "accepted"),
    [
        pytest.param(curve, version, accepted, id=f"{curve}-{version.name}")
        for curve, accepted in [
            ("X25519", True),
            ("prime256v1", True),
            ("secp384r1", True),
            ("secp521r1", False),
            ("X448", False),
        ]
        for version in (V.TLSv1_2, V.TLSv1_3)
    ]
    + [pytest.param("ffdhe2048", V.TLSv1_3, False, id="ffdhe2048-TLSv1_3")],  # a TLS 1.3 key-share group only
)
def test_listener_key_exchange_group(
    pki: Pki,
    gateways: dict[str, TestGateway],
    permissive: dict[str, ssl.SSLContext],
    curve: str,
    version: V,
    accepted: bool,
) -> None:
    def client() -> ssl.SSLContext:  # offers `curve` and nothing else
        return client_context(pki.ca.pem, minimum=version, maximum=version, curve=curve)

    assert handshake_in_memory(client(), permissive["rsa"]) == ("TLSv1.3" if version is V.TLSv1_3 else "TLSv1.2")
    assert try_get(gateways["rsa"].port, client()) == (200 if accepted else None)


# -- sslyze --------------------------------------------------------------------------------------------------


def _sslyze(port: int, ca: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sslyze",
            "--mozilla_config=intermediate",
            f"--certinfo_ca_file={ca}",
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_sslyze_mozilla_intermediate_passes(pki: Pki, gateways: dict[str, TestGateway], kind: str) -> None:
    result = _sslyze(gateways[kind].port, pki.ca.pem)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"127\.0\.0\.1:\d+: OK - Compliant\.", result.stdout), result.stdout
    assert re.search(r"Supported curves:\s+X25519, secp256r1, secp384r1\n", result.stdout), result.stdout


@pytest.mark.slow
def test_sslyze_mozilla_check_fails_a_default_openssl_server(pki: Pki) -> None:
    # The control: Python's default server context (OpenSSL's default groups: X448, P-521, ffdhe...) fails.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.rsa.cert, pki.rsa.key)
    with TestUpstream(ssl_context=ctx) as up:
        result = _sslyze(up.port, pki.ca.pem)
    assert result.returncode != 0
    assert re.search(r"127\.0\.0\.1:\d+: FAILED - Not compliant\.", result.stdout), result.stdout
    assert re.search(r"\* tls_curves: TLS curves .*X448.* are supported", result.stdout), result.stdout


# -- HSTS ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [True, False], ids=["https-gets-hsts", "http-gets-none"])
def test_security_headers_hsts_only_over_tls(pki: Pki, tls: bool) -> None:
    config = listener_yaml(pki.rsa, routes=UPSTREAM_ROUTE)
    if not tls:
        config = "routes:" + UPSTREAM_ROUTE
    with gateway_with_upstream(config) as (gw, _):
        if tls:
            with tls_connect(gw.port, client_context(pki.ca.pem)) as sock:
                status, headers, _ = https_get(sock, close=True)
        else:
            status, headers, _ = gw.request("GET", "/")
    assert status == 200
    assert headers["x-content-type-options"] == "nosniff"  # the stage ran either way
    assert headers.get("strict-transport-security") == ("max-age=31536000" if tls else None)


# -- clients that do not speak TLS ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", id="plain-http"),
        pytest.param(b"\x16\x03\x01\xff\xff" + b"\x01" * 64, id="truncated-client-hello"),
        pytest.param(b"\x80\x2e\x01\x00\x02" + b"\x00" * 45, id="sslv2-hello"),
        pytest.param(b"\x00" * 4096, id="zeros"),
        pytest.param(b"", id="connect-then-close"),
    ],
)
def test_listener_non_tls_bytes_are_closed_not_crashed(pki: Pki, payload: bytes) -> None:
    errors: list[dict[str, Any]] = []
    with TestGateway(listener_yaml(pki.rsa)) as gw:
        gw.bg.loop.set_exception_handler(lambda _loop, context: errors.append(context))
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(payload)
            if not payload:
                sock.shutdown(socket.SHUT_WR)
            received = b""
            try:
                while chunk := sock.recv(65536):
                    received += chunk
            except ConnectionResetError:
                pass
        assert not received.startswith(b"HTTP/")  # no HTTP was spoken in the clear
        assert gw.bg.call(lambda: len(gw.server.connections)) == 0  # no client connection was ever made
        assert try_get(gw.port, client_context(pki.ca.pem)) == 200  # and the listener still serves
    assert errors == []


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="silent"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", id="client-hello-cut-short"),
    ],
)
def test_listener_handshake_that_never_finishes_is_closed(pki: Pki, payload: bytes) -> None:
    """A slowloris on the TLS handshake: the handshake gets `limits.header_timeout`, then the socket is closed.

    uvloop enforces this timeout on its own real-time clock (the gateway's injected clock cannot drive it), so this
    test uses a short real timeout and waits for the close; it asserts what happens, not how fast."""
    extra = "limits: {header_timeout: 0.3}\n"
    with TestGateway(listener_yaml(pki.rsa, extra=extra)) as gw:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(payload)
            try:
                received = sock.recv(65536)  # blocks until the gateway gives up on the handshake
            except ConnectionResetError:
                received = b""
            assert received == b""  # closed by the gateway, well before the client's own 10 s timeout
        assert try_get(gw.port, client_context(pki.ca.pem)) == 200  # the listener still serves
