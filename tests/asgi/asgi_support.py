"""Test support for the ASGI middleware: the config both fronts run, uvicorn on a real socket, raw clients."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import uvicorn

from stockade.asgi import StockadeMiddleware
from stockade.clock import FakeClock
from stockade.testing import BackgroundLoop, read_responses

# -- the config both fronts run -------------------------------------------------------------------------------

CONFIG = """
trusted_proxies: ["127.0.0.1/32"]
limits:
  max_body_bytes: 4096
routes:
  - id: public
    match: {path: "/public/**"}
    UPSTREAM
    stages: [{use: anonymous}, {use: security_headers}]
  - id: admin
    match: {path: "/admin"}
    UPSTREAM
    stages: [{use: ip_filter, config: {allow: ["10.0.0.0/8"]}}, {use: anonymous}]
  - id: blocked
    match: {path: "/blocked"}
    UPSTREAM
    stages: [{use: ip_filter, config: {deny: ["203.0.113.0/24"]}}, {use: anonymous}]
  - id: upload
    match: {path: "/upload", methods: [POST]}
    UPSTREAM
    stages: [{use: anonymous}, {use: request_size, config: {max_bytes: 64}}]
  - id: inspect
    match: {path: "/inspect", methods: [POST]}
    UPSTREAM
    stages: [{use: anonymous}, {use: test_body_reader}, {use: request_size, config: {max_bytes: 64}}]
  - id: health
    match: {path: "/health", methods: [GET]}
    handler: {use: static, config: {body: '{"ok":true}', headers: {x-powered-by: static}}}
    stages: [{use: anonymous}, {use: security_headers}]
  - id: boom
    match: {path: "/boom"}
    UPSTREAM
    stages: [{use: anonymous}, {use: test_raise}]
  - id: slow
    match: {path: "/slow"}
    UPSTREAM
    stages: [{use: anonymous}, {use: test_stall}]
  - id: shout
    match: {path: "/shout/**"}
    UPSTREAM
    stages: [{use: anonymous}, {use: test_upper}]
  - id: hook-bug
    match: {path: "/hookbug"}
    UPSTREAM
    stages: [{use: anonymous}, {use: test_hook_raise}]
  - id: slow-handler
    match: {path: "/slow-handler"}
    handler: {use: test_stall_handler}
    stages: [{use: anonymous}]
  - id: early
    match: {path: "/raw/early", methods: [POST]}
    UPSTREAM
    stages: [{use: anonymous}, {use: request_size, config: {max_bytes: 64}}]
  - id: probe
    match: {path: "/probe/**"}
    UPSTREAM
    stages: [{use: anonymous}, {use: test_probe}]
  - id: ws
    match: {path: "/ws", methods: [GET]}
    UPSTREAM
    websocket: true
    stages: [{use: anonymous}]
  - id: ws-denied
    match: {path: "/ws-denied", methods: [GET]}
    UPSTREAM
    websocket: true
    stages: [{use: ip_filter, config: {allow: ["10.0.0.0/8"]}}, {use: anonymous}]
  - id: ws-plain
    match: {path: "/ws-plain", methods: [GET]}
    UPSTREAM
    stages: [{use: anonymous}]
"""


def direct_scope(
    kind: str = "http", path: str = "/", headers: list[tuple[bytes, bytes]] | None = None, **over: Any
) -> dict[str, Any]:
    """A scope as a server would hand the middleware, for tests that call it without a server."""
    scope: dict[str, Any] = {
        "type": kind,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http" if kind == "http" else "ws",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers if headers is not None else [(b"host", b"localhost")],
        "client": ("192.0.2.1", 5000),
        "server": ("192.0.2.2", 80),
    }
    if kind == "http":
        scope["method"] = "GET"
    else:
        scope["subprotocols"] = []
    scope.update(over)
    return scope


@dataclass
class Sent:
    """What the middleware sent the server for one scope it was called with directly."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    messages: list[dict[str, Any]]

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n.lower() == name), None)


