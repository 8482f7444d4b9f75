"""The Redis backend against real servers: Redis time, TTL cleanup, hash tags, one round trip per request,
NOSCRIPT recovery, outages (fail closed / fail open) and recovery without a restart."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from stockade.clock import SYSTEM_CLOCK
from stockade.ratelimit.backend import GCRA, US, LimiterUnavailableError
from stockade.ratelimit.redis import RedisBackend
from stockade.testing import gateway_with_upstream, make_context
from tests.ratelimit.redisutil import Monitor, closed_port_url, fresh_redis_url, private_redis, redis_command

pytestmark = pytest.mark.redis

ROUTE = """
limits_storage: "{url}"
routes:
  - id: items
    match: {{path: /items}}
    upstream: "{{upstream}}"
    stages:
      - use: anonymous
      - use: rate_limit
        {fail_open}
        config:
          limits:
            - {{rate: "3/hour", key: ip}}
            - {{rate: "100/second", key: [ip, route]}}
            - {{quota: "1000/day", key: ip, timezone: Europe/Berlin}}
"""


def config(url: str, *, fail_open: bool = False) -> str:
    return ROUTE.format(url=url, fail_open="fail_open: true" if fail_open else "")


def commandstats(url: str) -> dict[str, int]:
    out = {}
    for line in redis_command(url, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            fields = dict(kv.split("=") for kv in rest.split(","))
            out[name.removeprefix("cmdstat_")] = int(fields["calls"]) + int(fields.get("failed_calls", 0))
    return out


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0) and k != "info"}


def test_redis_time_is_authoritative() -> None:
    async def body() -> None:
        backend = RedisBackend(fresh_redis_url(), SYSTEM_CLOCK)  # no clock passed to the script: Redis TIME
        hit = [(GCRA, backend.prefix + "t", 720 * US, 5 * 720 * US, 1)]
        results = [await backend.hit_async(hit, "") for _ in range(6)]
        assert [ok for ok, _ in results] == [True] * 5 + [False]
        retry = results[5][1][0][3]
        assert 700 * US < retry <= 720 * US  # one interval, less the (real) time the calls took
        await backend.aclose()

    asyncio.run(body())


def test_keys_share_one_hash_tag_and_expire(tmp_path: Path) -> None:
    url = fresh_redis_url()
    with gateway_with_upstream(config(url)) as (gw, _up):
        assert gw.request("GET", "/items")[0] == 200
    prefix = url.split("prefix=")[1]
    keys = sorted(redis_command(url, "--scan", "--pattern", prefix + "*").split())
    head = prefix + "{127.0.0.1}:rate_limit:items::"  # the part every limit shares is the tag: one Cluster slot
    expected = {
        head + "ip-3-per-3600s:g",
        head + "ip-1000-per-day:q:2023-11-14",  # the quota key names its (gateway-clock) day
        head + "ip+route-100-per-1s:g:items",  # gone within 10 ms: kept only while it matters
    }
    assert set(keys) <= expected and len(keys) >= 2
    for key in keys:
        ttl = int(redis_command(url, "PTTL", key))
        assert ttl != -1 and ttl <= 3600 * 1000  # every key expires (-1 would be "never"; -2: already gone)
        redis_command(url, "DEL", key)


def test_one_round_trip_per_request_evalsha_only(tmp_path: Path) -> None:
    with private_redis(tmp_path) as server, gateway_with_upstream(config(server.url)) as (gw, _up):
        assert gw.request("GET", "/items")[0] == 200  # first request: connection set-up, script load
        monitor = Monitor(server.url)
        before = commandstats(server.url)
        status, headers, _ = gw.request("GET", "/items")
        after = commandstats(server.url)
        sent = monitor.client_commands()
        monitor.close()
        assert status == 200 and "ratelimit" in headers
        assert sent.count("EVALSHA") == 1  # three limits, one command ...
        assert [c for c in sent if c not in ("INFO", "EVALSHA")] == []  # ... and nothing else
        assert delta(before, after)["evalsha"] == 1
        assert "eval" not in delta(before, after) and "script" not in delta(before, after)


def test_script_flushed_is_reloaded_with_one_eval(tmp_path: Path) -> None:
    with private_redis(tmp_path) as server, gateway_with_upstream(config(server.url)) as (gw, _up):
        assert gw.request("GET", "/items")[0] == 200
        redis_command(server.url, "SCRIPT", "FLUSH")
        monitor = Monitor(server.url)
        assert gw.request("GET", "/items")[0] == 200
        assert monitor.client_commands() == ["EVALSHA", "EVAL"]  # NOSCRIPT, then EVAL (which caches it)
        assert gw.request("GET", "/items")[0] == 200
        assert monitor.client_commands() == ["EVALSHA"]
        monitor.close()
        assert gw.request("GET", "/items")[0] == 429  # and the counting went on across it


@pytest.mark.parametrize("fail_open", [False, True], ids=["fail-closed", "fail-open"])
def test_unreachable_redis_fails_closed_or_open_and_is_counted(
    fail_open: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="stockade.ratelimit")
    with gateway_with_upstream(config(closed_port_url(), fail_open=fail_open)) as (gw, up):
        for _ in range(3):
            gw.advance(2)  # past the reconnect pause: every request really tries
            status, headers, body = gw.request("GET", "/items")
            if fail_open:
                assert status == 200 and "ratelimit" not in headers
            else:
                assert status == 503 and b'"reason":"rate_limit.unavailable"' in body
                assert "retry-after" not in headers
        events = gw.services.metrics.events
        label = "rate_limit_failed_open" if fail_open else "rate_limit_unavailable"
        assert events[(label, "items")] == 3
        assert events[("limits_backend", "down")] == 1  # logged and counted once per outage
        assert len(up.received) == (3 if fail_open else 0)
    outage_lines = [r for r in caplog.records if r.getMessage().startswith("limits backend unavailable")]
    assert len(outage_lines) == 1 and "cannot connect" in outage_lines[0].getMessage()


def test_outage_then_recovery_without_restart(tmp_path: Path) -> None:
    with private_redis(tmp_path) as server, gateway_with_upstream(config(server.url)) as (gw, _up):
        assert gw.request("GET", "/items")[0] == 200
        server.stop()
        assert gw.request("GET", "/items")[0] == 503
        server.start()  # same port, empty (no persistence): a restarted Redis
        assert gw.request("GET", "/items")[0] == 503  # still within the reconnect pause
        gw.advance(1.0)
        assert [gw.request("GET", "/items")[0] for _ in range(4)] == [200, 200, 200, 429]
        events = gw.services.metrics.events
        assert events[("limits_backend", "down")] == 1 and events[("limits_backend", "up")] == 1


def test_stalled_redis_times_out_to_503_and_counts_survive(tmp_path: Path) -> None:
    url_opts = "?timeout=0.2"
    with private_redis(tmp_path) as server:
        with gateway_with_upstream(config(server.url + url_opts)) as (gw, _up):
            assert gw.request("GET", "/items")[0] == 200
            redis_command(server.url, "CLIENT", "PAUSE", "3000", "ALL")  # Redis hangs, the socket stays open
            try:
                status, _, body = gw.request("GET", "/items")
            finally:
                redis_command(server.url, "CLIENT", "UNPAUSE")
            assert status == 503 and b"rate_limit.unavailable" in body
            gw.advance(1.0)
            # the paused call may have executed once Redis resumed: 1 or 2 of 3 used, never more than 3 pass
            statuses = [gw.request("GET", "/items")[0] for _ in range(3)]
            assert statuses in ([200, 200, 429], [200, 429, 429])


def test_backend_error_surfaces_as_unavailable() -> None:
    async def body() -> None:
        backend = RedisBackend(closed_port_url(), SYSTEM_CLOCK)
        with pytest.raises(LimiterUnavailableError, match="cannot connect"):
            await backend.hit_async([(GCRA, "x", 1, 1, 1)], "")
        with pytest.raises(LimiterUnavailableError, match="waiting before the next attempt"):
            await backend.hit_async([(GCRA, "x", 1, 1, 1)], "")  # no reconnect storm during an outage
        await backend.aclose()

    asyncio.run(body())


def test_wrong_type_key_is_an_outage_not_a_crash() -> None:
    url = fresh_redis_url()

    async def body() -> None:
        backend = RedisBackend(url, SYSTEM_CLOCK)
        key = backend.prefix + "wrongtype"
        await backend.client.call("LPUSH", key, "x")
        with pytest.raises(LimiterUnavailableError, match="WRONGTYPE"):
            await backend.hit_async([(GCRA, key, US, US, 1)], "")
        await backend.client.call("DEL", key)
        await backend.aclose()

    asyncio.run(body())
    assert make_context() is not None


def test_a_server_that_stops_answering_starts_the_retry_pause() -> None:
    """A Redis that accepts and never answers cost every request the whole reply timeout: the docs say a failed
    call starts a `retry` pause, but only a failed connect did. Now a reply timeout does too: calls fail at once
    until the pause is over, then one connects again."""
    from stockade.clock import FakeClock
    from stockade.ratelimit.resp import RedisClient, RedisUnavailableError, RedisUrl

    async def scenario() -> None:
        accepted = 0

        async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal accepted
            accepted += 1
            await reader.read()  # reads everything, answers nothing
            writer.close()

        server = await asyncio.start_server(mute, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clock = FakeClock()
        client = RedisClient(RedisUrl.parse(f"redis://127.0.0.1:{port}/0?timeout=0.05&retry=2"), clock)
        try:
            with pytest.raises(RedisUnavailableError, match="no reply within"):
                await client.call("PING")
            with pytest.raises(RedisUnavailableError, match="waiting before the next attempt"):
                await client.call("PING")  # at once, without another connection or another wait
            assert accepted == 1
            clock.advance(2.1)
            with pytest.raises(RedisUnavailableError, match="no reply within"):
                await client.call("PING")
            assert accepted == 2
        finally:
            await client.close()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
