"""The shipped test harness: a real upstream, a real gateway on a background loop, contexts, a fake clock.

Users test their own policies with it the way we test ours::

    with TestUpstream() as up, TestGateway(config_text.replace("UPSTREAM", up.url)) as gw:
        status, headers, body = gw.request("GET", "/api/books")
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, urlsplit

import httptools
import orjson

from stockade.clock import Clock, FakeClock
from stockade.config.loader import load_config_text
from stockade.observability.decision_log import DecisionLog
from stockade.pipeline.context import RequestContext
from stockade.pipeline.headers import Headers
from stockade.pipeline.stage import Services, Stage
from stockade.pipeline.verdict import Continue, Deny, Skip
from stockade.runtime import build_runtime, log_load_warnings

__all__ = [
    "BackgroundLoop",
    "FakeClock",
    "Reply",
    "TestGateway",
    "TestUpstream",
    "http_request",
    "make_context",
    "run_stage",
]

T = TypeVar("T")


def make_context(
    method: str = "GET",
    path: str = "/",
    *,
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    query: str = "",
    client_ip: str = "127.0.0.1",
    scheme: str = "http",
    host: str = "localhost",
    body: bytes | None = None,
    clock: Clock | None = None,
) -> RequestContext:
    """A RequestContext as a front would build it, for exercising a stage directly."""
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    ctx = RequestContext(
        request_id="test-request",
        method=method,
        path=path,
        raw_path=path,
        query=query,
        headers=Headers([(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]),
        client_ip=client_ip,
        peer_ip=client_ip,
        host=host,
        scheme=scheme,
        clock=clock or FakeClock(),
    )
    if body is not None:
        ctx.attach_body_source(_FixedBody(body))
    return ctx


class _FixedBody:
    """The body of a test request, read as a front's exchange would give it."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    async def read_request_body(self) -> bytes:
        return self.body


def run_stage(stage: Stage, ctx: RequestContext) -> Continue | Skip | Deny:
    """Run one stage's check to completion (on a private loop if it awaits)."""
    return asyncio.run(checked(stage.check(ctx)))


async def checked(
    result: Continue | Skip | Deny | Coroutine[Any, Any, Continue | Skip | Deny],
) -> Continue | Skip | Deny:
    """`await checked(stage.check(ctx))`: the verdict, whether `check` returned it or a coroutine for it."""
    if isinstance(result, (Continue, Skip, Deny)):
        return result
    return await result


class BackgroundLoop:
    """An event loop (uvloop) on a daemon thread; `run()` executes a coroutine there and waits for it."""

    def __init__(self) -> None:
        import uvloop

        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="stockade-test-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Any, *args: Any) -> Any:
        async def _call() -> Any:
            return fn(*args)

        return self.run(_call())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self.loop.is_running():
            self.loop.close()


# --------------------------------------------------------------------------------------------------------------
# A real upstream


@dataclass
class Received:
    """A request as the upstream saw it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    version: str

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]


@dataclass
class Reply:
    """A canned response the upstream sends for a path (set with `TestUpstream.reply`)."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    raw: bytes | None = None  # exact bytes to write instead (malformed responses, 1xx, close-delimited)
    close: bool = False


