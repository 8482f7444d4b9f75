"""Calendar quota periods: local midnights and first-of-month boundaries across DST changes and month ends."""

from __future__ import annotations

from datetime import datetime

import pytest

from stockade.ratelimit.calendar import CalendarPeriod, period_bounds, zone


def at(tz: str, *fields: int) -> float:
    return datetime(*fields, tzinfo=zone(tz)).timestamp()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("tz", "when", "unit", "period_id", "hours"),
    [
        ("UTC", (2024, 5, 17, 13, 0), "day", "2024-05-17", 24),
        ("America/New_York", (2024, 3, 10, 12, 0), "day", "2024-03-10", 23),  # spring forward
        ("America/New_York", (2024, 11, 3, 12, 0), "day", "2024-11-03", 25),  # fall back
        ("America/New_York", (2024, 11, 3, 1, 30), "day", "2024-11-03", 25),  # inside the repeated hour
        ("Europe/Berlin", (2024, 3, 31, 23, 59), "day", "2024-03-31", 23),
        ("Australia/Lord_Howe", (2024, 4, 7, 12, 0), "day", "2024-04-07", 24.5),  # half-hour DST
        ("America/Havana", (2024, 3, 10, 12, 0), "day", "2024-03-10", 23),  # local midnight does not exist
        ("UTC", (2024, 2, 29, 23, 59), "month", "2024-02", 29 * 24),  # leap February
        ("UTC", (2023, 2, 1, 0, 0), "month", "2023-02", 28 * 24),
        ("Europe/Berlin", (2024, 3, 15, 0, 0), "month", "2024-03", 31 * 24 - 1),  # month with the DST change
        ("Europe/Berlin", (2024, 12, 31, 23, 0), "month", "2024-12", 31 * 24),  # year end
        ("Asia/Kolkata", (2024, 1, 31, 23, 59), "month", "2024-01", 31 * 24),
    ],
    ids=[
        "utc-day",
        "ny-spring",
        "ny-fall",
        "ny-repeated-hour",
        "berlin-spring",
        "lord-howe",
        "havana-no-midnight",
        "leap-feb",
        "feb",
        "berlin-march",
        "year-end",
        "kolkata",
    ],
)
def test_period_bounds_follow_local_calendar(
    tz: str, when: tuple[int, ...], unit: str, period_id: str, hours: float
) -> None:
    now = at(tz, *when)
    start, end, pid = period_bounds(now, unit, zone(tz))
    assert pid == period_id
    assert start <= now < end
    assert (end - start) / 3600 == hours
    local_start = datetime.fromtimestamp(start, zone(tz))
    local_end = datetime.fromtimestamp(end, zone(tz))
    assert (local_end.day == 1) if unit == "month" else local_end.date() > local_start.date()
    if tz != "America/Havana":
        assert (local_start.hour, local_start.minute) == (0, 0)
    else:  # midnight was skipped: the day starts at the change, 01:00 local
        assert (local_start.hour, local_start.minute) == (1, 0)


def test_period_end_is_next_period_start() -> None:
    tz = zone("America/New_York")
    _, end, pid = period_bounds(at("America/New_York", 2024, 3, 9, 23, 59, 59), "day", tz)
    start2, _, pid2 = period_bounds(end, "day", tz)
    assert (pid, pid2, start2) == ("2024-03-09", "2024-03-10", end)


def test_calendar_period_recomputes_only_at_boundary() -> None:
    tz = zone("Europe/Berlin")
    cal = CalendarPeriod("day", tz)
    t = at("Europe/Berlin", 2024, 10, 26, 23, 59, 59)
    end, pid = cal.at(t)
    assert pid == "2024-10-26"
    assert cal.at(end - 0.001) == (end, "2024-10-26")
    end2, pid2 = cal.at(end)
    assert pid2 == "2024-10-27"
    assert (end2 - end) / 3600 == 25  # fall back


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../etc/passwd", "UTC+3"])
def test_zone_unknown_raises(name: str) -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        zone(name)
