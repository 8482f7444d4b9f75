"""What the gateway holds for one client is bounded: pipelined requests, responses to a client that does not read,
and the upstream connections paused for it."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from stockade.proxy.client import _MAX_PIECES, ClientConnection, piece_end
from stockade.proxy.common import INF, PAUSE_PIPELINE
from stockade.testing import Reply, TestGateway, TestUpstream, read_responses
from tests.conftest import GatewayFactory
from tests.proxy.helpers import echo, wait_for, wait_until_quiet

ROUTE = "routes:\n  - id: r\n    match: {path: /**}\n    upstream: {upstream}\n    stages: [{use: anonymous}]\n"


def only_connection(gw: TestGateway) -> ClientConnection:
    wait_for(lambda: len(gw.server.connections) == 1)
    return next(iter(gw.server.connections))


# -- pipelined requests -------------------------------------------------------------------------------------------

# kind: (one request, the body the upstream gets)
PIPELINED: dict[str, tuple[Callable[[int], bytes], bytes]] = {
    "bodiless": (lambda i: b"GET /p/%d HTTP/1.1\r\nHost: a\r\n\r\n" % i, b""),
    "blank lines between": (lambda i: b"\r\n\r\nGET /p/%d HTTP/1.1\r\nHost: a\r\n\r\n" % i, b""),
    # A body that holds blank lines (as a multipart body does) must not be taken for the end of a head.
    "length body": (
        lambda i: b"POST /p/%d HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\n\r\n\r\nab" % i,
        b"\r\n\r\nab",
    ),
    "chunked body": (
        lambda i: b"POST /p/%d HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n\r\n\r\n\r\n0\r\n\r\n" % i,
        b"\r\n\r\n",
    ),
}


@pytest.mark.parametrize("limit", [1, 4])
@pytest.mark.parametrize("kind", PIPELINED, ids=list(PIPELINED))
def test_pipelined_requests_are_queued_up_to_max_pipelined_only(
    make_gateway: GatewayFactory, upstream: TestUpstream, kind: str, limit: int
) -> None:
    """Each finished exchange resumed reading however long the queue was, and llhttp parsed every request of a
    read: a client pipelining without pause grew the gateway by a whole read of requests at a time, without
    bound. At most `max_pipelined` exchanges are queued; the rest of a read waits unparsed."""
    gw = make_gateway(f"limits: {{max_pipelined: {limit}}}\n" + ROUTE)
    n = 200
    upstream.stall()
    try:
        with gw.connect() as sock:
            request, body = PIPELINED[kind]
            sock.sendall(b"".join(request(i) for i in range(n)))  # one read's worth
            conn = only_connection(gw)
            wait_for(lambda: conn.pause_mask & PAUSE_PIPELINE)
            wait_for(lambda: upstream.received)
            assert gw.bg.call(lambda: len(conn.queue)) <= limit
            upstream.release()
            responses = read_responses(sock, n)
    finally:
        upstream.release()
    assert [echo(r)["target"] for r in responses] == [f"/p/{i}" for i in range(n)]  # all, in order
    assert {r.body for r in upstream.received} == {body}


@pytest.mark.parametrize(
    ("data", "pos", "room", "body_left", "pieces", "end"),
    [
        pytest.param(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n", 0, 1, 0, 0, 18, id="first-head"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n", 0, 2, 0, 0, 36, id="room-for-two"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\nGET / HTT", 0, 2, 0, 0, 27, id="fewer-ends-than-room"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\nGET / HTT", 18, 0, 0, 0, 27, id="no-room-still-one-end"),
        pytest.param(b"abcdefGET / HTTP/1.1\r\n\r\n", 0, 1, 6, 0, 6, id="length-body-first"),
        pytest.param(b"\r\n\r\n" * 10, 0, 1, 0, _MAX_PIECES, 40, id="capped"),
    ],
)
def test_piece_end(data: bytes, pos: int, room: int, body_left: int, pieces: int, end: int) -> None:
    assert piece_end(data, pos, room, body_left, pieces) == end


@pytest.mark.parametrize("room", [1, 15, 1024])
def test_a_read_of_empty_lines_is_fed_in_a_bounded_number_of_pieces(room: int) -> None:
    """A chunked body of `\r\n\r\n` (or blank lines between requests) cut a read into one feed per empty line:
    8 MiB of them cost seconds of CPU, and every other client of the worker waited. At most _MAX_PIECES + 1."""
    data = b"\r\n\r\n" * 65536  # one 256 KiB read
    pos = pieces = 0
    while pos < len(data):
        pos = piece_end(data, pos, room, 0, pieces)
        pieces += 1
    assert pieces <= _MAX_PIECES + 1


def test_the_body_of_the_request_that_fills_the_queue_is_read(
    make_gateway: GatewayFactory, upstream: TestUpstream
) -> None:
    """Reading stopped as soon as the max_pipelined-th head was queued, before its body, and the body timer ran on
    while the gateway itself was not reading: the client lost every response after body_timeout. Reading now stops
    between requests, once that request's body is in."""
    gw = make_gateway("limits: {max_pipelined: 2, body_timeout: 5}\n" + ROUTE)
    upstream.stall()
    try:
        with gw.connect() as sock:
            sock.sendall(
                b"GET /p/0 HTTP/1.1\r\nHost: a\r\n\r\nPOST /p/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"
            )
            conn = only_connection(gw)
            wait_for(lambda: gw.bg.call(lambda: len(conn.queue)) == 2)
            sock.sendall(b"hello")  # a later read
            wait_for(lambda: gw.bg.call(lambda: conn.parsing is None))
            gw.advance(10.0)  # twice body_timeout: the body is in, nothing is the client's to time out
            upstream.release()
            responses = read_responses(sock, 2)
    finally:
        upstream.release()
    assert [r[0] for r in responses] == [200, 200]
    assert [echo(r)["target"] for r in responses] == ["/p/0", "/p/1"]


