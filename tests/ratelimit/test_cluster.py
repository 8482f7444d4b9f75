"""The Redis backend on a real Redis Cluster: our slots agree with the server's, keys on every node are counted
exactly where they belong, one seed is enough, a script missing on one node is loaded there, a slot migrated
mid-run (ASK, then MOVED, then both from a stale map) loses and doubles no count, and a killed master fails its
own keys closed while the others count on, until it is back."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from stockade.clock import SYSTEM_CLOCK
from stockade.observability.metrics import Metrics
from stockade.ratelimit.backend import GCRA, US, WINDOW, Hit, LimiterUnavailableError, LockoutRule
from stockade.ratelimit.cluster import key_slot
from stockade.ratelimit.redis import LIMITS, RedisBackend
from stockade.testing import gateway_with_upstream
from tests.ratelimit.clusterutil import LocalCluster, Node, command, fresh_cluster_url, local_cluster, shared_cluster
from tests.ratelimit.redisutil import fresh_redis_url

pytestmark = pytest.mark.redis


def ips() -> Iterator[str]:
    """Client addresses: what a `key: ip` limit puts in its keys' hash tag."""
    for i in itertools.count():
        yield f"203.0.{i // 250}.{i % 250 + 1}"


def tags_on(cluster: LocalCluster, node: Node, n: int = 1) -> list[str]:
    """`n` addresses whose slot (as the server computes it) the node owns."""
    return list(itertools.islice((ip for ip in ips() if cluster.owner(cluster.keyslot(ip)) is node), n))


def gcra(key: str, count: int, period_s: int) -> Hit:
    interval = round(period_s * US / count)
    return (GCRA, key, interval, interval * count, 1)


def test_key_slot_agrees_with_the_server() -> None:
    cluster = shared_cluster()
    keys = [
        "stockade:{198.51.100.7}:rate_limit:items::ip-5-per-60s:g",
        "stockade:{bf}:user:1f2e",
        "t1:{2001:db8::/64}:rate_limit:r:gold:burst:g",
        "{}",
        "{}{x}",
        "a{b{c}d}e",
        "{\u00e9t\u00e9}:x",
        "\U0001f600{\U0001f600}",
        *(f"k{i}" for i in range(200)),
    ]
    assert [key_slot(k) for k in keys] == [cluster.keyslot(k) for k in keys]


def test_keys_on_every_node_are_counted_exactly_where_they_belong() -> None:
    cluster = shared_cluster()
    url = fresh_cluster_url()
    tags = [tag for node in cluster.nodes for tag in tags_on(cluster, node, 2)]

    async def body() -> None:
        metrics = Metrics()
        backend = RedisBackend(url, SYSTEM_CLOCK, metrics)
        p = backend.prefix

        def hits(tag: str) -> list[Hit]:
            return [gcra(f"{p}{{{tag}}}:g", 5, 3600), (WINDOW, f"{p}{{{tag}}}:w", 3600 * US, 7, 1)]

        try:
            calls = [(tag, backend.hit_async(hits(tag), "")) for tag in tags for _ in range(8)]
            results = await asyncio.gather(*(call for _, call in calls))
            admitted = {tag: 0 for tag in tags}
            for (tag, _), (ok, _) in zip(calls, results, strict=True):
                admitted[tag] += ok
            assert admitted == {tag: 5 for tag in tags}  # 48 concurrent calls over three nodes, none lost or doubled
            for tag in tags:
                owner = cluster.owner(cluster.keyslot(tag))
                assert command(owner.port, "EXISTS", f"{p}{{{tag}}}:g", f"{p}{{{tag}}}:w") == 2
            assert ("limits_cluster", "moved") not in metrics.events  # each went to its owner the first time
            assert metrics.events[("limits_cluster", "map")] == 1  # the map was read once, by all of them
        finally:
            for tag in tags:
                await backend.client.call_on(f"{p}{{{tag}}}", "DEL", f"{p}{{{tag}}}:g", f"{p}{{{tag}}}:w")
            await backend.aclose()

    asyncio.run(body())


def test_one_seed_finds_the_cluster_and_lockouts_are_listed_from_the_bf_node() -> None:
    cluster = shared_cluster()
    bf_owner = cluster.owner(cluster.keyslot("{bf}"))
    seed = next(n for n in cluster.nodes if n is not bf_owner)  # SCAN sent to it would find no lockout
    rule = LockoutRule(free_failures=0, lockout_after=1, backoff_base=1, backoff_max=1, lockout_seconds=60, window=60)

    async def body() -> None:
        backend = RedisBackend(f"redis+cluster://127.0.0.1:{seed.port}?prefix={fresh_prefix()}", SYSTEM_CLOCK)
        try:
            await backend.failed([("ip:192.0.2.1", rule), ("user:abc", rule)])
            assert sorted(lk.subject for lk in await backend.lockouts()) == ["ip:192.0.2.1", "user:abc"]
            assert await backend.clear(None) == 2
            assert await backend.lockouts() == []
        finally:
            await backend.aclose()

    asyncio.run(body())