class _UpstreamProtocol(asyncio.Protocol):
    def __init__(self, owner: TestUpstream) -> None:
        self.owner = owner
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.tunnel = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop transports do not subclass asyncio.Transport
        self.transport = transport
        self.owner.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.owner.tunnels:
            self.owner.tunnels.remove(self)

    def data_received(self, data: bytes) -> None:
        if self.tunnel:
            owner = self.owner
            owner.tunnel_received += data
            if owner.tunnel_echo:
                assert self.transport is not None  # noqa: S101
                self.transport.write(b"echo:" + data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            assert self.transport is not None  # noqa: S101
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        rec = Received(
            method=self.parser.get_method().decode(),
            target=self.url.decode("latin-1"),
            headers=self.headers,
            body=b"".join(self.body),
            version=self.parser.get_http_version(),
        )
        self.owner.received.append(rec)
        asyncio.get_running_loop().create_task(self._respond(rec))

    async def _respond(self, rec: Received) -> None:
        owner = self.owner
        if owner.hold is not None:
            await owner.hold.wait()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        path = urlsplit(rec.target).path
        reply = owner.replies.get(path)
        if reply is None:
            if path == "/ws" and rec.header("upgrade"):  # accepted, unless a reply was set (a refusal)
                transport.write(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                )
                self.tunnel = True
                self.owner.tunnels.append(self)
                return
            reply = _dynamic_reply(rec, path)
        if reply.raw is not None:
            transport.write(reply.raw)
        else:
            lines = [f"HTTP/1.1 {reply.status} X\r\n".encode()]
            names = {k.lower() for k, _ in reply.headers}
            for k, v in reply.headers:
                lines.append(f"{k}: {v}\r\n".encode("latin-1"))
            no_body = reply.status in (204, 304) or reply.status < 200
            if "content-length" not in names and "transfer-encoding" not in names and not no_body:
                lines.append(f"Content-Length: {len(reply.body)}\r\n".encode())
            lines.append(b"\r\n")
            if rec.method != "HEAD" and not no_body:
                lines.append(reply.body)
            transport.write(b"".join(lines))
        if reply.close:
            transport.close()


def _dynamic_reply(rec: Received, path: str) -> Reply:
    """Built-in behaviours by path; anything else echoes the request as JSON."""
    parts = path.strip("/").split("/")
    if parts[0] == "status" and len(parts) > 1:
        return Reply(int(parts[1]), [("Content-Type", "text/plain")], b"status")
    if parts[0] == "bytes" and len(parts) > 1:
        return Reply(200, [("Content-Type", "application/octet-stream")], b"x" * int(parts[1]))
    if parts[0] == "chunked":
        n = int(parts[1]) if len(parts) > 1 else 3
        chunks = b"".join(b"%x\r\n%b\r\n" % (5, b"chunk") for _ in range(n)) + b"0\r\n\r\n"
        return Reply(200, [("Transfer-Encoding", "chunked"), ("Content-Type", "text/plain")], chunks)
    if parts[0] == "headers":
        return Reply(200, parse_qsl(urlsplit(rec.target).query), b"{}")
    if parts[0] == "fixed":
        return Reply(200, [("Content-Type", "application/json")], b'{"hello":"world"}')
    doc = {
        "method": rec.method,
        "target": rec.target,
        "headers": rec.headers,
        "body_len": len(rec.body),
        "version": rec.version,
    }
    return Reply(200, [("Content-Type", "application/json"), ("Server", "test-upstream/1.0")], orjson.dumps(doc))


class TestUpstream:
    """A real HTTP/1.1 upstream on 127.0.0.1 that records what it receives.

    Paths: `/status/N`, `/bytes/N`, `/chunked/N`, `/headers?Name=value` (reflected as response headers),
    `/fixed`, `/ws` (answers an upgrade with 101 then echoes, unless `tunnel_echo` is off; `push` sends unasked);
    anything else echoes the request as JSON.
    `reply(path, Reply(...))` overrides a path; `hold()`/`release()` stall every response.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, loop: BackgroundLoop | None = None, *, ssl_context: Any = None) -> None:
        self._own_loop = loop is None
        self.bg = loop or BackgroundLoop()
        self.received: list[Received] = []
        self.replies: dict[str, Reply] = {}
        self.hold: asyncio.Event | None = None
        self.connections = 0
        self.tunnels: list[_UpstreamProtocol] = []  # open WebSocket tunnels
        self.tunnel_received = b""  # everything the tunnels received
        self.tunnel_echo = True
        self._ssl = ssl_context
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def __enter__(self) -> TestUpstream:
        async def start() -> None:
            self._server = await asyncio.get_running_loop().create_server(
                lambda: _UpstreamProtocol(self), "127.0.0.1", 0, ssl=self._ssl
            )
            self.port = self._server.sockets[0].getsockname()[1]

        self.bg.run(start())
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()

        self.bg.run(stop())
        if self._own_loop:
            self.bg.stop()

    def reply(self, path: str, reply: Reply) -> None:
        self.replies[path] = reply

    def push(self, data: bytes) -> None:
        """Send `data` down every open WebSocket tunnel, unasked (a server pushing a message)."""

        async def write() -> None:
            for proto in self.tunnels:
                if proto.transport is not None:
                    proto.transport.write(data)

        self.bg.run(write())

    def stall(self) -> None:
        """Hold every response until `release()`."""

        async def make() -> None:
            self.hold = asyncio.Event()

        self.bg.run(make())

    def release(self) -> None:
        async def go() -> None:
            if self.hold is not None:
                self.hold.set()
                self.hold = None

        self.bg.run(go())


# --------------------------------------------------------------------------------------------------------------
# A real gateway


class TestGateway:
    """The proxy on 127.0.0.1 (ephemeral port) on a background loop, with a fake clock for timeouts.

    Call `advance(seconds)` to move the clock and run the deadline sweep: no test needs to sleep.
    """

    __test__ = False

    def __init__(
        self,
        config_text: str,
        *,
        loop: BackgroundLoop | None = None,
        base_dir: Path | None = None,
        clock: FakeClock | None = None,
        log_path: Path | None = None,
    ) -> None:
        from stockade.proxy.server import ProxyServer

        self._own_loop = loop is None
        self.bg = loop or BackgroundLoop()
        self.clock = clock or FakeClock()
        loaded = load_config_text(config_text, base_dir=base_dir, env={})
        self.services = Services(clock=self.clock)
        runtime = build_runtime(loaded, self.services)
        log_load_warnings(runtime)  # as `serve` with one process does
        target = str(log_path) if log_path is not None else "off"
        self.server = ProxyServer(runtime, clock=self.clock, decision_log=DecisionLog(target, self.clock))
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "https" if self.server.runtime.config.listen.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def __enter__(self) -> TestGateway:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        self.bg.run(self.server.start(sock=sock))
        return self

    def __exit__(self, *exc: object) -> None:
        self.bg.run(self.server.close())
        if self._own_loop:
            self.bg.stop()

    def advance(self, seconds: float) -> None:
        """Move the fake clock and run the deadline sweep, both on the gateway's loop (so nothing the loop is
        doing sees the clock move halfway)."""

        def step() -> None:
            self.clock.advance(seconds)
            self.server.sweep()

        self.bg.call(step)

    def reload(self, config_text: str, base_dir: Path | None = None) -> None:
        loaded = load_config_text(config_text, base_dir=base_dir, env={})
        runtime = build_runtime(loaded, self.services)
        log_load_warnings(runtime)
        self.bg.call(self.server.reload, runtime)

    def flush_log(self) -> None:
        self.bg.call(self.server.decision_log.flush)

    def connect(self, timeout: float = 10.0) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return sock

    def request(
        self,
        method: str,
        target: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        timeout: float = 10.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request on a fresh connection; returns (status, lower-cased headers, body)."""
        hdrs = {"Host": "localhost", "Connection": "close", **(headers or {})}
        if body and "Content-Length" not in hdrs and "Transfer-Encoding" not in hdrs:
            hdrs["Content-Length"] = str(len(body))
        raw = (
            f"{method} {target} HTTP/1.1\r\n".encode()
            + b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in hdrs.items())
            + b"\r\n"
            + body
        )
        with self.connect(timeout) as sock:
            sock.sendall(raw)
            responses = read_responses(sock, 1, head_request=method == "HEAD")
        return responses[0]


