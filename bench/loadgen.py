"""The built-in load generator: N keep-alive connections in a closed loop (uvloop + httptools), wrk-like output.

Used when wrk is not installed (or with `--builtin`). Every connection sends a request, waits for the whole
response, records its latency and sends the next. All connections are open before the measured window starts;
CPU time of the processes named by `--cpu NAME=PID,PID` is read at exactly the window's start and end.
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import time
from typing import cast

import httptools
import uvloop

from bench.procfs import cpu_spent, cpu_split


class Generator:
    """Shared state of one run: the request bytes, the window flag and what was measured inside it."""

    def __init__(self, host: str, port: int, request: bytes) -> None:
        self.host, self.port, self.request = host, port, request
        self.measuring = False
        self.stopped = False
        self.latencies_ns: list[int] = []
        self.bad_status = 0
        self.socket_errors = 0
        self.reconnects: set[asyncio.Task[None]] = set()

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: Connection(self), self.host, self.port)


class Connection(asyncio.Protocol):
    """One client connection; reconnects (and counts a socket error) if the server drops it mid-response."""

    transport: asyncio.Transport

    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.parser = httptools.HttpResponseParser(self)
        self.sent_ns = 0
        self.waiting = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.gen.measuring:  # a reconnect during the window: carry on at once
            self.send()

    def send(self) -> None:
        self.waiting = True
        self.sent_ns = time.perf_counter_ns()
        self.transport.write(self.gen.request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.gen.socket_errors += 1
            self.transport.close()

    def on_message_complete(self) -> None:
        gen = self.gen
        self.waiting = False
        if gen.measuring:
            gen.latencies_ns.append(time.perf_counter_ns() - self.sent_ns)
            if not 200 <= self.parser.get_status_code() < 400:
                gen.bad_status += 1
        if gen.stopped:
            self.transport.close()
        elif self.parser.should_keep_alive():
            self.send()
        else:
            self.transport.close()  # connection_lost reconnects

    def connection_lost(self, exc: Exception | None) -> None:
        gen = self.gen
        if gen.stopped:
            return
        if self.waiting and gen.measuring:
            gen.socket_errors += 1
        task = asyncio.get_running_loop().create_task(gen.connect())
        gen.reconnects.add(task)
        task.add_done_callback(gen.reconnects.discard)


def percentile_us(sorted_ns: list[int], q: float) -> float:
    """Nearest-rank percentile, in microseconds."""
    if not sorted_ns:
        return 0.0
    return sorted_ns[max(0, math.ceil(q * len(sorted_ns)) - 1)] / 1000


async def run(args: argparse.Namespace) -> dict[str, object]:
    head = [f"GET {args.path} HTTP/1.1", f"Host: {args.host}:{args.port}", *args.header]
    gen = Generator(args.host, args.port, ("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    groups = {name: [int(p) for p in pids.split(",")] for name, _, pids in (c.partition("=") for c in args.cpu)}
    conns = []
    for _ in range(args.connections):
        _, proto = await asyncio.get_running_loop().create_connection(lambda: Connection(gen), args.host, args.port)
        conns.append(proto)
    cpu0 = {name: cpu_split(pids) for name, pids in groups.items()}
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    gen.measuring = True
    for conn in conns:
        conn.send()
    await asyncio.sleep(args.duration)
    gen.measuring = False
    seconds = time.perf_counter() - t0
    cpu, kernel = cpu_spent(groups, cpu0)
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    gen.stopped = True
    for conn in conns:
        conn.transport.close()
    lat = sorted(gen.latencies_ns)
    cpu["loadgen"] = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    return {
        "tool": "builtin",
        "requests": len(lat),
        "seconds": seconds,
        "rps": len(lat) / seconds,
        "p50_us": percentile_us(lat, 0.50),
        "p99_us": percentile_us(lat, 0.99),
        "errors": {"status": gen.bad_status, "socket": gen.socket_errors},
        "cpu_seconds": cpu,
        "kernel_cpu_seconds": kernel,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--header", action="append", default=[], help="an extra request header, 'Name: value'")
    parser.add_argument("--cpu", action="append", default=[], help="NAME=PID[,PID...]: CPU time to read")
    args = parser.parse_args()
    print(json.dumps(uvloop.run(run(args))))


if __name__ == "__main__":
    main()
