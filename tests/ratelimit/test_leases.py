"""The renewal task: it starts with the first held slot, renews on its own, and stops when none is held."""

from __future__ import annotations

import asyncio

import pytest

from stockade.clock import FakeClock
from stockade.ratelimit import leases
from stockade.ratelimit.leases import HeldSlots, Renewal


def test_the_task_renews_held_slots_by_itself_and_stops_when_none_is_left(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leases, "MIN_INTERVAL", 0.001)
    renewed: list[list[Renewal]] = []

    async def renew(batch: list[Renewal]) -> None:
        renewed.append(batch)

    async def go() -> tuple[int, bool]:
        held = HeldSlots(FakeClock(), renew)
        held.add("t1", [("k", 3000)])  # a 3 ms lease: renewed every millisecond
        for _ in range(200):
            await asyncio.sleep(0.001)
            if len(renewed) >= 3:
                break
        held.remove("t1")
        for _ in range(200):
            await asyncio.sleep(0.001)
            if held._task is None or held._task.done():
                break
        return len(renewed), held._task is None or held._task.done()

    count, stopped = asyncio.run(go())
    assert count >= 3 and stopped
    assert renewed[0] == [("t1", [("k", 3000)])]


def test_a_shorter_lease_wakes_a_task_asleep_for_a_longer_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The task slept a third of the shortest lease it saw when it went to sleep: a 30 s slot set it sleeping
    10 s, and a 2 s slot taken meanwhile lapsed before any renewal (concurrency: 1 then admitted a second)."""
    monkeypatch.setattr(leases, "MIN_INTERVAL", 0.001)
    renewed: list[list[Renewal]] = []

    async def renew(batch: list[Renewal]) -> None:
        renewed.append(batch)

    async def go() -> int:
        held = HeldSlots(FakeClock(), renew)
        held.add("long", [("a", 30_000_000)])  # asleep for 10 s
        await asyncio.sleep(0.01)
        held.add("short", [("b", 30_000)])  # 30 ms: must be renewed within 10 ms, not after 10 s
        for _ in range(500):
            await asyncio.sleep(0.001)
            if any(token == "short" for batch in renewed for token, _ in batch):
                break
        held.close()
        return sum(1 for batch in renewed for token, _ in batch if token == "short")

    assert asyncio.run(go()) >= 1
