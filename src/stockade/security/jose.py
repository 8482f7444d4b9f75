"""JWT decoding, verification and signing: the only place in Stockade that reads or writes a JWS (RFC 7515/7519/8725).

Verification order matters and is fixed: strict parsing, then header rules (no `none`, no unknown `crit`, no
header-supplied keys), then the issuer's pinned algorithm allowlist, and only then a key, found by exact `kid`
lookup in that issuer's own key set. Claims are checked after the signature.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stockade.errors import StockadeError
from stockade.security.jsonscan import has_unpaired_surrogate
from stockade.security.jwk import ALGORITHMS, Jwk, PrivateKey, b64url_decode, b64url_encode, sign_bytes

MAX_LEEWAY = 60
_SEGMENT = re.compile(r"^[A-Za-z0-9_-]*$")
HEADER_KEY_PARAMS = frozenset({"jku", "x5u", "jwk", "x5c"})
# Header parameters that carry no key and change nothing about verification; anything else is ignored too,
# except `crit`, which by definition we must understand (we implement no extensions, so any `crit` fails).
_NONE_SPELLING = re.compile(r"^\s*none\s*$", re.IGNORECASE)


class JoseError(StockadeError):
    """A token was refused. `code` names the precise failure for the decision log; clients see a generic 401."""

    code = "jwt.invalid"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class MalformedToken(JoseError):
    """Not a strict compact JWS with JSON object parts."""

    code = "jwt.malformed"


class AlgNotAllowed(JoseError):
    """`none`, or an algorithm the issuer is not pinned to."""

    code = "jwt.alg_not_allowed"


class UnknownCrit(JoseError):
    """A `crit` header naming extensions we do not implement."""

    code = "jwt.unknown_crit"


class HeaderKey(JoseError):
    """A key or key URL in the header (jku, x5u, jwk, x5c)."""

    code = "jwt.header_key"


class UnknownIssuer(JoseError):
    """`iss` missing or not a configured issuer."""

    code = "jwt.bad_issuer"


class UnknownKid(JoseError):
    """No key in the issuer's set matches `kid` and `alg`."""

    code = "jwt.unknown_kid"


class BadSignature(JoseError):
    """The signature does not verify."""

    code = "jwt.bad_signature"


class Expired(JoseError):
    """`exp` is in the past (beyond leeway)."""

    code = "jwt.expired"


class NotYetValid(JoseError):
    """`nbf` or `iat` is in the future (beyond leeway)."""

    code = "jwt.not_yet_valid"


class BadAudience(JoseError):
    """`aud` missing or not one of the accepted audiences."""

    code = "jwt.bad_audience"


class BadClaim(JoseError):
    """A required claim is missing or has the wrong type."""

    code = "jwt.bad_claim"


class LifetimeTooLong(JoseError):
    """`exp` lies further ahead than allowed."""

    code = "jwt.lifetime_too_long"


class BadType(JoseError):
    """The `typ` header is not one the issuer is configured for."""

    code = "jwt.bad_type"


class Revoked(JoseError):
    """The token's `jti` was revoked (RFC 7009)."""

    code = "jwt.revoked"


class CnfMismatch(JoseError):
    """A certificate-bound token (RFC 8705) presented without, or over another, client certificate."""

    code = "jwt.cnf_mismatch"


