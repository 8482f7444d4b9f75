"""JSON Web Keys (RFC 7517/7518/8037): parsing into `cryptography` key objects, each tied to one algorithm family.

A key can only ever verify algorithms of its own family, so HS/RS confusion (an RSA public key used as an HMAC
secret) cannot be expressed: the HMAC path accepts only `oct` keys, which exist only from configured secrets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

Family = Literal["RSA", "EC", "OKP", "oct"]
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey

MIN_RSA_BITS = 2048

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_HMAC_DIGESTS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
# JWS algorithm -> (key family, EC curve name or None, raw signature half-length for ECDSA)
ALGORITHMS: dict[str, tuple[Family, str | None, int]] = {
    **{f"RS{n}": ("RSA", None, 0) for n in _HASHES},
    **{f"PS{n}": ("RSA", None, 0) for n in _HASHES},
    "ES256": ("EC", "P-256", 32),
    "ES384": ("EC", "P-384", 48),
    "ES512": ("EC", "P-521", 66),
    "EdDSA": ("OKP", None, 0),
    **{name: ("oct", None, 0) for name in _HMAC_DIGESTS},
}
SYMMETRIC = frozenset(_HMAC_DIGESTS)
_CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
_CURVE_NAMES = {type(c).__name__: name for name, c in _CURVES.items()}


class JwkError(ValueError):
    """A key document is unusable (unknown kty/crv, weak key, bad encoding)."""


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _uint(jwk: Mapping[str, Any], name: str) -> int:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise JwkError(f"member {name!r} missing or not a string")
    try:
        return int.from_bytes(b64url_decode(value), "big")
    except ValueError:
        raise JwkError(f"member {name!r} is not base64url") from None


@dataclass(frozen=True, slots=True)
class Jwk:
    """A verification key: its family decides which algorithms it can check, whatever a token header says."""

    kid: str | None
    family: Family
    key: PublicKey | bytes  # bytes only for family "oct"
    alg: str | None = None  # if the JWK pins one algorithm, only that one is accepted with it
    curve: str | None = None

    def accepts(self, alg: str) -> bool:
        spec = ALGORITHMS.get(alg)
        if spec is None or spec[0] != self.family or (self.alg is not None and self.alg != alg):
            return False
        return spec[1] is None or spec[1] == self.curve

    def verify(self, alg: str, signing_input: bytes, signature: bytes) -> bool:
        """True if `signature` is valid for `signing_input` under `alg`. Never raises for a bad signature."""
        if not self.accepts(alg):
            return False
        key = self.key
        try:
            if isinstance(key, bytes):
                expected = hmac.new(key, signing_input, _HMAC_DIGESTS[alg]).digest()
                return hmac.compare_digest(expected, signature)
            if isinstance(key, rsa.RSAPublicKey):
                digest = _HASHES[alg[2:]]()
                if alg[0] == "R":
                    key.verify(signature, signing_input, padding.PKCS1v15(), digest)
                else:
                    pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
                    key.verify(signature, signing_input, pss, digest)
                return True
            if isinstance(key, ec.EllipticCurvePublicKey):
                size = ALGORITHMS[alg][2]
                if len(signature) != 2 * size:
                    return False
                r = int.from_bytes(signature[:size], "big")
                s = int.from_bytes(signature[size:], "big")
                key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(_HASHES[alg[2:]]()))
                return True
            key.verify(signature, signing_input)
            return True
        except InvalidSignature:
            return False


PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth")  # the private half of an RSA, EC or OKP key


def has_secret_members(doc: Mapping[str, Any]) -> bool:
    """Private key material, or a symmetric (oct) key's `k`."""
    return "k" in doc or any(m in doc for m in PRIVATE_MEMBERS)


