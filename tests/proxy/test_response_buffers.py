"""Response bodies buffered for hooks that read them: bounded per worker, given back when each exchange ends."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from stockade.stages import BUILTIN_STAGES
from stockade.testing import Reply, TestGateway, TestUpstream, read_responses
from tests.asgi.asgi_stages import TEST_STAGES
from tests.conftest import GatewayFactory
from tests.proxy.helpers import wait_for

CONFIG = """
limits: {response_buffer_total_bytes: 65536}
routes:
  - id: hooked
    match: {path: /**}
    upstream: {upstream}
    stages: [{use: anonymous}, {use: test_upper}]
"""
PART = b"x" * 40_000


@pytest.fixture(autouse=True)
def upper_hook(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(BUILTIN_STAGES, "test_upper", TEST_STAGES["test_upper"])
    yield


def held(gw: TestGateway) -> int:
    return int(gw.bg.call(lambda: gw.server.collected_total))


def test_a_worker_holds_at_most_its_response_buffer_budget(
    make_gateway: GatewayFactory, upstream: TestUpstream
) -> None:
    gw = make_gateway(CONFIG)
    # Half of a 100 KB body, then the upstream stalls: the hook cannot run, the worker holds what came.
    upstream.reply("/slow", Reply(raw=b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + PART))
    upstream.reply("/small", Reply(200, [("Content-Length", str(len(PART)))], PART))
    first = gw.connect()
    first.sendall(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
    wait_for(lambda: held(gw) == len(PART))

    status, _, body = gw.request("GET", "/small")  # 40 KB more would pass the 64 KiB budget
    assert (status, orjson.loads(body)["reason"]) == (503, "gateway.busy")
    assert held(gw) == len(PART)  # the refused exchange gave back what it had taken

    first.close()  # the client of the stalled exchange leaves: its buffer is given back
    wait_for(lambda: held(gw) == 0)
    status, headers, body = gw.request("GET", "/small")
    assert (status, headers["x-test-hooked"], body) == (200, "yes", PART.upper() + b"!")
    assert held(gw) == 0


def test_a_completed_response_gives_its_buffer_back(make_gateway: GatewayFactory, upstream: TestUpstream) -> None:
    gw = make_gateway(CONFIG)
    upstream.reply("/small", Reply(200, [("Content-Length", str(len(PART)))], PART))
    with gw.connect() as sock:
        sock.sendall(b"GET /small HTTP/1.1\r\nHost: a\r\n\r\n" * 3)
        responses = read_responses(sock, 3)
    assert [r[0] for r in responses] == [200, 200, 200]  # one after another, each within the budget
    assert held(gw) == 0


def test_the_budget_is_a_config_field() -> None:
    from stockade.config.loader import load_config_text
    from stockade.errors import ConfigError

    with pytest.raises(ConfigError, match="response_buffer_total_bytes"):
        load_config_text("limits: {response_buffer_total_bytes: 10}\nroutes: []\n", env={})


def _raw_reply(sock_data: bytes) -> tuple[bytes, bytes]:
    head, _, rest = sock_data.partition(b"\r\n\r\n")
    return head.lower(), rest


@pytest.mark.parametrize("status", [204, 304])
@pytest.mark.parametrize(
    "upstream_fields",
    [
        pytest.param(b"", id="no-framing"),
        pytest.param(b"Content-Length: 0\r\n", id="content-length-0"),
        pytest.param(b"Content-Length: 38\r\n", id="content-length-of-the-200"),
        pytest.param(b"Connection: x-trace\r\nX-Trace: 1\r\n", id="head-rebuilt"),
    ],
)
def test_a_buffered_response_without_a_body_announces_none(
    make_gateway: GatewayFactory, upstream: TestUpstream, status: int, upstream_fields: bytes
) -> None:
    """A hook had the (empty) body buffered: the gateway framed it with a Content-Length, and with the hook's
    replacement body after it. RFC 9110 8.6 forbids the field on a 204 (and on a 304 it must be the 200's length);
    body bytes after either are read as the next response on the connection."""
    gw = make_gateway(CONFIG)
    reason = {204: b"No Content", 304: b"Not Modified"}[status]
    upstream.reply("/none", Reply(raw=b"HTTP/1.1 %d %b\r\n%b\r\n" % (status, reason, upstream_fields)))
    upstream.reply("/small", Reply(200, [("Content-Length", "5")], b"small"))
    with gw.connect() as sock:
        sock.sendall(
            b"GET /none HTTP/1.1\r\nHost: a\r\n\r\nGET /small HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, rest = _raw_reply(data)
    assert head.startswith(b"http/1.1 %d" % status)
    assert b"x-test-hooked: yes" in head  # the hook ran
    assert b"content-length" not in head and b"transfer-encoding" not in head
    assert rest.startswith(b"HTTP/1.1 200 ")  # the next response follows the head at once
    assert rest.endswith(b"\r\n\r\nSMALL!")


def test_a_buffered_body_gets_the_read_timeout_between_reads_not_in_all(
    make_gateway: GatewayFactory, upstream: TestUpstream
) -> None:
    """A body buffered for a hook refreshed no deadline as it came: read_timeout bounded the whole body, so an
    upstream streaming steadily (a piece every 4 s, read_timeout 5 s) was cut, where a plain route forwards it."""
    gw = make_gateway(CONFIG.replace("upstream: {upstream}", "upstream: {url: '{upstream}', read_timeout: 5}"))
    upstream.reply("/drip", Reply(raw=b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123"))
    with gw.connect() as sock:
        sock.sendall(b"GET /drip HTTP/1.1\r\nHost: a\r\n\r\n")
        wait_for(lambda: held(gw) == 4)
        up = next(iter(gw.server.connections)).queue[0].upstream
        assert up is not None
        for piece in (b"456", b"789"):
            gw.advance(4.0)  # 4 s since the last read: under the read timeout, however long the body takes
            gw.bg.call(up.data_received, piece)
        responses = read_responses(sock, 1)
    assert (responses[0][0], responses[0][2]) == (200, b"0123456789!")
