"""The store contract: every backend (memory, sqlite, postgresql) must pass exactly these tests."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from stockade.storage import audit
from stockade.storage.base import ConflictError, NotFoundError, Store
from stockade.storage.records import AdminToken, ApiKey, Consumer, OAuthClient, SigningKey

T = TypeVar("T")
ACTOR = "test:contract"
T0 = 1_700_000_000.0


def run(aw: Awaitable[T]) -> T:
    async def go() -> T:
        return await aw

    return asyncio.run(go())


def consumer(name: str = "alice", cid: str | None = None, **kw: object) -> Consumer:
    return Consumer(id=cid or f"con_{name}", name=name, created_at=T0, **kw)  # type: ignore[arg-type]


def api_key(kid: str = "key_1", consumer_id: str = "con_alice", **kw: object) -> ApiKey:
    fields: dict[str, object] = {"key_hash": f"h-{kid}", "env": "live", "created_at": T0, **kw}
    return ApiKey(id=kid, consumer_id=consumer_id, **fields)  # type: ignore[arg-type]


def signing(kid: str, state: str = "next", created: float = T0) -> SigningKey:
    jwk = {"kty": "EC", "crv": "P-256", "x": "x", "y": "y", "kid": kid}
    return SigningKey(kid, "ES256", jwk, b"stk1.k1.\x00\x01sealed", state, created)  # type: ignore[arg-type]


# -- consumers ---------------------------------------------------------------------------------------------------


def test_consumer_create_get_list_roundtrip(store: Store) -> None:
    alice = consumer("alice", roles=("reader", "writer"), plan="gold", metadata={"team": "books", "n": 1})
    run(store.create_consumer(alice, actor=ACTOR, at=T0))
    run(store.create_consumer(consumer("bob"), actor=ACTOR, at=T0))
    assert run(store.get_consumer("con_alice")) == alice
    assert run(store.get_consumer("alice")) == alice
    assert [c.name for c in run(store.list_consumers())] == ["alice", "bob"]


@pytest.mark.parametrize(
    "duplicate",
    [consumer("alice", cid="con_other"), consumer("someone", cid="con_alice")],
    ids=["same-name", "same-id"],
)
def test_consumer_create_duplicate_conflicts(store: Store, duplicate: Consumer) -> None:
    run(store.create_consumer(consumer("alice"), actor=ACTOR, at=T0))
    with pytest.raises(ConflictError):
        run(store.create_consumer(duplicate, actor=ACTOR, at=T0))


def test_consumer_update_and_rename_conflict(store: Store) -> None:
    run(store.create_consumer(consumer("alice"), actor=ACTOR, at=T0))
    run(store.create_consumer(consumer("bob"), actor=ACTOR, at=T0))
    updated = consumer("alice2", cid="con_alice", roles=("admin",), plan="free")
    run(store.update_consumer(updated, actor=ACTOR, at=T0))
    assert run(store.get_consumer("con_alice")) == updated
    with pytest.raises(ConflictError):
        run(store.update_consumer(consumer("bob", cid="con_alice"), actor=ACTOR, at=T0))
    with pytest.raises(NotFoundError):
        run(store.update_consumer(consumer("nobody", cid="con_nobody"), actor=ACTOR, at=T0))


def test_consumer_delete_removes_its_keys_and_disables_its_clients(store: Store) -> None:
    """Its OAuth clients used to stay active, unowned: they kept getting tokens that kept verifying."""
    run(store.create_consumer(consumer("alice"), actor=ACTOR, at=T0))
    run(store.create_api_key(api_key("key_1"), actor=ACTOR, at=T0))
    client = OAuthClient("cl_1", "svc", "client_secret_basic", T0, secret_hash="s", consumer_id="con_alice")
    run(store.create_client(client, actor=ACTOR, at=T0))
    earlier = OAuthClient("cl_2", "old", "client_secret_basic", T0, secret_hash="t", consumer_id="con_alice")
    run(store.create_client(dataclasses.replace(earlier, disabled_at=T0 - 5), actor=ACTOR, at=T0))
    start = run(store.current_change_seq())
    run(store.delete_consumer("con_alice", actor=ACTOR, at=T0 + 1))
    with pytest.raises(NotFoundError):
        run(store.get_consumer("alice"))
    assert run(store.find_api_key("h-key_1")) is None
    got = run(store.get_client("cl_1"))
    assert (got.consumer_id, got.disabled_at) == (None, T0 + 1)
    assert run(store.get_client("cl_2")).disabled_at == T0 - 5  # already disabled: its date is kept
    feed = {(c.kind, c.ref) for c in run(store.changes_since(start)).changes}
    assert {("consumer", "con_alice"), ("client", "cl_1"), ("client", "cl_2")} <= feed  # caches hear of it
    with pytest.raises(NotFoundError):
        run(store.delete_consumer("con_alice", actor=ACTOR, at=T0))


# -- API keys ----------------------------------------------------------------------------------------------------


def test_api_key_create_find_get_list(store: Store) -> None:
    run(store.create_consumer(consumer("alice"), actor=ACTOR, at=T0))
    run(store.create_consumer(consumer("bob"), actor=ACTOR, at=T0))
    k1 = api_key("key_1", scopes=("books:read", "books:write"), expires_at=T0 + 60, name="ci")
    k2 = api_key("key_2", consumer_id="con_bob", created_at=T0 + 1)
    run(store.create_api_key(k1, actor=ACTOR, at=T0))
    run(store.create_api_key(k2, actor=ACTOR, at=T0))
    assert run(store.find_api_key("h-key_1")) == k1
    assert run(store.find_api_key("h-missing")) is None
    assert run(store.get_api_key("key_2")) == k2
    assert [k.id for k in run(store.list_api_keys())] == ["key_1", "key_2"]
    assert [k.id for k in run(store.list_api_keys("con_bob"))] == ["key_2"]
    with pytest.raises(NotFoundError):
        run(store.get_api_key("key_missing"))


@pytest.mark.parametrize(
    ("key", "error"),
    [
        (api_key("key_x", consumer_id="con_nobody"), NotFoundError),
        (api_key("key_1", key_hash="other"), ConflictError),
        (api_key("key_other", key_hash="h-key_1"), ConflictError),
    ],
    ids=["unknown-consumer", "same-id", "same-hash"],
)
def test_api_key_create_rejects(store: Store, key: ApiKey, error: type[Exception]) -> None:
    run(store.create_consumer(consumer("alice"), actor=ACTOR, at=T0))
    run(store.create_api_key(api_key("key_1"), actor=ACTOR, at=T0))
    with pytest.raises(error):
        run(store.create_api_key(key, actor=ACTOR, at=T0))


def test_api_key_revoke_is_idempotent_and_keeps_first_time(store: Store) -> None:
    run(store.create_consumer(consumer("alice"), actor=ACTOR, at=T0))
    run(store.create_api_key(api_key("key_1"), actor=ACTOR, at=T0))
    assert run(store.revoke_api_key("key_1", actor=ACTOR, at=T0 + 5)).revoked_at == T0 + 5
    assert run(store.revoke_api_key("key_1", actor=ACTOR, at=T0 + 9)).revoked_at == T0 + 5
    assert run(store.get_api_key("key_1")).status(T0 + 10) == "revoked"
    # Only the revocation that changed the key is a change: two operators revoking at once log one.
    assert [c.action for c in run(store.list_admin_changes())].count("api_key.revoke") == 1
    with pytest.raises(NotFoundError):
        run(store.revoke_api_key("key_missing", actor=ACTOR, at=T0))


def test_api_key_revokes_at_once_log_one_change(store: Store) -> None:
    """Each call saw the key active and wrote its own `api_key.revoke`: the log claimed three changes."""
    run(store.create_consumer(consumer("alice"), actor=ACTOR, at=T0))
    run(store.create_api_key(api_key("key_1"), actor=ACTOR, at=T0))

    async def at_once() -> list[ApiKey]:
        return list(await asyncio.gather(*(store.revoke_api_key("key_1", actor=ACTOR, at=T0 + i) for i in (1, 2, 3))))

    revoked = run(at_once())
    assert len({k.revoked_at for k in revoked}) == 1
    assert [c.action for c in run(store.list_admin_changes())].count("api_key.revoke") == 1


@pytest.mark.parametrize(
    ("old_expiry", "overlap_end", "expected"),
    [(None, T0 + 100, T0 + 100), (T0 + 50, T0 + 100, T0 + 50), (T0 + 500, T0 + 100, T0 + 100)],
    ids=["no-expiry", "expires-before-overlap-ends", "expires-after-overlap-ends"],
)
def test_api_key_rotate_sets_overlap(
    store: Store, old_expiry: float | None, overlap_end: float, expected: float
) -> None:
    run(store.create_consumer(consumer("alice"), actor=ACTOR, at=T0))
    run(store.create_api_key(api_key("key_1", expires_at=old_expiry), actor=ACTOR, at=T0))
    new = api_key("key_2", created_at=T0 + 1)
    run(store.rotate_api_key("key_1", new, old_expires_at=overlap_end, actor=ACTOR, at=T0 + 1))
    old = run(store.get_api_key("key_1"))
    assert (old.expires_at, old.rotated_to) == (expected, "key_2")
    assert run(store.get_api_key("key_2")) == new


def test_api_key_rotate_unknown_or_duplicate_changes_nothing(store: Store) -> None:
    run(store.create_consumer(consumer("alice"), actor=ACTOR, at=T0))
    run(store.create_api_key(api_key("key_1"), actor=ACTOR, at=T0))
    with pytest.raises(NotFoundError):
        run(store.rotate_api_key("key_nope", api_key("key_2"), old_expires_at=T0, actor=ACTOR, at=T0))
    with pytest.raises(ConflictError):
        run(store.rotate_api_key("key_1", api_key("key_3", key_hash="h-key_1"), old_expires_at=T0, actor=ACTOR, at=T0))
    assert run(store.get_api_key("key_1")).expires_at is None  # the failed rotation rolled back
    assert [k.id for k in run(store.list_api_keys())] == ["key_1"]


@pytest.mark.parametrize("state", ["rotated", "revoked", "expired"])
def test_api_key_rotate_checks_the_key_inside_the_transaction(store: Store, state: str) -> None:
    """The service checked "active and not rotated" before the store's transaction only: two rotations at once
    both succeeded (two successors), and a revoke in between gave a revoked key an active successor."""
    run(store.create_consumer(consumer("alice"), actor=ACTOR, at=T0))
    run(store.create_api_key(api_key("key_1", expires_at=T0 + 10), actor=ACTOR, at=T0))
    at = T0 + 1
    if state == "rotated":
        run(store.rotate_api_key("key_1", api_key("key_2"), old_expires_at=T0 + 5, actor=ACTOR, at=T0))
    elif state == "revoked":
        run(store.revoke_api_key("key_1", actor=ACTOR, at=T0))
    else:
        at = T0 + 10
    before = run(store.get_api_key("key_1"))
    with pytest.raises(ConflictError):
        run(store.rotate_api_key("key_1", api_key("key_3"), old_expires_at=T0 + 5, actor=ACTOR, at=at))
    assert run(store.get_api_key("key_1")) == before
    assert "key_3" not in [k.id for k in run(store.list_api_keys())]


def test_api_key_touch_batches_and_only_moves_forward(store: Store) -> None:
    run(store.create_consumer(consumer("alice"), actor=ACTOR, at=T0))
    run(store.create_api_key(api_key("key_1"), actor=ACTOR, at=T0))
    run(store.create_api_key(api_key("key_2"), actor=ACTOR, at=T0))
    seq = run(store.current_change_seq())
    run(store.touch_api_keys({"key_1": T0 + 10, "key_2": T0 + 20, "key_gone": T0}))
    run(store.touch_api_keys({"key_1": T0 + 5}))
    assert run(store.get_api_key("key_1")).last_used_at == T0 + 10
    assert run(store.get_api_key("key_2")).last_used_at == T0 + 20
    assert run(store.current_change_seq()) == seq  # usage is not a change: caches keep their entries


# -- OAuth clients -----------------------------------------------------------------------------------------------


def test_client_roundtrip_update_delete(store: Store) -> None:
    jwks = {"keys": [{"kty": "EC", "crv": "P-256", "x": "a", "y": "b", "kid": "c1"}]}
    c = OAuthClient(
        "cl_1", "svc", "private_key_jwt", T0, allowed_scopes=("a", "b"), jwks=jwks, metadata={"owner": "team"}
    )
    run(store.create_client(c, actor=ACTOR, at=T0))
    assert run(store.get_client("cl_1")) == c
    with pytest.raises(ConflictError):
        run(store.create_client(c, actor=ACTOR, at=T0))
    changed = OAuthClient("cl_1", "svc2", "client_secret_post", T0, secret_hash="ab" * 32, disabled_at=T0 + 1)
    run(store.update_client(changed, actor=ACTOR, at=T0))
    assert run(store.list_clients()) == [changed]
    run(store.delete_client("cl_1", actor=ACTOR, at=T0))
    for call in (store.get_client("cl_1"), store.delete_client("cl_1", actor=ACTOR, at=T0)):
        with pytest.raises(NotFoundError):
            run(call)


# -- signing keys ------------------------------------------------------------------------------------------------


def test_signing_keys_activate_retires_previous(store: Store) -> None:
    run(store.add_signing_key(signing("k1", "active"), actor=ACTOR, at=T0))
    run(store.add_signing_key(signing("k2", "next", T0 + 1), actor=ACTOR, at=T0))
    with pytest.raises(ConflictError):
        run(store.add_signing_key(signing("k3", "active", T0 + 2), actor=ACTOR, at=T0))
    run(store.activate_signing_key("k2", retire_not_after=T0 + 3600, actor=ACTOR, at=T0 + 10))
    k1, k2 = run(store.list_signing_keys())
    assert (k1.kid, k1.state, k1.not_after) == ("k1", "retired", T0 + 3600)
    assert (k2.kid, k2.state, k2.activated_at) == ("k2", "active", T0 + 10)
    assert k2.private_key == b"stk1.k1.\x00\x01sealed"
    assert k2.public_jwk["kid"] == "k2"
    run(store.retire_signing_key("k2", not_after=T0 + 50, actor=ACTOR, at=T0))
    run(store.delete_signing_key("k1", actor=ACTOR, at=T0))
    assert [(k.kid, k.state) for k in run(store.list_signing_keys())] == [("k2", "retired")]
    with pytest.raises(NotFoundError):
        run(store.activate_signing_key("k9", retire_not_after=T0, actor=ACTOR, at=T0))


RESEALED = b"stk1.k2.\x00\x02resealed"


@pytest.mark.parametrize(
    ("kid", "expected", "replaced"),
    [
        ("sig_a", b"stk1.k1.\x00\x01sealed", True),
        ("sig_a", b"stk1.k1.\x00\x01other", False),  # changed since it was read (another reseal got there first)
        ("sig_gone", b"stk1.k1.\x00\x01sealed", False),  # deleted by rotation meanwhile
    ],
    ids=["as-read", "changed-since", "gone"],
)
def test_signing_key_reseal_replaces_only_the_envelope_it_read(
    store: Store, kid: str, expected: bytes, replaced: bool
) -> None:
    """A KEK rotation re-seals each private key under the new KEK: the same key, so only the envelope changes,
    and only if nobody changed it since it was read."""
    run(store.add_signing_key(signing("sig_a", "active"), actor=ACTOR, at=T0))
    seq = run(store.current_change_seq())
    assert run(store.reseal_signing_key(kid, RESEALED, expected=expected, actor=ACTOR, at=T0 + 5)) is replaced
    [key] = run(store.list_signing_keys())
    assert dataclasses.replace(key, private_key=b"") == dataclasses.replace(signing("sig_a", "active"), private_key=b"")
    assert key.private_key == (RESEALED if replaced else b"stk1.k1.\x00\x01sealed")
    changes = run(store.list_admin_changes(limit=1))
    feed = run(store.changes_since(seq)).changes
    if not replaced:
        assert changes[0].action == "signing_key.add" and feed == ()
        return
    [change] = changes
    assert (change.actor, change.action, change.target, change.at) == (ACTOR, "signing_key.reseal", "sig_a", T0 + 5)
    assert dict(change.detail) == {"from_kek": "k1", "to_kek": "k2"}  # KEK ids only, never an envelope
    assert [(c.kind, c.ref) for c in feed] == [("signing_key", "sig_a")]


# -- revoked tokens ----------------------------------------------------------------------------------------------


def test_revoked_tokens_list_and_purge(store: Store) -> None:
    assert run(store.revoke_token("jti-1", expires_at=T0 + 10, actor=ACTOR, at=T0)) is True
    assert run(store.revoke_token("jti-1", expires_at=T0 + 10, actor=ACTOR, at=T0)) is False
    run(store.revoke_token("jti-2", expires_at=T0 + 100, actor=ACTOR, at=T0))
    assert run(store.is_token_revoked("jti-1")) and not run(store.is_token_revoked("jti-3"))
    assert [r.jti for r in run(store.list_revoked_tokens(T0 + 50))] == ["jti-2"]
    assert run(store.purge_revoked_tokens(T0 + 50)) == 1
    assert not run(store.is_token_revoked("jti-1"))


def test_use_once_refuses_a_second_use_until_expiry(store: Store) -> None:
    assert run(store.use_once("assertion:a", expires_at=T0 + 10, now=T0)) is True
    assert run(store.use_once("assertion:a", expires_at=T0 + 10, now=T0 + 5)) is False
    assert run(store.use_once("assertion:b", expires_at=T0 + 10, now=T0 + 5)) is True
    # Expired values are dropped (an expired assertion is refused before it gets here anyway).
    assert run(store.use_once("assertion:a", expires_at=T0 + 30, now=T0 + 11)) is True
    assert run(store.use_once("assertion:a", expires_at=T0 + 30, now=T0 + 12)) is False


# -- admin tokens, change log, change feed ---------------------------------------------------------------------


def test_admin_tokens(store: Store) -> None:
    t = AdminToken("adm_1", "ops", "operator", "hash-1", T0)
    run(store.create_admin_token(t, actor=ACTOR, at=T0))
    assert run(store.find_admin_token("hash-1")) == t
    assert run(store.find_admin_token("hash-2")) is None
    with pytest.raises(ConflictError):
        run(store.create_admin_token(AdminToken("adm_2", "x", "viewer", "hash-1", T0), actor=ACTOR, at=T0))
    run(store.revoke_admin_token("adm_1", actor=ACTOR, at=T0 + 1))
    (listed,) = run(store.list_admin_tokens())
    assert listed.revoked_at == T0 + 1 and not listed.usable(T0 + 2)


def test_admin_change_log_records_who_what_when_newest_first(store: Store) -> None:
    run(store.create_consumer(consumer("alice", roles=("r",)), actor="cli:root@host", at=T0))
    run(store.create_api_key(api_key("key_1", scopes=("s",)), actor="admin-token:adm_1 (ops)", at=T0 + 1))
    run(store.revoke_api_key("key_1", actor="admin-token:adm_2 (sec)", at=T0 + 2))
    log = run(store.list_admin_changes())
    assert [(c.action, c.target, c.actor, c.at) for c in log] == [
        ("api_key.revoke", "key_1", "admin-token:adm_2 (sec)", T0 + 2),
        ("api_key.create", "key_1", "admin-token:adm_1 (ops)", T0 + 1),
        ("consumer.create", "con_alice", "cli:root@host", T0),
    ]
    assert log[1].detail["scopes"] == ["s"] and "h-key_1" not in repr(log)  # no hash in the log
    older = run(store.list_admin_changes(limit=1, before_seq=log[0].seq))
    assert [c.action for c in older] == ["api_key.create"]


def test_admin_action_outside_the_store_is_logged_in_sequence(store: Store) -> None:
    run(store.create_consumer(consumer("alice"), actor=ACTOR, at=T0))
    run(store.record_admin_action(audit.lockout_cleared("ip:203.0.113.5", 1), actor="cli:ops@host", at=T0 + 1))
    run(store.record_admin_action(audit.lockout_cleared(None, 3), actor=ACTOR, at=T0 + 2))
    log = run(store.list_admin_changes())
    assert [(c.action, c.target, c.actor, c.at, dict(c.detail)) for c in log[:2]] == [
        ("lockout.clear", "*", ACTOR, T0 + 2, {"cleared": 3}),
        ("lockout.clear", "ip:203.0.113.5", "cli:ops@host", T0 + 1, {"cleared": 1}),
    ]
    assert log[0].seq > log[1].seq > log[2].seq
    assert run(store.current_change_seq()) == log[0].seq  # one sequence for the log and the feed


def test_change_feed_is_ordered_and_pages(store: Store) -> None:
    start = run(store.current_change_seq())
    run(store.create_consumer(consumer("alice"), actor=ACTOR, at=T0))
    run(store.create_api_key(api_key("key_1"), actor=ACTOR, at=T0))
    run(store.revoke_api_key("key_1", actor=ACTOR, at=T0))
    run(store.revoke_token("jti-9", expires_at=T0 + 1, actor=ACTOR, at=T0))
    batch = run(store.changes_since(start))
    assert [(c.kind, c.ref) for c in batch.changes] == [
        ("consumer", "con_alice"),
        ("api_key", "key_1"),
        ("api_key", "key_1"),
        ("revoked_token", "jti-9"),
    ]
    assert batch.last_seq == run(store.current_change_seq()) == batch.changes[-1].seq
    assert not batch.truncated
    page = run(store.changes_since(start, limit=2))
    assert len(page.changes) == 2 and page.last_seq == page.changes[-1].seq
    assert run(store.changes_since(batch.last_seq)).changes == ()


def test_a_reader_ahead_of_the_store_is_told_to_start_again(store: Store) -> None:
    """A store restored from a backup (or a lagging replica promoted) is behind its readers: with nothing after
    their position, they saw no change at all until the store's sequence passed theirs again."""
    run(store.create_consumer(consumer("alice"), actor=ACTOR, at=T0))
    current = run(store.current_change_seq())
    ahead = run(store.changes_since(current + 5))
    assert ahead.truncated and ahead.changes == () and ahead.last_seq == current
    assert not run(store.changes_since(current)).truncated