def fresh_prefix() -> str:
    return fresh_cluster_url().split("prefix=", 1)[1]


def test_a_script_missing_on_one_node_is_loaded_on_that_node() -> None:
    cluster = shared_cluster()
    url = fresh_cluster_url()
    node = cluster.nodes[1]
    [tag] = tags_on(cluster, node)

    async def body() -> None:
        backend = RedisBackend(url, SYSTEM_CLOCK)
        key = f"{backend.prefix}{{{tag}}}:g"
        try:
            assert (await backend.hit_async([gcra(key, 5, 60)], ""))[0]
            command(node.port, "SCRIPT", "FLUSH")  # that node restarted, say
            others = [n for n in cluster.nodes if n is not node]
            before = [command(n.port, "SCRIPT", "EXISTS", LIMITS.sha) for n in others]
            ok, [(_, remaining, _, _)] = await backend.hit_async([gcra(key, 5, 60)], "")
            assert ok and remaining == 3  # NOSCRIPT, then EVAL on that node: counted once, not lost, not twice
            assert command(node.port, "SCRIPT", "EXISTS", LIMITS.sha) == [1]
            assert [command(n.port, "SCRIPT", "EXISTS", LIMITS.sha) for n in others] == before
        finally:
            await backend.client.call_on(key, "DEL", key)
            await backend.aclose()

    asyncio.run(body())


def test_a_cluster_named_as_standalone_redis_says_so() -> None:
    cluster = shared_cluster()
    node = cluster.nodes[0]
    [tag] = tags_on(cluster, cluster.nodes[1])

    async def body() -> None:
        backend = RedisBackend(f"redis://127.0.0.1:{node.port}/0?prefix=x:", SYSTEM_CLOCK)
        try:
            with pytest.raises(LimiterUnavailableError, match=r"MOVED .* name it with redis\+cluster://"):
                await backend.hit_async([gcra(f"x:{{{tag}}}:g", 5, 60)], "")
        finally:
            await backend.aclose()

    asyncio.run(body())


def test_standalone_redis_named_as_a_cluster_is_an_outage_without_a_storm() -> None:
    url = fresh_redis_url().replace("redis://", "redis+cluster://", 1).replace("/0?", "?")

    async def body() -> None:
        backend = RedisBackend(url, SYSTEM_CLOCK)
        try:
            with pytest.raises(LimiterUnavailableError, match=r"no Redis Cluster slot map .*cluster support disabled"):
                await backend.hit_async([gcra(backend.prefix + "{t}:g", 5, 60)], "")
            with pytest.raises(LimiterUnavailableError, match="waiting before the next attempt"):
                await backend.hit_async([gcra(backend.prefix + "{t}:g", 5, 60)], "")
        finally:
            await backend.aclose()

    asyncio.run(body())


LIMIT = 40


def test_a_slot_migrated_mid_run_is_counted_exactly(tmp_path: Path) -> None:
    """Requests keep coming while a slot moves A -> B -> C. Redis guarantees a key is on one node at a time; the
    client must go where it is: ASK while the key is on the target of an unfinished migration, MOVED once the
    slot is the target's, and both in a row for a client whose map is two moves old. A request with several
    keys not all there yet cannot run on a half-moved slot (TRYAGAIN): it is refused, and counted after."""
    with local_cluster(tmp_path) as cluster:
        [tag] = tags_on(cluster, cluster.nodes[0])
        slot = cluster.keyslot(tag)
        a, b, c = cluster.nodes
        url = f"{cluster.url}?prefix=mig:"
        key = f"mig:{{{tag}}}:g"
        other = next(ip for ip in ips() if key_slot(ip) == slot and ip != tag)  # another client, same slot
        two = [gcra(f"mig:{{{other}}}:g", 5, 60), (WINDOW, f"mig:{{{other}}}:w", 60 * US, 5, 1)]

        async def body() -> None:
            metrics, stale_metrics = Metrics(), Metrics()
            backend = RedisBackend(url, SYSTEM_CLOCK, metrics)
            stale = RedisBackend(url, SYSTEM_CLOCK, stale_metrics)  # reads the map now, then sleeps through a move
            hit = [gcra(key, LIMIT, 3600)]

            async def wave(on: RedisBackend, n: int = 5) -> int:
                return sum([ok for ok, _ in await asyncio.gather(*(on.hit_async(hit, "") for _ in range(n)))])

            try:
                admitted = [await wave(backend), await wave(stale)]  # on A
                cluster.begin_migration(slot, a, b)
                admitted.append(await wave(backend))  # the key is still on A: A serves it, no redirection
                assert ("limits_cluster", "ask") not in metrics.events
                with pytest.raises(LimiterUnavailableError, match="TRYAGAIN"):
                    await backend.hit_async(two, "")  # no key on A: ASK B, where neither exists either
                assert cluster.move_keys(slot, a, b) == 1
                command(b.port, "SCRIPT", "FLUSH")  # the target has not run the script: ASKING + EVAL after NOSCRIPT
                asks = metrics.events[("limits_cluster", "ask")]  # the refused request's
                admitted.append(await wave(backend))  # A: no such key -> ASK B
                assert metrics.events[("limits_cluster", "ask")] == asks + 5
                cluster.finish_migration(slot, b)
                admitted.append(await wave(backend))  # A: MOVED B, the map is updated
                assert metrics.events[("limits_cluster", "moved")] >= 1
                asks = metrics.events[("limits_cluster", "ask")]
                admitted.append(await wave(backend))  # straight to B now
                assert (await backend.hit_async(two, ""))[1][0][1] == 4  # the refused one did not count
                assert metrics.events[("limits_cluster", "ask")] == asks

                cluster.begin_migration(slot, b, c)
                assert cluster.move_keys(slot, b, c) == 3  # the key, and the other client's two
                admitted.append(await wave(stale))  # the stale map says A: MOVED B, then ASK C
                assert stale_metrics.events[("limits_cluster", "moved")] >= 1
                assert stale_metrics.events[("limits_cluster", "ask")] >= 1
                cluster.finish_migration(slot, c)
                admitted.append(await wave(backend, LIMIT))  # B: MOVED C; the rest of the limit, then refusals
                assert admitted == [5] * 7 + [LIMIT - 35]
                assert command(c.port, "EXISTS", key) == 1
                for node in (a, b):
                    assert command(node.port, "CLUSTER", "COUNTKEYSINSLOT", slot) == 0  # never a second copy
            finally:
                await backend.aclose()
                await stale.aclose()

        asyncio.run(body())


