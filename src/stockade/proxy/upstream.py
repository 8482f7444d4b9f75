"""Upstream connections and their keep-alive pools.

A connection forwards the response head and body bytes as received (no header re-serialisation) unless a
response hook or an HTTP/1.0 client needs the decoded body. A chunked body is re-framed (`_Reframer`): its data
as sent, without chunk extensions or the trailer section. llhttp cannot know that a HEAD response ends at its
head, so a connection that served one is never pooled (on_headers_complete).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, cast
from urllib.parse import urlsplit

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from stockade.proxy.common import not_connected, transport_closed
from stockade.proxy.http import ResponseFraming
from stockade.proxy.tls import upstream_context

if TYPE_CHECKING:
    from stockade.clock import Clock
    from stockade.config.models import Upstream
    from stockade.proxy.exchange import Exchange

MAX_RESPONSE_HEAD: Final = 64 * 1024


class UpstreamUser(Protocol):
    """What an upstream connection reports to the exchange it serves."""

    def upstream_head(self, head: bytes, status: int, first: bytes, framing: ResponseFraming) -> None: ...
    def upstream_body(self, data: bytes) -> None: ...
    def upstream_done(self) -> None: ...
    def upstream_closed(self, conn: UpstreamConnection) -> None: ...
    def upstream_failed(self, reason: str, detail: str) -> None: ...
    def upstream_pause(self, paused: bool) -> None: ...


class _Decoder:
    """Parser callbacks when the exchange wants decoded body chunks (hooks that read it, HTTP/1.0 clients)."""

    __slots__ = ("conn",)

    def __init__(self, conn: UpstreamConnection) -> None:
        self.conn = conn

    def on_message_begin(self) -> None:
        self.conn.on_message_begin()

    def on_headers_complete(self) -> None:
        self.conn.on_headers_complete()

    def on_message_complete(self) -> None:
        self.conn.on_message_complete()

    def on_body(self, data: bytes) -> None:
        self.conn.decoded.append(data)


class _Reframer:
    """Parser callbacks for a chunked body on its way to an HTTP/1.1 client: the chunk data of each read goes on
    as one chunk (`_framed`), and the message ends with a bare last chunk. Chunk extensions and the trailer
    section are not repeated: trailer fields are headers no response hook saw (nginx drops them too)."""

    __slots__ = ("conn",)

    def __init__(self, conn: UpstreamConnection) -> None:
        self.conn = conn

    def on_message_begin(self) -> None:
        self.conn.on_message_begin()

    def on_body(self, data: bytes) -> None:
        self.conn.decoded.append(data)

    def on_message_complete(self) -> None:
        conn = self.conn
        conn.done = True
        # Keep-alive was read from the upstream's own head (UpstreamConnection._reframe); a trailer section may
        # still say `Connection: close`, which this parser (started at a synthetic HTTP/1.1 head) reads.
        assert conn.parser is not None  # noqa: S101
        conn.reusable = conn.reusable and conn.parser.should_keep_alive()


def _framed(pieces: list[bytes], last: bool) -> bytes:
    """The chunk data of one read as one chunk (and the last chunk after it if the body ended): one copy."""
    size = sum(map(len, pieces))
    if not size:
        return _LAST_CHUNK if last else b""
    return b"".join([b"%x\r\n" % size, *pieces, _CRLF_LAST_CHUNK if last else _CRLF_BYTES])


# What the re-framing parser is started with: it then reads the upstream's body bytes as a chunked body.
_CHUNKED_HEAD: Final = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"
_CRLF_BYTES: Final = b"\r\n"
_CRLF_LAST_CHUNK: Final = _CRLF_BYTES + _LAST_CHUNK


def _past_blank_lines(buf: bytes, pos: int) -> int:
    n = len(buf)
    while pos < n and buf[pos] in b"\r\n":
        pos += 1
    return pos


def _no_parser(*args: object) -> Any:
    raise AssertionError("no parser yet")  # begin() gives the connection one before it reads


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream. Serves one exchange at a time; idle ones wait in the pool."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        # Bound once (see ClientConnection): one call each where `transport.write(...)` is a lookup and a call.
        self.transport_write: Callable[[bytes], object] = not_connected
        self.transport_closing: Callable[[], bool] = transport_closed
        self.user: UpstreamUser | None = None
        # The same object as `user` when that is a proxy exchange (always, but in tests of this class alone), typed
        # as one: its calls are direct C calls, where a call through the UpstreamUser protocol is a method lookup.
        self.exchange: Exchange | None = None
        self.parser: HttpResponseParser | None = None
        # The parser's methods used on every response, bound whenever the parser changes (_use_parser).
        self.feed: Callable[[bytes], None] = _no_parser
        self.parsed_status: Callable[[], int] = _no_parser
        self.parsed_keep_alive: Callable[[], bool] = _no_parser
        self.closed = False
        self.tunnel = False
        self.reused = False
        self.reset = False  # the upstream reset the connection (not a clean close)
        self.read_paused = False  # by the exchange, for a client that does not take the response as fast
        self.idle_since = 0.0
        self.received_any = False
        self.decode = False
        self.reframing = False  # a chunked body parsed by a _Reframer (from the end of its head)
        self.remaining = -1  # of a Content-Length body still to forward (negative: not length-delimited)
        self.head_only = False
        self.head_buf = b""
        self.head_sent = False
        self.head_done = False
        self.done = False
        self.extra = False  # a message began after the response was complete (in the same read)
        self.reusable = False
        self.status = 0
        self.interim = 0
        self.skip_complete = 0
        self.decoded: list[bytes] = []

    # -- asyncio.Protocol -------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop transports do not subclass asyncio.Transport
        self.transport = transport
        self.transport_write = transport.write
        self.transport_closing = transport.is_closing

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reset = exc is not None
        self.pool.forget(self)
        user = self.user
        if user is not None:
            self.forget_user()
            user.upstream_closed(self)

    def pause_writing(self) -> None:
        if self.user is not None:
            self.user.upstream_pause(True)

    def resume_writing(self) -> None:
        if self.user is not None:
            self.user.upstream_pause(False)

    def data_received(self, data: bytes) -> None:
        user = self.user
        if self.tunnel and user is not None:
            user.upstream_body(data)  # after a 101 the bytes are the upgraded protocol's, not HTTP
            return
        if user is None or self.done:
            # Bytes on an idle connection, or after a complete response: this connection cannot be trusted.
            self.close()
            return
        self.received_any = True
        upgraded = False
        try:
            self.feed(data)  # the parser's, bound (begin() always sets one)
        except HttpParserUpgrade:
            upgraded = True
        except HttpParserError as exc:
            self._fail(user, f"invalid upstream response: {exc}")
            return
        if self.extra:
            # More bytes than the response: forwarded verbatim they would answer the client's next request, and
            # kept they would answer the next client's. Nothing of this read goes on; the connection is dropped.
            self._fail(user, "bytes after the end of the response")
            return
        if not self.head_sent:
            if not self.head_done:
                self.head_buf += data
                if len(self.head_buf) > MAX_RESPONSE_HEAD:
                    self._fail(user, "upstream response head too large")
                return
            buf = self.head_buf + data if self.head_buf else data
            self.head_buf = b""
            # llhttp skips empty lines before a status line: so must the search for the head, or `\r\n\r\n` ahead
            # of it would pass for a head, and the real one for body bytes (verbatim, hop-by-hop headers and all).
            first_byte = buf[0]  # compared as an int: natively (`in` a bytes constant is a generic call)
            pos = _past_blank_lines(buf, 0) if first_byte == 13 or first_byte == 10 else 0
            for _ in range(self.interim):  # 1xx interim responses (100, 103) are not forwarded
                interim_end = buf.index(b"\r\n\r\n", pos) + 4
                interim = ResponseFraming.of(buf[pos:interim_end])
                if interim.chunked or (interim.content_length and interim.length != 0):
                    # llhttp reads a body for a 1xx other than 100-103, which this search would take for the
                    # final head (and the real head for body bytes, forwarded as they are).
                    self._fail(user, "an interim (1xx) response with a body")
                    return
                pos = _past_blank_lines(buf, interim_end)
            end = (buf.index(b"\r\n\r\n", pos) if pos else buf.index(b"\r\n\r\n")) + 4
            head = buf[pos:end]
            rest = buf[end:]
            self.head_sent = True
            framing = ResponseFraming.of(head)
            if upgraded or self.status == 101:
                self.tunnel = True
                user.upstream_head(head, self.status, b"", framing)
                if rest and self.user is not None:
                    user.upstream_body(rest)  # bytes of the upgraded protocol that followed the 101
                return
            if self.head_only:  # before `decode`: an HTTP/1.0 client's HEAD decodes too, and gets no body either
                first = b""
                self.decoded = []
            elif self.decode:
                first = b"".join(self.decoded)
                self.decoded = []
            elif framing.chunked and self.status not in (204, 304):  # those two have no body
                try:
                    first = self._reframe(rest)
                except HttpParserError as exc:
                    self._fail(user, f"invalid upstream response: {exc}")
                    return
                if self.extra:
                    self._fail(user, "bytes after the end of the response")
                    return
            else:
                first = rest
                length = framing.body_length  # 0 after a 204 or 304
                if length is None:
                    if framing.content_length:  # one llhttp read and this cannot (more digits than it reads)
                        self._fail(user, "an unreadable Content-Length")
                        return
                elif len(rest) != length:  # not simply the whole body (the common case)
                    first = self._length_delimited(rest, length)
            # The head and the body bytes that came with it go to the client in one write (one syscall).
            ex = self.exchange
            if ex is not None and ex is user:
                ex.upstream_head(head, self.status, first, framing)
            else:
                user.upstream_head(head, self.status, first, framing)
        elif self.reframing:
            if self.decoded or self.done:
                chunks = self.decoded
                self.decoded = []
                user.upstream_body(_framed(chunks, self.done))
        elif self.decode:
            if self.decoded:
                chunks = self.decoded
                self.decoded = []
                for chunk in chunks:
                    user.upstream_body(chunk)
        elif data and not self.head_only:
            if self.done and len(data) > self.remaining >= 0:
                data = data[: self.remaining]  # line ends after a Content-Length body (see the head above)
            self.remaining -= len(data)
            if data:
                user.upstream_body(data)
        if self.done and self.user is not None:
            ex = self.exchange
            self.forget_user()
            if ex is not None and ex is user:
                ex.upstream_done()
            else:
                user.upstream_done()

    def _length_delimited(self, rest: bytes, length: int) -> bytes:
        """The part of `rest` that is the body of a Content-Length response. llhttp skips CR and LF between
        messages: line ends an upstream sent after the body are not body bytes, and the client's next response
        must not start with them. Later reads are cut the same way (`remaining`)."""
        if not self.done:
            self.remaining = length - len(rest)
            return rest
        if self.status in (204, 304):  # llhttp reads no body for these, whatever length the head announces
            return b""
        return rest[:length]

    def _fail(self, user: UpstreamUser, detail: str) -> None:
        """The upstream broke HTTP: the connection is dropped and the exchange told."""
        self.forget_user()
        self.close()
        user.upstream_failed("upstream.bad_response", detail)

    def _reframe(self, rest: bytes) -> bytes:
        """Hand a chunked body to a re-framing parser from here on; returns what `rest` (the body bytes that came
        with the head, already checked by the first parser) becomes. The new parser starts at a body of its own:
        keep-alive is what the upstream's head said (llhttp keeps its flags until the message ends)."""
        assert self.parser is not None  # noqa: S101
        self.reusable = self.reusable if self.done else self.parser.should_keep_alive()
        self.done = False
        self.reframing = True
        self.decoded = []
        parser = self._use_parser(HttpResponseParser(_Reframer(self)))
        parser.feed_data(_CHUNKED_HEAD)
        if rest:
            parser.feed_data(rest)
        first = _framed(self.decoded, self.done)
        self.decoded = []
        return first

    # -- parser callbacks (verbatim mode: no on_body, so llhttp delivers no body callbacks at all) -------------

    def on_message_begin(self) -> None:
        if self.done:
            self.extra = True

    def on_headers_complete(self) -> None:
        status = self.parsed_status()
        if 100 <= status < 200 and status != 101:
            self.interim += 1
            self.skip_complete += 1
            return
        self.status = status
        self.head_done = True
        if self.head_only:
            # Never pooled: llhttp cannot know the response ends at its head, so body bytes an upstream sends
            # anyway (at once or later, in another write) would be read as the answer to the next request on
            # this connection, another client's. HEAD is rare; a fresh connection for the next request is cheap.
            self.reusable = False
            self.done = True

    def on_message_complete(self) -> None:
        if self.skip_complete:
            self.skip_complete -= 1
            return
        if not self.done:
            # llhttp resets its flags once feed_data returns, so keep-alive must be read here.
            self.reusable = self.parsed_keep_alive()
        self.done = True

    # -- used by the exchange ---------------------------------------------------------------------------------

    def _use_parser(self, parser: HttpResponseParser) -> HttpResponseParser:
        self.parser = parser
        self.feed = parser.feed_data
        self.parsed_status = parser.get_status_code
        self.parsed_keep_alive = parser.should_keep_alive
        return parser

    def begin(self, user: UpstreamUser, *, decode: bool, head_only: bool, exchange: Exchange | None = None) -> None:
        """Start serving one exchange: a fresh parser, in the body mode it needs. `exchange` is `user` again, when
        it is a proxy exchange."""
        self.user = user
        self.exchange = exchange
        # llhttp resets itself after a complete keep-alive message, so the parser is reused unless the body mode
        # changes (a connection that served a HEAD, whose parser stopped mid-message, is never reused).
        if self.parser is None or decode != self.decode or self.reframing:
            self._use_parser(HttpResponseParser(_Decoder(self) if decode else self))
        self.decode = decode
        self.reframing = False
        self.head_only = head_only
        self.head_buf = b""
        self.head_sent = self.head_done = self.done = self.received_any = self.reusable = self.extra = False
        self.remaining = -1
        self.status = self.interim = self.skip_complete = 0
        if self.decoded:  # (an empty one is kept: every reader swaps it for a new list before using what it holds)
            self.decoded = []

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport_write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    @property
    def keep_alive(self) -> bool:
        return self.reusable and self.status != 101

    def forget_user(self) -> None:
        self.user = None
        self.exchange = None

    def detach(self) -> None:
        self.forget_user()

    def close(self) -> None:
        self.forget_user()
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        self.forget_user()
        if self.transport is not None and not self.closed:
            self.transport.abort()


