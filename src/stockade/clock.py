"""The injected clock: the only place that reads the system time."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic time for durations and deadlines, wall time for timestamps."""

    def monotonic(self) -> float: ...
    def time(self) -> float: ...


class SystemClock:
    """The real clock. The methods are the C functions themselves: no Python frame on the request path."""

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)  # noqa: TID251  (the one sanctioned wall-clock read)


class FakeClock:
    """A clock that moves only when told to; tests use it instead of sleeping."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._wall = start
        self._mono = 1000.0

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._wall += seconds


SYSTEM_CLOCK: Clock = SystemClock()
