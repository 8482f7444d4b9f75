"""API key format (`stk_<env>_<random><checksum>`), public ids, and the keyed hashes (stored secrets, identities,
login usernames, brute-force subjects).

A key is `stk_`, an environment label, `_`, 43 base62 characters of randomness (256 bits from `secrets`) and
6 base62 characters of CRC32 over everything before them. The fixed prefix lets secret scanners find leaked
keys (`stk_[a-z0-9]{1,16}_[0-9A-Za-z]{49}`); the checksum lets them - and the gateway, before any lookup -
reject a mistyped key without a database round trip. It is unkeyed: anyone can make a key that passes it, so
it is no defence against invented keys (the key cache keeps those apart, see identity/key_cache.py). Only
HMAC-SHA256(pepper, key) is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass

PREFIX = "stk"
RANDOM_CHARS = 43  # 62**43 > 2**256
CHECKSUM_CHARS = 6  # 62**6 > 2**32
ID_CHARS = 16
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ENV_PATTERN = r"[a-z0-9]{1,16}"
RESERVED_ENVS = frozenset({"admin", "secret"})  # admin API tokens and OAuth client secrets
MAX_KEY_LENGTH = len(PREFIX) + 2 + 16 + RANDOM_CHARS + CHECKSUM_CHARS
SCANNER_PATTERN = rf"\b{PREFIX}_{ENV_PATTERN}_[0-9A-Za-z]{{{RANDOM_CHARS + CHECKSUM_CHARS}}}\b"

_KEY = re.compile(rf"{PREFIX}_({ENV_PATTERN})_([0-9A-Za-z]{{{RANDOM_CHARS}}})([0-9A-Za-z]{{{CHECKSUM_CHARS}}})")
_ENV = re.compile(ENV_PATTERN)
_PUBLIC_ID = re.compile(rf"[a-z]{{1,8}}_[0-9A-Za-z]{{{ID_CHARS}}}")


class KeyFormatError(ValueError):
    """The presented value is not a well-formed key. `reason`: prefix | format | checksum | env."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ParsedKey:
    env: str
    random: str  # the secret part; never log it


def _base62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(ALPHABET[r])
    return "".join(reversed(out))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_CHARS)


def check_env(env: str) -> str:
    if not _ENV.fullmatch(env):
        raise ValueError(f"key environment must match {ENV_PATTERN}, got {env!r}")
    return env


def generate(env: str = "live") -> str:
    """A new key (or token/secret, with a reserved env). Show it once; store only `hash_secret` of it."""
    check_env(env)
    body = f"{PREFIX}_{env}_{_base62(int.from_bytes(secrets.token_bytes(32), 'big'), RANDOM_CHARS)}"
    return body + _checksum(body)


def parse(value: str, *, env: str | None = None) -> ParsedKey:
    """Validate format and checksum (no I/O). Raises KeyFormatError with the precise reason."""
    if not value.startswith(PREFIX + "_"):
        raise KeyFormatError("prefix")
    m = _KEY.fullmatch(value)
    if m is None:
        raise KeyFormatError("format")
    body_end = len(value) - CHECKSUM_CHARS
    if not hmac.compare_digest(_checksum(value[:body_end]), m.group(3)):
        raise KeyFormatError("checksum")
    if env is not None and m.group(1) != env:
        raise KeyFormatError("env")
    return ParsedKey(m.group(1), m.group(2))


def shown_id(value: str) -> str:
    """A presented identifier as logs may show it: quoted as is if it has the shape of a public id (`cl_...`),
    else only its length and a fingerprint - a client that swapped its id and its secret must not put the
    secret into the decision log."""
    if _PUBLIC_ID.fullmatch(value):
        return repr(value)
    return f"<{len(value)} characters, fingerprint {fingerprint(value.encode('utf-8', 'surrogatepass')).hex()[:12]}>"


def new_id(prefix: str) -> str:
    """A public identifier such as `key_8Hq...` (~95 bits): safe to show, log and use in URLs."""
    return f"{prefix}_{_base62(int.from_bytes(secrets.token_bytes(12), 'big'), ID_CHARS)}"


