"""Serve the admin app with uvicorn inside the gateway's own event loop (signals stay with the gateway)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator
from typing import Any

import h11
import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol

# The admin listener shares the process (and its file descriptors) with the data plane, or with the supervisor
# under --workers, so a client of it must not be able to hold more than these (fixed: not configuration).
HEAD_TIMEOUT = 10.0  # a request (head and body) whole within this of its first byte; the data plane's header_timeout
IDLE_TIMEOUT = 5  # seconds a kept-alive connection may wait for its next request
MAX_HEAD_BYTES = 16 * 1024  # request line and headers, as the data plane's limits.max_header_bytes
MAX_CONNECTIONS = 64  # open admin connections (WebSockets included); one more is closed at once

_RECEIVING = (h11.IDLE, h11.SEND_BODY)  # the client's side of h11: the request is not in yet
_UNANSWERED = (h11.IDLE, h11.SEND_RESPONSE)  # our side: no response begun
_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class _QuietMalformed(logging.Filter):
    """uvicorn warns once per malformed request: a client could fill the log with them. Debug level instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != "Invalid HTTP request received.":
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger("stockade.admin.http").isEnabledFor(logging.DEBUG)


_http_log = logging.getLogger("stockade.admin.http")
_http_log.addFilter(_QuietMalformed())


class _AdminH11(H11Protocol):
    """uvicorn's h11 protocol with a connection cap and a deadline for each request to arrive whole.

    uvicorn has neither: a connection that never finishes its head was held for ever, and enough of them took
    every file descriptor the data plane needed. h11 caps the head's size (`h11_max_incomplete_event_size`).
    """

    max_connections = MAX_CONNECTIONS
    head_timeout = HEAD_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = _http_log  # uvicorn's own logger would write in its own format, to its own handler
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:  # this one included; upgraded WebSockets count too
            transport.abort()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # a head is arriving
            if self._head_timer is None:
                self._arm()  # the first byte of a kept-alive connection's next request
            if not self._head_fits(data):
                self._refuse(_TOO_LARGE)
                return
        super().data_received(data)
        if self._head_timer is not None and self.conn.their_state not in _RECEIVING:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._head_timer is None and self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            self._arm()  # the next request had begun behind this one (pipelined)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._disarm()  # the WebSocket protocol owns the connection from here
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_fits(self, data: bytes) -> bool:
        """h11 caps only a head still incomplete after a read: one that arrives whole in a read may be larger."""
        pending = self.conn.trailing_data[0]
        if len(pending) + len(data) <= MAX_HEAD_BYTES:
            return True
        return (pending + data).find(b"\r\n\r\n", 0, MAX_HEAD_BYTES + 4) >= 0

    def _timed_out(self) -> None:
        self._head_timer = None
        # A request under way and not yet answered gets a 408 (an idle connection is just closed, as nginx does).
        busy = self.conn.their_state is h11.SEND_BODY or self.conn.trailing_data[0]
        self._refuse(_TIMED_OUT if self.conn.our_state in _UNANSWERED and busy else b"")

    def _refuse(self, answer: bytes) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        if answer:
            self.transport.write(answer)
        self.transport.close()


class _InLoopServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the gateway owns SIGTERM/SIGINT/SIGHUP; uvicorn must not take them over

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        return None


class AdminServer:
    """The admin listener. `head_timeout` and `max_connections` are for tests; the defaults are the product's."""

    def __init__(
        self,
        app: Starlette,
        host: str,
        port: int,
        *,
        head_timeout: float = HEAD_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        protocol = type("AdminH11", (_AdminH11,), {"head_timeout": head_timeout, "max_connections": max_connections})
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            http=protocol,
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            timeout_keep_alive=IDLE_TIMEOUT,
            log_config=None,  # uvicorn's loggers go through stockade's logging (observability/logs.py)
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="none",
            server_header=False,  # the data plane drops upstream `Server` headers; the admin API names none either
        )
        self._server = _InLoopServer(config)
        self._task: asyncio.Task[None] | None = None
        self._host, self._port = host, port
        self._sockets: list[socket.socket] | None = None

    def bind(self) -> None:
        """Bind the listening sockets now (every address the host resolves to, as uvicorn would). Raises OSError:
        the caller names the field, where uvicorn would log and exit with its own status."""
        if self._sockets is not None:
            return
        infos = socket.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        sockets: list[socket.socket] = []
        try:
            for family, kind, proto, _, addr in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(addr)
                sock.listen(self._server.config.backlog)  # held from now on: a bound socket alone can be shared
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        self._sockets = sockets

    def close(self) -> None:
        """Release sockets bound but never served (start-up failed after `bind`)."""
        for sock in self._sockets or []:
            sock.close()
        self._sockets = None

    async def start(self) -> None:
        self.bind()
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=self._sockets))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the bind error
                raise RuntimeError("admin server stopped during start-up")
            await asyncio.sleep(0.01)

    @property
    def port(self) -> int:
        for server in self._server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return 0

    async def stop(self) -> None:
        if self._task is None:
            self.close()
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
