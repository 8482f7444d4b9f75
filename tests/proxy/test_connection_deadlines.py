"""Every connection state has a read deadline: after an answer the gateway made itself, with a next request
begun, after an upgrade request it refused. A connection with none is a file descriptor held for good."""

from __future__ import annotations

import pytest

from stockade.testing import TestGateway, TestUpstream, read_responses
from tests.conftest import GatewayFactory
from tests.proxy.helpers import closed, still_open, wait_for

CONFIG = """
storage: "memory://"
limits: {max_body_bytes: 1000}
routes:
  - id: api
    match: {path: "/api/**", methods: [GET, POST]}
    upstream: {upstream}
    stages: [{use: anonymous}]
  - id: key
    match: {path: "/key/**"}
    upstream: {upstream}
    stages: [{use: api_key}]
  - id: admin
    match: {path: "/admin/**"}
    upstream: {upstream}
    stages: [{use: ip_filter, config: {deny: [0.0.0.0/0]}}, {use: anonymous}]
  - id: limited
    match: {path: /limited}
    upstream: {upstream}
    stages: [{use: anonymous}, {use: rate_limit, config: {limits: [{rate: "1/hour", key: ip}]}}]
  - id: static
    match: {path: /static}
    handler: {use: static, config: {body: '{"ok":true}'}}
    stages: [{use: anonymous}]
"""

KEEPALIVE = 75.0  # limits.keepalive_timeout's default
HEADER = 10.0  # limits.header_timeout's default


@pytest.fixture
def gw(make_gateway: GatewayFactory) -> TestGateway:
    return make_gateway(CONFIG)


def _get(path: str, extra: bytes = b"") -> bytes:
    return b"GET %b HTTP/1.1\r\nHost: a\r\n%b\r\n" % (path.encode(), extra)


def _gone(gw: TestGateway) -> bool:
    """True once the gateway has let go of every connection (a half-close while lingering is not enough)."""
    wait_for(lambda: not gw.server.connections)
    return True


@pytest.mark.parametrize(
    ("sends", "statuses"),
    [
        ([_get("/key/x")], [401]),
        ([_get("/key/x", b"X-API-Key: sk_nope\r\n")], [401]),
        ([_get("/admin/x")], [403]),
        ([_get("/nope")], [404]),
        ([b"DELETE /api/x HTTP/1.1\r\nHost: a\r\n\r\n"], [405]),
        ([_get("/limited"), _get("/limited")], [200, 429]),
        ([_get("/static")], [200]),
        ([_get("/api/x"), _get("/nope")], [200, 404]),  # a local answer after a forwarded one
        ([b"POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"], [404]),  # control: drained body
    ],
    ids=["401-required", "401-invalid", "403-ip", "404", "405", "429", "handler", "after-forwarded", "drained-body"],
)
def test_local_answer_keeps_the_connection_only_for_keepalive_timeout(
    gw: TestGateway, upstream: TestUpstream, sends: list[bytes], statuses: list[int]
) -> None:
    """A bodiless request answered on the spot finished while its parse was still under way: no deadline was set
    after it, and a client that then said nothing held the connection for good (nginx: keepalive_timeout after
    every response, its own 4xx included)."""
    with gw.connect() as sock:
        got = []
        for raw in sends:
            sock.sendall(raw)
            got += [r[0] for r in read_responses(sock, 1)]
        assert got == statuses
        gw.advance(KEEPALIVE - 1)
        assert still_open(sock)
        gw.advance(2.0)
        assert closed(sock)