def test_change_feed_prune_truncates_only_laggards(store: Store) -> None:
    run(store.create_consumer(consumer("alice"), actor=ACTOR, at=T0))
    run(store.create_consumer(consumer("bob"), actor=ACTOR, at=T0 + 100))
    first = run(store.changes_since(0)).changes[0].seq
    assert run(store.prune_changes(T0 + 50)) == 1
    laggard = run(store.changes_since(first - 1))
    assert laggard.truncated and [c.ref for c in laggard.changes] == ["con_bob"]
    current = run(store.changes_since(first))
    assert not current.truncated and [c.ref for c in current.changes] == ["con_bob"]
    assert len(run(store.list_admin_changes())) == 2  # pruning the feed keeps the admin log


@pytest.mark.parametrize("value", ["cl_\x00x", "\x00", "alice\x00"])
def test_a_lookup_by_a_value_with_nul_finds_nothing(store: Store, value: str) -> None:
    """PostgreSQL cannot hold NUL in text and raised on the lookup (a 500 at the token endpoint); on every
    backend such a value names no record."""
    run(store.create_consumer(consumer(), actor="t", at=T0))
    for lookup in (store.get_client(value), store.get_consumer(value), store.get_api_key(value)):
        with pytest.raises(NotFoundError):
            run(lookup)
    assert run(store.find_api_key(value)) is None
    assert run(store.find_admin_token(value)) is None


def test_secret_checks_are_recorded_once_and_compared(store: Store) -> None:
    assert run(store.record_secret_checks({"pepper": "aa", "kek:k1": "bb"}, at=T0)) == []
    assert run(store.record_secret_checks({"pepper": "aa", "kek:k1": "bb", "kek:k2": "cc"}, at=T0 + 1)) == []
    assert run(store.record_secret_checks({"pepper": "xx", "kek:k1": "bb", "kek:k2": "yy"}, at=T0 + 2)) == [
        "kek:k2",
        "pepper",
    ]
    assert run(store.record_secret_checks({"pepper": "aa"}, at=T0 + 3)) == []  # the first values stay
