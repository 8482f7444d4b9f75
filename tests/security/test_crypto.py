"""AES-256-GCM envelopes with KEK ids: round trip, binding to aad, tamper detection, rotation."""

from __future__ import annotations

import pytest

from stockade.security.crypto import CryptoError, Keyring

K1, K2 = b"\x01" * 32, b"\x02" * 32


def test_seal_open_roundtrip_with_fresh_nonces() -> None:
    ring = Keyring({"k1": K1}, active="k1")
    a, b = ring.seal(b"private key", aad=b"kid-1"), ring.seal(b"private key", aad=b"kid-1")
    assert a != b and b"private key" not in a
    assert ring.open(a, aad=b"kid-1") == b"private key"
    assert ring.kid_of(a) == "k1"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e: e[:-1] + bytes([e[-1] ^ 1]), "authentication"),
        (lambda e: e[:12] + bytes([e[12] ^ 1]) + e[13:], "authentication"),
        (lambda e: e[:10], "truncated"),
        (lambda e: b"stk1.k9." + e[8:], "unknown KEK"),
        (lambda e: b"junk", "not a sealed envelope"),
    ],
    ids=["flipped-tag", "flipped-nonce", "truncated", "unknown-kek", "garbage"],
)
def test_open_rejects_tampering(mutate: object, message: str) -> None:
    ring = Keyring({"k1": K1}, active="k1")
    sealed = ring.seal(b"secret", aad=b"a")
    with pytest.raises(CryptoError, match=message):
        ring.open(mutate(sealed), aad=b"a")  # type: ignore[operator]


def test_open_with_other_aad_fails() -> None:
    ring = Keyring({"k1": K1}, active="k1")
    with pytest.raises(CryptoError, match="aad"):
        ring.open(ring.seal(b"secret", aad=b"row-1"), aad=b"row-2")


def test_rotation_old_envelopes_open_and_reseal_under_new_kek() -> None:
    old = Keyring({"k1": K1}, active="k1")
    sealed = old.seal(b"secret", aad=b"x")
    rotated = Keyring({"k2": K2, "k1": K1}, active="k2")
    assert rotated.open(sealed, aad=b"x") == b"secret" and rotated.needs_reseal(sealed)
    resealed = rotated.reseal(sealed, aad=b"x")
    assert rotated.kid_of(resealed) == "k2"
    assert Keyring({"k2": K2}, active="k2").open(resealed, aad=b"x") == b"secret"


@pytest.mark.parametrize(
    ("keys", "active", "message"),
    [({"k1": b"short"}, "k1", "32 bytes"), ({"k1": K1}, "k2", "not among"), ({"bad id": K1}, "bad id", "must match")],
    ids=["short-key", "unknown-active", "bad-kid"],
)
def test_keyring_rejects_bad_material(keys: dict[str, bytes], active: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Keyring(keys, active)
