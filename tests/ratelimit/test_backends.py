"""The contract every limits backend meets, run against memory, Redis and Redis Cluster with one FakeClock: GCRA
and burst, sliding window, quotas, concurrency, all-or-nothing batches, and the two agreeing exactly."""

from __future__ import annotations

import itertools

import pytest

from stockade.clock import FakeClock
from stockade.ratelimit.backend import CONCURRENCY, GCRA, QUOTA, US, WINDOW, Hit, LimiterBackend
from tests.ratelimit.backends import KINDS, fake_clock, run_on

each_backend = pytest.mark.parametrize("kind", KINDS)
MINUTE = 60 * US


def gcra(key: str, count: int, period_s: int, burst: int | None = None, cost: int = 1) -> Hit:
    interval = round(period_s * US / count)
    return (GCRA, key, interval, interval * (burst or count), cost)


def full_key(b: LimiterBackend, key: str) -> str:
    """The key as the stage's LimitSet makes it: the backend's prefix, then a hash tag every key of one request
    shares (on Redis Cluster a script may only touch keys of one slot)."""
    return f"{b.prefix}{{t}}:{key}"


def keyed(b: LimiterBackend, hits: list[Hit]) -> list[Hit]:
    return [(kind, full_key(b, key), p1, p2, cost) for kind, key, p1, p2, cost in hits]


@each_backend
def test_gcra_admits_burst_then_one_per_interval(kind: str) -> None:
    clock = fake_clock()

    async def body(b: LimiterBackend) -> None:
        hit = [gcra("k", 5, 60)]
        seen = [await b.hit_async(keyed(b, hit), "") for _ in range(6)]
        assert [ok for ok, _ in seen] == [True] * 5 + [False]
        assert [d[1][0][1] for d in seen] == [4, 3, 2, 1, 0, 0]  # remaining
        assert [d[1][0][2] for d in seen[:5]] == [12 * US, 24 * US, 36 * US, 48 * US, 60 * US]  # until fully reset
        assert seen[5][1][0][3] == 12 * US  # retry after exactly one interval
        clock.advance(12 - 1e-6)
        ok, res = await b.hit_async(keyed(b, hit), "")
        assert not ok and res[0][3] == 1  # one microsecond early
        clock.advance(1e-6)
        ok, res = await b.hit_async(keyed(b, hit), "")
        assert ok and res[0][1] == 0
        assert not (await b.hit_async(keyed(b, hit), ""))[0]
        clock.advance(60)
        assert [(await b.hit_async(keyed(b, hit), ""))[0] for _ in range(6)] == [True] * 5 + [False]

    run_on(kind, clock, body)


@each_backend
@pytest.mark.parametrize(("burst", "admitted"), [(1, 1), (3, 3), (12, 12)], ids=["burst1", "burst3", "burst12"])
def test_gcra_burst_sets_instant_capacity(kind: str, burst: int, admitted: int) -> None:
    clock = fake_clock()

    async def body(b: LimiterBackend) -> None:
        hit = [gcra("k", 6, 60, burst)]
        results = [(await b.hit_async(keyed(b, hit), ""))[0] for _ in range(admitted + 2)]
        assert results == [True] * admitted + [False, False]
        clock.advance(10)  # one interval: exactly one more
        assert [(await b.hit_async(keyed(b, hit), ""))[0] for _ in range(2)] == [True, False]

    run_on(kind, clock, body)


@each_backend
def test_gcra_cost_consumes_units_and_refuses_what_does_not_fit(kind: str) -> None:
    clock = fake_clock()

    async def body(b: LimiterBackend) -> None:
        ok, res = await b.hit_async(keyed(b, [gcra("k", 5, 60, cost=3)]), "")
        assert ok and res[0][1] == 2
        ok, res = await b.hit_async(keyed(b, [gcra("k", 5, 60, cost=3)]), "")
        assert not ok and res[0][1] == 2 and res[0][3] == 12 * US  # one more unit must drain first
        ok, res = await b.hit_async(keyed(b, [gcra("k", 5, 60, cost=2)]), "")
        assert ok and res[0][1] == 0

    run_on(kind, clock, body)


