"""API key format, checksum, ids and the keyed hash."""

from __future__ import annotations

import hashlib
import re

import pytest

from stockade.security import keys

PEPPER = b"p" * 32
VALID = keys.generate("live")


def _flip_last(value: str) -> str:
    return value[:-1] + ("A" if value[-1] != "A" else "B")


@pytest.mark.parametrize(
    ("value", "env", "reason"),
    [
        (VALID, None, None),
        (VALID, "live", None),
        (_flip_last(VALID), None, "checksum"),
        (VALID[:20] + ("x" if VALID[20] != "x" else "y") + VALID[21:], None, "checksum"),
        ("sk_live_" + VALID[9:], None, "prefix"),
        ("STK_live_" + VALID[9:], None, "prefix"),
        (VALID[:-1], None, "format"),
        (VALID + "0", None, "format"),
        (VALID[:30] + "-" + VALID[31:], None, "format"),
        (VALID[:30] + "é" + VALID[31:], None, "format"),
        ("stk_LIVE_" + VALID[9:], None, "format"),
        ("stk__" + VALID[9:], None, "format"),
        (VALID, "test", "env"),
        ("", None, "prefix"),
    ],
    ids=[
        "valid",
        "valid-env",
        "wrong-checksum",
        "changed-random",
        "wrong-prefix",
        "prefix-case",
        "truncated",
        "too-long",
        "non-base62",
        "non-ascii",
        "env-uppercase",
        "empty-env",
        "env-mismatch",
        "empty",
    ],
)
def test_parse_table(value: str, env: str | None, reason: str | None) -> None:
    if reason is None:
        parsed = keys.parse(value, env=env)
        assert parsed.env == "live" and len(parsed.random) == keys.RANDOM_CHARS
    else:
        with pytest.raises(keys.KeyFormatError) as info:
            keys.parse(value, env=env)
        assert info.value.reason == reason


def test_generate_is_random_long_and_scannable() -> None:
    made = {keys.generate("test") for _ in range(200)}
    assert len(made) == 200
    scanner = re.compile(keys.SCANNER_PATTERN)
    for key in made:
        assert key.startswith("stk_test_") and len(key) <= keys.MAX_KEY_LENGTH
        assert scanner.fullmatch(key)
        keys.parse(key, env="test")


@pytest.mark.parametrize(
    "env", ["", "Live", "a_b", "x" * 17, "li ve"], ids=["empty", "upper", "underscore", "long", "space"]
)
def test_generate_rejects_bad_env(env: str) -> None:
    with pytest.raises(ValueError, match="environment"):
        keys.generate(env)


def test_keyed_hash_depends_on_pepper_and_verifies_in_constant_time() -> None:
    h = keys.hash_secret(PEPPER, VALID)
    assert len(h) == 64 and h != keys.hash_secret(b"q" * 32, VALID)
    assert VALID not in h
    assert keys.verify_secret(PEPPER, VALID, h)
    assert not keys.verify_secret(PEPPER, _flip_last(VALID), h)


def test_ids_are_public_shaped_and_unique() -> None:
    ids = {keys.new_id("key") for _ in range(500)}
    assert len(ids) == 500
    assert all(re.fullmatch(r"key_[0-9A-Za-z]{16}", i) for i in ids)


def test_identity_hash_is_keyed_and_short() -> None:
    a = keys.identity_hash(PEPPER, "key_1")
    assert len(a) == 24 and a != keys.identity_hash(b"z" * 32, "key_1") and "key_1" not in a


@pytest.mark.parametrize(
    "name",
    ["alice@example.com", "ceo@example.com", "", "ren\u00e9", "5551234"],
    ids=["email", "another", "empty", "non-ascii", "digits"],
)
def test_username_hash_is_keyed_with_the_pepper(name: str) -> None:
    """It was SHA-256 of the name: whoever could list lockouts confirmed guessed usernames offline."""
    h = keys.username_hash(keys.username_key(PEPPER), name)
    assert len(h) == 32 and (not name or name not in h)
    assert h != keys.username_hash(keys.username_key(b"z" * 32), name)  # another pepper, another subject
    assert h != hashlib.sha256(b"stockade-login:" + name.encode()).hexdigest()[:32]  # the old unkeyed form
    assert h != keys.hash_secret(PEPPER, name)[:32]  # a derived key: not the pepper's own HMAC of it
    assert h == keys.username_hash(keys.username_key(PEPPER), name)  # stable: lockouts are found again


def test_identity_subject_is_keyed() -> None:
    """brute_force keyed none of what jwt, introspection and mtls record (an unkeyed digest of issuer + sub)."""
    recorded = hashlib.sha256(b"https://idp.example\x00alice").hexdigest()[:32]
    key = b"k" * 32  # brute_force's identity key: random, shared through the limits backend
    h = keys.identity_subject(key, recorded)
    assert len(h) == 32 and h != recorded and h == keys.identity_subject(key, recorded)
    assert h != keys.identity_subject(b"z" * 32, recorded)  # another key, another subject