@dataclass(frozen=True, slots=True)
class Parsed:
    """A token split and decoded, signature not yet checked."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


@dataclass(frozen=True)
class IssuerPolicy:
    """What one issuer's tokens must satisfy. Built from validated config; see stages/authn/jwt.py."""

    issuer: str
    audiences: frozenset[str]
    algorithms: frozenset[str]
    leeway: int = 30
    max_lifetime: int | None = None
    require_iat: bool = False
    types: frozenset[str] = frozenset()  # accepted `typ` values, normalised ("at+jwt"); empty: not checked
    allowed_header_params: frozenset[str] = field(default_factory=frozenset)  # of HEADER_KEY_PARAMS; never used

    def __post_init__(self) -> None:
        if not 0 <= self.leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY} seconds")
        if not self.algorithms or not self.algorithms <= set(ALGORITHMS):
            raise ValueError(f"algorithms must be a non-empty subset of {sorted(ALGORITHMS)}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise MalformedToken(f"duplicate JSON member {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise MalformedToken(f"non-standard JSON constant {name}")


def bound_thumbprint(claims: Mapping[str, Any]) -> str | None:
    """The RFC 8705 certificate thumbprint (`cnf.x5t#S256`) a token is bound to, None if it is not bound.
    BadClaim for any other confirmation method (DPoP's `jkt`, ...): the gateway cannot check it, so such a
    token is refused rather than accepted as a plain bearer token. For JWTs and introspection results alike."""
    cnf = claims.get("cnf")
    if cnf is None:
        return None
    value = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
    if not isinstance(value, str):
        raise BadClaim("claim 'cnf' has no string x5t#S256 (unsupported confirmation method)")
    return value


def _json_object(segment: str, part: str) -> dict[str, Any]:
    raw = _b64(segment, part)
    try:
        value = json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, or an integer literal over Python's digit limit
        raise MalformedToken(f"{part} is not JSON") from None
    if has_unpaired_surrogate(raw):  # a `sub` of "\ud800" cannot be hashed or sent on: a 500 per request
        raise MalformedToken(f"{part} has a string with half a surrogate pair")
    if not isinstance(value, dict):
        raise MalformedToken(f"{part} is not a JSON object")
    return value


def _b64(segment: str, part: str) -> bytes:
    # Strict: the URL-safe alphabet only, no padding, and canonical (no stray bits in the last character), so
    # exactly one string encodes each header, payload and signature: the verified-token cache cannot be
    # sidestepped by re-encoding. (An ECDSA signature (r, s) has a twin (r, n - s) that verifies too; that only
    # costs a second verification, and JWS does not require low-s, so both are accepted.)
    if not _SEGMENT.match(segment) or len(segment) % 4 == 1:
        raise MalformedToken(f"{part} is not unpadded base64url")
    data = b64url_decode(segment)
    if b64url_encode(data) != segment:
        raise MalformedToken(f"{part} is not canonical base64url")
    return data


def parse(token: str, *, max_bytes: int = 8192) -> Parsed:
    """Split and decode a compact JWS. Raises MalformedToken; checks nothing about trust."""
    if len(token) > max_bytes:
        raise MalformedToken(f"token longer than {max_bytes} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedToken(f"{len(parts)} segments, expected 3")
    h, p, s = parts
    if not h or not p or not s:
        raise MalformedToken("empty segment (a stripped signature?)")
    header = _json_object(h, "header")
    claims = _json_object(p, "payload")
    return Parsed(header, claims, f"{h}.{p}".encode("ascii"), _b64(s, "signature"))


def check_header(header: Mapping[str, Any], policy: IssuerPolicy) -> str:
    """Apply the header rules and the issuer's algorithm pin. Returns the (allowed) algorithm."""
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise MalformedToken("header has no string `alg`")
    if _NONE_SPELLING.match(alg):
        raise AlgNotAllowed(f"alg {alg!r} (unsigned token)")
    if "crit" in header:
        raise UnknownCrit(f"crit {header['crit']!r}: no JWS extensions are implemented")
    carried = HEADER_KEY_PARAMS.intersection(header) - policy.allowed_header_params
    if carried:
        raise HeaderKey(f"header carries {sorted(carried)}")
    if alg not in policy.algorithms:
        raise AlgNotAllowed(f"alg {alg!r} not in {sorted(policy.algorithms)} for issuer {policy.issuer!r}")
    if policy.types:
        typ = header.get("typ")
        norm = typ.lower().removeprefix("application/") if isinstance(typ, str) else None
        if norm not in policy.types:
            raise BadType(f"typ {typ!r} not in {sorted(policy.types)}")
    return alg


def verify_signature(parsed: Parsed, alg: str, lookup: Callable[[str | None, str], Jwk | None]) -> Jwk:
    """Find the key by exact `kid` (plus the already-pinned `alg`) and check the signature."""
    kid = parsed.header.get("kid")
    if kid is not None and (not isinstance(kid, str) or len(kid) > 256):
        raise MalformedToken("kid is not a string of at most 256 characters")
    key = lookup(kid, alg)
    if key is None:
        raise UnknownKid(f"no {alg} key with kid {kid!r}")
    if not key.verify(alg, parsed.signing_input, parsed.signature):
        raise BadSignature(f"signature does not verify with kid {key.kid!r} ({alg})")
    return key


def _number(claims: Mapping[str, Any], name: str, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise BadClaim(f"claim {name!r} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadClaim(f"claim {name!r} is not a number")
    try:
        number = float(value)  # an integer beyond a float's range raises; a literal like 1e400 parses as inf
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise BadClaim(f"claim {name!r} is out of range")
    return number


def check_claims(claims: Mapping[str, Any], policy: IssuerPolicy, now: float) -> float:
    """Check iss, aud, exp, nbf, iat and lifetime. Returns `exp`."""
    if claims.get("iss") != policy.issuer:
        raise UnknownIssuer(f"iss {claims.get('iss')!r} is not {policy.issuer!r}")
    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else aud
    if not isinstance(auds, list) or not all(isinstance(a, str) for a in auds):
        raise BadAudience(f"aud {aud!r} is not a string or a list of strings")
    if policy.audiences.isdisjoint(auds):
        raise BadAudience(f"aud {aud!r} not in {sorted(policy.audiences)}")
    leeway = policy.leeway
    exp = _number(claims, "exp", True)
    assert exp is not None  # noqa: S101 - required=True above
    if now > exp + leeway:
        raise Expired(f"exp {exp:.0f} is {now - exp:.0f}s ago")
    nbf = _number(claims, "nbf", False)
    if nbf is not None and nbf > now + leeway:
        raise NotYetValid(f"nbf {nbf:.0f} is {nbf - now:.0f}s ahead")
    iat = _number(claims, "iat", policy.require_iat)
    if iat is not None and iat > now + leeway:
        raise NotYetValid(f"iat {iat:.0f} is {iat - now:.0f}s ahead")
    if policy.max_lifetime is not None:
        start = iat if iat is not None else now
        if exp - start > policy.max_lifetime + leeway:
            raise LifetimeTooLong(f"lifetime {exp - start:.0f}s exceeds {policy.max_lifetime}s")
    return exp


def verify(
    parsed: Parsed, policy: IssuerPolicy, lookup: Callable[[str | None, str], Jwk | None], now: float
) -> tuple[Jwk, float]:
    """Verify a parsed token against its issuer's policy and keys. Returns the key used and `exp`."""
    alg = check_header(parsed.header, policy)
    key = verify_signature(parsed, alg, lookup)
    return key, check_claims(parsed.claims, policy, now)


def sign(
    claims: Mapping[str, Any], key: PrivateKey | bytes, alg: str, *, kid: str | None = None, typ: str = "JWT"
) -> str:
    """Sign claims as a compact JWS (the gateway's own access tokens, and test fixtures)."""
    header: dict[str, Any] = {"alg": alg, "typ": typ}
    if kid is not None:
        header["kid"] = kid
    return sign_raw(header, claims, key, alg)


def sign_raw(header: Mapping[str, Any], claims: Mapping[str, Any], key: PrivateKey | bytes, alg: str) -> str:
    """Sign with an arbitrary header (tests build attack tokens with it; nothing else should need it)."""
    h = b64url_encode(json.dumps(header, separators=(",", ":")).encode())
    p = b64url_encode(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{h}.{p}".encode("ascii")
    return f"{h}.{p}.{b64url_encode(sign_bytes(key, alg, signing_input))}"


def unverified_issuer(parsed: Parsed) -> str | None:
    """The `iss` claim before verification: used only to choose which issuer's rules and keys apply."""
    iss = parsed.claims.get("iss")
    return iss if isinstance(iss, str) else None
