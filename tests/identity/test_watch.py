"""The change watcher when the store's sequence goes back (a store restored from a backup or replaced)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from stockade.clock import FakeClock
from stockade.identity.watch import ChangeWatcher
from stockade.storage.memory import MemoryStore
from stockade.storage.records import ChangeBatch


def test_a_store_that_went_back_clears_caches_and_later_changes_arrive(caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> list[ChangeBatch]:
        store = MemoryStore()
        watcher = ChangeWatcher(store, FakeClock())
        batches: list[ChangeBatch] = []
        watcher.subscribe(batches.append)
        await watcher.poll()  # the baseline: 0
        watcher.seq = 7  # as if the store had been at 7 and was then restored to an older copy
        await watcher.poll()
        await store.revoke_token("jti-after-restore", expires_at=100.0, actor="cli:x", at=1.0)
        await watcher.poll()
        return batches

    with caplog.at_level(logging.ERROR, logger="stockade"):
        first, second = asyncio.run(go())
    assert first.truncated and first.changes == ()  # every subscriber drops its cache
    assert [(c.kind, c.ref) for c in second.changes] == [("revoked_token", "jti-after-restore")]
    assert "went back from 7 to 0" in caplog.text


def test_a_job_added_while_the_watcher_runs_runs_and_the_watcher_survives() -> None:
    """The poll task worked out each job's due time once, when it started: a job added later (a reload that adds
    the first `jwt` stage honouring revocation) made it die of an IndexError, unseen, and stop polling."""

    async def go() -> tuple[bool, list[str]]:
        clock = FakeClock()
        watcher = ChangeWatcher(MemoryStore(), clock, interval=0.001)
        ran: list[str] = []

        async def early() -> None:
            ran.append("early")

        async def late() -> None:
            ran.append("late")

        watcher.every(10, early)
        watcher.ensure_running()
        await asyncio.sleep(0.02)
        watcher.every(10, late)
        clock.advance(11)
        for _ in range(100):
            await asyncio.sleep(0.001)
            if "late" in ran:
                break
        alive = watcher.running
        await watcher.aclose()
        return alive, ran

    alive, ran = asyncio.run(go())
    assert alive
    assert ran[:2] == ["early", "late"]
