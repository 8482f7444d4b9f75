"""The admin listener's own limits: a deadline for each request, a head size cap, a connection cap."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stockade.admin.server import MAX_HEAD_BYTES, AdminServer
from stockade.testing import BackgroundLoop
from tests.conftest import BASIC, GatewayFactory

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
DEADLINE = 0.3  # the test listener's; the product's is HEAD_TIMEOUT


async def echo(request: Request) -> Response:
    return Response(await request.body())


def serve(bg: BackgroundLoop, **kw: float) -> AdminServer:
    app = Starlette(routes=[Route("/healthz", echo), Route("/echo", echo, methods=["POST"])])
    server = AdminServer(app, "127.0.0.1", 0, **kw)  # type: ignore[arg-type]
    bg.run(server.start())
    return server


@pytest.fixture
def admin(bg: BackgroundLoop) -> Iterator[AdminServer]:
    server = serve(bg, head_timeout=DEADLINE, max_connections=4)
    try:
        yield server
    finally:
        bg.run(server.stop())


def read_until_closed(sock: socket.socket, limit: float = 5.0) -> bytes:
    sock.settimeout(limit)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


@pytest.mark.parametrize(
    ("sent", "answer"),
    [
        (b"", b""),  # connected, said nothing: closed without a word
        (b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-a: ", b"HTTP/1.1 408 "),
        (b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\nabc", b"HTTP/1.1 408 "),
        (HEALTHZ + b"GET /healthz HTTP/1.1\r\nHost: local", b"HTTP/1.1 200 "),  # the kept-alive connection's next
    ],
    ids=["silent", "unfinished-head", "unfinished-body", "keepalive-unfinished-head"],
)
def test_admin_request_not_received_in_time_is_closed(admin: AdminServer, sent: bytes, answer: bytes) -> None:
    with socket.create_connection(("127.0.0.1", admin.port)) as sock:
        sock.sendall(sent)
        started = time.monotonic()
        received = read_until_closed(sock)
    assert time.monotonic() - started < 3.0  # closed by the deadline, not by the test's read timeout
    assert received.startswith(answer)
    if sent.endswith(b"local"):
        assert received.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 408 " in received


def test_admin_slow_drip_does_not_extend_deadline(admin: AdminServer) -> None:
    with socket.create_connection(("127.0.0.1", admin.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-a: ")
        started = time.monotonic()
        sock.settimeout(0.05)
        closed = False
        while not closed and time.monotonic() - started < 3.0:
            try:
                sock.sendall(b"a")
                closed = sock.recv(100).startswith(b"HTTP/1.1 408") or True
            except TimeoutError:
                continue
            except OSError:
                closed = True
    assert closed and time.monotonic() - started < 3.0


@pytest.mark.parametrize(
    "header_lines",
    [[b"X-a: " + b"a" * (MAX_HEAD_BYTES + 1)], [b"X-%d: %s" % (i, b"a" * 1000) for i in range(1000)]],
    ids=["one-long-line", "many-lines"],
)
def test_admin_oversized_head_is_refused(admin: AdminServer, header_lines: list[bytes]) -> None:
    data = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + b"".join(line + b"\r\n" for line in header_lines)
    with socket.create_connection(("127.0.0.1", admin.port)) as sock:
        try:
            sock.sendall(data + b"\r\n")
        except OSError:  # refused and closed while we were still sending: what a 1 MiB head should meet
            return
        received = read_until_closed(sock)
    assert received.split(b" ", 2)[1] in (b"400", b"431")


def test_admin_connections_over_the_cap_are_closed_while_data_plane_answers(
    admin: AdminServer, make_gateway: GatewayFactory
) -> None:
    gw = make_gateway(BASIC)
    held = [socket.create_connection(("127.0.0.1", admin.port)) for _ in range(4)]
    try:
        for sock in held:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # unfinished, within the deadline
        with socket.create_connection(("127.0.0.1", admin.port)) as extra:
            extra.sendall(HEALTHZ)
            started = time.monotonic()
            assert read_until_closed(extra) == b""
            assert time.monotonic() - started < DEADLINE  # at once, not at the deadline
        assert gw.request("GET", "/api/x")[0] == 200
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.1)  # the closes reach the admin loop
    with socket.create_connection(("127.0.0.1", admin.port)) as sock:
        sock.sendall(HEALTHZ[:-2] + b"Connection: close\r\n\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 200 ")


def test_admin_kept_alive_connection_serves_several_requests(admin: AdminServer) -> None:
    with socket.create_connection(("127.0.0.1", admin.port)) as sock:
        sock.settimeout(5)
        for _ in range(3):
            sock.sendall(HEALTHZ)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            time.sleep(DEADLINE)  # idle between requests is the keep-alive timeout's, not the request deadline's


@pytest.mark.parametrize(("level", "logged"), [(logging.WARNING, False), (logging.DEBUG, True)])
def test_admin_malformed_request_is_logged_at_debug_only(
    admin: AdminServer, caplog: pytest.LogCaptureFixture, level: int, logged: bool
) -> None:
    """uvicorn warns once per malformed request: a client could write the operators' log for them."""
    caplog.set_level(level, logger="stockade.admin.http")
    with socket.create_connection(("127.0.0.1", admin.port)) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 400 ")
    found = [r for r in caplog.records if "Invalid HTTP request" in r.getMessage()]
    assert [r.levelno for r in found] == ([logging.DEBUG] if logged else [])
