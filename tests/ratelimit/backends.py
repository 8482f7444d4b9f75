"""Running a coroutine against a fresh limits backend of each kind (memory, Redis on the shared server, and the
Redis Cluster the session shares)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from stockade.clock import SYSTEM_CLOCK, FakeClock
from stockade.ratelimit.backend import LimiterBackend
from stockade.ratelimit.memory import MemoryBackend
from tests.ratelimit.clusterutil import fresh_cluster_url
from tests.ratelimit.redisutil import fresh_redis_url

T = TypeVar("T")
KINDS = ["memory", pytest.param("redis", marks=pytest.mark.redis), pytest.param("cluster", marks=pytest.mark.redis)]


def fake_clock() -> FakeClock:
    # Starts at the real time so Redis expiries computed from it (PEXPIREAT) are neither past nor far future.
    return FakeClock(start=round(SYSTEM_CLOCK.time()))


def run_on(kind: str, clock: FakeClock, body: Callable[[LimiterBackend], Awaitable[T]], url: str = "") -> T:
    """Run `body(backend)` on a new backend; Redis ones read the fake clock and are emptied afterwards."""

    async def go() -> T:
        if kind == "memory":
            return await body(MemoryBackend(clock))
        from stockade.ratelimit.redis import RedisBackend

        backend = RedisBackend(
            url or (fresh_cluster_url() if kind == "cluster" else fresh_redis_url()), clock, use_clock=True
        )
        try:
            return await body(backend)
        finally:
            await drop_keys(backend)
            await backend.aclose()

    return asyncio.run(go())


async def drop_keys(backend: LimiterBackend) -> None:
    from stockade.ratelimit.cluster import ClusterClient

    client = backend.client  # type: ignore[attr-defined]
    cluster = isinstance(client, ClusterClient)
    for node in client.masters() if cluster else [client]:  # SCAN sees one node's keys
        cursor = b"0"
        while True:
            cursor, keys = await node.call("SCAN", cursor, "MATCH", backend.prefix + "*", "COUNT", 1000)
            for batch in [[k] for k in keys] if cluster else [keys] if keys else []:  # DEL of several slots: CROSSSLOT
                await node.call("DEL", *batch)
            if cursor == b"0":
                break
