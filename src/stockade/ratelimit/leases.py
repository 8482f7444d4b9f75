"""Concurrency slots this process holds, renewed while their requests are still in flight.

A slot carries a lease so that one a crashed process never released frees itself. Without renewal a request
(or WebSocket) that outlived its lease stopped counting, and `concurrency: 1` admitted a second one. Each
backend keeps the slots it granted here; a task renews them every third of the shortest lease, and a slot is
forgotten when it is released, or after MAX_HOLD whatever happens (a slot a bug never released cannot be
kept alive forever by its own renewals).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from stockade.errors import StorageError

if TYPE_CHECKING:
    from stockade.clock import Clock

log = logging.getLogger("stockade.ratelimit")

MAX_HOLD = 86400.0  # seconds a slot may be renewed for: the longest lease there is
MIN_INTERVAL = 0.25  # renew at most this often, whatever the leases (a lease is at least 1 s: limits.py)

Renewal = tuple[str, Sequence[tuple[str, int]]]  # (token, [(key, lease µs)])


def _interval(slots: Sequence[tuple[str, int]]) -> float:
    """A third of the shortest lease among `slots` (µs), in seconds, at least MIN_INTERVAL."""
    return max(MIN_INTERVAL, min(lease for _, lease in slots) / 1_000_000 / 3)


class HeldSlots:
    def __init__(self, clock: Clock, renew: Callable[[list[Renewal]], Awaitable[None]]) -> None:
        self.clock = clock
        self._renew = renew
        self._held: dict[str, tuple[float, list[tuple[str, int]]]] = {}  # token -> (granted, [(key, lease)])
        self._task: asyncio.Task[None] | None = None
        self._sleeping = 0.0  # how long the task's current wait is

    def __len__(self) -> int:
        return len(self._held)

    def add(self, token: str, slots: list[tuple[str, int]]) -> None:
        """Slots just granted to `token` (on the event loop: the renewal task starts if it is not running)."""
        self._held[token] = (self.clock.monotonic(), slots)
        task = self._task
        if task is not None and not task.done() and _interval(slots) < self._sleeping:
            task.cancel()  # asleep for a longer lease than this one lasts: start again on the shorter beat
            task = None
        if task is None or task.done():
            try:
                self._task = asyncio.get_running_loop().create_task(self._run(), name="stockade-lease-renewal")
            except RuntimeError:  # no loop (a synchronous caller in a test): renew_all still works
                self._task = None

    def remove(self, token: str) -> None:
        self._held.pop(token, None)

    async def renew_all(self) -> None:
        """Extend every held slot's lease now; forget slots held longer than MAX_HOLD."""
        now = self.clock.monotonic()
        batch: list[Renewal] = []
        for token, (granted, slots) in list(self._held.items()):
            if now - granted > MAX_HOLD:
                del self._held[token]
                log.warning("concurrency slot %s held for a day: no longer renewed", token)
                continue
            batch.append((token, slots))
        if batch:
            await self._renew(batch)

    def interval(self) -> float:
        return min((_interval(slots) for _, slots in self._held.values()), default=MIN_INTERVAL)

    async def _run(self) -> None:
        while self._held:
            self._sleeping = self.interval()
            await asyncio.sleep(self._sleeping)
            try:
                await self.renew_all()
            except StorageError as exc:  # the backend logs its outages; a missed renewal is retried next round
                log.debug("lease renewal failed: %s", exc)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