# -- a client that does not read --------------------------------------------------------------------------------


def test_a_response_that_starts_while_the_client_is_backed_up_is_paused_too(
    make_gateway: GatewayFactory, upstream: TestUpstream
) -> None:
    """pause_writing paused only the exchange at the head of the queue at that moment. Small responses, each read
    whole, finish even so, and the next exchange started on a client already backed up: its upstream was never
    paused, and the gateway read a 20 MB response into memory for a client that reads nothing."""
    gw = make_gateway(ROUTE)
    big, small = 20_000_000, 200
    upstream.reply("/small", Reply(200, [], b"s" * 1000))  # one read each: the exchange that backs the client up ends
    upstream.reply("/big", Reply(200, [], b"b" * big))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.port))
    with sock:
        conn = only_connection(gw)
        transport = conn.transport
        assert transport is not None
        # Small socket buffers, so that the client backs up within a few of the small responses.
        gw.bg.call(transport.get_extra_info("socket").setsockopt, socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.sendall(b"GET /small HTTP/1.1\r\nHost: a\r\n\r\n" * small + b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        wait_for(lambda: conn.write_paused_at < INF)
        wait_until_quiet(lambda: int(gw.bg.call(transport.get_write_buffer_size)))
        assert gw.bg.call(transport.get_write_buffer_size) < 1_000_000  # not the 20 MB response
        sock.settimeout(10)
        responses = read_responses(sock, small + 1)
    assert [len(r[2]) for r in responses] == [1000] * small + [big]


def test_an_upstream_connection_paused_for_a_client_is_pooled_reading(
    make_gateway: GatewayFactory, upstream: TestUpstream
) -> None:
    """The read that completed a response also backed the client up: the upstream connection was paused for that
    client, then released to the pool still paused. The next request from any client that took it hung until the
    read timeout (504), although the upstream had answered it."""
    gw = make_gateway(ROUTE)
    upstream.reply("/part", Reply(raw=b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234"))
    with gw.connect() as sock:
        sock.sendall(b"GET /part HTTP/1.1\r\nHost: a\r\n\r\n")
        conn = only_connection(gw)
        wait_for(lambda: conn.queue and conn.queue[0].resp_started)
        ex = conn.queue[0]
        up = ex.upstream
        assert up is not None

        def last_read_backs_the_client_up() -> None:
            conn.pause_writing()  # the client's buffer filled with this read's bytes ...
            up.data_received(b"56789")  # ... which end the response: the connection goes back to the pool
            conn.resume_writing()  # the client drained it; its connection has no exchange to resume any more

        gw.bg.call(last_read_backs_the_client_up)
        assert read_responses(sock, 1)[0][2] == b"0123456789"
    with gw.connect(timeout=5) as other:
        other.sendall(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        responses = read_responses(other, 1)
    assert [r[0] for r in responses] == [200]
    assert upstream.connections == 1  # on the pooled connection


def test_a_client_that_pauses_longer_than_the_read_timeout_gets_its_whole_response(
    make_gateway: GatewayFactory, upstream: TestUpstream
) -> None:
    """The upstream's read deadline ran while the gateway itself had paused the upstream for the client: a client
    that stopped reading for longer than the route's read_timeout (well within send_timeout) had its response cut,
    and the upstream was blamed (upstream.timeout)."""
    gw = make_gateway(ROUTE.replace("upstream: {upstream}", "upstream: {url: '{upstream}', read_timeout: 5}"))
    size = 20_000_000
    upstream.reply("/big", Reply(200, [], b"x" * size))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.port))
    with sock:
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        conn = only_connection(gw)
        wait_for(lambda: conn.write_paused_at < INF)
        ex = conn.queue[0]
        gw.advance(10.0)  # the client has not read for twice the read timeout, a sixth of send_timeout
        gw.advance(10.0)
        sock.settimeout(10)
        responses = read_responses(sock, 1)
    assert len(responses[0][2]) == size
    assert ex.error == ""
