"""Accuracy with real processes and Redis: a burst of 200 concurrent requests against a limit of 50 admits
exactly 50 - across two workers of one gateway, and across two gateways on different ports, on standalone
Redis and on Redis Cluster."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from stockade.testing import TestUpstream
from tests.ratelimit.clusterutil import fresh_cluster_url
from tests.ratelimit.redisutil import free_port, fresh_redis_url

pytestmark = [pytest.mark.redis, pytest.mark.slow]
each_redis = pytest.mark.parametrize("redis", [fresh_redis_url, fresh_cluster_url], ids=["standalone", "cluster"])

CONFIG = """
listen: {{host: 127.0.0.1, port: {port}}}
admin: {{host: 127.0.0.1, port: {admin}}}
limits_storage: "{redis}"
log: {{decisions: "off", level: warning}}
routes:
  - id: limited
    match: {{path: /limited}}
    upstream: "{upstream}"
    stages:
      - use: anonymous
      - use: rate_limit
        config:
          limits:
            - {{rate: "50/hour", key: ip}}
"""


@contextlib.contextmanager
def gateway(tmp_path: Path, name: str, redis: str, upstream: str, *args: str) -> Iterator[int]:
    """`stockade serve` as a subprocess; yields its port once /readyz says every worker serves."""
    port, admin = free_port(), free_port()
    config = tmp_path / f"{name}.yaml"
    config.write_text(CONFIG.format(port=port, admin=admin, redis=redis, upstream=upstream))
    log = (tmp_path / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stockade", "serve", "--config", str(config), *args], stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # waiting for real processes to start, not timing the code under test
            assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            assert time.monotonic() < deadline, "gateway did not become ready"
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


async def burst(ports: list[int], n: int) -> list[tuple[int, str]]:
    """Open `n` connections spread over `ports`, then send every request at once; (status, request id)."""
    conns = [await asyncio.open_connection("127.0.0.1", ports[i % len(ports)]) for i in range(n)]
    request = b"GET /limited HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    for _, writer in conns:
        writer.write(request)
    await asyncio.gather(*(w.drain() for _, w in conns))
    raw = await asyncio.gather(*(r.read() for r, _ in conns))
    for _, writer in conns:
        writer.close()
    out = []
    for data in raw:
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        doc = orjson.loads(body)
        if status == 200:  # the test upstream echoes the request, with the id the gateway sent it
            rid = next(v for k, v in doc["headers"] if k.lower() == "x-request-id")
        else:
            rid = doc["request_id"]
        out.append((status, rid))
    return out


@each_redis
def test_two_workers_admit_exactly_the_limit(tmp_path: Path, redis: Callable[[], str]) -> None:
    with TestUpstream() as up, gateway(tmp_path, "gw", redis(), up.url, "--workers", "2") as port:
        results = asyncio.run(burst([port], 200))
    assert Counter(s for s, _ in results) == {200: 50, 429: 150}
    assert len(up.received) == 50
    workers = {rid[:8] for _, rid in results}  # a request id starts with its worker's random prefix
    assert len(workers) == 2  # both workers answered (and so both counted) part of the burst


@each_redis
def test_two_gateways_sharing_redis_admit_exactly_the_limit(tmp_path: Path, redis: Callable[[], str]) -> None:
    url = redis()
    with TestUpstream() as up, gateway(tmp_path, "a", url, up.url) as a, gateway(tmp_path, "b", url, up.url) as b:
        results = asyncio.run(burst([a, b], 200))
    assert Counter(s for s, _ in results) == {200: 50, 429: 150}
    assert len(up.received) == 50
    assert len({rid[:8] for _, rid in results}) == 2  # both gateways answered (and counted) part of the burst