def digest(pepper: bytes, secret: str | bytes) -> bytes:
    """HMAC-SHA256(pepper, secret): the raw keyed hash (the C one-shot; this is on the request path)."""
    if isinstance(secret, str):
        try:
            data = secret.encode("latin-1")
        except UnicodeEncodeError:  # never one of ours (they are ASCII), but a client may present anything
            data = secret.encode("utf-8", "surrogatepass")
    else:
        data = secret
    return hmac.digest(pepper, data, "sha256")


def hash_secret(pepper: bytes, secret: str | bytes) -> str:
    """The stored form of a key, token or client secret: hex HMAC-SHA256 with the server pepper."""
    return digest(pepper, secret).hex()


def verify_secret(pepper: bytes, presented: str | bytes, stored_hash: str) -> bool:
    """Constant-time check of a presented secret against its stored hash."""
    return hmac.compare_digest(hash_secret(pepper, presented), stored_hash)


def pepper_check(pepper: bytes) -> str:
    """A value that tells whether two processes hold the same pepper, and nothing about it (stored in the store
    so that a node or CLI with another pepper is refused instead of writing hashes nobody else can match)."""
    return hmac.digest(pepper, b"stockade:pepper-check", "sha256")[:16].hex()


def identity_hash(pepper: bytes, identifier: str) -> str:
    """A short keyed hash of a public identifier, for `ctx.state[AUTH_IDENTITY]` (failure counting)."""
    return hmac.digest(pepper, b"identity:" + identifier.encode(), "sha256")[:12].hex()


USERNAME_KEY_PURPOSE = b"stockade:login-username"


def username_key(pepper: bytes) -> bytes:
    """The key login usernames are hashed with, derived from the pepper: its outputs never share an input space
    with the pepper's own HMACs (stored key, token and secret hashes). Derive it once, not per request."""
    return hmac.digest(pepper, USERNAME_KEY_PURPOSE, "sha256")


def username_hash(key: bytes, username: str) -> str:
    """128 bits of HMAC-SHA256(`username_key(pepper)`, username): what a login username is counted under. Keyed,
    so whoever can list lockouts (a viewer admin token, Redis read access) cannot confirm a guessed username by
    hashing it offline - an unkeyed hash of an email address is no secret."""
    return hmac.digest(key, username.encode("utf-8"), "sha256")[:16].hex()


def username_key_check(key: bytes) -> str:
    """A value that tells whether two nodes count login usernames under the same `username_key`, and nothing of
    it or of the pepper: recorded in a shared limits backend, so nodes with different peppers are refused rather
    than each giving a guesser its own allowance."""
    return hmac.digest(key, b"stockade:username-key-check", "sha256")[:16].hex()


def identity_subject(key: bytes, identity: str) -> str:
    """128 bits of HMAC-SHA256(key, identity), `key` brute_force's identity key (random, shared through the limits
    backend: stages/ratelimit/identity_key.py): what a presented identity (the digest an authenticator recorded
    under AUTH_IDENTITY) is counted under. Keyed whatever the authenticator recorded: jwt, introspection and mtls
    record an unkeyed digest of issuer + sub or of a certificate's name, which whoever can list lockouts could
    otherwise confirm a guessed name against offline."""
    return hmac.digest(key, identity.encode("utf-8", "surrogatepass"), "sha256")[:16].hex()


def fingerprint(secret: bytes) -> bytes:
    """BLAKE2s-256 of a presented secret (as received): the key of in-memory caches only, never stored.

    A cryptographic hash, so a cache entry cannot be reached with another secret, but no HMAC: safe because every
    secret we issue carries 256 random bits; the persisted form stays the peppered HMAC. BLAKE2s rather than
    SHA-256 because it runs on every API-key request and costs half as much for a short input (CPython's own
    BLAKE2 against a full OpenSSL digest context).
    """
    return _blake2s(secret).digest()


_blake2s = hashlib.blake2s