ROUTE = """
limits_storage: "{url}"
trusted_proxies: [127.0.0.1/32]
routes:
  - id: items
    match: {{path: /items}}
    upstream: "{{upstream}}"
    stages:
      - use: anonymous
      - use: rate_limit
        config:
          limits:
            - {{rate: "3/hour", key: ip}}
"""


def test_a_killed_master_fails_its_keys_closed_until_it_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stockade.ratelimit")
    with local_cluster(tmp_path) as cluster:
        victim = cluster.nodes[2]
        [on_victim] = tags_on(cluster, victim)
        [elsewhere] = tags_on(cluster, cluster.nodes[0])
        log_path = tmp_path / "decisions.log"
        config = ROUTE.format(url=cluster.url + "?prefix=kill:")
        with gateway_with_upstream(config, log_path=log_path) as (gw, up):

            def get(ip: str) -> int:
                return gw.request("GET", "/items", headers={"X-Forwarded-For": ip})[0]

            def detail() -> str:  # why the last request was refused, as the decision log tells operators
                gw.flush_log()
                return str(orjson.loads(log_path.read_bytes().splitlines()[-1])["detail"])

            assert (get(on_victim), get(elsewhere)) == (200, 200)
            victim.kill()
            assert get(on_victim) == 503  # fail closed: its counters cannot be read
            assert f"127.0.0.1:{victim.port}" in detail()
            assert get(elsewhere) == 200  # the other masters still count
            assert get(on_victim) == 503  # within the reconnect pause: refused at once
            events = gw.services.metrics.events
            assert events[("limits_backend", "down")] == 1 and ("limits_backend", "up") not in events

            victim.start()  # same port and cluster config: the same node, its data gone
            down_at_start = "cluster_state:fail" in command(victim.port, "CLUSTER", "INFO").decode()
            gw.advance(1.0)
            status = get(on_victim)
            still_down = "cluster_state:fail" in command(victim.port, "CLUSTER", "INFO").decode()
            if down_at_start and still_down:  # a restarted master refuses writes for ~2 s: CLUSTERDOWN
                assert status == 503 and "CLUSTERDOWN" in detail()
            cluster.wait_ok()
            gw.advance(1.0)
            statuses = [status] + [get(on_victim) for _ in range(4)]
            assert statuses.count(200) == 3 and statuses[-1] == 429  # restarted empty: it counts anew
            assert [get(elsewhere) for _ in range(2)] == [200, 429]  # never lost: 3 in all
            deadline = time.monotonic() + 5
            while ("limits_backend", "up") not in events and time.monotonic() < deadline:
                time.sleep(0.02)  # a success while down has every master checked, in the gateway's loop
            assert events[("limits_backend", "down")] == 1 and events[("limits_backend", "up")] == 1
            assert len(up.received) == 7
    outage = [r.getMessage() for r in caplog.records if r.getMessage().startswith("limits backend unavailable")]
    assert len(outage) == 1 and f"127.0.0.1:{victim.port}" in outage[0]
