"""How an upstream response body is framed for the client. A chunked one is re-framed: its chunks' data as
sent, no chunk extensions and no trailer section (nginx drops both). Trailers are header fields the response
hooks never saw: `Server`, `X-Debug-*` or a `Set-Cookie` there passed `security_headers` and any filter as sent.
A Content-Length body goes on as sent, and nothing after it.

The connection-level tables feed one response to an `UpstreamConnection` split at every byte, so no read
boundary (inside the size line, the extension, the last chunk or the trailers) lets a byte past the body through.
"""

from __future__ import annotations

from typing import Any

import pytest

from stockade.clock import FakeClock
from stockade.config.models import Upstream
from stockade.proxy.upstream import UpstreamConnection, UpstreamPool
from stockade.testing import Reply, TestGateway, TestUpstream, read_responses


class Recorder:
    """What the exchange would have been told, in order."""

    def __init__(self) -> None:
        self.head = b""
        self.out = b""
        self.done = False
        self.failed = ""

    def upstream_head(self, head: bytes, status: int, first: bytes, framing: Any) -> None:
        self.head = head
        self.out += first

    def upstream_body(self, data: bytes) -> None:
        assert not self.done
        self.out += data

    def upstream_done(self) -> None:
        self.done = True

    def upstream_closed(self, conn: Any) -> None:
        self.failed = self.failed or "closed"

    def upstream_failed(self, reason: str, detail: str) -> None:
        self.failed = detail

    def upstream_pause(self, paused: bool) -> None:
        pass


class _Transport:
    def __init__(self) -> None:
        self.closed = False

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def feed(parts: list[bytes], *, head_only: bool = False, again: bool = False) -> tuple[Recorder, UpstreamConnection]:
    pool = UpstreamPool(Upstream(url="http://127.0.0.1:9"), FakeClock())
    conn = UpstreamConnection(pool)
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    rec = Recorder()
    for _ in range(2 if again else 1):
        rec = Recorder()
        conn.begin(rec, decode=False, head_only=head_only)
        for part in parts:
            conn.data_received(part)
            if rec.failed:
                break
    return rec, conn


HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def unchunk(out: bytes) -> bytes:
    """The data of a chunked body as the gateway frames it, strictly: lower-case hex sizes without extensions,
    non-empty chunks, and a bare last chunk (no trailer section) that ends the bytes."""
    data, pos = b"", 0
    while True:
        line_end = out.index(b"\r\n", pos)
        size_line = out[pos:line_end]
        assert size_line == b"%x" % int(size_line, 16), size_line
        size = int(size_line, 16)
        pos = line_end + 2
        if size == 0:
            assert out[pos:] == b"\r\n"
            return data
        data += out[pos : pos + size]
        assert out[pos + size : pos + size + 2] == b"\r\n"
        pos += size + 2


