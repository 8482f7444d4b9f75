"""Calendar periods for quotas: the local day or month containing an instant, in an IANA time zone."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def zone(name: str) -> ZoneInfo:
    """The IANA zone `name` (e.g. `Europe/Berlin`, `UTC`). Raises ValueError if unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}; use an IANA name such as 'UTC' or 'Europe/Berlin'") from None


def _local_midnight(tz: ZoneInfo, year: int, month: int, day: int) -> float:
    # A local midnight that a DST change skips (e.g. America/Havana in March) resolves, per PEP 495 (fold=0),
    # to the instant of the change: the first instant of that local day, which is what a boundary must be.
    return datetime(year, month, day, tzinfo=tz).timestamp()


def period_bounds(now: float, unit: str, tz: ZoneInfo) -> tuple[float, float, str]:
    """`(start, end, id)` of the calendar `unit` ("day" or "month") containing epoch second `now`.

    Boundaries are local midnights, so a day is 23, 24 or 25 hours long across DST changes; `id` names the
    period (`2024-03-10`, `2024-03`) and becomes part of the counter key, so a new period starts from zero.
    """
    local = datetime.fromtimestamp(now, tz)
    if unit == "day":
        start = _local_midnight(tz, local.year, local.month, local.day)
        nxt = local.date() + timedelta(days=1)
        end = _local_midnight(tz, nxt.year, nxt.month, nxt.day)
        return start, end, f"{local.year:04d}-{local.month:02d}-{local.day:02d}"
    if unit == "month":
        start = _local_midnight(tz, local.year, local.month, 1)
        year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
        end = _local_midnight(tz, year, month, 1)
        return start, end, f"{local.year:04d}-{local.month:02d}"
    raise ValueError(f"unknown calendar unit {unit!r}")


class CalendarPeriod:
    """The current period of one quota, recomputed only when the clock passes its end (cheap per request)."""

    __slots__ = ("_end", "_id", "_start", "tz", "unit")

    def __init__(self, unit: str, tz: ZoneInfo) -> None:
        self.unit = unit
        self.tz = tz
        self._start = self._end = 0.0
        self._id = ""

    def at(self, now: float) -> tuple[float, str]:
        """`(end, id)` of the period containing `now`."""
        if not self._start <= now < self._end:
            self._start, self._end, self._id = period_bounds(now, self.unit, self.tz)
        return self._end, self._id
