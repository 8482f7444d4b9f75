"""The ctypes bridge to OpenSSL: it works on this CPython, refuses to touch a context it cannot vouch for, and
the listener falls back to a narrower but still compliant setting when it is unavailable."""

from __future__ import annotations

import ctypes
import logging
import ssl
from collections.abc import Iterator

import pytest

from stockade.proxy import ossl
from stockade.testing import TestGateway
from tests.tlsutil import Pki, client_context, listener_yaml, make_pki, try_get


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def fresh_lib() -> Iterator[None]:
    ossl._libssl.cache_clear()
    yield
    ossl._libssl.cache_clear()


def server_context() -> ssl.SSLContext:
    return ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)


@pytest.mark.parametrize(
    ("setter", "value", "ok"),
    [
        pytest.param(ossl.set_groups, "X25519:P-256:P-384", True, id="groups"),
        pytest.param(ossl.set_groups, "P-256:no-such-group", False, id="groups-unknown-name"),
        pytest.param(ossl.set_ciphersuites, "TLS_AES_128_GCM_SHA256", True, id="ciphersuites"),
        pytest.param(ossl.set_ciphersuites, "TLS_NO_SUCH_SUITE", False, id="ciphersuites-unknown-name"),
    ],
)
def test_ossl_setter_reports_what_openssl_did(setter: object, value: str, ok: bool) -> None:
    ctx = server_context()
    assert setter(ctx, value) is ok  # type: ignore[operator]
    lib = ossl._libssl()
    lib.ERR_peek_error.restype = ctypes.c_ulong
    assert lib.ERR_peek_error() == 0  # a refusal leaves no stale error for the ssl module to misreport


def test_ossl_ciphersuites_take_effect() -> None:
    ctx = server_context()
    assert ossl.set_ciphersuites(ctx, "TLS_CHACHA20_POLY1305_SHA256")
    tls13 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3"}
    assert tls13 == {"TLS_CHACHA20_POLY1305_SHA256"}


def test_ossl_client_ca_names_need_a_certificate_file(pki: Pki) -> None:
    assert ossl.set_client_ca_names(server_context(), pki.ca.pem)
    garbage = pki.dir / "empty.pem"
    garbage.write_text("")
    assert not ossl.set_client_ca_names(server_context(), garbage)


def test_ossl_refuses_a_context_whose_state_does_not_match(monkeypatch: pytest.MonkeyPatch) -> None:
    # If the SSL_CTX read through the pointer disagrees with the Python object, nothing is written to it.
    monkeypatch.setattr(ossl, "_VERIFY_MODES", {m: 7 for m in ossl._VERIFY_MODES})
    ctx = server_context()
    before = {c["name"] for c in ctx.get_ciphers()}
    assert not ossl.set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256")
    assert {c["name"] for c in ctx.get_ciphers()} == before


@pytest.mark.usefixtures("fresh_lib")
def test_ossl_refuses_an_openssl_other_than_the_ssl_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ssl, "OPENSSL_VERSION_NUMBER", ssl.OPENSSL_VERSION_NUMBER + 1)
    assert ossl._libssl() is None
    assert not ossl.set_groups(server_context(), "P-256")


@pytest.mark.usefixtures("fresh_lib")
def test_ossl_is_not_used_outside_cpython(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ossl.sys.implementation, "name", "pypy")
    assert not ossl.set_groups(server_context(), "P-256")


def test_listener_without_ossl_falls_back_to_p256_only(
    pki: Pki, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ossl, "set_groups", lambda _ctx, _groups: False)
    with caplog.at_level(logging.WARNING, "stockade.tls"), TestGateway(listener_yaml(pki.rsa)) as gw:
        for curve, status in [("prime256v1", 200), ("X25519", None), ("secp384r1", None), ("secp521r1", None)]:
            assert try_get(gw.port, client_context(pki.ca.pem, curve=curve)) == status, curve
    assert "restricting key exchange to P-256 only" in caplog.text