CASES = [
    pytest.param(HEAD + b"3\r\nabc\r\n0\r\n\r\n", b"abc", True, id="plain"),
    pytest.param(
        HEAD + b"3\r\nabc\r\n0\r\nX-Debug-Sql: select * from users\r\nSet-Cookie: a=b\r\n\r\n",
        b"abc",
        True,
        id="trailers-dropped",
    ),
    pytest.param(
        HEAD + b'3;name="v a l"\r\nabc\r\n2;x\r\nde\r\n0;last=1\r\n\r\n', b"abcde", True, id="extensions-dropped"
    ),
    pytest.param(HEAD + b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789", True, id="hex-size"),
    pytest.param(
        HEAD.replace(b"OK\r\n", b"OK\r\nConnection: close\r\n") + b"1\r\nx\r\n0\r\nT: 1\r\n\r\n",
        b"x",
        False,
        id="connection-close-not-pooled",
    ),
    pytest.param(HEAD + b"0\r\nT: 1\r\n\r\n", b"", True, id="empty-body-with-trailer"),
    pytest.param(HEAD + b"1\r\nx\r\n0\r\nConnection: close\r\n\r\n", b"x", False, id="close-in-the-trailers"),
    pytest.param(
        b"HTTP/1.1 100 Continue\r\nContent-Length: 0\r\n\r\n" + HEAD + b"1\r\nx\r\n0\r\n\r\n",
        b"x",
        True,
        id="after-an-interim-response",
    ),
    pytest.param(HEAD + b"2\r\n\r\n\r\n0\r\n\r\n", b"\r\n", True, id="data-that-looks-like-framing"),
]


@pytest.mark.parametrize(("wire", "data", "reusable"), CASES)
def test_every_read_boundary_gives_the_same_reframed_body(wire: bytes, data: bytes, reusable: bool) -> None:
    rec, conn = feed([wire])  # in one read: one chunk
    assert rec.out == (b"%x\r\n%b\r\n" % (len(data), data) if data else b"") + b"0\r\n\r\n"
    final = wire.rindex(b"HTTP/1.1 ")
    head_len = wire.index(b"\r\n\r\n", final) + 4
    for cut in range(1, len(wire)):
        rec, conn = feed([wire[:cut], wire[cut:]])
        assert (rec.failed, rec.done) == ("", True), cut
        assert rec.head == wire[final:head_len], cut
        assert unchunk(rec.out) == data, cut
        assert conn.keep_alive is reusable, cut


@pytest.mark.parametrize(("wire", "data", "reusable"), CASES)
def test_byte_by_byte_and_on_a_reused_connection(wire: bytes, data: bytes, reusable: bool) -> None:
    rec, conn = feed([wire[i : i + 1] for i in range(len(wire))])
    assert (rec.failed, rec.done, unchunk(rec.out)) == ("", True, data)
    if reusable:  # the next response on the same connection is parsed afresh, in the mode its exchange needs
        rec, conn = feed([wire], again=True)
        assert (rec.failed, rec.done, unchunk(rec.out)) == ("", True, data)
        plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        nxt = Recorder()
        conn.begin(nxt, decode=False, head_only=False)
        conn.data_received(plain)
        assert (nxt.failed, nxt.done, nxt.out) == ("", True, b"ok")


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        pytest.param(HEAD + b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n", "bytes after the end", id="extra-message"),
        pytest.param(HEAD + b"3\r\nabcd\r\n0\r\n\r\n", "invalid upstream response", id="chunk-overrun"),
        pytest.param(HEAD + b"zz\r\nabc\r\n0\r\n\r\n", "invalid upstream response", id="bad-size"),
        pytest.param(HEAD + b"3\r\nabc\r\n0\r\nBad Name: x\r\n\r\n", "invalid upstream response", id="bad-trailer"),
        # llhttp reads a body after a 1xx other than 100-103: the head search took it for the final head, and
        # the real response went on as body bytes (trailers and all) to answer the client's next request.
        pytest.param(
            b"HTTP/1.1 199 X\r\nContent-Length: 3\r\n\r\nabc" + HEAD + b"0\r\nSet-Cookie: a=b\r\n\r\n",
            "interim (1xx) response with a body",
            id="1xx-with-length",
        ),
        pytest.param(
            b"HTTP/1.1 150 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" + HEAD + b"0\r\n\r\n",
            "interim (1xx) response with a body",
            id="1xx-chunked",
        ),
        # llhttp reads a Content-Length of any number of leading zeros; the gateway's reader stops at 19 digits
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: " + b"0" * 30 + b"5\r\n\r\nhello",
            "unreadable Content-Length",
            id="length-past-19-digits",
        ),
    ],
)
def test_a_broken_response_fails_at_any_read_boundary(wire: bytes, why: str) -> None:
    head_len = wire.index(b"\r\n\r\n") + 4
    for cut in range(head_len, len(wire)):
        rec, conn = feed([wire[:cut], wire[cut:]])
        transport = conn.transport
        assert isinstance(transport, _Transport) and transport.closed, cut  # never pooled
        if rec.done:  # the exchange had its whole response; what came after it only closed the connection
            assert (why, rec.failed) == ("bytes after the end", ""), cut
            assert unchunk(rec.out) == b"abc"
        else:
            assert why in rec.failed, cut


