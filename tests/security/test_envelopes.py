"""The store's envelopes: the KEK ids they need (start-up check) and re-sealing them under the active KEK."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from stockade.clock import FakeClock
from stockade.security.crypto import CryptoError, Keyring, kek_id
from stockade.security.envelopes import check_loaded, live_envelopes, reseal
from stockade.security.secrets import SecretsError
from stockade.storage.memory import MemoryStore
from stockade.storage.records import SigningKey

T = TypeVar("T")
T0 = 1_700_000_000.0
KEYS = {"k0": b"\x00" * 32, "k1": b"\x01" * 32, "k2": b"\x02" * 32}
ACTOR = "test:reseal"


def ring(*ids: str) -> Keyring:
    return Keyring({kid: KEYS[kid] for kid in ids}, active=ids[0])


def run(aw: Awaitable[T]) -> T:
    async def go() -> T:
        return await aw

    return asyncio.run(go())


def key(kid: str, kek: str, state: str = "retired", not_after: float | None = None) -> SigningKey:
    sealed = ring(kek).seal(f"private {kid}".encode(), aad=kid.encode())
    return SigningKey(kid, "ES256", {"kid": kid}, sealed, state, T0, None, not_after)  # type: ignore[arg-type]


def store_with(*keys: SigningKey) -> MemoryStore:
    store = MemoryStore()
    for k in keys:
        run(store.add_signing_key(k, actor=ACTOR, at=T0))
    return store


@pytest.mark.parametrize(
    ("keys", "loaded", "refused"),
    [
        ([key("sig_a", "k1", "active")], ("k1",), None),
        ([key("sig_a", "k1", "active")], ("k2", "k1"), None),  # rotation step 1: both loaded
        ([key("sig_a", "k2", "active")], ("k2",), None),  # re-sealed, then k1 dropped
        ([key("sig_a", "k1", "active")], ("k2",), "signing_key sig_a is sealed under KEK 'k1', which is not loaded"),
        ([key("sig_n", "k1", "next")], ("k2",), "signing_key sig_n is sealed under KEK 'k1'"),  # activates later
        ([key("sig_r", "k1", not_after=T0 + 60)], ("k2",), None),  # retired: published, its private half never opened
        ([key("sig_r", "k1", not_after=T0 - 1)], ("k2",), None),  # past not_after: never opened, soon deleted
        (
            [key("sig_a", "k1", "active"), key("sig_b", "k0", "next"), key("sig_c", "k1", "next")],
            ("k2",),
            "signing_key sig_a, signing_key sig_c are sealed under KEK 'k1', which is not loaded; signing_key sig_b "
            "is sealed under KEK 'k0', which is not loaded: load 'k1', 'k0' again after the active KEK",
        ),
        (
            [SigningKey("sig_x", "ES256", {}, b"garbage", "active", T0)],
            ("k1",),
            "signing_key sig_x: not a sealed envelope (corrupt): restore the store from a backup",
        ),
    ],
    ids=["same", "both", "resealed", "dropped", "next", "retired", "retired-dead", "two-missing", "corrupt"],
)
def test_live_envelopes_need_a_loaded_kek(keys: list[SigningKey], loaded: tuple[str, ...], refused: str | None) -> None:
    items = run(live_envelopes(store_with(*keys), T0))
    if refused is None:
        check_loaded(items, ring(*loaded))
        return
    with pytest.raises(SecretsError) as info:
        check_loaded(items, ring(*loaded))
    message = str(info.value)
    assert refused in message and ("stockade secrets reseal" in message) == ("corrupt" not in message)
    assert KEYS["k1"].hex() not in message and "private" not in message


def test_reseal_moves_every_live_envelope_to_the_active_kek_and_is_idempotent() -> None:
    store = store_with(
        key("sig_old", "k1", not_after=T0 + 600),
        key("sig_a", "k1", "active"),
        key("sig_n", "k2", "next"),  # sealed by a node that already had k2 first
        key("sig_dead", "k1", not_after=T0 - 1),
    )
    clock = FakeClock(T0)
    report = run(reseal(store, ring("k2", "k1"), actor=ACTOR, clock=clock))
    assert (report.active, dict(report.resealed), dict(report.current)) == (
        "k2",
        {"signing_key": 1},
        {"signing_key": 1},
    )
    assert dict(report.in_use) == {"k2": 2}
    by_kid = {k.kid: k for k in run(store.list_signing_keys())}
    for kid in ("sig_a", "sig_n"):  # the same private keys, now opened with k2 alone
        assert ring("k2").open(by_kid[kid].private_key, aad=kid.encode()) == f"private {kid}".encode()
    for kid in ("sig_old", "sig_dead"):  # retired: only their public halves are used, left to rotation
        assert kek_id(by_kid[kid].private_key) == "k1"
    log = run(store.list_admin_changes())
    assert [(c.action, c.target, dict(c.detail), c.actor) for c in log[:1]] == [
        ("signing_key.reseal", "sig_a", {"from_kek": "k1", "to_kek": "k2"}, ACTOR),
    ]
    again = run(reseal(store, ring("k2", "k1"), actor=ACTOR, clock=clock))
    assert (dict(again.resealed), dict(again.current), dict(again.in_use)) == ({}, {"signing_key": 2}, {"k2": 2})
    assert len(run(store.list_admin_changes())) == len(log)  # nothing to do, nothing written


def test_reseal_refuses_before_writing_when_a_kek_is_missing() -> None:
    store = store_with(key("sig_a", "k1", "active"), key("sig_b", "k0", "next"))
    before = run(store.list_admin_changes())
    with pytest.raises(SecretsError, match="signing_key sig_b is sealed under KEK 'k0', which is not loaded"):
        run(reseal(store, ring("k2", "k1"), actor=ACTOR, clock=FakeClock(T0)))
    assert run(store.list_admin_changes()) == before
    assert {kek_id(k.private_key) for k in run(store.list_signing_keys())} == {"k0", "k1"}


def test_reseal_names_a_tampered_envelope() -> None:
    store = store_with(key("sig_a", "k1", "active"))
    [k] = run(store.list_signing_keys())
    store._signing["sig_a"] = SigningKey(
        "sig_a", "ES256", {}, k.private_key[:-1] + bytes([k.private_key[-1] ^ 1]), "active", T0
    )
    with pytest.raises(CryptoError, match="signing_key sig_a: envelope failed authentication"):
        run(reseal(store, ring("k2", "k1"), actor=ACTOR, clock=FakeClock(T0)))


class _Racing(MemoryStore):
    """Another reseal (or rotation) rewrites the envelope between our read and our write, once."""

    raced = False

    async def reseal_signing_key(self, kid: str, private_key: bytes, *, expected: bytes, actor: str, at: float) -> bool:
        if not self.raced:
            self.raced = True
            await super().reseal_signing_key(
                kid,
                ring("k2").seal(b"private " + kid.encode(), aad=kid.encode()),
                expected=expected,
                actor="other",
                at=at,
            )
        return await super().reseal_signing_key(kid, private_key, expected=expected, actor=actor, at=at)


def test_reseal_that_loses_a_race_reads_the_record_again() -> None:
    store = _Racing()
    run(store.add_signing_key(key("sig_a", "k1", "active"), actor=ACTOR, at=T0))
    report = run(reseal(store, ring("k2", "k1"), actor=ACTOR, clock=FakeClock(T0)))
    assert (dict(report.resealed), dict(report.in_use)) == ({}, {"k2": 1})  # the other writer did it
    [change] = [c for c in run(store.list_admin_changes()) if c.action == "signing_key.reseal"]
    assert change.actor == "other"