def call_direct(app: Any, scope: dict[str, Any], body: bytes = b"") -> Sent:
    """Call `app` with `scope` (and one request body message) without a server: what it sent, in order.

    An exception from the app propagates, as it would to a server.
    """
    messages: list[dict[str, Any]] = []
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    if scope["type"] == "websocket":
        incoming = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        return {"type": "http.disconnect" if scope["type"] == "http" else "websocket.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    asyncio.run(app(scope, receive, send))
    start = next((m for m in messages if m["type"].endswith("http.response.start")), None)
    return Sent(
        int(start["status"]) if start else 0,
        list(start.get("headers", [])) if start else [],
        b"".join(m.get("body", b"") for m in messages if m["type"].endswith("http.response.body")),
        messages,
    )


def config_text(upstream: str | None = None) -> str:
    """The config for the middleware (no upstreams) or, given a URL, for the proxy."""
    return CONFIG.replace("UPSTREAM", f"upstream: {upstream}" if upstream else "")


class AsgiServer:
    """uvicorn (httptools, websockets) serving `app` on 127.0.0.1 on a background loop.

    uvicorn's own X-Forwarded-For handling is off, as the docs tell users: Stockade decides who the client is.
    """

    def __init__(self, app: Any, loop: BackgroundLoop, lifespan: str = "on") -> None:
        self.bg = loop
        self.config = uvicorn.Config(
            app,
            log_level="warning",
            proxy_headers=False,
            server_header=False,
            date_header=False,
            http="httptools",
            ws="websockets-sansio",
            lifespan=lifespan,
        )
        self.server = uvicorn.Server(self.config)
        self.sock: socket.socket | None = None
        self.port = 0

    def __enter__(self) -> AsgiServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.config.load()
        self.server.lifespan = self.config.lifespan_class(self.config)
        self.bg.run(self.server.startup(sockets=[sock]))
        return self

    def __exit__(self, *exc: object) -> None:
        self.bg.run(self.server.shutdown(sockets=[self.sock] if self.sock else None))
        if self.sock is not None:
            self.sock.close()

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)


def raw_request(
    port: int,
    method: str,
    target: str,
    *,
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    body: bytes = b"",
    chunked: bool = False,
    host: str | None = "localhost",
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection, written byte for byte (no client-side path clean-up)."""
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    lines = [f"{method} {target} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines.append("Connection: close")
    lines += [f"{k}: {v}" for k, v in pairs]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        payload = b"".join(b"%x\r\n%b\r\n" % (len(body[i : i + 16]), body[i : i + 16]) for i in range(0, len(body), 16))
        payload += b"0\r\n\r\n"
    else:
        if body and not any(k.lower() == "content-length" for k, _ in pairs):
            lines.append(f"Content-Length: {len(body)}")
        payload = body
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw)  # a server that answers early may close before it read everything
        responses = read_responses(sock, 1, head_request=method == "HEAD")
    assert responses, f"no response to {method} {target}"
    return responses[0]


def request_id_for(*parts: object) -> str:
    """A request id (unique per test case and app flavour) that the gateway keeps: [A-Za-z0-9._:-] only."""
    return re.sub(r"[^A-Za-z0-9._:-]+", "-", "-".join(map(str, parts)))


def app_saw(body: bytes) -> dict[str, Any]:
    """What the app saw, from its echo: headers as a dict (last value wins) plus path, raw_path, body length."""
    doc = orjson.loads(body)
    doc["headers"] = {k: v for k, v in doc["headers"]}
    return doc


def problem(body: bytes) -> dict[str, Any]:
    """A problem document without its request id (which differs per request and per front)."""
    doc = orjson.loads(body)
    assert isinstance(doc, dict)
    assert doc.pop("request_id")
    return doc


@dataclass
class Served:
    """One app behind the middleware, behind uvicorn, with its decision log in a temp file and a fake clock."""

    flavor: str
    server: AsgiServer
    mw: StockadeMiddleware
    log_path: Path
    clock: FakeClock

    def request(self, method: str, target: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
        return raw_request(self.server.port, method, target, **kw)

    def decisions(self) -> list[dict[str, Any]]:
        self.server.bg.call(self.mw.flush)  # on the server's loop, after the request's own callbacks ran
        return [orjson.loads(line) for line in self.log_path.read_bytes().splitlines()]

    def wait_for_decision(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """For requests that end when the server notices a closed connection: poll until the line is written."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [d for d in self.decisions() if d["request_id"] == request_id]
            if lines or time.monotonic() > deadline:
                assert len(lines) == 1, f"expected one decision line for {request_id}, got {lines}"
                return lines[0]
            time.sleep(0.01)

    def decision(self, request_id: str) -> dict[str, Any]:
        lines = [d for d in self.decisions() if d["request_id"] == request_id]
        assert len(lines) == 1, f"expected one decision line for {request_id}, got {lines}"
        return lines[0]


@contextlib.contextmanager
def serving(app: Any, lifespan: str = "on") -> Iterator[AsgiServer]:
    bg = BackgroundLoop()
    try:
        with AsgiServer(app, bg, lifespan) as server:
            yield server
    finally:
        bg.stop()
