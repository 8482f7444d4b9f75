"""The gateway's signing keys on every worker: a signing-key change on the feed is applied even when the read it
starts fails or races another change, and until it is applied, what it may have changed is neither trusted to
verify a token nor used to sign or publish one. Real stores (SQLite, and PostgreSQL under CI), a fake clock."""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from stockade.clock import FakeClock
from stockade.config.oauth2 import OAuth2Server
from stockade.errors import StorageError
from stockade.identity.watch import POLL_INTERVAL, shared_watcher
from stockade.oauth2.signing import SigningKeys, generate_key, shared_signing_keys
from stockade.pipeline.stage import Services
from stockade.security import jose
from stockade.security.crypto import Keyring
from stockade.security.secrets import Secrets, shared_secrets
from stockade.storage import storage_from_url
from stockade.storage.base import Store
from stockade.storage.records import ChangeBatch, SigningKey
from stockade.storage.sqlite import SqliteStore
from stockade.testing import TestGateway
from tests.oauth2.flow import (
    CONFIG,
    ISSUER,
    basic,
    call_books,
    create_client,
    get_token,
    oauth_gateway,
    post_form,
    store_down,
)
from tests.storage.conftest import dispose, postgres_store_url

CFG = OAuth2Server(issuer=ISSUER, audiences=("api",), token_ttl=600, rotate_every=3600, publish_ahead=600)
RING = Keyring({"k1": bytes(32)}, active="k1")
# Tokens that outlive a rotation step, and a rotation the gateway's own check never reaches with its store up.
SLOW_ROTATION = CONFIG.replace("  token_ttl: 600\n", "  token_ttl: 3600\n  rotate_every: 7200\n  publish_ahead: 600\n")
BACKOFF_CAP = 5.0  # docs/tokens.md: a failed read is retried at most 5 s apart


