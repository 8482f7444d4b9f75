"""JWK parsing: keys are tied to their algorithm family; weak, private and symmetric set members are refused."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from stockade.security import jose
from stockade.security.jwk import JwkError, b64url_encode, parse_jwk, public_jwk, sign_bytes
from tests.security.issuer import TestIssuer

IDP = TestIssuer().add_rsa("r").add_ec("e").add_ec("e384", "ES384").add_ec("e521", "ES512").add_ed("d")


@pytest.mark.parametrize(
    ("kid", "alg", "other_algs"),
    [
        ("r", "RS256", ["ES256", "HS256", "EdDSA"]),
        ("e", "ES256", ["ES384", "RS256", "HS256"]),
        ("e384", "ES384", ["ES256", "ES512"]),
        ("e521", "ES512", ["ES256"]),
        ("d", "EdDSA", ["ES256", "HS256"]),
    ],
    ids=["rsa", "p256", "p384", "p521", "ed25519"],
)
def test_jwk_round_trip_and_family_binding(kid: str, alg: str, other_algs: list[str]) -> None:
    private, _ = IDP.keys[kid]
    key = parse_jwk(IDP.public(kid))
    sig = sign_bytes(private, alg, b"input")
    assert key.verify(alg, b"input", sig)
    assert not key.verify(alg, b"inpuT", sig)
    for other in other_algs:
        assert not key.accepts(other)
        assert not key.verify(other, b"input", sig)


def test_jwk_rsa_public_key_can_never_verify_an_hmac() -> None:
    private, _ = IDP.keys["r"]
    pem = private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    key = parse_jwk(IDP.public("r"))
    for secret in (pem, json.dumps(IDP.public("r")).encode()):
        forged = sign_bytes(secret, "HS256", b"input")
        assert not key.verify("HS256", b"input", forged)


def test_jwk_pss_and_pkcs1_are_distinct() -> None:
    private, _ = IDP.keys["r"]
    key = parse_jwk({k: v for k, v in IDP.public("r").items() if k != "alg"})
    assert key.verify("PS256", b"x", sign_bytes(private, "PS256", b"x"))
    assert not key.verify("RS256", b"x", sign_bytes(private, "PS256", b"x"))


def _weak_rsa() -> dict[str, Any]:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return public_jwk(weak.public_key(), "weak", "RS256")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_weak_rsa(), "below the 2048-bit minimum"),
        ({"kty": "oct", "k": b64url_encode(b"secret")}, "symmetric keys"),
        ({**IDP.public("e"), "d": "AAAA"}, "private key members"),
        ({**IDP.public("e"), "crv": "secp256k1"}, "unsupported EC curve"),
        ({**IDP.public("e"), "x": b64url_encode(b"\x01" * 32)}, "invalid EC key"),
        ({**IDP.public("r"), "alg": "none"}, "unsupported alg"),
        ({"kty": "XYZ"}, "unsupported kty"),
        ({**IDP.public("r"), "kid": ""}, "kid must be"),
        ({"kty": "OKP", "crv": "Ed25519", "x": "A", "kid": "bad-ed"}, "invalid OKP key"),  # not base64url
    ],
    ids=["weak-rsa", "oct", "private", "curve", "off-curve", "alg-none", "kty", "empty-kid", "okp-bad-encoding"],
)
def test_jwk_refuses_unusable_keys(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(JwkError, match=message):
        parse_jwk(doc)


def test_jwk_pinned_alg_restricts_the_key() -> None:
    key = parse_jwk({**IDP.public("r"), "alg": "RS256"})
    assert key.accepts("RS256") and not key.accepts("RS512")


def test_jose_sign_then_parse_round_trip() -> None:
    private, _ = IDP.keys["e"]
    token = jose.sign({"sub": "a"}, private, "ES256", kid="e", typ="at+jwt")
    parsed = jose.parse(token)
    assert parsed.header == {"alg": "ES256", "typ": "at+jwt", "kid": "e"}
    assert parsed.claims == {"sub": "a"}
