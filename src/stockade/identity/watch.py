"""The per-process change watcher: polls the store's change feed off the request path and fans changes out.

One per process (`services.shared["change_watcher"]`). Caches subscribe and drop what a batch names, so a
revocation made anywhere (CLI, admin API, another node) reaches every worker within `POLL_INTERVAL` plus one
query. The poll task starts on the running loop the first time a stage asks for it (`ensure_running`).
Periodic maintenance (last-used flushes, pruning the feed) runs on the same task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from stockade.errors import StorageError

if TYPE_CHECKING:
    from stockade.clock import Clock
    from stockade.pipeline.stage import Services
    from stockade.storage.base import Store
    from stockade.storage.records import ChangeBatch

log = logging.getLogger("stockade.identity")

POLL_INTERVAL = 0.5  # seconds: with one query, revocations propagate well within 1 s
FEED_RETENTION = 86400.0  # changes older than this are pruned (a worker that far behind drops its caches)
PRUNE_INTERVAL = 600.0
SHARED_KEY = "change_watcher"
PAGE = 1000

Subscriber = Callable[["ChangeBatch"], None]
Job = Callable[[], Awaitable[None]]


class RetryBackoff:
    """When a catch-up that failed after a feed change may run again: the watcher's interval, doubling with each
    failure in a row, at most `most` seconds. The feed answering again (`now`) lifts the wait. `failed()` is True
    on the first failure of a run and `succeeded()` on the first success after one: log there, once per state."""

    __slots__ = ("clock", "failures", "interval", "most", "retry_at")

    def __init__(self, clock: Clock, interval: float, most: float) -> None:
        self.clock = clock
        self.interval = interval
        self.most = most
        self.failures = 0
        self.retry_at = float("-inf")  # monotonic: no catch-up before this after a failure

    def due(self) -> bool:
        return self.clock.monotonic() >= self.retry_at

    def now(self) -> None:
        self.retry_at = float("-inf")

    def failed(self) -> bool:
        self.failures += 1
        wait = self.interval * 2 ** min(self.failures - 1, 16)
        self.retry_at = self.clock.monotonic() + min(wait, self.most)
        return self.failures == 1

    def succeeded(self) -> bool:
        recovered = self.failures > 0
        self.failures = 0
        return recovered


class ChangeWatcher:
    """Follows `store.changes_since`. `last_ok` (monotonic) says how fresh every subscriber's view is."""

    def __init__(self, store: Store, clock: Clock, *, interval: float = POLL_INTERVAL) -> None:
        self.store = store
        self.clock = clock
        self.interval = interval
        self.seq: int | None = None  # None until the baseline is read
        self.last_ok = float("-inf")
        self._subscribers: list[Subscriber] = []
        self._jobs: list[tuple[float, Job]] = []
        self._due: list[float] = []  # monotonic, per job
        self._task: asyncio.Task[None] | None = None
        self._poll_lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def subscribe(self, callback: Subscriber) -> None:
        self._subscribers.append(callback)

    def every(self, seconds: float, job: Job) -> None:
        """Run `job` about every `seconds` on the poll task (exceptions are logged, never raised). A job may be added
        while the task runs (a reload that builds the first stage needing it)."""
        self._jobs.append((seconds, job))
        self._due.append(self.clock.monotonic() + seconds)

    def fresh(self, max_age: float) -> bool:
        return self.clock.monotonic() - self.last_ok <= max_age

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def ensure_running(self) -> None:
        """Start the poll task on the running loop if it is not running (cheap when it is)."""
        task = self._task
        if task is None or task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="stockade-change-watcher")

    def _lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._poll_lock is None or self._lock_loop is not loop:
            self._poll_lock, self._lock_loop = asyncio.Lock(), loop
        return self._poll_lock

    async def poll(self) -> None:
        """Read every change since the last poll and hand it to the subscribers. Raises StorageError."""
        async with self._lock():
            if self.seq is None:
                self.seq = await self.store.current_change_seq()
                self.last_ok = self.clock.monotonic()
                return
            while True:
                started = self.clock.monotonic()
                batch = await self.store.changes_since(self.seq, limit=PAGE)
                if batch.last_seq < self.seq:
                    log.error(
                        "the change feed went back from %d to %d (a store restored or replaced?): caches cleared",
                        self.seq,
                        batch.last_seq,
                        extra={"store": self.store.url},
                    )
                if batch.changes or batch.truncated:
                    for callback in self._subscribers:
                        callback(batch)
                self.seq = batch.last_seq
                self.last_ok = started  # fresh as of when the query began, not when it returned
                if len(batch.changes) < PAGE:
                    return

    async def ensure_baseline(self) -> int:
        """The feed position every cache fill must follow (so no change after a fill can be missed)."""
        if self.seq is None:
            await self.poll()
        assert self.seq is not None  # noqa: S101 - poll() sets it or raises
        return self.seq

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self.poll()
                if failures:
                    log.warning("change feed reachable again", extra={"store": self.store.url})
                failures = 0
            except StorageError as exc:
                failures += 1
                if failures == 1 or failures % 120 == 0:
                    log.error("cannot read the change feed: %s", exc, extra={"store": self.store.url})
            now = self.clock.monotonic()
            for i, (seconds, job) in enumerate(self._jobs):
                if now >= self._due[i]:
                    self._due[i] = now + seconds
                    await self._run_job(job)
            await asyncio.sleep(self.interval)

    async def _run_job(self, job: Job) -> None:
        try:
            await job()
        except Exception:
            log.exception("periodic identity job failed")

    async def aclose(self) -> None:
        """Stop polling and run every job one last time (flushes last-used times). Services.close() calls it."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if task is not None:
            await self.run_jobs()

    async def run_jobs(self) -> None:
        """Run every periodic job now (tests, and shutdown flushes)."""
        for _, job in self._jobs:
            await self._run_job(job)


def shared_watcher(services: Services) -> ChangeWatcher:
    """The process's watcher over the shared store, created on first use (with feed pruning scheduled)."""
    from stockade.storage import shared_store

    def build() -> ChangeWatcher:
        store = shared_store(services)
        watcher = ChangeWatcher(store, services.clock)
        clock = services.clock

        async def prune() -> None:
            await store.prune_changes(clock.time() - FEED_RETENTION)

        watcher.every(PRUNE_INTERVAL, prune)
        return watcher

    return services.over_store(SHARED_KEY, ChangeWatcher, build)