@pytest.fixture(params=["sqlite", "postgres"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    """Two connections to one database, as two workers have."""
    url = f"sqlite:///{tmp_path}/stockade.db" if request.param == "sqlite" else postgres_store_url()
    one, two = storage_from_url(url), storage_from_url(url)
    try:
        yield one, two
    finally:
        asyncio.run(two.close())
        dispose(one)


class Worker:
    """One gateway process: its own store connection, change watcher and signing keys, wired as `serve` wires them.
    Its store's `list_signing_keys` can be made to fail (`failures`) or to pause after reading (`gate`)."""

    def __init__(self, store: Store, clock: FakeClock) -> None:
        services = Services(clock=clock)
        services.shared["store"] = store
        services.shared["secrets"] = Secrets(b"p" * 32, RING)
        self.watcher = shared_watcher(services)
        self.keys = shared_signing_keys(services)
        self.failures = 0
        self.reads = 0
        self.gate: asyncio.Event | None = None
        self.paused = asyncio.Event()
        original = store.list_signing_keys

        async def listing() -> list[SigningKey]:
            self.reads += 1
            if self.failures:
                self.failures -= 1
                raise StorageError("server closed the connection unexpectedly")
            records = await original()
            if (gate := self.gate) is not None:
                self.gate = None
                self.paused.set()
                await gate.wait()
            return records

        store.list_signing_keys = listing  # type: ignore[method-assign]

    async def sync(self) -> None:
        """Poll the feed, and let what the changes start finish."""
        await self.watcher.poll()
        await drain()

    async def jobs(self) -> None:
        """The watcher's periodic jobs, as its task runs them."""
        await self.watcher.run_jobs()
        await drain()

    def kid(self) -> str | None:
        signer = self.keys.signer()
        return signer[0] if signer is not None else None

    def published(self) -> list[str]:
        return [k["kid"] for k in self.keys.jwks()["keys"]]

    def verifies(self, kid: str | None) -> bool:
        keys = self.keys.keys
        return keys is not None and keys.find(kid, CFG.algorithm) is not None


async def drain() -> None:
    """Wait for every task the feed started (a reload, a catch-up), however it ends, without retrieving an error."""
    while others := [
        t for t in asyncio.all_tasks() if t is not asyncio.current_task() and t.get_name() != "stockade-change-watcher"
    ]:
        await asyncio.wait(others)


async def two_workers(stores: tuple[Store, Store], clock: FakeClock) -> tuple[Worker, Worker, str]:
    """Worker `a` (the one whose rotation check acts) and `b`, both on the first key: (a, b, its kid)."""
    a, b = Worker(stores[0], clock), Worker(stores[1], clock)
    await a.watcher.ensure_baseline()
    await b.watcher.ensure_baseline()
    await a.keys.maintain(CFG)
    await b.sync()
    first = a.kid()
    assert first is not None and b.kid() == first
    return a, b, first


def run(go: Callable[[], Awaitable[object]]) -> list[dict[str, Any]]:
    """Run `go()` on a fresh loop; the task errors nobody retrieved (a fire-and-forget reload that failed)."""
    unretrieved: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: unretrieved.append(context))
        await go()

    asyncio.run(main())
    gc.collect()  # the workers hold their tasks in reference cycles
    return unretrieved


def test_an_activation_whose_read_fails_once_is_read_again_on_the_watchers_cadence(
    stores: tuple[Store, Store], caplog: pytest.LogCaptureFixture
) -> None:
    """The reload the change started failed (PostgreSQL restarted: the pooled connection was dead), the task died
    unseen, and the worker signed with the retired key until its tokens stopped verifying anywhere."""

    async def go() -> None:
        clock = FakeClock()
        a, b, first = await two_workers(stores, clock)
        clock.advance(3000)
        await a.keys.maintain(CFG)  # the next key is published
        await b.sync()
        clock.advance(600)
        await a.keys.maintain(CFG)  # and activated: `first` is retired
        second = a.kid()
        assert second not in (None, first)
        b.failures = 1
        await b.sync()  # b hears of it; the read fails
        assert not b.verifies(first) and not b.verifies(second)  # either may have been deleted, for all b knows
        clock.advance(POLL_INTERVAL)
        await b.jobs()
        assert (b.kid(), b.published()) == (second, [first, second])
        assert b.verifies(first) and b.verifies(second)

    with caplog.at_level(logging.WARNING, logger="stockade"):
        assert run(go) == []
    failed = [r for r in caplog.records if "cannot read the signing keys" in r.getMessage()]
    recovered = [r for r in caplog.records if "signing keys read again" in r.getMessage()]
    assert [r.levelno for r in failed + recovered] == [logging.ERROR, logging.WARNING]


def test_an_activation_that_arrives_during_a_read_is_read_again(stores: tuple[Store, Store]) -> None:
    """A change that arrived while a reload was under way was dropped (`if task done`): the reload applied what it
    had read before the activation, and the worker signed with the retired key."""

    async def go() -> None:
        clock = FakeClock()
        a, b, first = await two_workers(stores, clock)
        clock.advance(3000)
        await a.keys.maintain(CFG)  # the next key is published
        gate = b.gate = asyncio.Event()
        await b.watcher.poll()  # b starts reading, and has its snapshot: the next key, not yet active
        await b.paused.wait()
        clock.advance(600)
        await a.keys.maintain(CFG)  # activated meanwhile
        second = a.kid()
        assert second not in (None, first)
        await b.watcher.poll()  # the activation arrives during b's read
        gate.set()
        await drain()
        assert (b.kid(), b.published()) == (second, [first, second])

    assert run(go) == []


@pytest.mark.parametrize("missed", ["activation", "deletion"])
def test_a_worker_that_missed_a_change_applies_what_its_rotation_check_reads(
    stores: tuple[Store, Store], missed: str
) -> None:
    """The rotation check reads every key each minute on every worker, but applied the list only where it changed
    something: a worker whose read after the change failed kept signing with the retired key, or kept a deleted
    key in its JWKS and key set."""

    async def go() -> None:
        clock = FakeClock()
        a, b, first = await two_workers(stores, clock)
        clock.advance(3000)
        await a.keys.maintain(CFG)
        await b.sync()
        clock.advance(600)
        if missed == "activation":
            b.failures = 1
        await a.keys.maintain(CFG)  # activated: `first` is retired
        await b.sync()
        second = a.kid()
        if missed == "deletion":
            clock.advance(CFG.token_ttl + jose.MAX_LEEWAY + 1)
            await a.keys.maintain(CFG)  # `first` is past its not_after: deleted
            b.failures = 1
            await b.sync()
        await b.keys.maintain(CFG)  # b's own rotation check, before any retry
        assert b.kid() == second
        assert b.published() == ([first, second] if missed == "activation" else [second])
        assert b.verifies(first) == (missed == "activation")

    assert run(go) == []


def test_a_key_past_its_not_after_stops_verifying_without_a_read(stores: tuple[Store, Store]) -> None:
    """The key set was filtered by `not_after` only when it was read: with no read since (a store down, a deletion
    missed), a retired key kept verifying and stayed in the JWKS long after every token it signed had expired."""

    async def go() -> None:
        clock = FakeClock()
        a, b, first = await two_workers(stores, clock)
        clock.advance(3000)
        await a.keys.maintain(CFG)
        await b.sync()
        clock.advance(600)
        await a.keys.maintain(CFG)
        await b.sync()
        second = a.kid()
        b.failures = 10**6  # b reads nothing from now on
        clock.advance(CFG.token_ttl + jose.MAX_LEEWAY + 1)
        keys = await b.keys.current(clock.time())
        assert keys is not None and keys.find(first, CFG.algorithm) is None
        assert keys.find(second, CFG.algorithm) is not None
        assert b.published() == [second]

    assert run(go) == []


def test_a_truncated_feed_withholds_every_key_until_a_read_succeeds(stores: tuple[Store, Store]) -> None:
    """A truncated batch means changes were missed (history pruned past this worker, a store restored): the reload
    it started could fail as silently, and the worker went on trusting keys that may have been deleted."""

    async def go() -> None:
        clock = FakeClock()
        _a, b, first = await two_workers(stores, clock)
        b.failures = 1
        b.keys.on_changes(ChangeBatch((), 1, truncated=True))
        await drain()
        assert not b.verifies(first)
        reads = b.reads
        for _ in range(100):  # tokens with the withheld kid, during the back-off: 503, without a read each
            with pytest.raises(StorageError):
                await b.keys.refetch(clock.time())
        assert b.reads == reads
        clock.advance(POLL_INTERVAL)
        await b.jobs()
        assert b.verifies(first) and b.kid() == first

    assert run(go) == []


def test_a_failing_read_is_retried_with_a_bounded_back_off(stores: tuple[Store, Store]) -> None:
    """While the store keeps failing, each retry waits twice as long as the last, but never more than 5 s: a change
    is applied at most that long after the store answers again, and a dead store is not read on every poll."""

    async def go() -> list[float]:
        clock = FakeClock()
        a, b, first = await two_workers(stores, clock)
        clock.advance(3000)
        await a.keys.maintain(CFG)
        b.failures = 10**6
        await b.sync()
        assert b.verifies(first)  # the change names the next key only
        started, reads, at = clock.monotonic(), b.reads, []
        while clock.monotonic() - started < 60:
            clock.advance(POLL_INTERVAL)
            await b.jobs()
            if b.reads != reads:
                reads = b.reads
                at.append(clock.monotonic() - started)
        return [later - earlier for earlier, later in itertools.pairwise([0.0, *at])]

    gaps: list[float] = []

    async def record() -> None:
        gaps.extend(await go())

    assert run(record) == []
    assert gaps[:4] == [0.5, 1.0, 2.0, 4.0]
    assert set(gaps[4:]) == {BACKOFF_CAP}


def test_closing_stops_the_catch_up(stores: tuple[Store, Store]) -> None:
    """Services.close() at shutdown: a read under way is cancelled, and no retry starts another."""

    async def go() -> None:
        clock = FakeClock()
        a, b, _first = await two_workers(stores, clock)
        clock.advance(3000)
        await a.keys.maintain(CFG)
        b.gate = asyncio.Event()
        await b.watcher.poll()
        await b.paused.wait()  # b's read is under way, and will never finish on its own
        await b.keys.aclose()
        b.failures = 10**6
        clock.advance(BACKOFF_CAP)
        await b.watcher.run_jobs()
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()] == []
        with pytest.raises(StorageError):
            await b.keys.up_to_date(force=True)

    assert run(go) == []


