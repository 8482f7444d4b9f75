"""The revoked-jti list: nothing the change feed brings is lost to a reload, and a revoked token stays revoked
for as long as any verifier could still accept it."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import itertools
import logging
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stockade.clock import FakeClock
from stockade.errors import StorageError
from stockade.identity.watch import ChangeWatcher
from stockade.oauth2.clients import disable_client, new_client
from stockade.oauth2.revocation import MAX_STALE, RevokedJtis, revoked_jtis
from stockade.storage.base import Store
from stockade.storage.memory import MemoryStore
from stockade.storage.records import ChangeBatch, OAuthClient, RevokedToken
from stockade.testing import TestGateway
from tests.oauth2.flow import basic, call_books, create_client, get_token, oauth_gateway, post_form
from tests.storage.conftest import dispose, make_store


def test_a_revocation_arriving_during_a_reload_is_kept() -> None:
    """A reload (hourly, or after a truncated feed) replaced the set with a snapshot taken before its last await:
    a revocation the poll delivered meanwhile was dropped until the next reload."""

    async def go() -> tuple[bool, bool]:
        clock = FakeClock()
        store = MemoryStore()
        watcher = ChangeWatcher(store, clock)
        revoked = RevokedJtis(store, watcher, clock)
        await revoked.load()
        original = store.list_revoked_tokens
        gate = asyncio.Event()

        async def slow_list(now: float) -> list[RevokedToken]:  # the query ran; its answer is still on its way
            snapshot = await original(now)
            await gate.wait()
            return snapshot

        store.list_revoked_tokens = slow_list  # type: ignore[method-assign]
        reload = asyncio.create_task(revoked.load())
        await asyncio.sleep(0)
        await store.revoke_token("jti-late", expires_at=clock.time() + 600, actor="client:x", at=clock.time())
        await watcher.poll()
        delivered = "jti-late" in revoked
        gate.set()
        await reload
        return delivered, "jti-late" in revoked

    assert asyncio.run(go()) == (True, True)


def test_a_revoked_token_stays_revoked_through_the_leeway_after_it_expires() -> None:
    """The list kept a jti only until the token's exp, but the jwt stage accepts a token until exp + leeway: a
    worker that (re)loaded the list in that window let the revoked token in again."""
    with tempfile.TemporaryDirectory() as tmp, oauth_gateway(Path(tmp)) as (gw, _, config):
        client_id, secret = create_client(config, "--name", "rev", "--scopes", "books:read")
        token = get_token(gw, client_id, secret)
        assert post_form(gw, "/oauth2/revoke", {"token": token}, basic(client_id, secret))[0] == 200
        assert call_books(gw, token)[0] == 401
        gw.advance(600 + 10)  # token_ttl 600: 10 s past exp, inside the jwt stage's leeway
        gw.bg.run(revoked_jtis(gw.services).load())  # this worker's periodic reload
        assert call_books(gw, token)[0] == 401
        with TestGateway(config.read_text(), loop=gw.bg, base_dir=Path(tmp), clock=gw.clock) as fresh:
            assert call_books(fresh, token)[0] == 401  # a worker started now


class FlakyClients(MemoryStore):
    """A memory store whose client reads fail while `down`: a PostgreSQL thread whose pooled connection a server
    restart broke answers the first query after it with an error, though the feed query on another thread works."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.error: type[Exception] = StorageError
        self.reads = 0

    async def get_client(self, client_id: str) -> OAuthClient:
        self.reads += 1
        if self.down:
            raise self.error("server closed the connection unexpectedly")
        return await super().get_client(client_id)


async def _disable(store: Store, client: OAuthClient, clock: FakeClock) -> None:
    await disable_client(store, client.client_id, actor="cli:x", at=clock.time())


async def _rename(store: Store, client: OAuthClient, clock: FakeClock) -> None:
    await store.update_client(dataclasses.replace(client, name="renamed"), actor="cli:x", at=clock.time())


async def _delete(store: Store, client: OAuthClient, clock: FakeClock) -> None:
    await store.delete_client(client.client_id, actor="cli:x", at=clock.time())


CLIENT_CHANGES = [
    # (change, the error the re-read meets, disabled once the store answers again)
    (_disable, StorageError, True),
    (_rename, StorageError, False),
    (_delete, StorageError, True),
    (_disable, ValueError, True),  # anything a re-read raises keeps the client refused; nothing dies unseen
    (_rename, ValueError, False),
]


