"""A test identity provider: key pairs, their JWKS, and a mint for tokens (valid ones and attacks)."""

from __future__ import annotations

import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from stockade.security import jose
from stockade.security.jwk import PrivateKey, public_jwk

ISS = "https://idp.example"
AUD = "api"
NOW = 1_700_000_000  # FakeClock's start


class TestIssuer:
    """Holds private keys by kid and signs tokens; `jwks()` is what its JWKS endpoint would serve."""

    __test__ = False

    def __init__(self, issuer: str = ISS) -> None:
        self.issuer = issuer
        self.keys: dict[str, tuple[PrivateKey, str]] = {}

    def add_rsa(self, kid: str, alg: str = "RS256") -> TestIssuer:
        self.keys[kid] = (_rsa(), alg)
        return self

    def add_ec(self, kid: str, alg: str = "ES256") -> TestIssuer:
        curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}[alg]
        self.keys[kid] = (ec.generate_private_key(curve), alg)
        return self

    def add_ed(self, kid: str) -> TestIssuer:
        self.keys[kid] = (ed25519.Ed25519PrivateKey.generate(), "EdDSA")
        return self

    def public(self, kid: str) -> dict[str, str]:
        key, alg = self.keys[kid]
        return public_jwk(key.public_key(), kid, alg)

    def jwks(self, *kids: str) -> dict[str, Any]:
        return {"keys": [self.public(k) for k in (kids or self.keys)]}

    def jwks_bytes(self, *kids: str) -> bytes:
        return json.dumps(self.jwks(*kids)).encode()

    def claims(self, **over: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "user-1",
            "aud": AUD,
            "iat": NOW,
            "exp": NOW + 600,
            "jti": "jti-1",
            "scope": "books:read books:write",
        }
        base.update(over)
        return {k: v for k, v in base.items() if v is not None}

    def token(self, kid: str | None = None, *, header: dict[str, Any] | None = None, **claims: Any) -> str:
        kid = kid or next(iter(self.keys))
        key, alg = self.keys[kid]
        hdr: dict[str, Any] = {"alg": alg, "typ": "JWT", "kid": kid}
        hdr.update(header or {})
        return jose.sign_raw({k: v for k, v in hdr.items() if v is not None}, self.claims(**claims), key, alg)


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)
