"""`memory://`: the limiter in this process's memory. Exact for one worker; the loader refuses it for several."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from stockade.ratelimit.backend import (
    CONCURRENCY,
    CONCURRENCY_RETRY,
    GCRA,
    QUOTA,
    US,
    WINDOW,
    Decision,
    Hit,
    HitResult,
    Lockout,
    LockoutRule,
)
from stockade.ratelimit.leases import HeldSlots, Renewal

if TYPE_CHECKING:
    from stockade.clock import Clock

SWEEP_EVERY = 10 * US  # expired entries are dropped this often, so memory follows the active keys only


class MemoryBackend:
    """GCRA, sliding window, calendar quota and concurrency counters in dicts, decided synchronously.

    The same arithmetic as the Redis script (`limits.lua`), in integer microseconds, so both backends agree
    to the microsecond; the shared contract tests check that they do.
    """

    sync = True
    url = "memory://"
    prefix = ""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._tat: dict[str, int] = {}  # GCRA theoretical arrival time
        self._win: dict[str, list[int]] = {}  # [window index, current count, previous count, window]
        self._quota: dict[str, list[int]] = {}  # [used, period end]
        self._conc: dict[str, dict[str, int]] = {}  # token -> lease expiry
        self._locks: dict[str, list[float]] = {}  # [failures, until, locked, forget at]
        self._next_sweep = 0
        self.leases = HeldSlots(clock, self._renew)

    def _now(self) -> int:
        return round(self.clock.time() * US)

    def hit(self, hits: Sequence[Hit], token: str) -> Decision:
        now = self._now()
        if now >= self._next_sweep:
            self._sweep(now)
        ok = True
        results: list[HitResult] = []
        writes: list[tuple[str, str, object]] = []
        granted: list[tuple[str, int]] = []
        for kind, key, p1, p2, cost in hits:
            if kind == GCRA:
                tat = self._tat.get(key, now)
                if tat < now:
                    tat = now
                new_tat = tat + p1 * cost
                allow_at = new_tat - p2
                if allow_at <= now:
                    results.append((True, (now - allow_at) // p1, new_tat - now, 0))
                    writes.append((kind, key, new_tat))
                else:
                    ok = False
                    results.append((False, max(0, (now - tat + p2) // p1), tat - now, allow_at - now))
            elif kind == WINDOW:
                idx = now // p1
                state = self._win.get(key)
                cur = prev = 0
                if state is not None:
                    if state[0] == idx:
                        cur, prev = state[1], state[2]
                    elif state[0] == idx - 1:
                        prev = state[1]
                elapsed = now - idx * p1
                est = float(prev) * (p1 - elapsed) / p1 + cur  # the float operations of the Lua script, in order
                if est + cost <= p2:
                    results.append((True, max(0, math.floor(p2 - est - cost)), 2 * p1 - elapsed, 0))
                    writes.append((kind, key, [idx, cur + cost, prev, p1]))
                else:
                    ok = False
                    results.append(
                        (
                            False,
                            max(0, math.floor(p2 - est)),
                            2 * p1 - elapsed,
                            _window_retry(p1, p2, cost, cur, prev, elapsed),
                        )
                    )
            elif kind == QUOTA:
                entry = self._quota.get(key)
                used = entry[0] if entry is not None else 0
                left = max(0, p1 - now)
                if used + cost <= p2:
                    results.append((True, p2 - used - cost, left, 0))
                    writes.append((kind, key, [used + cost, p1]))
                else:
                    ok = False
                    results.append((False, p2 - used if used < p2 else 0, left, left))
            elif kind == CONCURRENCY:
                slots = self._conc.get(key)
                if slots:
                    for t in [t for t, exp in slots.items() if exp <= now]:
                        del slots[t]
                n = len(slots) if slots else 0
                if n < p2:
                    results.append((True, p2 - n - 1, 0, 0))
                    writes.append((kind, key, now + p1))
                    granted.append((key, p1))
                else:
                    ok = False
                    results.append((False, 0, 0, CONCURRENCY_RETRY))
            else:
                raise ValueError(f"unknown limit algorithm {kind!r}")
        if ok:
            for kind, key, value in writes:
                if kind == GCRA:
                    self._tat[key] = value  # type: ignore[assignment]
                elif kind == WINDOW or kind == QUOTA:
                    (self._win if kind == WINDOW else self._quota)[key] = value  # type: ignore[assignment]
                else:
                    self._conc.setdefault(key, {})[token] = value  # type: ignore[assignment]
            if granted:
                self.leases.add(token, granted)
        return ok, results

    async def hit_async(self, hits: Sequence[Hit], token: str) -> Decision:
        return self.hit(hits, token)

    def release(self, keys: Sequence[str], token: str) -> None:
        self.leases.remove(token)
        for key in keys:
            slots = self._conc.get(key)
            if slots is not None:
                slots.pop(token, None)
                if not slots:
                    del self._conc[key]

    def _sweep(self, now: int) -> None:
        self._next_sweep = now + SWEEP_EVERY
        for key in [k for k, tat in self._tat.items() if tat <= now]:
            del self._tat[key]
        for key in [k for k, st in self._win.items() if st[0] < now // st[3] - 1]:
            del self._win[key]
        for key in [k for k, q in self._quota.items() if q[1] <= now]:
            del self._quota[key]
        for key, slots in list(self._conc.items()):
            for t in [t for t, exp in slots.items() if exp <= now]:
                del slots[t]
            if not slots:
                del self._conc[key]
        secs = now / US
        for key in [k for k, rec in self._locks.items() if rec[3] <= secs]:
            del self._locks[key]

    # -- brute-force lockouts (seconds, like LockoutRule) ------------------------------------------------------

    def _record(self, subject: str, now: float) -> list[float] | None:
        rec = self._locks.get(subject)
        if rec is not None and rec[3] <= now:
            del self._locks[subject]
            return None
        return rec

    async def blocked(self, subjects: Sequence[str]) -> list[tuple[float, bool, int]]:
        now = self.clock.time()
        out = []
        for subject in subjects:
            rec = self._record(subject, now)
            if rec is None:
                out.append((0.0, False, 0))
            else:
                out.append((rec[1] - now, bool(rec[2]), int(rec[0])) if rec[1] > now else (0.0, False, int(rec[0])))
        return out

    async def failed(self, subjects: Sequence[tuple[str, LockoutRule]]) -> list[Lockout | None]:
        now = self.clock.time()
        out: list[Lockout | None] = []
        for subject, rule in subjects:
            rec = self._record(subject, now) or [0, 0.0, 0, 0.0]
            failures = int(rec[0]) + 1
            until, locked = backoff(rule, failures, now)
            forget = until if locked else max(now + rule.window, until)
            self._locks[subject] = [failures, until, 1 if locked else 0, forget]
            out.append(Lockout(subject, failures, until, locked) if until > now else None)
        return out

    async def succeeded(self, subjects: Sequence[str]) -> None:
        now = self.clock.time()
        for subject in subjects:
            rec = self._record(subject, now)
            if rec is not None and not rec[2]:  # success never lifts a lockout (only time or an operator does)
                del self._locks[subject]

    async def lockouts(self) -> list[Lockout]:
        now = self.clock.time()
        return sorted(
            (Lockout(s, int(r[0]), r[1], bool(r[2])) for s, r in self._locks.items() if r[1] > now and r[3] > now),
            key=lambda lk: lk.subject,
        )

    async def clear(self, subject: str | None) -> int:
        if subject is None:
            n = len(self._locks)
            self._locks.clear()
            return n
        return 1 if self._locks.pop(subject, None) is not None else 0

    async def _renew(self, batch: list[Renewal]) -> None:
        now = self._now()
        for token, slots in batch:
            for key, lease in slots:
                held = self._conc.get(key)
                if held is not None and token in held:  # released or expired slots stay gone
                    held[token] = now + lease

    async def agree(self, name: str, value: str) -> str | None:
        return None  # one process: nobody to disagree with

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        self.leases.close()


def backoff(rule: LockoutRule, failures: int, now: float) -> tuple[float, bool]:
    """`(until, locked)` after the `failures`-th failure: free, then doubling back-off, then lockout."""
    if failures >= rule.lockout_after:
        return now + rule.lockout_seconds, True
    if failures > rule.free_failures:
        # The exponent is capped before the power (2.0 ** 1100 overflows a float), as the Lua twin saturates.
        doublings = min(failures - rule.free_failures - 1, 64)
        return now + min(rule.backoff_base * 2.0**doublings, rule.backoff_max), False
    return now, False


def _window_retry(window: int, limit: int, cost: int, cur: int, prev: int, elapsed: int) -> int:
    """Microseconds until a refused sliding-window request would fit, if nothing else arrives meanwhile."""
    if cur + cost <= limit:  # the previous window's weight must fade enough
        return math.ceil(window - elapsed - float(limit - cur - cost) * window / prev)
    # only in the next window, where this window's count becomes the fading one
    return window - elapsed + max(0, math.ceil(window - float(limit - cost) * window / cur))
