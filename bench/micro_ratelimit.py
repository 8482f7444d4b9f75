"""Microbenchmarks of the limiter: the memory GCRA check (target <= 2 us), the whole `rate_limit` stage on
memory, and the CPU and wall time of the Redis path (one EVALSHA) sequentially and under concurrency.

    .venv/bin/python bench/micro_ratelimit.py [--redis redis://127.0.0.1:6379/0] [--no-redis]

Numbers on a shared machine are noisy: the best of several repeats is reported (the least disturbed run).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
import timeit
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from stockade.clock import SYSTEM_CLOCK
from stockade.config.loader import load_config_text
from stockade.pipeline.stage import Services
from stockade.pipeline.verdict import Continue, Deny, Skip
from stockade.ratelimit.backend import GCRA, US
from stockade.ratelimit.memory import MemoryBackend
from stockade.runtime import build_runtime
from stockade.testing import make_context

STAGE_CONFIG = """
limits_storage: "{url}"
routes:
  - id: items
    match: {{path: /items}}
    upstream: http://127.0.0.1:9
    stages:
      - use: anonymous
      - use: rate_limit
        config: {{limits: [{{rate: "1000000/second", key: ip}}]}}
"""


def best_us(stmt: object, number: int, repeat: int = 7) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number * 1e6  # type: ignore[arg-type]


def memory_gcra() -> float:
    backend = MemoryBackend(SYSTEM_CLOCK)
    hits = [(GCRA, "{127.0.0.1}:rate_limit:items::ip:g", 1, 10**12, 1)]  # never refuses: measures the check
    return best_us(lambda: backend.hit(hits, ""), 200_000)


def stage_check(url: str) -> tuple[float, object]:
    """One `rate_limit` check on a fresh context, driven as the runner drives it (no event loop needed)."""
    loaded = load_config_text(STAGE_CONFIG.format(url=url), env={})
    runtime = build_runtime(loaded, Services(clock=SYSTEM_CLOCK))
    stage = runtime.routes["items"].pipeline.slots[1].stage
    ctx = make_context(path="/items", client_ip="198.51.100.7")
    ctx.route_id = "items"

    def once() -> None:
        ctx.state = {}
        result = stage.check(ctx)
        if isinstance(result, (Continue, Skip, Deny)):
            return
        try:
            result.send(None)
        except StopIteration:
            return
        raise RuntimeError("the memory limiter awaited")

    return best_us(once, 100_000), stage


async def redis_path(url: str, n: int) -> dict[str, float]:
    from stockade.ratelimit.redis import RedisBackend

    backend = RedisBackend(f"{url}?prefix=bench{secrets.token_hex(4)}:", SYSTEM_CLOCK)
    hits = [(GCRA, backend.prefix + "{127.0.0.1}:bench:g", US // 1_000_000 or 1, 10**12, 1)]
    await backend.hit_async(hits, "")
    out: dict[str, float] = {}
    for label, concurrent in (("sequential", False), ("concurrent x50", True)):
        best_cpu, best_wall = float("inf"), float("inf")
        for _ in range(5):
            c0, w0 = time.process_time(), time.perf_counter()
            if concurrent:
                for _ in range(n // 50):
                    await asyncio.gather(*(backend.hit_async(hits, "") for _ in range(50)))
            else:
                for _ in range(n):
                    await backend.hit_async(hits, "")
            best_cpu = min(best_cpu, (time.process_time() - c0) / n * 1e6)
            best_wall = min(best_wall, (time.perf_counter() - w0) / n * 1e6)
        out[f"redis {label}: CPU us/check"] = best_cpu
        out[f"redis {label}: wall us/check"] = best_wall
    await backend.client.call_on(hits[0][1], "DEL", hits[0][1])
    await backend.aclose()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    p.add_argument("--no-redis", action="store_true")
    p.add_argument("--requests", type=int, default=5000)
    args = p.parse_args()
    rows = {"memory GCRA check (backend, one limit): us": memory_gcra()}
    rows["rate_limit stage check on memory (keys, headers state): us"] = stage_check("memory://")[0]
    if not args.no_redis:
        import uvloop

        rows.update(uvloop.run(redis_path(args.redis, args.requests)))
    width = max(map(len, rows))
    for name, value in rows.items():
        print(f"{name:<{width}}  {value:8.2f}")


if __name__ == "__main__":
    main()
