"""The built-in upstream: a minimal keep-alive HTTP/1.1 server (uvloop + httptools) answering one fixed JSON body.

Used when nginx is not installed (or with `--builtin`). It answers like the nginx upstream does: the same body,
Server, Date, Content-Type and Content-Length, keep-alive unless the client asks to close.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import signal
from typing import cast

import httptools
import uvloop

BODY = b'{"id":42,"name":"stockade","ok":true}'


class _Head:
    """The response head, rebuilt once a second because of the Date header."""

    def __init__(self) -> None:
        self.keep_alive = b""
        self.close = b""
        self.refresh()

    def refresh(self) -> None:
        base = (
            b"HTTP/1.1 200 OK\r\nServer: bench-upstream\r\nDate: "
            + email.utils.formatdate(usegmt=True).encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(BODY)).encode()
        )
        self.keep_alive = base + b"\r\nConnection: keep-alive\r\n\r\n" + BODY
        self.close = base + b"\r\nConnection: close\r\n\r\n" + BODY


HEAD = _Head()


class UpstreamProtocol(asyncio.Protocol):
    """One connection; answers each parsed request at once (pipelined requests are answered in order)."""

    transport: asyncio.Transport

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()

    def on_message_complete(self) -> None:
        if self.parser.should_keep_alive():
            self.transport.write(HEAD.keep_alive)
        else:
            self.transport.write(HEAD.close)
            self.transport.close()


def _tick(loop: asyncio.AbstractEventLoop) -> None:
    HEAD.refresh()
    loop.call_later(1.0, _tick, loop)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, host, port, backlog=4096, reuse_address=True)
    _tick(loop)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
