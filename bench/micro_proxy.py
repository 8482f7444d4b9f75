"""In-process CPU cost of one proxied request, without sockets: the whole Python request path of a profile.

The real `ClientConnection` parses wrk's request, the route's pipeline runs, the rebuilt head is "written" to a
pooled `UpstreamConnection`, nginx's response is fed back to it and the answer "written" to the client; the
decision log goes to a real file. Only the transports are stand-ins (they record writes), so this measures
exactly the Python user time that `make bench` cannot separate from the kernel's, with far less noise:

    .venv/bin/python bench/micro_proxy.py [--profiles stockade-bare,api-key] [--requests 20000] [--rounds 7]

Use it to compare two commits (or a change and its parent) on the same machine; `make bench` stays the
end-to-end measure. Under `valgrind --tool=callgrind` it gives instruction counts that do not drift.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.profiles import PROFILES, Profile, SetupEnv
from bench.servers import stockade_config
from bench.upstream import BODY
from stockade.clock import SYSTEM_CLOCK
from stockade.config.loader import load_config
from stockade.pipeline.stage import Services
from stockade.proxy.client import ClientConnection
from stockade.proxy.server import ProxyServer
from stockade.proxy.upstream import UpstreamConnection
from stockade.runtime import build_runtime

UPSTREAM_PORT = 9  # never connected: the upstream connection is pre-pooled with a recording transport
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 24 Nov 2026 04:00:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n%b" % (len(BODY), BODY)
)


class RecordingTransport:
    """Enough of an asyncio transport for the proxy: it keeps the last write and never blocks."""

    def __init__(self) -> None:
        self.last = b""
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.last = data
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        raise AssertionError("the proxy closed a connection the harness keeps alive")

    abort = close


def wrk_request(headers: Mapping[str, str]) -> bytes:
    """What wrk sends for `-H` headers: the request line, Host, then the extra headers."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"GET /api/items/1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n{extra}\r\n".encode("latin-1")


class Harness:
    """One profile's gateway with a client connection and a pooled upstream connection."""

    def __init__(self, profile: Profile, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "stockade.json"
        config = stockade_config(profile, 8080, UPSTREAM_PORT, workdir)
        config_path.write_text(json.dumps(config))  # JSON is YAML
        headers: dict[str, str] = dict(profile.headers)
        if profile.setup is not None:
            headers.update(profile.setup(SetupEnv(workdir, config_path, sys.executable)))
        self.request = wrk_request(headers)
        loaded = load_config(config_path)
        self.runtime = build_runtime(loaded, Services(clock=SYSTEM_CLOCK, workers=1))
        self.server = ProxyServer(self.runtime)
        route = self.runtime.routes["bench"]
        assert route.upstream is not None  # noqa: S101 - the bench route always has one
        self.pool = self.server.pools.get(route.upstream)
        self.upstream = UpstreamConnection(self.pool)
        self.up_transport = RecordingTransport()
        self.upstream.connection_made(self.up_transport)  # type: ignore[arg-type]
        self.pool.idle.append(self.upstream)
        self.client = ClientConnection(self.server)
        self.transport = RecordingTransport()
        self.client.connection_made(self.transport)  # type: ignore[arg-type]

    def check(self) -> None:
        answer = self.transport.last
        if not answer.startswith(b"HTTP/1.1 200 ") or not answer.endswith(BODY):
            raise SystemExit(f"unexpected answer {answer[:300]!r}")

    async def measure(self, requests: int) -> float:
        """CPU µs per request of the event-loop thread (thread_time) over `requests` requests.

        A request whose pipeline awaits I/O (a cache entry due for a re-read) is finished on the loop; the loop
        also gets a turn between measurements, so background work (the key change feed) stays current."""
        client, upstream, up_transport, request = self.client, self.upstream, self.up_transport, self.request
        done = 0
        t0 = time.thread_time()
        while done < requests:
            writes = up_transport.writes
            client.data_received(request)
            while up_transport.writes == writes:
                await asyncio.sleep(0.001)
            upstream.data_received(RESPONSE)
            done += 1
        return (time.thread_time() - t0) / requests * 1e6


async def run(names: list[str], requests: int, rounds: int) -> dict[str, float]:
    profiles = [p for p in PROFILES if p.name in names]
    results: dict[str, list[float]] = {p.name: [] for p in profiles}
    with tempfile.TemporaryDirectory(prefix="stockade-micro-") as tmp:
        harnesses = []
        for p in profiles:
            h = Harness(p, Path(tmp) / p.name)
            await h.measure(50)
            h.check()
            harnesses.append((p.name, h))
        gc.collect()
        gc.freeze()  # as `stockade serve` does after start-up
        for _ in range(rounds):  # interleaved, so drift hits every profile alike
            for name, h in harnesses:
                results[name].append(await h.measure(requests))
                h.check()
                await asyncio.sleep(0.02)
    return {name: sorted(v)[len(v) // 2] for name, v in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", default="stockade-bare,stockade-bare-nolog,api-key,jwt-cached")
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    names = [n.strip() for n in args.profiles.split(",") if n.strip()]
    known = {p.name for p in PROFILES if p.kind == "stockade"}
    if unknown := set(names) - known:
        raise SystemExit(f"unknown stockade profile(s) {sorted(unknown)}; known: {sorted(known)}")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    medians = asyncio.run(run(names, args.requests, args.rounds))
    base = medians.get("stockade-bare")
    print(f"{'profile':28} {'µs/request':>10} {'over bare':>10}")
    for name, us in medians.items():
        over = f"{us - base:+.2f}" if base is not None and name != "stockade-bare" else ""
        print(f"{name:28} {us:10.2f} {over:>10}")


if __name__ == "__main__":
    main()
