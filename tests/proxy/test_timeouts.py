"""Slow clients, slow or broken upstreams, and stages that await: every deadline driven by the fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import ClassVar

import pytest

from stockade.pipeline.context import RequestContext
from stockade.pipeline.phase import Phase
from stockade.pipeline.stage import StageConfig, StageEnv
from stockade.pipeline.verdict import CONTINUE, Continue, Deny
from stockade.proxy.common import INF
from stockade.proxy.exchange import Exchange
from stockade.stages import BUILTIN_STAGES
from stockade.testing import Reply, TestGateway, TestUpstream, read_responses
from tests.conftest import GatewayFactory
from tests.proxy.helpers import closed, reason, wait_for, wait_until_quiet


def test_slowloris_head_gets_408_after_header_timeout(gateway: TestGateway, upstream: TestUpstream) -> None:
    with gateway.connect() as sock:
        sock.sendall(b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        wait_for(lambda: any(c.head is not None for c in gateway.server.connections))
        gateway.advance(9.0)
        sock.sendall(b"still-")
        gateway.advance(1.5)  # 10.5 s since the first byte: the head timeout is total, not per read
        responses = read_responses(sock, 1)
        assert [r[0] for r in responses] == [408]
        assert reason(responses[0]) == "http.timeout"
        assert closed(sock)
    assert upstream.received == []


@pytest.mark.parametrize("pieces", [1, 2], ids=["one-read", "two-reads"])
def test_a_request_is_timed_from_its_complete_head_not_the_clients_first_byte(
    gateway: TestGateway, upstream: TestUpstream, pieces: int
) -> None:
    """A head that began in an earlier read took the client's time to arrive: neither the gateway's overhead nor
    the request's latency counts it. The second request on the connection (its head in one read) is timed from the
    clock reading its first byte took, which the client had no part in."""
    head = b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n"
    with gateway.connect() as sock:
        for _ in range(2):
            if pieces == 2:
                sock.sendall(head[:20])
                wait_for(lambda: any(c.head is not None for c in gateway.server.connections))
                gateway.advance(5.0)
                sock.sendall(head[20:])
            else:
                sock.sendall(head)
            assert [r[0] for r in read_responses(sock, 1)] == [200]
            gateway.advance(5.0)  # idle between requests: no request's time either
    wait_for(lambda: sum(gateway.server.metrics.overhead["api"].counts) == 2)
    assert gateway.server.metrics.overhead["api"].sum < 1.0
    assert gateway.server.metrics.upstream["api"].sum < 1.0
    assert upstream.received and len(upstream.received) == 2


def test_silent_connection_is_closed_after_header_timeout(gateway: TestGateway) -> None:
    with gateway.connect() as sock:
        wait_for(lambda: gateway.server.connections)
        gateway.advance(10.5)
        responses = read_responses(sock, 1)
        assert [r[0] for r in responses] == [408]
        assert closed(sock)


def test_idle_keep_alive_connection_is_closed_quietly(gateway: TestGateway) -> None:
    with gateway.connect() as sock:
        sock.sendall(b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_responses(sock, 1)[0][0] == 200
        gateway.advance(74.0)
        sock.sendall(b"GET /api/y HTTP/1.1\r\nHost: a\r\n\r\n")  # activity resets the idle timer
        assert read_responses(sock, 1)[0][0] == 200
        gateway.advance(76.0)
        sock.settimeout(5)
        assert sock.recv(65536) == b""  # closed without a response


def _receiving_body(gw: TestGateway, size: int) -> bool:
    return any(c.parsing is not None and c.parsing.body_size == size for c in gw.server.connections)


@pytest.mark.parametrize("buffering", [True, False], ids=["buffered", "streamed"])
def test_stalled_body_gets_408(make_gateway: GatewayFactory, upstream: TestUpstream, buffering: bool) -> None:
    gw = make_gateway(
        "routes:\n  - id: r\n    match: {path: /**}\n"
        f"    upstream: {{url: '{{upstream}}', request_buffering: {str(buffering).lower()}}}\n"
        "    stages: [{use: anonymous}]\n"
    )
    with gw.connect() as sock:
        sock.sendall(b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
        wait_for(lambda: _receiving_body(gw, 10) and (buffering or upstream.connections))
        gw.advance(29.0)
        sock.sendall(b"0123456789")  # each read restarts the body timer
        wait_for(lambda: _receiving_body(gw, 20))
        gw.advance(29.0)
        assert gw.server.connections
        gw.advance(2.0)
        responses = read_responses(sock, 1)
        assert [r[0] for r in responses] == [408]
        assert closed(sock)
    assert upstream.received == []  # streamed: a partial request and then a closed connection
    # Buffered, the upstream never heard of the request: a dripping client costs it nothing.
    assert upstream.connections == (0 if buffering else 1)


def test_upstream_read_timeout_gives_504(gateway: TestGateway, upstream: TestUpstream) -> None:
    upstream.stall()
    try:
        with gateway.connect() as sock:
            sock.sendall(b"GET /api/slow HTTP/1.1\r\nHost: a\r\n\r\n")
            wait_for(lambda: upstream.received)
            gateway.advance(59.0)
            gateway.advance(2.0)
            responses = read_responses(sock, 1)
        assert [r[0] for r in responses] == [504]
        assert reason(responses[0]) == "upstream.timeout"
        wait_for(lambda: "api" in gateway.server.metrics.upstream)
        assert gateway.server.metrics.upstream["api"].sum == pytest.approx(61.0)  # the wait shows in its latency
    finally:
        upstream.release()


def test_routes_sharing_an_upstream_keep_their_own_read_timeout(
    make_gateway: GatewayFactory, upstream: TestUpstream
) -> None:
    """Two routes to the same upstream share its connection pool, but not their timeouts: the route served
    second must not inherit the read timeout of the one that created the pool."""
    gw = make_gateway(
        "routes:\n"
        "  - id: quick\n    match: {path: /quick}\n    upstream: {url: '{upstream}', read_timeout: 2}\n"
        "    stages: [{use: anonymous}]\n"
        "  - id: patient\n    match: {path: /patient}\n    upstream: {url: '{upstream}', read_timeout: 30}\n"
        "    stages: [{use: anonymous}]\n"
    )
    assert gw.request("GET", "/quick")[0] == 200  # the pool now exists, made for `quick`
    assert gw.request("GET", "/patient")[0] == 200
    upstream.stall()
    try:
        with gw.connect() as sock:
            sock.sendall(b"GET /patient HTTP/1.1\r\nHost: a\r\n\r\n")
            wait_for(lambda: len(upstream.received) == 3)
            gw.advance(5.0)  # past quick's 2 s, well within patient's 30 s
            assert not any(c.queue and c.queue[0].finished for c in gw.server.connections)
            upstream.release()
            assert [r[0] for r in read_responses(sock, 1)] == [200]
        upstream.stall()
        with gw.connect() as sock:
            sock.sendall(b"GET /patient HTTP/1.1\r\nHost: a\r\n\r\n")
            wait_for(lambda: len(upstream.received) == 4)
            gw.advance(31.0)
            responses = read_responses(sock, 1)
        assert [r[0] for r in responses] == [504]
    finally:
        upstream.release()


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A port whose accept queue is full, so connecting to it hangs (SYNs are dropped)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    try:
        yield port
    finally:
        for s in fillers:
            s.close()
        server.close()


def test_upstream_connect_timeout_gives_504(make_gateway: GatewayFactory) -> None:
    with black_hole() as port:
        gw = make_gateway(
            "routes:\n  - id: r\n    match: {path: /**}\n"
            f"    upstream: {{url: 'http://127.0.0.1:{port}', connect_timeout: 2}}\n"
            "    stages: [{use: anonymous}]\n"
        )
        with gw.connect() as sock:
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            wait_for(lambda: any(c.queue and c.queue[0].deadline_kind == "connect" for c in gw.server.connections))
            gw.advance(2.5)
            responses = read_responses(sock, 1)
    assert [r[0] for r in responses] == [504]
    assert reason(responses[0]) == "upstream.timeout"
    wait_for(lambda: "r" in gw.server.metrics.upstream)
    assert gw.server.metrics.upstream["r"].sum == pytest.approx(2.5)  # the connect wait: upstream's, not overhead
    assert gw.server.metrics.overhead["r"].sum < 1.0


def test_upstream_refusing_connections_gives_502(make_gateway: GatewayFactory) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    gw = make_gateway(
        f"routes:\n  - id: r\n    match: {{path: /**}}\n    upstream: http://127.0.0.1:{port}\n"
        "    stages: [{use: anonymous}]\n"
    )
    status, _, body = gw.request("GET", "/x")
    assert status == 502
    assert b"upstream.unavailable" in body
    assert b"refused" not in body.lower()  # the detail goes to the log, not the client


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
        b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-Injected: 1\r\n\r\nINJECTED",
        b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nINJECTED",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Le",
    ],
    ids=["second-response", "after-204", "partial-second-head"],
)
def test_bytes_after_the_upstream_response_are_never_forwarded(
    gateway: TestGateway, upstream: TestUpstream, raw: bytes
) -> None:
    """An upstream that sends more than one response in a read would answer the client's next pipelined request
    (or, kept in the pool, the next client's): 502, and the connection is not reused."""
    upstream.reply("/api/extra", Reply(raw=raw))
    with gateway.connect() as sock:
        sock.sendall(b"GET /api/extra HTTP/1.1\r\nHost: a\r\n\r\nGET /api/second HTTP/1.1\r\nHost: a\r\n\r\n")
        responses = read_responses(sock, 2)
    assert [r[0] for r in responses] == [502, 200]
    assert b"INJECTED" not in responses[1][2]
    assert upstream.connections == 2  # the first connection was dropped, not pooled


@pytest.mark.parametrize("version", ["1.1", "1.0"])
def test_a_body_after_a_head_response_keeps_the_connection_out_of_the_pool(
    gateway: TestGateway, upstream: TestUpstream, version: str
) -> None:
    """The body of an upstream that answers HEAD with one is dropped; the connection is not pooled either, since
    what else it sends late would be read as the answer to the next request that reuses it."""
    upstream.reply("/api/head", Reply(raw=b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nINJECTED"))
    with gateway.connect() as sock:
        sock.sendall(b"HEAD /api/head HTTP/%s\r\nHost: a\r\n\r\n" % version.encode())  # 1.0: decoded
        (status, headers, body), *_ = read_responses(sock, 1, head_request=True)
    assert (status, headers["content-length"], body) == (200, "8", b"")
    assert gateway.request("GET", "/api/second")[0] == 200
    assert upstream.connections == 2


@pytest.mark.parametrize(
    ("raw", "expect"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 502),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", 502),
        (b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n", 502),
        (b"HTTP/1.1 2000 OK\r\n\r\n", 502),
    ],
    ids=["garbage", "cl-and-te", "header-without-colon", "bad-status"],
)
def test_invalid_upstream_response_gives_502(
    gateway: TestGateway, upstream: TestUpstream, raw: bytes, expect: int
) -> None:
    upstream.reply("/api/bad", Reply(raw=raw, close=True))
    status, _, body = gateway.request("GET", "/api/bad")
    assert status == expect
    assert b"upstream.bad_response" in body


def test_truncated_upstream_response_closes_client(gateway: TestGateway, upstream: TestUpstream) -> None:
    upstream.reply("/api/short", Reply(raw=b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..", close=True))
    with gateway.connect() as sock:
        sock.sendall(b"GET /api/short HTTP/1.1\r\nHost: a\r\n\r\n")
        data = b""
        sock.settimeout(5)
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200")
    assert data.endswith(b"only ten..")  # the client sees a short body and a closed connection, never a stale one


def test_stale_pooled_connection_is_retried_for_idempotent_requests(
    gateway: TestGateway, upstream: TestUpstream
) -> None:
    upstream.reply("/api/bye", Reply(200, [("Content-Length", "2")], b"ok", close=True))
    assert gateway.request("GET", "/api/bye")[0] == 200
    assert gateway.request("GET", "/api/again")[0] == 200


def test_client_that_stops_reading_is_dropped_after_send_timeout(gateway: TestGateway, upstream: TestUpstream) -> None:
    upstream.reply("/api/huge", Reply(200, [], b"x" * 30_000_000))
    sock = gateway.connect()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"GET /api/huge HTTP/1.1\r\nHost: a\r\n\r\n")
    wait_for(lambda: any(c.write_paused_at != float("inf") for c in gateway.server.connections))
    gateway.advance(61.0)
    wait_for(lambda: not gateway.server.connections)
    sock.close()


# -- stages that await I/O --------------------------------------------------------------------------------------


class _Cfg(StageConfig):
    mode: str = "forever"


class AwaitingStage:
    id: ClassVar[str] = "test_await"
    phase: ClassVar[Phase] = Phase.AUTHORIZE
    Config: ClassVar[type[StageConfig]] = _Cfg

    def __init__(self, config: _Cfg, env: StageEnv) -> None:
        self.mode = config.mode

    async def check(self, ctx: RequestContext) -> Continue | Deny:
        if self.mode == "forever":
            await asyncio.Event().wait()
        await asyncio.sleep(0)
        if self.mode == "raise":
            raise RuntimeError("backend exploded with secret=hunter2")
        if self.mode == "deny":
            return Deny(403, "test.denied")
        return CONTINUE


@pytest.fixture
def awaiting_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BUILTIN_STAGES, "test_await", f"{__name__}:AwaitingStage")


def _awaiting(mode: str) -> str:
    return (
        "routes:\n  - id: r\n    match: {path: /**}\n    upstream: {upstream}\n"
        f"    stages: [{{use: anonymous}}, {{use: test_await, config: {{mode: {mode}}}}}]\n"
    )


@pytest.mark.usefixtures("awaiting_stage")
@pytest.mark.parametrize(
    ("mode", "status", "code"),
    [("pass", 200, None), ("deny", 403, "test.denied"), ("raise", 500, "stage.error")],
)
def test_stage_that_awaits_is_driven_to_completion(
    make_gateway: GatewayFactory, mode: str, status: int, code: str | None
) -> None:
    gw = make_gateway(_awaiting(mode))
    got, _, body = gw.request("GET", "/x")
    assert got == status
    if code:
        assert f'"reason":"{code}"'.encode() in body
    assert b"hunter2" not in body


@pytest.mark.usefixtures("awaiting_stage")
def test_stage_that_never_finishes_times_out_with_503(make_gateway: GatewayFactory, upstream: TestUpstream) -> None:
    gw = make_gateway(_awaiting("forever"))
    with gw.connect() as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        wait_for(lambda: any(c.queue and c.queue[0].task is not None for c in gw.server.connections))
        gw.advance(10.5)
        responses = read_responses(sock, 1)
    assert [r[0] for r in responses] == [503]
    assert reason(responses[0]) == "stage.timeout"
    assert upstream.received == []


class _DeafUpstream:
    """A raw upstream that accepts one connection and reads nothing until `listen()` — so a streamed request body
    backs up into the gateway, which must stop reading the client (back-pressure)."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # accepted sockets inherit it
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.port = self.server.getsockname()[1]
        self.conn: socket.socket | None = None

    def accept(self) -> socket.socket:
        self.server.settimeout(10)
        self.conn, _ = self.server.accept()
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.server.close()

    def gateway(self, make_gateway: GatewayFactory, limits: str) -> TestGateway:
        """A gateway with one anonymous route to this upstream (read_timeout 60 s) and these `limits`."""
        return make_gateway(
            f"limits: {{{limits}}}\n"
            "routes:\n  - id: r\n    match: {path: /**}\n"
            f"    upstream: {{url: 'http://127.0.0.1:{self.port}', read_timeout: 60}}\n"
            "    stages: [{use: anonymous}]\n"
        )


def _send_until_blocked(sock: socket.socket) -> int:
    """Send body bytes until the gateway stops taking them; returns how many were sent."""
    sock.setblocking(False)
    sent, chunk = 0, b"x" * 65536
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < 0.5:  # the gateway paused reading: nothing moves for half a second
        try:
            n = sock.send(chunk)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        sent += n
        quiet_since = time.monotonic()
    sock.setblocking(True)
    return sent


def test_upstream_back_pressure_on_a_streamed_body_is_not_the_clients_timeout(make_gateway: GatewayFactory) -> None:
    """While the upstream does not take the body, the gateway stops reading the client. The client is not
    stalling then: no 408 after body_timeout. The upstream is, and it gets the route's read_timeout (as nginx's
    proxy_send_timeout): 504."""
    deaf = _DeafUpstream()
    try:
        gw = deaf.gateway(make_gateway, "max_body_bytes: 1000000000")
        with gw.connect() as sock:
            sock.sendall(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000\r\n\r\n")
            sent = _send_until_blocked(sock)  # the first buffer_bytes, then the upstream takes the rest until full
            up = deaf.accept()
            assert 0 < sent < 1_000_000_000
            wait_for(lambda: any(c.pause_mask for c in gw.server.connections))
            gw.advance(31.0)  # past body_timeout: the client has been waiting on the upstream, not stalling
            gw.advance(20.0)
            sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                sock.recv(1, socket.MSG_PEEK)  # no answer, no close
            gw.advance(10.0)  # 61 s without the upstream taking a byte: past its read_timeout
            responses = read_responses(sock, 1)
            assert [r[0] for r in responses] == [504]
            assert reason(responses[0]) == "upstream.timeout"
            assert closed(sock)  # the rest of the body will never be read
            up.close()
    finally:
        deaf.close()


def test_body_timer_starts_again_when_the_upstream_takes_the_body_again(make_gateway: GatewayFactory) -> None:
    """Once the upstream reads again, the gateway reads the client again: the upstream's send deadline is gone
    and the client's body timer runs (here the client then stalls: 408, not the upstream's 504)."""
    deaf = _DeafUpstream()
    try:
        gw = deaf.gateway(make_gateway, "max_body_bytes: 1000000000")
        with gw.connect() as sock:
            sock.sendall(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000\r\n\r\n")
            sent = _send_until_blocked(sock)  # the first buffer_bytes, then the upstream takes the rest until full
            up = deaf.accept()
            wait_for(lambda: any(c.pause_mask for c in gw.server.connections))
            gw.advance(40.0)
            received = 0
            up.settimeout(5)
            while received < sent:  # the upstream takes everything the client sent; the gateway reads again
                received += len(up.recv(1 << 20))
            wait_for(lambda: not any(c.pause_mask for c in gw.server.connections))
            gw.advance(29.0)  # 69 s since the pause: past the upstream's 60 s, had its deadline stayed
            sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                sock.recv(1, socket.MSG_PEEK)
            gw.advance(2.0)  # 31 s since the gateway last read the client, which sent nothing more
            responses = read_responses(sock, 1)
            assert [r[0] for r in responses] == [408]
            assert reason(responses[0]) == "http.timeout"
            up.close()
    finally:
        deaf.close()


def test_a_denied_pipelined_body_past_the_buffer_is_drained_and_timed(
    gateway: TestGateway, upstream: TestUpstream
) -> None:
    """A keep-alive local reply to a request whose body had filled the buffer left reads paused and, with the
    body timer skipped while paused, the connection open forever."""
    upstream.stall()
    try:
        with gateway.connect() as sock:
            sock.sendall(b"GET /api/slow HTTP/1.1\r\nHost: a\r\n\r\n")
            wait_for(lambda: upstream.received)
            sock.sendall(b"POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 70_000)
            wait_for(
                lambda: any(c.parsing is not None and c.parsing.body_size >= 65536 for c in gateway.server.connections)
            )
            upstream.release()
            assert [r[0] for r in read_responses(sock, 2)] == [200, 404]
            gateway.advance(31.0)  # the client never sends the rest of its body
            assert closed(sock)
    finally:
        upstream.release()


def test_an_upstream_paused_by_the_first_write_still_gets_a_send_deadline(make_gateway: GatewayFactory) -> None:
    """With a buffer larger than the socket buffers, the write in _send paused the upstream before the exchange
    knew it was streaming: no send deadline, no body timer, a connection open forever."""
    deaf = _DeafUpstream()
    try:
        gw = deaf.gateway(make_gateway, "max_body_bytes: 1000000000, buffer_bytes: 16777216")
        with gw.connect() as sock:
            sock.sendall(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000\r\n\r\n")
            sent = _send_until_blocked(sock)
            assert sent > 16_777_216
            up = deaf.accept()
            wait_for(lambda: any(c.pause_mask for c in gw.server.connections))
            gw.advance(61.0)
            responses = read_responses(sock, 1)
            assert [r[0] for r in responses] == [504]
            assert closed(sock)
            up.close()
    finally:
        deaf.close()


def test_back_pressure_of_a_finished_exchange_does_not_hold_the_next_request(make_gateway: GatewayFactory) -> None:
    """The first request's upstream never reads: 504. Its pause on the client (PAUSE_UPSTREAM) stayed after it
    let go of the upstream, so the pipelined second request, held for its body, had no deadline at all."""
    deaf = _DeafUpstream()
    try:
        gw = deaf.gateway(make_gateway, "max_body_bytes: 33554432, buffer_bytes: 16777216")
        n = 12 * 1024 * 1024
        with gw.connect() as sock:
            sock.sendall(
                b"POST /one HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % n
                + b"a" * n
                + b"POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n"
                + b"b" * 10
            )
            up = deaf.accept()
            wait_for(lambda: any(c.pause_mask for c in gw.server.connections))
            gw.advance(61.0)  # the first one's upstream never took its body
            gw.advance(31.0)  # the second one's client never sends the rest of its body
            responses = read_responses(sock, 2)
            assert [r[0] for r in responses] == [504, 408]
            assert closed(sock)
            up.close()
    finally:
        deaf.close()


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_spooled_body_the_upstream_does_not_take_gets_504_not_408(make_gateway: GatewayFactory, framing: str) -> None:
    """A body received whole into the spool is sent as the upstream takes it. An upstream that stops taking it gets
    its send deadline (504); the client, whose body is all in, is not blamed with a 408, and no spool is left."""
    deaf = _DeafUpstream()
    try:
        gw = deaf.gateway(make_gateway, "buffer_bytes: 4096, spool_bytes: 9000000")
        size = 8_100_000  # more than the socket buffers hold (up to 4 MB each on loopback)
        if framing == "length":
            wire = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size
        else:
            piece = b"x" * 30_000
            wire = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            wire += b"%x\r\n%b\r\n" % (len(piece), piece) * (size // len(piece)) + b"0\r\n\r\n"
        with gw.connect() as sock:
            sock.sendall(wire)  # the gateway takes all of it: the spool, not the upstream, receives it
            up = deaf.accept()
            wait_for(lambda: gw.server.spool_reserved and any(c.pause_mask for c in gw.server.connections))
            gw.advance(31.0)  # past body_timeout: the client is not stalling, the upstream is
            sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                sock.recv(1, socket.MSG_PEEK)
            gw.advance(30.0)  # past the upstream's 60 s read_timeout
            responses = read_responses(sock, 1)
            assert [r[0] for r in responses] == [504]
            assert reason(responses[0]) == "upstream.timeout"
            up.close()
        wait_for(lambda: gw.server.spool_reserved == 0)
    finally:
        deaf.close()


def test_a_spooled_body_reaches_a_slow_upstream_whole(make_gateway: GatewayFactory) -> None:
    """The upstream takes the spooled body in its own time: every byte arrives, in order, once."""
    deaf = _DeafUpstream()
    try:
        gw = deaf.gateway(make_gateway, "buffer_bytes: 4096, spool_bytes: 9000000")
        body = bytes(range(256)) * 32000  # 8 MB, more than the socket buffers hold (up to 4 MB each on loopback)
        with gw.connect() as sock:
            sock.sendall(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            up = deaf.accept()
            wait_for(lambda: any(c.pause_mask for c in gw.server.connections))  # the upstream is full
            up.settimeout(5)
            received = b""
            while not received.endswith(body[-4096:]) or len(received) < len(body):
                received += up.recv(1 << 20)
            head, _, got = received.partition(b"\r\n\r\n")
            assert got == body
            assert b"content-length: 8192000" in head.lower()
            up.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            responses = read_responses(sock, 1)
            assert [r[0] for r in responses] == [200]
            up.close()
        wait_for(lambda: gw.server.spool_reserved == 0)
    finally:
        deaf.close()


class _EarlyAnswerThenStall:
    """Answers the first bytes of a response as soon as the request head arrives, stops reading for a moment (so
    the gateway's spool pump pauses), then reads the whole request body but never sends the rest."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.port = self.server.getsockname()[1]
        self.received = 0
        self.paused = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            self.received = len(head)  # the first read may hold body bytes too
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
            self.paused.wait(10)  # the test says when the pump has paused
            while chunk := conn.recv(1 << 20):
                self.received += len(chunk)

    def close(self) -> None:
        self.server.close()


def test_an_upstream_stalled_mid_response_keeps_its_read_deadline_while_the_client_drips(
    make_gateway: GatewayFactory,
) -> None:
    """When the spool pump (or a streamed body) was taken up again, the upstream's send deadline was cleared to
    nothing even though its response had started: an upstream stalled mid-response, facing a client that sends a
    chunk every 29 s, held the exchange with no deadline at all."""
    stall = _EarlyAnswerThenStall()
    try:
        gw = make_gateway(
            "limits: {buffer_bytes: 4096, spool_bytes: 8000000, max_body_bytes: 100000000}\n"
            f"routes:\n  - id: r\n    match: {{path: /**}}\n    upstream: 'http://127.0.0.1:{stall.port}'\n"
            "    stages: [{use: anonymous}]\n"
        )
        piece = b"a" * 60000
        wire = b"".join(b"%x\r\n%b\r\n" % (len(piece), piece) for _ in range(150))  # 9 MB, no last chunk
        with gw.connect() as sock:
            sender = threading.Thread(
                target=lambda: sock.sendall(
                    b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + wire
                ),
                daemon=True,
            )
            sender.start()

            def exchange() -> Exchange | None:
                return next((c.queue[0] for c in gw.server.connections if c.queue), None)

            wait_for(lambda: (ex := exchange()) is not None and ex.resp_started and ex.spool is not None, 20)
            ex = exchange()
            assert ex is not None
            stall.paused.set()
            wait_for(lambda: ex.spool is None, 20)  # the pump caught up and the rest streams
            gw.bg.call(lambda: None)  # and the loop finished what it does when it does
            assert ex.deadline < INF  # the upstream's read deadline is back
            sender.join(20)
            wait_until_quiet(lambda: stall.received)
            assert ex.deadline < INF
            for _ in range(2):  # a chunk every 29 s: the client keeps its own body timer alive
                gw.advance(29.0)
                sock.sendall(b"1\r\nb\r\n")
            assert not ex.finished
            gw.advance(5.0)  # 63 s without a byte of the response: past the upstream's read timeout
            wait_for(lambda: ex.finished)
            assert ex.error == "upstream.timeout"
    finally:
        stall.close()


@pytest.mark.parametrize("seconds", [8.0, 12.0, 25.0])
def test_a_slow_body_on_a_route_that_reads_it_is_the_clients_time(make_gateway: GatewayFactory, seconds: float) -> None:
    """json_limits waits for the whole body inside the pipeline, where the 10 s pipeline timeout ran too: a body
    taking 10-30 s (allowed by the 30 s body timer) was a 503 stage.timeout blamed on the stage, and a shorter
    wait was counted as the gateway's own overhead."""
    gw = make_gateway(
        "routes:\n  - id: json\n    match: {path: /json}\n    upstream: '{upstream}'\n"
        "    stages: [{use: anonymous}, {use: json_limits}]\n"
    )
    with gw.connect() as sock:
        sock.sendall(
            b"POST /json HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 8\r\n"
            b'Connection: close\r\n\r\n{"a":'
        )
        wait_for(lambda: any(c.queue and c.queue[0].body_waiter is not None for c in gw.server.connections))
        gw.advance(seconds)  # under the 30 s body timer: the client is slow, not gone
        sock.sendall(b"12}")
        assert read_responses(sock, 1)[0][0] == 200
    wait_for(lambda: "json" in gw.server.metrics.overhead)
    assert gw.server.metrics.overhead["json"].sum < 1.0  # the fake clock moved `seconds`, all of it the client's


def test_a_304_announcing_a_body_keeps_its_connection_out_of_the_pool(
    gateway: TestGateway, upstream: TestUpstream
) -> None:
    """llhttp reads no body after a 304; one a server sends anyway, later, would answer the next request."""
    upstream.reply("/api/cached", Reply(raw=b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"))
    assert gateway.request("GET", "/api/cached")[0] == 304
    assert gateway.request("GET", "/api/next")[0] == 200
    assert upstream.connections == 2
