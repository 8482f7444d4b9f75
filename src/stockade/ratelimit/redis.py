"""`redis://`: limits exact across workers and nodes - one EVALSHA per request, time from Redis, TTL cleanup.

Every limit of a request is decided by one Lua script (`lua/limits.lua`) in one round trip; keys of one
request share a hash tag, so with `redis+cluster://` the script runs whole on the master that owns its slot
(cluster.py). An outage raises LimiterUnavailableError (the stage answers 503 or, if `fail_open`, lets the
request through); it is logged once when it starts and once when it ends, counted in metrics, and the next call
after `retry` seconds reconnects by itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from stockade.ratelimit.backend import (
    CONCURRENCY,
    US,
    Decision,
    Hit,
    HitResult,
    LimiterUnavailableError,
    Lockout,
    LockoutRule,
)
from stockade.ratelimit.cluster import ClusterClient
from stockade.ratelimit.leases import HeldSlots, Renewal
from stockade.ratelimit.resp import Commands, RedisClient, RedisReplyError, RedisUnavailableError, RedisUrl, Script

if TYPE_CHECKING:
    from stockade.clock import Clock
    from stockade.observability.metrics import Metrics

log = logging.getLogger("stockade.ratelimit")


def _script(name: str) -> Script:
    """A script from lua/, after the clock every script shares (lua/clock.lua)."""
    lua = files("stockade.ratelimit").joinpath("lua")
    clock, script = (lua.joinpath(f).read_text(encoding="utf-8") for f in ("clock.lua", name))
    return Script(clock + script)


LIMITS = _script("limits.lua")
LOCKOUTS = _script("lockouts.lua")
RENEW = _script("renew.lua")
LOCK_TAG = "{bf}:"  # lockouts share one slot: they are few, and listing them is one SCAN
CHECK_TAG = "{bf}."  # `agree` values: the lockouts' slot, outside the lockouts' SCAN pattern


class RedisBackend:
    """Limits and lockouts in Redis. `use_clock=True` passes the injected clock's time to the scripts instead
    of Redis TIME, so the contract tests can drive both backends with one FakeClock."""

    sync = False

    def __init__(self, url: str, clock: Clock, metrics: Metrics | None = None, *, use_clock: bool = False) -> None:
        self.url = url
        self.where = RedisUrl.parse(url)
        self.prefix = self.where.prefix
        self.client: Commands = (
            ClusterClient(self.where, clock, metrics) if self.where.cluster else RedisClient(self.where, clock)
        )
        self.clock = clock
        self.metrics = metrics
        self.use_clock = use_clock
        self.down = False
        self._confirming: asyncio.Task[None] | None = None
        self._confirm_at = 0.0
        self._pending: set[asyncio.Task[Any]] = set()
        self.leases = HeldSlots(clock, self._renew)

    def _now(self) -> str:
        return str(round(self.clock.time() * US)) if self.use_clock else ""

    async def _run(self, script: Script, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        try:
            reply = await self.client.evalsha(script, keys, args)
        except (RedisUnavailableError, RedisReplyError) as exc:
            # A reply error (e.g. a key of the wrong type, a read-only replica, CLUSTERDOWN) is as fatal as an
            # outage: the request cannot be counted.
            message = str(exc)
            if message.startswith(("MOVED ", "ASK ")):
                message += " (this is a Redis Cluster: name it with redis+cluster://)"
            if not self.down:
                self.down = True
                log.error("limits backend unavailable: %s", message, extra={"backend": self._where()})
                if self.metrics is not None:
                    self.metrics.event("limits_backend", "down")
            raise LimiterUnavailableError(message) from None
        if self.down:
            self._recovered()
        return reply

    def _recovered(self) -> None:
        if not self.where.cluster:
            self._up()
        elif self._confirming is None and self.clock.monotonic() >= self._confirm_at:
            # One master answering says nothing of the others: the outage ends when every master answers.
            self._confirming = asyncio.get_running_loop().create_task(self._confirm())

    async def _confirm(self) -> None:
        try:
            await self.client.ping()
        except (RedisUnavailableError, RedisReplyError):
            self._confirm_at = self.clock.monotonic() + self.where.retry
        else:
            if self.down:
                self._up()
        finally:
            self._confirming = None

    def _up(self) -> None:
        self.down = False
        log.warning("limits backend reachable again", extra={"backend": self._where()})
        if self.metrics is not None:
            self.metrics.event("limits_backend", "up")

    def _where(self) -> str:  # never the password
        if self.where.cluster:
            return "redis+cluster://" + ",".join(f"{host}:{port}" for host, port in self.where.seeds)
        return f"redis://{self.where.host}:{self.where.port}/{self.where.db}"

    def hit(self, hits: Sequence[Hit], token: str) -> Decision:
        raise NotImplementedError("the Redis backend is asynchronous: use hit_async")

    async def hit_async(self, hits: Sequence[Hit], token: str) -> Decision:
        args: list[str | int] = [self._now()]
        for kind, _key, p1, p2, cost in hits:
            args += (kind, p1, p2, cost)
        args.append(token)
        reply = await self._run(LIMITS, [h[1] for h in hits], args)
        results: list[HitResult] = [
            (reply[i] == 1, reply[i + 1], reply[i + 2], reply[i + 3]) for i in range(1, len(reply), 4)
        ]
        if reply[0] == 1 and token:
            granted = [(key, p1) for kind, key, p1, _, _ in hits if kind == CONCURRENCY]
            if granted:
                self.leases.add(token, granted)
        return reply[0] == 1, results

    def release(self, keys: Sequence[str], token: str) -> None:
        """Give back concurrency slots, without waiting (a slot that cannot be released expires with its lease)."""
        self.leases.remove(token)
        for key in keys:
            self._spawn(self.client.call_on(key, "ZREM", key, token))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("concurrency slot not released (it will expire): %s", task.exception())

    # -- brute-force lockouts --------------------------------------------------------------------------------

    def _lock_key(self, subject: str) -> str:
        return f"{self.prefix}{LOCK_TAG}{subject}"

    async def blocked(self, subjects: Sequence[str]) -> list[tuple[float, bool, int]]:
        reply = await self._run(LOCKOUTS, [self._lock_key(s) for s in subjects], ["check", self._now()])
        return [(reply[i] / US, reply[i + 1] == 1, reply[i + 2]) for i in range(0, len(reply), 3)]

    async def failed(self, subjects: Sequence[tuple[str, LockoutRule]]) -> list[Lockout | None]:
        args: list[str | int] = ["fail", self._now()]
        for _, rule in subjects:
            args += (rule.free_failures, rule.lockout_after, round(rule.backoff_base * US))
            args += (round(rule.backoff_max * US), round(rule.lockout_seconds * US), round(rule.window * US))
        reply = await self._run(LOCKOUTS, [self._lock_key(s) for s, _ in subjects], args)
        now = self.clock.time()
        out: list[Lockout | None] = []
        for j, (subject, _) in enumerate(subjects):
            failures, wait, locked = reply[3 * j : 3 * j + 3]
            out.append(Lockout(subject, failures, now + wait / US, locked == 1) if wait > 0 else None)
        return out

    async def succeeded(self, subjects: Sequence[str]) -> None:
        await self._run(LOCKOUTS, [self._lock_key(s) for s in subjects], ["ok", self._now()])

    async def _call_on(self, key: str, *args: str | bytes | int) -> Any:
        try:
            return await self.client.call_on(key, *args)
        except (RedisUnavailableError, RedisReplyError) as exc:
            raise LimiterUnavailableError(str(exc)) from None

    async def _scan(self) -> list[str]:
        pattern = self._lock_key("*")
        keys: list[str] = []
        cursor = b"0"
        while True:
            # On the node that owns the `{bf}` slot (a Redis Cluster scans only its own node's keys).
            cursor, batch = await self._call_on(pattern, "SCAN", cursor, "MATCH", pattern, "COUNT", 500)
            keys.extend(k.decode() for k in batch)
            if cursor == b"0":
                return sorted(set(keys))

    async def lockouts(self) -> list[Lockout]:
        keys = await self._scan()
        if not keys:
            return []
        head = len(self._lock_key(""))
        out = []
        for key in keys:  # control plane: a round trip per subject is fine here
            [(wait, locked, failures)] = await self.blocked([key[head:]])
            if wait > 0:
                out.append(Lockout(key[head:], failures, self.clock.time() + wait, locked))
        return out

    async def clear(self, subject: str | None) -> int:
        keys = await self._scan() if subject is None else [self._lock_key(subject)]
        removed = 0
        for key in keys:
            removed += int(await self._call_on(key, "DEL", key))
        return removed

    async def agree(self, name: str, value: str) -> str | None:
        """Record `value` under `name` unless a value is recorded already; that value if it is another, else None.
        What lets processes that share this backend find out they would count the same subject under different
        keys (brute_force: each node keying usernames with a pepper of its own), or share one (brute_force's
        identity key: the first process's random one). Kept without expiry: deleted by hand, to change the pepper
        of every node or to re-key identities (docs/rate-limiting.md)."""
        key = f"{self.prefix}{CHECK_TAG}{name}"
        await self._call_on(key, "SET", key, value, "NX")
        recorded = await self._call_on(key, "GET", key)
        if recorded is None:  # deleted in between: record ours again next time
            return None
        # Bytes that are not UTF-8 are another process's value as much as any other (a mismatch, never a crash).
        found = recorded.decode("utf-8", "replace") if isinstance(recorded, bytes) else str(recorded)
        return None if found == value else found

    async def _renew(self, batch: list[Renewal]) -> None:
        for token, slots in batch:  # one script per request: its keys share a hash tag, other requests' may not
            await self._run(RENEW, [key for key, _ in slots], [self._now(), token, *(lease for _, lease in slots)])

    async def ping(self) -> None:
        try:
            await self.client.ping()  # a cluster: every master, and each must say the cluster is up
        except (RedisUnavailableError, RedisReplyError) as exc:
            raise LimiterUnavailableError(str(exc)) from None

    async def aclose(self) -> None:
        self.leases.close()
        if self._confirming is not None:
            self._confirming.cancel()
        await self.client.close()