def parse_jwk(doc: Mapping[str, Any], *, allow_private: bool = False) -> Jwk:
    """Turn one JWK object into a verification key. Private members are refused unless asked for (static
    keys from a file may be a full key pair; only the public half is kept)."""
    kty = doc.get("kty")
    kid = doc.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > 256):
        raise JwkError("kid must be a non-empty string of at most 256 characters")
    alg = doc.get("alg")
    if alg is not None and alg not in ALGORITHMS:
        raise JwkError(f"unsupported alg {alg!r}")
    if not allow_private and any(m in doc for m in PRIVATE_MEMBERS):
        raise JwkError("a JWK set for verification must not contain private key members")
    if kty == "RSA":
        pub = rsa.RSAPublicNumbers(_uint(doc, "e"), _uint(doc, "n"))
        try:
            rkey = pub.public_key()
        except ValueError as exc:
            raise JwkError(f"invalid RSA key: {exc}") from None
        if rkey.key_size < MIN_RSA_BITS:
            raise JwkError(f"RSA key of {rkey.key_size} bits is below the {MIN_RSA_BITS}-bit minimum")
        return Jwk(kid, "RSA", rkey, alg)
    if kty == "EC":
        crv = doc.get("crv")
        curve = _CURVES.get(crv) if isinstance(crv, str) else None
        if curve is None:
            raise JwkError(f"unsupported EC curve {crv!r}")
        try:
            ekey = ec.EllipticCurvePublicNumbers(_uint(doc, "x"), _uint(doc, "y"), curve).public_key()
        except ValueError as exc:
            raise JwkError(f"invalid EC key: {exc}") from None
        return Jwk(kid, "EC", ekey, alg, str(crv))
    if kty == "OKP":
        crv = doc.get("crv")
        try:
            raw = b64url_decode(str(doc.get("x", "")))  # binascii.Error is a ValueError
            if crv == "Ed25519":
                return Jwk(kid, "OKP", ed25519.Ed25519PublicKey.from_public_bytes(raw), alg, crv)
            if crv == "Ed448":
                return Jwk(kid, "OKP", ed448.Ed448PublicKey.from_public_bytes(raw), alg, crv)
        except ValueError as exc:
            raise JwkError(f"invalid OKP key: {exc}") from None
        raise JwkError(f"unsupported OKP curve {crv!r}")
    if kty == "oct":
        raise JwkError("symmetric keys are configured as issuer secrets, never read from a key set")
    raise JwkError(f"unsupported kty {kty!r}")


def secret_key(secret: bytes, kid: str | None = None) -> Jwk:
    """An HMAC key from a configured shared secret (the only way an `oct` key comes to exist)."""
    return Jwk(kid, "oct", secret)


def public_jwk(key: PublicKey, kid: str, alg: str) -> dict[str, str]:
    """The public JWK members of a key, for publishing in a JWKS document."""
    doc: dict[str, str] = {"kid": kid, "alg": alg, "use": "sig"}
    if isinstance(key, rsa.RSAPublicKey):
        nums = key.public_numbers()
        doc.update(kty="RSA", n=_b64_uint(nums.n), e=_b64_uint(nums.e))
    elif isinstance(key, ec.EllipticCurvePublicKey):
        size = (key.curve.key_size + 7) // 8
        enums = key.public_numbers()
        doc.update(
            kty="EC",
            crv=_CURVE_NAMES[type(key.curve).__name__],
            x=b64url_encode(enums.x.to_bytes(size, "big")),
            y=b64url_encode(enums.y.to_bytes(size, "big")),
        )
    else:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        doc.update(kty="OKP", crv="Ed25519" if isinstance(key, ed25519.Ed25519PublicKey) else "Ed448")
        doc["x"] = b64url_encode(raw)
    return doc


def _b64_uint(n: int) -> str:
    return b64url_encode(n.to_bytes((n.bit_length() + 7) // 8 or 1, "big"))


def sign_bytes(key: PrivateKey | bytes, alg: str, signing_input: bytes) -> bytes:
    """A JWS signature over `signing_input` (ECDSA as raw r||s, RFC 7518 §3.4)."""
    family = ALGORITHMS[alg][0]
    if isinstance(key, bytes):
        if family != "oct":
            raise JwkError(f"{alg} needs an asymmetric key")
        return hmac.new(key, signing_input, _HMAC_DIGESTS[alg]).digest()
    if isinstance(key, rsa.RSAPrivateKey) and family == "RSA":
        digest = _HASHES[alg[2:]]()
        if alg[0] == "R":
            return key.sign(signing_input, padding.PKCS1v15(), digest)
        return key.sign(signing_input, padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size), digest)
    if isinstance(key, ec.EllipticCurvePrivateKey) and family == "EC":
        size = ALGORITHMS[alg][2]
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(_HASHES[alg[2:]]())))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) and family == "OKP":
        return key.sign(signing_input)
    raise JwkError(f"key type {type(key).__name__} cannot sign {alg}")


def thumbprint_sha256(der: bytes) -> str:
    """RFC 8705 `x5t#S256`: base64url SHA-256 of a DER certificate."""
    return b64url_encode(hashlib.sha256(der).digest())


def keys_by_kid(keys: Iterable[Jwk]) -> dict[str | None, Jwk]:
    return {k.kid: k for k in keys}
