"""The floor: the smallest proxy of stockade's design, to show what the design itself costs on this machine.

asyncio.Protocol on uvloop with httptools (llhttp) on both sides, a pooled keep-alive upstream, the request
head rebuilt from parsed parts and the response forwarded verbatim: DESIGN.md section 2's prototype. No
pipeline, routing, limits, timeouts, decision log or metrics, and GETs without bodies only (a HEAD would hang:
it does not tell llhttp that the response has no body). It is not a
gateway; `make bench` runs it so that stockade's distance from nginx can be split into what the design costs
(this row) and what stockade's own per-request work costs (the distance from this row to stockade-bare).

    python -m bench.floor_proxy PORT UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque

import httptools
import uvloop

_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding", b"upgrade"})


class Upstream(asyncio.Protocol):
    """One keep-alive upstream connection: bytes go to the client as they come; llhttp finds the end."""

    def __init__(self, pool: list[Upstream]) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.client: Client | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            return
        client.write(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        self.pool.append(self)
        if client is not None:
            client.done()

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool:
            self.pool.remove(self)
        if self.client is not None:
            self.client.abort()


class Client(asyncio.Protocol):
    """One client connection: requests are parsed, rebuilt and served one at a time, in order."""

    def __init__(self, upstream: tuple[str, int], pool: list[Upstream]) -> None:
        self.upstream = upstream
        self.pool = pool
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[bytes] = deque()
        self.busy = False
        self.url = b""
        self.lines: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.abort()

    def on_message_begin(self) -> None:
        self.url = b""
        self.lines = [b""]

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in _HOP:
            self.lines.append(name + b": " + value)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None  # an upstream still answering writes into nothing, then returns to the pool

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        self.lines[0] = method + b" " + self.url + b" HTTP/1.1"
        self.lines.append(b"X-Forwarded-For: 127.0.0.1\r\n\r\n")
        self.queue.append(b"\r\n".join(self.lines))
        if not self.busy:
            self.send()

    def send(self) -> None:
        head = self.queue.popleft()
        self.busy = True
        if self.pool:
            up = self.pool.pop()
            up.client = self
            assert up.transport is not None  # noqa: S101 - pooled connections are connected
            up.transport.write(head)
        else:
            asyncio.get_running_loop().create_task(self.connect(head))

    async def connect(self, head: bytes) -> None:
        try:
            transport, up = await asyncio.get_running_loop().create_connection(
                lambda: Upstream(self.pool), *self.upstream
            )
        except OSError:
            self.abort()
            return
        up.client = self
        transport.write(head)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def done(self) -> None:
        self.busy = False
        if self.queue:
            self.send()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def serve(port: int, upstream_port: int) -> None:
    pool: list[Upstream] = []
    upstream = ("127.0.0.1", upstream_port)
    server = await asyncio.get_running_loop().create_server(
        lambda: Client(upstream, pool), "127.0.0.1", port, backlog=4096
    )
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python -m bench.floor_proxy PORT UPSTREAM_PORT")
    uvloop.run(serve(int(argv[0]), int(argv[1])))


if __name__ == "__main__":
    main(sys.argv[1:])