# -- through the gateway ------------------------------------------------------------------------------------------


def token_answer(gw: TestGateway, client_id: str, secret: str) -> tuple[int, object]:
    status, _, doc = post_form(gw, "/oauth2/token", {"grant_type": "client_credentials"}, basic(client_id, secret))
    return status, doc.get("error")


def revoke(gw: TestGateway, client_id: str, secret: str, token: str) -> int:
    return post_form(gw, "/oauth2/revoke", {"token": token}, basic(client_id, secret))[0]


def jwks_kids(gw: TestGateway) -> tuple[int, list[str]]:
    status, _, body = gw.request("GET", "/.well-known/jwks.json")
    return status, [k["kid"] for k in orjson.loads(body)["keys"]] if status == 200 else []


def test_a_worker_that_cannot_read_a_key_change_neither_signs_nor_verifies_what_it_may_have_changed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another worker rotates the keys while this one's store reads fail. A change that names another key leaves
    this worker's tokens verifying; one that names the key a token was signed with makes it 503 (the worker cannot
    tell whether the key was deleted, and the token is not called invalid); the token and JWKS endpoints neither
    sign with nor publish a set a change has overtaken. Once the store answers, all of it is applied."""
    with oauth_gateway(tmp_path, SLOW_ROTATION) as (gw, _up, config):
        client_id, secret = create_client(config, "--name", "c", "--scopes", "books:read")
        assert secret is not None
        server = gw.services.config.oauth2_server  # type: ignore[union-attr]
        assert server is not None
        assert jwks_kids(gw)[0] == 200  # the first key is created
        gw.advance(6000)  # 600 s before the next key is due
        first, spare = get_token(gw, client_id, secret), get_token(gw, client_id, secret)
        kid_first = jose.parse(first).header["kid"]
        watcher = shared_watcher(gw.services)
        gw.bg.run(watcher.poll())  # the first key's own change comes back on the feed, and is read
        assert call_books(gw, first)[0] == 200
        other = SigningKeys(SqliteStore(tmp_path / "stockade.db"), shared_secrets(gw.services).keyring, gw.clock)
        with caplog.at_level(logging.INFO, logger="stockade"), store_down(gw, ("list_signing_keys",)):
            gw.advance(600)
            gw.bg.run(other.maintain(server))  # another worker publishes the next key
            gw.bg.run(watcher.poll())  # this one hears of it, and cannot read it
            assert call_books(gw, first)[0] == 200
            assert token_answer(gw, client_id, secret) == (503, "temporarily_unavailable")
            assert jwks_kids(gw)[0] == 503
            gw.advance(600)
            gw.bg.run(other.maintain(server))  # ... and activates it, retiring the key `first` was signed with
            gw.bg.run(watcher.poll())
            status, _, body = call_books(gw, first)
            assert (status, orjson.loads(body)["reason"]) == (503, "auth.unavailable")
            assert token_answer(gw, client_id, secret) == (503, "temporarily_unavailable")
            assert revoke(gw, client_id, secret, spare) == 503  # not a 200 that revoked nothing
        gw.advance(BACKOFF_CAP)
        fresh = get_token(gw, client_id, secret)
        signer = other.signer()
        assert signer is not None and jose.parse(fresh).header["kid"] == signer[0] != kid_first
        assert call_books(gw, first)[0] == 200 and call_books(gw, fresh)[0] == 200
        assert jwks_kids(gw) == (200, [kid_first, signer[0]])
        assert revoke(gw, client_id, secret, spare) == 200 and call_books(gw, spare)[0] == 401
        gw.bg.run(other.store.close())
    failed = [r for r in caplog.records if "cannot read the signing keys" in r.getMessage()]
    assert len(failed) == 1 and not failed[0].exc_info


def test_an_unknown_kid_while_the_store_is_down_is_a_503_not_a_stage_error(tmp_path: Path) -> None:
    """A token naming a kid this worker has not read made the key source read the store; its StorageError escaped
    the `jwt` stage: a 500 `stage.error` with a traceback for every such token during an outage."""
    with oauth_gateway(tmp_path) as (gw, _up, config):
        client_id, secret = create_client(config, "--name", "c", "--scopes", "books:read")
        assert secret is not None
        claims = jose.parse(get_token(gw, client_id, secret)).claims
        forged = jose.sign(claims, generate_key("ES256"), "ES256", kid="sig_unheard_of", typ="at+jwt")
        gw.advance(2)  # past the unknown-kid reload's rate limit
        with store_down(gw, ("list_signing_keys",)):
            status, _, body = call_books(gw, forged)
        assert (status, orjson.loads(body)["reason"]) == (503, "auth.unavailable")