@each_backend
def test_sliding_window_weights_previous_window(kind: str) -> None:
    clock = FakeClock(start=(fake_clock().time() // 60) * 60)  # at a window boundary

    async def body(b: LimiterBackend) -> None:
        hit = [(WINDOW, "w", MINUTE, 10, 1)]
        assert [(await b.hit_async(keyed(b, hit), ""))[0] for _ in range(11)] == [True] * 10 + [False]
        ok, res = await b.hit_async(keyed(b, hit), "")
        assert not ok and res[0][3] == 60 * US + 6 * US  # next window, once 10 x weight <= 9
        clock.advance(90)  # next window, half elapsed: the previous 10 weigh 5
        results = [await b.hit_async(keyed(b, hit), "") for _ in range(6)]
        assert [ok for ok, _ in results] == [True] * 5 + [False]
        assert [d[1][0][1] for d in results[:5]] == [4, 3, 2, 1, 0]
        # 5 now + 10 x (30 - x)/60 <= 9  ->  x >= 6 seconds
        assert results[5][1][0][3] == 6 * US
        clock.advance(6)
        assert (await b.hit_async(keyed(b, hit), ""))[0]
        clock.advance(120)  # two windows later nothing is remembered
        assert [(await b.hit_async(keyed(b, hit), ""))[0] for _ in range(11)] == [True] * 10 + [False]

    run_on(kind, clock, body)


@each_backend
def test_quota_counts_to_limit_and_retries_at_period_end(kind: str) -> None:
    clock = fake_clock()

    async def body(b: LimiterBackend) -> None:
        end = round((clock.time() + 3600) * US)
        hit = [(QUOTA, "q:2024-05", end, 3, 1)]
        results = [await b.hit_async(keyed(b, hit), "") for _ in range(4)]
        assert [ok for ok, _ in results] == [True, True, True, False]
        assert [d[1][0][1] for d in results] == [2, 1, 0, 0]
        assert results[3][1][0][3] == 3600 * US
        clock.advance(1800)
        ok, res = await b.hit_async(keyed(b, [(QUOTA, "q:2024-05", end, 3, 2)]), "")
        assert not ok and res[0][3] == 1800 * US
        ok, _ = await b.hit_async(keyed(b, [(QUOTA, "q:2024-06", end + 3600 * US, 3, 3)]), "")
        assert ok  # the next period has its own key

    run_on(kind, clock, body)


@each_backend
def test_concurrency_slots_are_released_or_expire(kind: str) -> None:
    clock = fake_clock()

    async def body(b: LimiterBackend) -> None:
        hit = [(CONCURRENCY, "c", 30 * US, 2, 1)]
        assert (await b.hit_async(keyed(b, hit), "a"))[0]
        ok, res = await b.hit_async(keyed(b, hit), "b")
        assert ok and res[0][1] == 0
        ok, res = await b.hit_async(keyed(b, hit), "c")
        assert not ok and res[0][3] == US
        b.release([full_key(b, "c")], "a")
        await _settle(b)
        assert (await b.hit_async(keyed(b, hit), "c"))[0]
        assert not (await b.hit_async(keyed(b, hit), "d"))[0]
        clock.advance(30)  # leases of b and c run out: a crashed request never holds a slot forever
        assert (await b.hit_async(keyed(b, hit), "d"))[0]

    run_on(kind, clock, body)


@each_backend
def test_a_slot_in_use_is_renewed_and_a_released_one_is_not(kind: str) -> None:
    """Leases were not renewed: a request or WebSocket that outlived its lease stopped counting, and
    `concurrency: 1` let a second one in."""
    clock = fake_clock()

    async def body(b: LimiterBackend) -> None:
        hit = [(CONCURRENCY, "c", 30 * US, 1, 1)]
        assert (await b.hit_async(keyed(b, hit), "long"))[0]
        assert b.leases.interval() == 10.0  # a third of the lease
        clock.advance(20)
        await b.leases.renew_all()  # what the renewal task does every interval
        clock.advance(20)  # 40 s since the grant, 20 since the renewal
        assert not (await b.hit_async(keyed(b, hit), "second"))[0]
        b.release([full_key(b, "c")], "long")
        await _settle(b)
        await b.leases.renew_all()  # a released slot is never added back
        assert len(b.leases) == 0
        assert (await b.hit_async(keyed(b, hit), "second"))[0]

    run_on(kind, clock, body)


@each_backend
def test_a_slot_is_renewed_for_a_day_at_most(kind: str) -> None:
    clock = fake_clock()

    async def body(b: LimiterBackend) -> None:
        hit = [(CONCURRENCY, "c", 3600 * US, 1, 1)]
        assert (await b.hit_async(keyed(b, hit), "stuck"))[0]  # and never released (a bug)
        for _ in range(28):
            clock.advance(3000)
            await b.leases.renew_all()
        assert len(b.leases) == 1  # 84,000 s: still renewed
        for _ in range(2):
            clock.advance(3000)
            await b.leases.renew_all()
        assert len(b.leases) == 0  # past a day it is let go, and its lease runs out
        clock.advance(3600)
        assert (await b.hit_async(keyed(b, hit), "next"))[0]

    run_on(kind, clock, body)


@each_backend
def test_batch_is_all_or_nothing(kind: str) -> None:
    clock = fake_clock()

    async def body(b: LimiterBackend) -> None:
        wide = gcra("wide", 100, 60)
        narrow = gcra("narrow", 2, 60)
        conc = (CONCURRENCY, "conc", 30 * US, 10, 1)
        assert (await b.hit_async(keyed(b, [wide, narrow, conc]), "t1"))[0]
        assert (await b.hit_async(keyed(b, [wide, narrow, conc]), "t2"))[0]
        ok, res = await b.hit_async(keyed(b, [wide, narrow, conc]), "t3")
        assert not ok and [r[0] for r in res] == [True, False, True]
        ok, res = await b.hit_async(keyed(b, [wide, conc]), "t4")
        assert ok and res[0][1] == 97 and res[1][1] == 7  # the refused request used neither `wide` nor a slot

    run_on(kind, clock, body)


async def _settle(b: LimiterBackend) -> None:
    import asyncio

    for _ in range(20):  # Redis releases are fire-and-forget tasks; let them reach the server
        await asyncio.sleep(0.005)
        if not getattr(b, "_pending", None):
            return


@pytest.mark.parametrize("kind", KINDS[1:])
def test_backends_agree_exactly_on_a_long_mixed_sequence(kind: str) -> None:
    """The same deterministic sequence of hits and clock steps gets the same answers from Redis as from memory,
    to the microsecond (the Lua script mirrors memory.py operation by operation)."""
    steps = list(itertools.islice(_sequence(), 400))

    def play(k: str) -> list[object]:
        clock = FakeClock(start=(fake_clock().time() // 60) * 60 + 7)

        async def body(b: LimiterBackend) -> list[object]:
            out: list[object] = []
            for advance, hits in steps:
                clock.advance(advance)
                out.append(await b.hit_async(keyed(b, hits), "tok"))
            return out

        return run_on(k, clock, body)

    reference = play("memory")
    assert sum(ok for ok, _ in reference) not in (0, len(reference))  # the sequence exercises both answers
    assert play(kind) == reference


def _sequence() -> itertools.chain[tuple[float, list[Hit]]]:
    x = 12345

    def gen():  # type: ignore[no-untyped-def]
        nonlocal x
        while True:
            x = (x * 1103515245 + 12345) % 2**31  # a fixed LCG: deterministic, no `random`
            which = x % 4
            advance = (x >> 8) % 5000 / 1000
            hits: list[Hit] = []
            if which in (0, 3):
                hits.append(gcra("g1", 7, 60, burst=3, cost=1 + x % 2))
            if which in (1, 3):
                hits.append((WINDOW, "w1", 10 * US, 9, 1 + (x >> 4) % 3))
            if which == 2:
                hits.append(gcra("g2", 13, 1))
            yield advance, hits

    return itertools.chain(gen())