@pytest.mark.parametrize(
    ("wire", "head_only"),
    [
        pytest.param(b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", False, id="304"),
        pytest.param(b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n", False, id="204"),
        pytest.param(HEAD, True, id="head"),
    ],
)
def test_responses_without_a_body_are_not_reframed(wire: bytes, head_only: bool) -> None:
    rec, _ = feed([wire], head_only=head_only)
    assert (rec.failed, rec.done, rec.head, rec.out) == ("", True, wire, b"")


@pytest.mark.parametrize(
    ("wire", "body"),
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\r\n", b"ok", id="crlf"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\r\n\r\n\n", b"ok", id="blank-lines"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok\r\n\r\n", b"ok\r\n", id="crlf-in-body"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n\r\n", b"", id="empty"),
        pytest.param(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n\r\n", b"", id="304-announcing-5"),
        pytest.param(b"HTTP/1.1 204 No Content\r\n\r\n\r\n", b"", id="204"),
        pytest.param(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 2\r\n\r\n\r\n", b"", id="304-as-long-as-crlf"),
    ],
)
def test_blank_lines_after_a_length_delimited_body_are_not_forwarded(wire: bytes, body: bytes) -> None:
    """llhttp skips CR and LF between messages, so an upstream's stray line ends passed as body bytes and came
    before the client's next response (Go's client drops the connection over them)."""
    for cut in range(1, len(wire)):
        rec, conn = feed([wire[:cut], wire[cut:]])
        assert (rec.failed, rec.done, rec.out) == ("", True, body), cut
        assert conn.keep_alive, cut


# -- through the gateway ------------------------------------------------------------------------------------------


def test_the_client_gets_no_trailers_and_the_connections_stay_usable(
    gateway: TestGateway, upstream: TestUpstream
) -> None:
    wire = HEAD.replace(b"OK\r\n", b"OK\r\nTrailer: X-Debug\r\n") + b"3;e=1\r\nabc\r\n0\r\nX-Debug: secret\r\n\r\n"
    upstream.reply("/api/trailers", Reply(raw=wire))
    with gateway.connect() as sock:
        sock.sendall(b"GET /api/trailers HTTP/1.1\r\nHost: a\r\n\r\n" * 2)
        data = b""
        while data.count(b"0\r\n\r\n") < 2:
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
        sock.sendall(b"GET /api/after HTTP/1.1\r\nHost: a\r\n\r\n")
        [after] = read_responses(sock, 1)
    first, second = data.split(b"0\r\n\r\n")[:2]
    for response in (first, second):
        head, _, body = response.partition(b"\r\n\r\n")
        assert body == b"3\r\nabc\r\n"
        assert b"transfer-encoding: chunked" in head.lower() and b"trailer" not in head.lower()
    assert b"secret" not in data
    assert after[0] == 200
    assert upstream.connections == 1  # the upstream connection was pooled and reused after each trailer response


def test_a_large_chunked_response_streams_through_byte_exact(gateway: TestGateway, upstream: TestUpstream) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB in 64 chunks, more than one read at each hop
    size = len(payload) // 64
    chunks = b"".join(b"%x\r\n%b\r\n" % (size, payload[i : i + size]) for i in range(0, len(payload), size))
    upstream.reply("/api/big", Reply(raw=HEAD + chunks + b"0\r\nX-Sum: 1\r\n\r\n"))
    status, headers, body = gateway.request("GET", "/api/big")
    assert (status, headers["transfer-encoding"], body) == (200, "chunked", payload)
