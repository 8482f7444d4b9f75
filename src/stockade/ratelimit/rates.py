"""Parsing of rate strings (`5/minute`, `100/10 seconds`) and calendar quota strings (`10000/month`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_COUNT = 1_000_000_000  # beyond this a "limit" is not one; keeps every figure exact in a Lua double

_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_RATE = re.compile(r"^\s*(\d{1,10})\s*/\s*(?:(\d{1,6})\s*)?(second|minute|hour|day)s?\s*$")
_QUOTA = re.compile(r"^\s*(\d{1,10})\s*/\s*(day|month)\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    """`count` requests per `period` seconds."""

    count: int
    period: int
    text: str

    @property
    def interval(self) -> float:
        """Seconds between two requests at the steady rate (GCRA's emission interval)."""
        return self.period / self.count


@dataclass(frozen=True, slots=True)
class QuotaSpec:
    """`count` units per calendar `unit` (day or month)."""

    count: int
    unit: str
    text: str


def parse_rate(text: object) -> Rate:
    """`"N/second|minute|hour|day"`, optionally with a multiple (`"100/15 minutes"`). Raises ValueError."""
    if not isinstance(text, str):
        raise ValueError("rate must be a string such as '5/minute'")
    m = _RATE.match(text)
    if m is None:
        raise ValueError(f"rate {text!r} is not 'N/second|minute|hour|day' (e.g. '5/minute', '100/15 minutes')")
    count = int(m.group(1))
    multiple = int(m.group(2)) if m.group(2) else 1
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"rate {text!r}: the count must be between 1 and {MAX_COUNT}")
    if multiple < 1:
        raise ValueError(f"rate {text!r}: the period must be at least 1 {m.group(3)}")
    period = multiple * _UNITS[m.group(3)]
    if period > 366 * 86400:
        raise ValueError(f"rate {text!r}: the period must not exceed a year; use a `quota` for calendar periods")
    return Rate(count, period, text.strip())


def parse_quota(text: object) -> QuotaSpec:
    """`"N/day"` or `"N/month"`, counted per calendar day or month. Raises ValueError."""
    if not isinstance(text, str):
        raise ValueError("quota must be a string such as '10000/month'")
    m = _QUOTA.match(text)
    if m is None:
        raise ValueError(f"quota {text!r} is not 'N/day' or 'N/month' (e.g. '10000/month')")
    count = int(m.group(1))
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"quota {text!r}: the count must be between 1 and {MAX_COUNT}")
    return QuotaSpec(count, m.group(2), text.strip())