class UpstreamPool:
    """Idle keep-alive connections to one upstream origin (LIFO, so the warmest is reused first)."""

    def __init__(self, spec: Upstream, clock: Clock, ssl_ctx: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(spec.url)
        self.spec = spec
        self.max_idle = spec.max_idle  # read on every release: copied off the pydantic model
        self.clock = clock
        self.monotonic: Callable[[], float] = clock.monotonic  # called natively on every release
        self.name = f"{parts.scheme}://{parts.netloc}"
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or ""
        default_port = 443 if self.tls else 80
        self.port = parts.port or default_port
        self.host_header = (parts.hostname or "").encode("idna")
        if ":" in self.host:
            self.host_header = b"[" + self.host.encode("ascii") + b"]"
        if self.port != default_port:
            self.host_header += b":%d" % self.port
        # The end of the request line and the Host line, for routes that do not preserve the client's Host.
        self.host_line = b" HTTP/1.1\r\nhost: " + self.host_header + b"\r\n"
        self.base_path = parts.path.rstrip("/").encode("ascii")
        if self.tls and ssl_ctx is None:  # normally built at config load (relative to the config file)
            ssl_ctx = upstream_context(Path(spec.ca_file) if spec.ca_file else None)
        self.ssl: ssl.SSLContext | None = ssl_ctx if self.tls else None
        self.server_hostname = (spec.server_name or self.host) if self.tls else None
        self.idle: list[UpstreamConnection] = []
        self.active = 0
        self.closed = False

    def acquire(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport_closing():
                conn.reused = True
                self.active += 1
                return conn
        return None

    async def connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: UpstreamConnection(self),
            self.host,
            self.port,
            ssl=self.ssl,
            server_hostname=self.server_hostname,
        )
        self.active += 1
        return conn

    def release(self, conn: UpstreamConnection, now: float = 0.0) -> None:
        """Return a connection after a complete exchange; keep it if it is healthy and there is room. `now`: the
        caller's clock reading (0: read here), from when its idle timer runs."""
        self.active -= 1
        conn.forget_user()
        if (
            self.closed
            or conn.closed
            or len(self.idle) >= self.max_idle
            or conn.transport is None
            or conn.transport_closing()
        ):
            conn.close()
            return
        if conn.read_paused:
            # Paused for the client of the exchange it served (the read that ended the response also backed that
            # client up): an idle connection must read, or the next exchange on it would never get its response.
            conn.resume_reading()
        conn.idle_since = now if now else self.monotonic()
        self.idle.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        """A connection that served an exchange and must not be reused."""
        self.active -= 1
        conn.close()

    def forget(self, conn: UpstreamConnection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def sweep(self, now: float) -> None:
        limit = now - self.spec.idle_timeout
        stale = [c for c in self.idle if c.idle_since < limit]
        for conn in stale:
            self.idle.remove(conn)
            conn.close()

    def close(self) -> None:
        self.closed = True
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class PoolManager:
    """Pools by upstream identity, kept across config reloads so warm connections survive a reload."""

    def __init__(self, clock: Clock, tls: Mapping[str | None, ssl.SSLContext] | None = None) -> None:
        self.clock = clock
        self.tls = tls or {}  # HTTPS client contexts by `ca_file`, built at config load
        self.pools: dict[tuple[object, ...], UpstreamPool] = {}
        self._by_spec: dict[int, tuple[Upstream, UpstreamPool]] = {}  # per config object: no key built per request
        self._last: tuple[Upstream, UpstreamPool] | None = None  # the last one asked for: an identity test

    def get(self, spec: Upstream) -> UpstreamPool:
        hit = self._last
        if hit is not None and hit[0] is spec and not hit[1].closed:
            return hit[1]
        hit = self._by_spec.get(id(spec))
        if hit is not None and hit[0] is spec and not hit[1].closed:
            self._last = hit
            return hit[1]
        key = (spec.url, spec.ca_file, spec.server_name, spec.max_idle, spec.idle_timeout)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = UpstreamPool(spec, self.clock, self.tls.get(spec.ca_file))
        self._by_spec[id(spec)] = self._last = (spec, pool)  # holding `spec` keeps its id from being reused
        return pool

    def retain(self, specs: list[Upstream], tls: Mapping[str | None, ssl.SSLContext] | None = None) -> None:
        """After a reload: close pools no route uses any more; new connections of the others verify with the
        reloaded CA files (idle connections, already verified, stay)."""
        self._by_spec.clear()
        self._last = None
        if tls is not None:
            self.tls = tls
            for pool in self.pools.values():
                if pool.tls and (ctx := tls.get(pool.spec.ca_file)) is not None:
                    pool.ssl = ctx
        keep = {(s.url, s.ca_file, s.server_name, s.max_idle, s.idle_timeout) for s in specs}
        for key in [k for k in self.pools if k not in keep]:
            self.pools.pop(key).close()

    def sweep(self, now: float) -> None:
        for pool in self.pools.values():
            pool.sweep(now)

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()

    def gauges(self) -> list[tuple[str, dict[str, str], float]]:
        out: list[tuple[str, dict[str, str], float]] = []
        for pool in self.pools.values():
            out.append(("stockade_upstream_connections", {"upstream": pool.name, "state": "idle"}, len(pool.idle)))
            out.append(("stockade_upstream_connections", {"upstream": pool.name, "state": "active"}, pool.active))
        return out
