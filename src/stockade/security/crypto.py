"""AES-256-GCM sealing of sensitive fields at rest under key-encryption keys (KEKs) with ids.

An envelope is `b"stk1." + kid + b"." + nonce(12) + ciphertext+tag`. The header (version and kid) is
authenticated together with the caller's `aad` (bind it to the record, e.g. the signing key's kid, so a
sealed value cannot be moved to another row). Several KEKs can be loaded: the first seals, all open, so a
new KEK is rolled out first, old envelopes are re-sealed (`reseal`), then the old KEK is dropped.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from stockade.errors import StockadeError

VERSION = b"stk1"
NONCE_BYTES = 12
KEY_BYTES = 32
KID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")


class CryptoError(StockadeError):
    """An envelope could not be opened: unknown KEK id, wrong aad, or tampered/corrupt data."""

    code = "crypto.error"


def kek_id(envelope: bytes) -> str:
    """The id of the KEK an envelope is sealed under (its header: not secret). Raises CryptoError."""
    parts = envelope.split(b".", 2)
    if len(parts) != 3 or parts[0] != VERSION or not parts[1]:
        raise CryptoError("not a sealed envelope")
    return parts[1].decode("ascii", "replace")


class Keyring:
    """KEKs by id; `active` seals. Never logs or exposes key material."""

    __slots__ = ("_aead", "active")

    def __init__(self, keys: Mapping[str, bytes], active: str) -> None:
        if active not in keys:
            raise ValueError(f"active KEK {active!r} is not among the loaded keys")
        aead: dict[str, AESGCM] = {}
        for kid, key in keys.items():
            if not KID_PATTERN.fullmatch(kid):
                raise ValueError(f"KEK id {kid!r} must match {KID_PATTERN.pattern}")
            if len(key) != KEY_BYTES:
                raise ValueError(f"KEK {kid!r} must be {KEY_BYTES} bytes (AES-256), got {len(key)}")
            aead[kid] = AESGCM(key)
        self._aead = aead
        self.active = active

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._aead)

    def checks(self) -> dict[str, str]:
        """Per KEK id, a value that tells whether two processes hold the same key under that id: the encryption
        of a fixed text under a fixed nonce (one message only, so the fixed nonce reveals nothing)."""
        nonce = bytes(NONCE_BYTES)
        return {kid: aead.encrypt(nonce, b"stockade:kek-check", None).hex() for kid, aead in self._aead.items()}

    @staticmethod
    def new_key() -> bytes:
        return secrets.token_bytes(KEY_BYTES)

    def seal(self, plaintext: bytes, *, aad: bytes = b"") -> bytes:
        header = VERSION + b"." + self.active.encode("ascii") + b"."
        nonce = secrets.token_bytes(NONCE_BYTES)
        return header + nonce + self._aead[self.active].encrypt(nonce, plaintext, header + aad)

    def kid_of(self, envelope: bytes) -> str:
        return kek_id(envelope)

    def open(self, envelope: bytes, *, aad: bytes = b"") -> bytes:
        kid = self.kid_of(envelope)
        aead = self._aead.get(kid)
        if aead is None:
            raise CryptoError(f"envelope sealed with unknown KEK {kid!r}")
        header_len = len(VERSION) + len(kid) + 2
        header, rest = envelope[:header_len], envelope[header_len:]
        if len(rest) < NONCE_BYTES + 16:
            raise CryptoError("envelope is truncated")
        try:
            return aead.decrypt(rest[:NONCE_BYTES], rest[NONCE_BYTES:], header + aad)
        except InvalidTag:
            raise CryptoError(f"envelope failed authentication (KEK {kid!r}): wrong aad or tampered") from None

    def needs_reseal(self, envelope: bytes) -> bool:
        return self.kid_of(envelope) != self.active

    def reseal(self, envelope: bytes, *, aad: bytes = b"") -> bytes:
        """Re-seal under the active KEK (after a KEK rotation)."""
        return self.seal(self.open(envelope, aad=aad), aad=aad)