def http_request(
    sock: socket.socket, raw: bytes, count: int = 1, *, head_request: bool = False
) -> list[tuple[int, dict[str, str], bytes]]:
    """Send raw bytes and read `count` responses."""
    sock.sendall(raw)
    return read_responses(sock, count, head_request=head_request)


class _ResponseReader:
    def __init__(self, head_request: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.head_request = head_request
        self.done: list[tuple[int, dict[str, str], bytes]] = []
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.complete = False

    def on_message_begin(self) -> None:
        self.headers = {}
        self.body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        v = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {v}" if key in self.headers else v

    def on_headers_complete(self) -> None:
        if self.head_request or self.parser.get_status_code() == 101:
            self._emit()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if not (self.head_request or self.parser.get_status_code() == 101):
            self._emit()

    def _emit(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return
        self.done.append((status, self.headers, b"".join(self.body)))


def read_responses(
    sock: socket.socket, count: int, *, head_request: bool = False
) -> list[tuple[int, dict[str, str], bytes]]:
    """Read `count` complete responses (or fewer, if the server closes first)."""
    reader = _ResponseReader(head_request)
    while len(reader.done) < count:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not data:
            with contextlib.suppress(httptools.HttpParserError):
                reader.parser.feed_data(b"")
            if reader.body and not reader.done:
                reader._emit()
            break
        try:
            reader.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            break
        if head_request and reader.done:
            reader.parser = httptools.HttpResponseParser(reader)
    return reader.done


@contextlib.contextmanager
def gateway_with_upstream(config_template: str, **kw: Any) -> Iterator[tuple[TestGateway, TestUpstream]]:
    """A gateway and an upstream on one background loop; `{upstream}` in the template is the upstream URL."""
    bg = BackgroundLoop()
    try:
        with TestUpstream(bg) as up, TestGateway(config_template.replace("{upstream}", up.url), loop=bg, **kw) as gw:
            yield gw, up
    finally:
        bg.stop()
