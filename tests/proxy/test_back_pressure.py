"""What the gateway holds for one client is bounded: pipelined requests, responses to a client that does not read,
and the upstream connections paused for it."""

from __future__ import annotations

import time
from collections.abc import Callable

from stockade.proxy.client import ClientConnection
from stockade.testing import Reply, TestGateway, TestUpstream, read_responses
from tests.conftest import GatewayFactory
from tests.proxy.helpers import wait_for

ROUTE = "routes:\n  - id: r\n    match: {path: /**}\n    upstream: {upstream}\n    stages: [{use: anonymous}]\n"


def only_connection(gw: TestGateway) -> ClientConnection:
    wait_for(lambda: len(gw.server.connections) == 1)
    return next(iter(gw.server.connections))


def wait_until_quiet(value: Callable[[], int], quiet: float = 0.3, timeout: float = 20.0) -> None:
    """Until `value()` has not changed for `quiet` seconds (bytes in flight have landed; a sync point only)."""
    end = time.monotonic() + timeout
    last, since = value(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < end, "never quiet"
        time.sleep(0.02)
        if (now := value()) != last:
            last, since = now, time.monotonic()


# -- a client that does not read --------------------------------------------------------------------------------


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
