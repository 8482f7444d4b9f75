"""Brute-force lockout records in every backend: free failures, doubling back-off, lockout, forgetting."""

from __future__ import annotations

import pytest

from stockade.ratelimit.backend import LimiterBackend, LockoutRule
from stockade.ratelimit.memory import backoff
from tests.ratelimit.backends import KINDS, fake_clock, run_on

RULE = LockoutRule(free_failures=2, lockout_after=5, backoff_base=1.0, backoff_max=3.0, lockout_seconds=100, window=60)
each_backend = pytest.mark.parametrize("kind", KINDS)


@pytest.mark.parametrize(
    ("failures", "wait", "locked"),
    [(1, 0, False), (2, 0, False), (3, 1, False), (4, 2, False), (5, 100, True), (9, 100, True)],
)
def test_backoff_doubles_then_locks(failures: int, wait: float, locked: bool) -> None:
    rule = LockoutRule(2, 5, 1.0, 60.0, 100, 60)
    assert backoff(rule, failures, 1000.0) == (1000.0 + wait, locked)


def test_backoff_is_capped() -> None:
    rule = LockoutRule(0, 100, 1.0, 3.0, 100, 60)
    assert [backoff(rule, f, 0.0)[0] for f in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, 3.0]


def test_backoff_far_past_the_free_failures_does_not_overflow() -> None:
    """2 ** 1100 as a float overflowed: the failure was never recorded and the subject never locked."""
    rule = LockoutRule(10, 5000, 1.0, 1.0, 100, 60)
    assert backoff(rule, 1100, 0.0) == (1.0, False)
    assert backoff(rule, 5000, 0.0) == (100.0, True)


@each_backend
def test_failures_back_off_then_lock_out(kind: str) -> None:
    clock = fake_clock()

    async def body(b: LimiterBackend) -> None:
        subj = "ip:203.0.113.9"
        seen = []
        for _ in range(5):
            [lk] = await b.failed([(subj, RULE)])
            seen.append(None if lk is None else (lk.failures, round(lk.until - clock.time(), 3), lk.locked))
            [(wait, locked, failures)] = await b.blocked([subj])
            assert (wait > 0) == (lk is not None) and failures == len(seen)
            if lk is not None and not lk.locked:
                clock.advance(wait)  # wait the back-off out, as a patient client would
        assert seen == [None, None, (3, 1.0, False), (4, 2.0, False), (5, 100.0, True)]
        [(wait, locked, failures), other] = await b.blocked([subj, "ip:198.51.100.1"])
        assert other == (0.0, False, 0)
        assert locked and wait == pytest.approx(100) and failures == 5
        await b.succeeded([subj])  # a success never lifts a lockout
        assert (await b.blocked([subj]))[0][1]
        [listed] = await b.lockouts()
        assert (listed.subject, listed.failures, listed.locked) == (subj, 5, True)
        clock.advance(100)  # the lockout ends, and with it the record
        assert await b.blocked([subj]) == [(0.0, False, 0)]
        assert await b.lockouts() == []

    run_on(kind, clock, body)


@each_backend
def test_success_and_time_forget_failures(kind: str) -> None:
    clock = fake_clock()

    async def body(b: LimiterBackend) -> None:
        await b.failed([("id:a", RULE), ("id:b", RULE)])
        await b.failed([("id:a", RULE), ("id:b", RULE)])
        await b.succeeded(["id:a"])
        assert [s[2] for s in await b.blocked(["id:a", "id:b"])] == [0, 2]
        clock.advance(61)  # the window passes without a failure
        assert (await b.blocked(["id:b"]))[0][2] == 0
        [lk] = await b.failed([("id:b", RULE)])
        assert lk is None

    run_on(kind, clock, body)


@each_backend
def test_clear_lifts_one_or_all(kind: str) -> None:
    clock = fake_clock()

    async def body(b: LimiterBackend) -> None:
        for _ in range(5):
            await b.failed([("ip:192.0.2.1", RULE), ("user:abc", RULE), ("id:x", RULE)])
        assert [lk.subject for lk in await b.lockouts()] == ["id:x", "ip:192.0.2.1", "user:abc"]
        assert await b.clear("user:abc") == 1
        assert await b.clear("user:abc") == 0
        assert await b.blocked(["user:abc"]) == [(0.0, False, 0)]
        assert await b.clear(None) == 2
        assert await b.lockouts() == []

    run_on(kind, clock, body)
