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