def test_body_too_large_lingers_then_closes(gw: TestGateway) -> None:
    """Control: answered before its body arrived, the request closes with a linger that has its own deadline."""
    with gw.connect() as sock:
        sock.sendall(b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\nxx")
        (status, headers, _), *_ = read_responses(sock, 1)
        assert (status, headers.get("connection")) == (413, "close")
        gw.advance(6.0)
        assert closed(sock)
        assert _gone(gw)


# -- a next request head begun before the previous exchange finished -------------------------------------------


@pytest.mark.parametrize("shape", ["same-write", "during-upstream-wait"])
def test_partial_next_head_gets_header_timeout_once_nothing_is_in_flight(
    gw: TestGateway, upstream: TestUpstream, shape: str
) -> None:
    """The next head's first byte arrived while a forwarded exchange was in flight: it had no header deadline
    then, and none once the response went out. Its header_timeout counts from when nothing is in flight (as
    nginx's client_header_timeout counts from when it starts on the next request)."""
    upstream.stall()
    try:
        with gw.connect() as sock:
            if shape == "same-write":
                sock.sendall(_get("/api/slow") + b"G")
                wait_for(lambda: upstream.received)
            else:
                sock.sendall(_get("/api/slow"))
                wait_for(lambda: upstream.received)
                sock.sendall(b"GET /api/next HTTP/1.1\r\nHo")
                wait_for(lambda: any(c.head is not None for c in gw.server.connections))
            gw.advance(30.0)  # the upstream is slow, not the client: nothing is cut
            upstream.release()
            assert [r[0] for r in read_responses(sock, 1)] == [200]
            gw.advance(HEADER - 1)
            assert still_open(sock)
            gw.advance(2.0)
            assert [r[0] for r in read_responses(sock, 1)] == [408]  # nothing in flight: the head is late
            assert closed(sock)
    finally:
        upstream.release()


def test_complete_pipelined_request_behind_a_slow_upstream_is_answered(gw: TestGateway, upstream: TestUpstream) -> None:
    """A whole second request that arrived while the first waited on its upstream is served, however long the
    upstream took (no header timer runs for a head already complete)."""
    upstream.stall()
    try:
        with gw.connect() as sock:
            sock.sendall(_get("/api/slow"))
            wait_for(lambda: upstream.received)
            sock.sendall(_get("/api/next"))
            wait_for(lambda: any(len(c.queue) == 2 for c in gw.server.connections))
            gw.advance(HEADER + 20.0)
            upstream.release()
            assert [r[0] for r in read_responses(sock, 2)] == [200, 200]
            gw.advance(KEEPALIVE + 1)
            assert closed(sock)
    finally:
        upstream.release()


def test_partial_head_after_a_local_answer_in_the_same_write_gets_header_timeout(gw: TestGateway) -> None:
    with gw.connect() as sock:
        sock.sendall(_get("/nope") + b"GET /api/x HTTP/1.1\r\nHo")
        assert [r[0] for r in read_responses(sock, 1)] == [404]
        gw.advance(HEADER + 1)
        (status, _, _), *_ = read_responses(sock, 1)
        assert status == 408
        assert closed(sock)


# -- requests llhttp hands over as upgrades ---------------------------------------------------------------------

UPGRADE = b"Connection: Upgrade\r\nUpgrade: foo\r\n"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 405),
        (_get("/admin/x", UPGRADE), 403),
        (_get("/nope", UPGRADE), 404),
        (_get("/key/x", UPGRADE), 401),
    ],
    ids=["connect", "denied-upgrade-403", "denied-upgrade-404", "denied-upgrade-401"],
)
def test_upgrade_request_answered_on_the_spot_closes(gw: TestGateway, raw: bytes, status: int) -> None:
    """llhttp stops parsing at an upgrade request (or CONNECT), after the gateway answered it: no tunnel can follow
    and no other request will ever be parsed, so the answer says `connection: close` and the connection closes
    (after a linger), however silent the client is."""
    with gw.connect() as sock:
        sock.sendall(raw)
        (got, headers, _), *_ = read_responses(sock, 1)
        assert (got, headers.get("connection")) == (status, "close")
        gw.advance(6.0)  # the linger's 5 s between reads
        assert closed(sock)
        assert _gone(gw)


def test_request_after_a_denied_upgrade_is_not_swallowed(gw: TestGateway, upstream: TestUpstream) -> None:
    """The bytes after a refused upgrade request went into the (never opened) tunnel's early data: the follow-up
    request was never answered, and the connection never timed out."""
    with gw.connect() as sock:
        sock.sendall(_get("/nope", UPGRADE))
        (status, headers, _), *_ = read_responses(sock, 1)
        assert (status, headers.get("connection")) == (404, "close")
        try:
            sock.sendall(_get("/api/x"))
        except (BrokenPipeError, ConnectionResetError):
            pass
        gw.advance(6.0)
        assert closed(sock)
        assert _gone(gw)
    assert upstream.received == []
