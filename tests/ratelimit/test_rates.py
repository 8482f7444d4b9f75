"""Rate and quota strings: what parses, to what, and what is refused with a message naming the problem."""

from __future__ import annotations

import pytest

from stockade.ratelimit.rates import parse_quota, parse_rate


@pytest.mark.parametrize(
    ("text", "count", "period"),
    [
        ("5/minute", 5, 60),
        ("5/minutes", 5, 60),
        ("1/second", 1, 1),
        ("100/hour", 100, 3600),
        ("10000/day", 10000, 86400),
        (" 7 / minute ", 7, 60),
        ("100/15 minutes", 100, 900),
        ("3/10seconds", 3, 10),
        ("1000000000/second", 1_000_000_000, 1),
    ],
    ids=["minute", "plural", "second", "hour", "day", "spaces", "multiple", "multiple-no-space", "max-count"],
)
def test_parse_rate_valid_gives_count_and_period(text: str, count: int, period: int) -> None:
    rate = parse_rate(text)
    assert (rate.count, rate.period) == (count, period)
    assert rate.interval == period / count


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5 per minute", "is not 'N/second"),
        ("5/fortnight", "is not 'N/second"),
        ("5/month", "is not 'N/second"),  # calendar periods are quotas
        ("-1/second", "is not 'N/second"),
        ("0/minute", "between 1 and"),
        ("1000000001/second", "between 1 and"),
        ("5/0 seconds", "at least 1"),
        ("1/400 days", "must not exceed a year"),
        ("five/minute", "is not 'N/second"),
        ("", "is not 'N/second"),
        (5, "must be a string"),
    ],
    ids=["words", "unit", "month", "negative", "zero", "too-big", "zero-period", "too-long", "letters", "empty", "int"],
)
def test_parse_rate_invalid_raises_naming_problem(text: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rate(text)


@pytest.mark.parametrize(
    ("text", "count", "unit"),
    [("10000/month", 10000, "month"), ("50/day", 50, "day"), (" 1 / day ", 1, "day")],
    ids=["month", "day", "spaces"],
)
def test_parse_quota_valid(text: str, count: int, unit: str) -> None:
    q = parse_quota(text)
    assert (q.count, q.unit) == (count, unit)


@pytest.mark.parametrize(
    ("text", "message"),
    [("10/week", "is not 'N/day' or 'N/month'"), ("0/day", "between 1 and"), ("10/2 days", "is not"), (None, "string")],
    ids=["week", "zero", "multiple", "none"],
)
def test_parse_quota_invalid_raises(text: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_quota(text)