@pytest.mark.parametrize(
    ("change", "error", "disabled_after"),
    CLIENT_CHANGES,
    ids=["disable", "rename", "delete", "disable-odd-error", "rename-odd-error"],
)
def test_a_client_change_whose_reread_fails_is_not_trusted_until_a_reread_succeeds(
    change: Callable[[Store, OAuthClient, FakeClock], Awaitable[None]],
    error: type[Exception],
    disabled_after: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The re-read a `client` change starts failed (PostgreSQL restarted: the thread's pooled connection was dead):
    the task died unseen, the watcher had moved past the change, and a revoked client's tokens kept verifying until
    the hourly reload."""
    unretrieved: list[dict[str, Any]] = []

    async def go() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: unretrieved.append(context))
        clock, store = FakeClock(), FlakyClients()
        client, _ = new_client(name="c", scopes=["a"], auth_method="client_secret_basic", pepper=b"p" * 32, now=0.0)
        await store.create_client(client, actor="cli:x", at=clock.time())
        watcher = ChangeWatcher(store, clock)
        revoked = RevokedJtis(store, watcher, clock)
        await revoked.load()
        assert revoked.allows("jti-1", client.client_id)
        await change(store, client, clock)
        store.down, store.error = True, error
        await watcher.poll()  # the change arrives: not trusted from now on, whatever the re-read it starts finds
        assert not revoked.allows("jti-1", client.client_id)
        await revoked.settle()  # that re-read failed
        assert not revoked.allows("jti-1", client.client_id)
        with pytest.raises(StorageError):  # a token of it: 503, without a read per request during the back-off
            await revoked.ensure_fresh(client.client_id)
        reads = store.reads
        for _ in range(3):  # the feed goes on (it has moved past the change), the store is still failing
            clock.advance(watcher.interval)
            await watcher.poll()
            await revoked.retry()
            await revoked.settle()
        assert not revoked.allows("jti-1", client.client_id)
        assert 1 <= store.reads - reads <= 2  # retried with a back-off while failing, not on every poll
        store.down = False
        clock.advance(MAX_STALE)  # at most this long after the store answers again, a retry reads the client
        await revoked.retry()
        await revoked.settle()
        assert (client.client_id in revoked.disabled_clients) == disabled_after
        assert revoked.allows("jti-1", client.client_id) != disabled_after
        reads = store.reads
        clock.advance(MAX_STALE)
        await revoked.retry()
        await revoked.settle()
        assert store.reads == reads  # settled: nothing left to read
        gc.collect()

    with caplog.at_level(logging.WARNING, logger="stockade"):
        asyncio.run(go())
    assert unretrieved == []
    failures = [r for r in caplog.records if "cannot re-read" in r.getMessage()]
    recoveries = [r for r in caplog.records if "re-read again" in r.getMessage()]
    assert (len(failures), len(recoveries)) == (1, 1)  # once per state, not per attempt
    assert failures[0].levelno == logging.ERROR


def test_a_reread_back_off_is_bounded() -> None:
    """While the store keeps failing, each retry waits twice as long as the last, but never more than MAX_STALE:
    a client whose change was harmless is refused at most that long after the store is back."""

    async def go() -> list[float]:
        clock, store = FakeClock(), FlakyClients()
        client, _ = new_client(name="c", scopes=["a"], auth_method="client_secret_basic", pepper=b"p" * 32, now=0.0)
        await store.create_client(client, actor="cli:x", at=clock.time())
        watcher = ChangeWatcher(store, clock)
        revoked = RevokedJtis(store, watcher, clock)
        await revoked.load()
        await _rename(store, client, clock)
        store.down = True
        await watcher.poll()
        await revoked.settle()
        started, reads, at = clock.monotonic(), store.reads, []
        while clock.monotonic() - started < 60:
            clock.advance(watcher.interval)
            await revoked.retry()
            await revoked.settle()
            if store.reads != reads:
                reads = store.reads
                at.append(clock.monotonic() - started)
        return [b - a for a, b in itertools.pairwise([0.0, *at])]

    gaps = asyncio.run(go())
    assert gaps[:4] == [0.5, 1.0, 2.0, 4.0]
    assert set(gaps[4:]) == {MAX_STALE}


def test_a_truncated_feed_whose_reload_fails_is_not_trusted_until_a_reload_succeeds() -> None:
    """A truncated batch (history pruned past this worker, or a store restored) means changes were missed; the
    reload it started could fail just as silently, and the list then said it was fresh while missing them."""
    unretrieved: list[dict[str, Any]] = []

    async def go() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: unretrieved.append(context))
        clock, store = FakeClock(), MemoryStore()
        watcher = ChangeWatcher(store, clock)
        revoked = RevokedJtis(store, watcher, clock)
        await revoked.load()
        await store.revoke_token("jti-missed", expires_at=clock.time() + 600, actor="client:x", at=clock.time())
        original = store.list_revoked_tokens
        down = True

        async def listing(now: float) -> list[RevokedToken]:
            if down:
                raise StorageError("connection refused")
            return await original(now)

        store.list_revoked_tokens = listing  # type: ignore[method-assign]
        revoked._on_changes(ChangeBatch((), 1, truncated=True))  # the feed lost what came before
        await revoked.settle()
        assert (revoked.fresh(), "jti-missed" in revoked) == (False, False)
        down = False
        clock.advance(MAX_STALE)
        await revoked.retry()
        await revoked.settle()
        assert (revoked.fresh(), "jti-missed" in revoked) == (True, True)
        gc.collect()

    asyncio.run(go())
    assert unretrieved == []


# -- loads after a truncated feed, over real stores ----------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def real_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    store = make_store(request.param, tmp_path)
    try:
        yield store
    finally:
        dispose(store)


class HeldLoads:
    """Counts the loads that reach the store (`list_revoked_tokens`); the first one's `held` call takes its snapshot,
    then waits until `release`, as a slow answer does."""

    def __init__(self, store: Store, held: str) -> None:
        self.loads = 0
        self.paused = asyncio.Event()
        self.release = asyncio.Event()
        original_tokens, original_clients = store.list_revoked_tokens, store.list_clients

        async def hold(snapshot: Any) -> Any:
            if not self.paused.is_set():
                self.paused.set()
                await self.release.wait()
            return snapshot

        async def list_revoked_tokens(now: float) -> list[RevokedToken]:
            self.loads += 1
            snapshot = await original_tokens(now)
            return await hold(snapshot) if held == "list_revoked_tokens" else snapshot

        async def list_clients() -> list[OAuthClient]:
            snapshot = await original_clients()
            return await hold(snapshot) if held == "list_clients" else snapshot

        store.list_revoked_tokens = list_revoked_tokens  # type: ignore[method-assign]
        store.list_clients = list_clients  # type: ignore[method-assign]


async def _following(store: Store) -> tuple[FakeClock, ChangeWatcher, RevokedJtis]:
    """A worker's list over `store`, loaded; the test polls the feed itself (no background task)."""
    clock = FakeClock()
    watcher = ChangeWatcher(store, clock)
    watcher.ensure_running = lambda: None  # type: ignore[method-assign]
    revoked = RevokedJtis(store, watcher, clock)
    await revoked.load()
    return clock, watcher, revoked


async def _yield(times: int = 10) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


def test_requests_after_a_truncated_feed_share_one_load(real_store: Store) -> None:
    """Every JWT request after a truncated feed loaded the whole list itself: 200 requests in flight, 201 loads."""

    async def go() -> None:
        _clock, watcher, revoked = await _following(real_store)
        held = HeldLoads(real_store, "list_revoked_tokens")
        revoked._on_changes(ChangeBatch((), watcher.seq or 0, truncated=True))  # the catch-up's load starts
        await held.paused.wait()
        requests = [asyncio.create_task(revoked.ensure_fresh()) for _ in range(50)]
        hourly = asyncio.create_task(revoked.load())
        await _yield()
        held.release.set()
        await asyncio.gather(*requests, hourly)
        assert held.loads == 1
        assert revoked.fresh()

    asyncio.run(go())


def test_a_client_disabled_during_a_load_after_a_truncated_feed_stays_refused(real_store: Store) -> None:
    """A request's load begun after the truncation overlapped the catch-up's; the older, slower one finished last
    and applied its snapshot, in which the client was still enabled: its tokens verified again until the hourly
    reload. Loads no longer overlap, and the client's own re-read wins over a snapshot taken before it."""

    async def go() -> None:
        clock, watcher, revoked = await _following(real_store)
        client, _ = new_client(name="c", scopes=["a"], auth_method="client_secret_basic", pepper=b"p" * 32, now=0.0)
        await real_store.create_client(client, actor="cli:x", at=clock.time())
        await watcher.poll()
        await revoked.settle()
        assert client.client_id not in revoked.disabled_clients
        held = HeldLoads(real_store, "list_clients")
        revoked._on_changes(ChangeBatch((), watcher.seq or 0, truncated=True))
        await held.paused.wait()  # the load has its snapshot: the client enabled
        request = asyncio.create_task(revoked.ensure_fresh())
        await _yield()
        assert held.loads == 1  # the request joined it
        await disable_client(real_store, client.client_id, actor="cli:x", at=clock.time())
        await watcher.poll()
        held.release.set()
        await request
        await revoked.settle()
        assert client.client_id in revoked.disabled_clients
        assert not revoked.allows("jti-1", client.client_id)

    asyncio.run(go())


def test_a_truncated_batch_during_a_load_makes_another_follow(real_store: Store) -> None:
    """A truncated batch that arrived while a load ran was absorbed by it: the load (whose snapshot predates what
    the feed missed) marked the list fresh, and a token revoked meanwhile verified until a later retry."""

    async def go() -> None:
        clock, watcher, revoked = await _following(real_store)
        held = HeldLoads(real_store, "list_revoked_tokens")
        revoked._on_changes(ChangeBatch((), watcher.seq or 0, truncated=True))
        await held.paused.wait()
        await real_store.revoke_token("jti-missed", expires_at=clock.time() + 600, actor="client:x", at=clock.time())
        revoked._on_changes(ChangeBatch((), watcher.seq or 0, truncated=True))  # the feed lost it too
        held.release.set()
        await revoked.settle()
        assert ("jti-missed" in revoked, revoked.fresh()) == (True, True)

    asyncio.run(go())
