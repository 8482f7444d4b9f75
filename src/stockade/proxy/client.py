"""The client side of the proxy: one asyncio.Protocol per connection, parsing requests with llhttp.

Requests are parsed as bytes arrive and queued as exchanges; the head of the queue is served, the rest
wait (pipelining answered in order). Reads pause whenever the gateway would otherwise buffer without
bound: a full body buffer, too many pipelined requests, or an upstream that does not keep up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final, cast

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from stockade.pipeline.forward import FORWARDING_PREFIXES, IDENTITY_PREFIX_BYTES, is_underscore_alias
from stockade.pipeline.headers import parse_content_length
from stockade.pipeline.intake import common_method
from stockade.proxy.common import INF, PAUSE_PIPELINE, PAUSE_TUNNEL, PAUSE_UPSTREAM, not_connected, transport_closed
from stockade.proxy.exchange import Exchange
from stockade.proxy.http import (
    COMMON_SPELLINGS,
    CONNECTION,
    CONTENT_LENGTH,
    CRLF,
    EXPECT,
    FORWARDING,
    HOST,
    PLAIN,
    PROXY_CONNECTION,
    REQUEST_HEADER_CLASS,
    REQUEST_ID,
    TRANSFER_ENCODING,
    UPGRADE,
)
from stockade.proxy.request_head import RequestHead
from stockade.security.netaddr import canonical_ip

if TYPE_CHECKING:
    from stockade.clock import Clock
    from stockade.proxy.server import ProxyServer

log: Final = logging.getLogger("stockade.proxy")

# After answering a request whose body is still arriving, keep reading (and discarding) for a while before
# closing, or the close would reset the connection and could destroy the answer in the client's buffer
# (nginx: lingering_timeout 5 s between reads, lingering_time 30 s in all).
LINGER_IDLE: Final = 5.0
LINGER_MAX: Final = 30.0

_LINGER_RESET: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST

# Every request head ends with an empty line (llhttp wants CRLF line ends), and none is shorter than
# "GET / HTTP/1.1\r\n\r\n": what bounds how many requests one read can complete (ClientConnection._parse).
_HEAD_END: Final = b"\r\n\r\n"
_MIN_REQUEST: Final = 18
_MAX_PIECES: Final = 32  # feeds per read at most, whatever the read holds (ClientConnection._parse)


def piece_end(data: bytes, pos: int, room: int, body_left: int, pieces: int) -> int:
    """Where the next piece of `data` fed to llhttp ends (ClientConnection._parse): at the end of a Content-Length
    body being read, else after the `room`-th empty line (at least one), else at the end; past _MAX_PIECES pieces of
    one read, at the end whatever it holds."""
    n = len(data)
    if pieces >= _MAX_PIECES:
        return n
    if body_left:
        return min(pos + body_left, n)
    end = pos
    for _ in range(max(room, 1)):
        found = data.find(_HEAD_END, end)
        if found < 0:
            return n
        end = found + 4
    return end


class HttpRejectError(Exception):
    """Raised inside a parser callback to stop parsing and answer with a protocol-level error."""

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.status = status
        self.reason = reason
        self.detail = detail


def _only_chunked(raw: list[tuple[bytes, bytes]]) -> bool:
    """False if the Transfer-Encoding fields of a head list codings before a final chunked. (Without a final
    chunked the request has no knowable length: llhttp refuses it, 400.)"""
    codings = [
        c.strip(b" \t").lower()
        for name, value in raw
        if name.lower() == b"transfer-encoding"
        for c in value.split(b",")
    ]
    return codings[-1:] != [b"chunked"] or len(codings) == 1


def _content_length(value: bytes) -> int:
    length = parse_content_length(value)  # llhttp has checked the syntax, not the number of digits
    if length is None:
        raise HttpRejectError(400, "http.bad_request", "invalid Content-Length")
    return length


class _StopParsingError(Exception):
    """Raised inside a parser callback when the connection is already closing."""


class ExchangeQueue:
    """A connection's exchanges in order: the first (the one being answered) in an attribute of its own, the rest
    (pipelined behind it) in a list. Most connections hold one at a time, and a plain list going from empty to one
    and back frees and allocates its array at every request; `first` is one native attribute read.

    `first` is None exactly when the queue is empty. The dunders serve the rarer readers (server, tests)."""

    __slots__ = ("_rest", "first")

    def __init__(self) -> None:
        self.first: Exchange | None = None
        self._rest: list[Exchange] = []

    def append(self, ex: Exchange) -> None:
        if self.first is None:
            self.first = ex
        else:
            self._rest.append(ex)

    def popleft(self) -> None:
        rest = self._rest
        self.first = rest.pop(0) if rest else None

    def size(self) -> int:
        return 0 if self.first is None else 1 + len(self._rest)

    def clear(self) -> None:
        self.first = None
        self._rest.clear()

    def __len__(self) -> int:
        return self.size()

    def __bool__(self) -> bool:
        return self.first is not None

    def __getitem__(self, i: int) -> Exchange:
        n = self.size()
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        first = self.first
        assert first is not None  # noqa: S101 - n > 0
        return first if i == 0 else self._rest[i - 1]

    def __iter__(self) -> Iterator[Exchange]:
        if self.first is not None:
            yield self.first
            yield from self._rest


class ClientConnection(asyncio.Protocol):
    """One client connection: parse, queue, serve in order, keep alive, time out, close."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        # The clock's bound functions, held natively: a read is then one C call, not a lookup of `server.clock` (an
        # interpreted object) and of its method first. Exchanges take theirs from here. Read at construction, so a
        # clock is injected by what the server is given (tests: FakeClock, whose methods read its live state).
        clock = server.clock
        self.clock: Clock = clock
        self.monotonic: Callable[[], float] = clock.monotonic
        self.time: Callable[[], float] = clock.time
        limits = server.limits
        self.limits = limits
        self.max_header_bytes = limits.max_header_bytes
        self.max_headers = limits.max_headers
        self.transport: asyncio.Transport | None = None
        # The transport's and the parser's methods used on every request, bound once: called from compiled code,
        # a bound method is one call where `obj.method(...)` is a method lookup first.
        self.transport_write: Callable[[bytes], object] = not_connected
        self.transport_closing: Callable[[], bool] = transport_closed
        self.parser = HttpRequestParser(self)
        self.feed: Callable[[bytes | memoryview], None] = self.parser.feed_data
        self.parsed_method: Callable[[], bytes] = self.parser.get_method
        self.parsed_keep_alive: Callable[[], bool] = self.parser.should_keep_alive
        self.parsed_upgrade: Callable[[], bool] = self.parser.should_upgrade
        self.queue = ExchangeQueue()
        self.parsing: Exchange | None = None  # the exchange whose body is being received
        self.head: RequestHead | None = None  # the request head being received
        self.peer_ip = ""
        self.tls = False
        # The X-Forwarded-For and -Proto lines and the X-Forwarded-Host name this connection's requests send
        # upstream unless a trusted proxy forwarded them (forwarding.encode_request_head): built once, here.
        self.forwarded_lines = b""
        # forwarded_lines, the X-Forwarded-Host value and the X-Request-Id name, for the last value: a connection's
        # requests usually name the same host, and the head is then built from fewer pieces.
        self.forwarded_block = b""
        self.forwarded_block_host = b"\0"  # no Host value (llhttp refuses NUL in one): never matches at first
        self.peer_cert: dict[str, object] | None = None
        self.peer_cert_der: bytes | None = None
        self.requests = 0
        self.closing = False
        self.lingering = False
        self.linger_until = INF
        self.upgraded = False  # llhttp stopped at an Upgrade/CONNECT; no more HTTP on this connection
        self.tunnel: Exchange | None = None
        self.early_data = b""  # bytes after an upgrade request, held until the tunnel opens
        self.unparsed = b""  # requests read but not parsed while max_pipelined exchanges were queued (from unparsed_at)
        self.unparsed_at = 0
        self.feeding = False  # inside _parse (exchanges can finish within a parser callback)
        self.body_left = 0  # of the Content-Length body being parsed
        self.pause_mask = 0
        self.trailer_bytes = 0
        self.head_began = False
        self.head_t = 0.0  # when the head being parsed began, if the clock was read then (on_message_begin)
        self.write_paused_at = INF
        self.read_deadline = INF
        self.read_kind = "idle"

    # -- asyncio.Protocol -------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop transports do not subclass asyncio.Transport
        self.transport = transport
        self.transport_write = transport.write
        self.transport_closing = transport.is_closing
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if isinstance(peer, tuple) else "unix"
        if self.peer_ip.startswith("::ffff:"):
            self.peer_ip = canonical_ip(self.peer_ip)  # an IPv4 client on a dual-stack socket is an IPv4 client
        server = self.server
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            self.tls = True
            self.peer_cert = sslobj.getpeercert() or None  # only a certificate the listener verified
            self.peer_cert_der = sslobj.getpeercert(binary_form=True) if self.peer_cert else None
        self.forwarded_lines = (
            b"x-forwarded-for: "
            + self.peer_ip.encode("ascii")
            + (b"\r\nx-forwarded-proto: https" if self.tls else b"\r\nx-forwarded-proto: http")
            + b"\r\nx-forwarded-host: "
        )
        server.connections.add(self)
        if sslobj is not None and server.tls is not None:
            server.tls_established(self, sslobj)
        if server.draining:
            self.close()
            return
        # A new connection gets header_timeout for its first request (as nginx's client_header_timeout).
        self.set_read_deadline(self.monotonic() + self.limits.header_timeout, "head")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        for ex in list(self.queue):
            ex.client_lost()
        self.queue.clear()
        if self.tunnel is not None:
            self.tunnel.client_lost()
            self.tunnel = None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            if self.lingering:  # read and discard until the client is done, quiet, or out of time
                self.read_deadline = min(self.monotonic() + LINGER_IDLE, self.linger_until)
            return
        if self.tunnel is not None:
            # Traffic either way re-arms the tunnel's idle deadline (upstream_body does the other way); the sweep
            # enforces it, so a message costs a clock read, never a timer.
            server = self.server
            self.read_deadline = self.monotonic() + server.limits.tunnel_idle_timeout
            self.tunnel.tunnel_from_client(data)
            return
        if self.upgraded:
            self.early_data += data
            if len(self.early_data) > self.limits.buffer_bytes:
                self.pause(PAUSE_TUNNEL)
            return
        if self.unparsed:  # after the requests left unparsed while the queue was full
            self.unparsed = self.unparsed[self.unparsed_at :] + data
            self.unparsed_at = 0
            return
        self._parse(data)

    def _parse(self, data: bytes, start: int = 0) -> None:
        """Feed `data[start:]` to llhttp, which parses every request in what it is given: so once `max_pipelined`
        exchanges are queued, the rest stays unparsed (and reads paused) until the queue has room (exchange_finished).
        """
        self.head_began = False
        n = len(data)
        room = self.limits.max_pipelined - self.queue.size()
        skip = self.body_left  # body bytes: no head ends in them
        pos = start
        end = n
        self.feeding = True
        try:
            # One feed when the bytes cannot complete `room` heads more (each ends at an empty line of its own; one
            # begun in an earlier read may end in this one): the common case, decided without a scan for a short
            # read, or one that is all body; else by looking for the room-th empty line only (the rest of a long
            # read left unparsed is not counted through again as each queued request finishes).
            if n - pos < room * _MIN_REQUEST or n - pos <= skip or piece_end(data, pos + skip, room, 0, 0) == n:
                self.feed(data if pos == 0 else memoryview(data)[pos:])
            else:
                # Pieces that can each complete at most the room the queue has: one ends at the room-th empty line
                # (or at the end of a Content-Length body). An empty line inside a chunked body looks the same, so
                # the pieces per read are capped: past the cap the rest goes in one feed, and the queue may pass the
                # limit by what that holds (reads then stay paused until it drains), rather than spend a feed on
                # every few bytes of a body made of empty lines.
                view = memoryview(data)
                pieces = 0
                while pos < n:
                    room = self.limits.max_pipelined - self.queue.size()
                    if self.parsing is None and room <= 0:
                        self.unparsed, self.unparsed_at = data, pos
                        self.pause(PAUSE_PIPELINE)
                        break
                    end = piece_end(data, pos, room, self.body_left, pieces)
                    self.feed(view[pos:end])
                    pos = end
                    pieces += 1
        except HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, HttpRejectError):
                self.protocol_error(cause.status, cause.reason, cause.detail)
            elif not isinstance(cause, _StopParsingError):
                log.error("parser callback failed", exc_info=cause)
                self.protocol_error(500, "gateway.error", repr(cause))
        except HttpParserUpgrade as exc:
            self.upgraded = True
            offset = pos + exc.args[0] if exc.args else end
            self.early_data = data[offset:]
            if self.closing:
                return  # answered on the spot (CONNECT's 405, a denied upgrade): the close or linger keeps its deadline
            if self.queue.first is not None or self.tunnel is not None:
                self.set_read_deadline(INF, "upgrade")  # the exchange's own deadlines bound the wait for the tunnel
            else:
                self.close(linger=True)  # answered and kept alive: no tunnel and no more HTTP can follow
        except HttpParserError as exc:
            self.protocol_error(400, "http.bad_request", str(exc))
        else:
            head = self.head
            if head is not None:
                # Still inside a request head. llhttp holds an unfinished header value until it ends, so count
                # raw bytes too: a header that never ends must not grow past the limit by more than one read.
                head.wire_bytes = head.size if self.head_began else head.wire_bytes + n - start
                if head.wire_bytes > self.max_header_bytes:
                    self.protocol_error(431, "http.headers_too_large", "request head exceeds the limit")
        finally:
            self.feeding = False

    def eof_received(self) -> bool | None:
        if self.lingering:
            self.abort()
        # A FIN is taken as the client leaving, as nginx does (its 499): what it had in flight is abandoned and
        # gives back its buffers and upstream connection. A half-close (shutdown(SHUT_WR), `nc -N`) cannot be told
        # from a client that is gone until a write fails, and abandoned requests must not keep holding what they
        # took. So a client that half-closes before its response gets none (tests/proxy/test_half_close.py).
        return None

    def pause_writing(self) -> None:
        self.write_paused_at = self.monotonic()
        first = self.queue.first
        if first is not None:
            first.client_pause(True)
        elif self.tunnel is not None:
            self.tunnel.client_pause(True)

    def resume_writing(self) -> None:
        self.write_paused_at = INF
        first = self.queue.first
        if first is not None:
            first.client_pause(False)
        elif self.tunnel is not None:
            self.tunnel.client_pause(False)

    # -- llhttp callbacks -------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.closing:
            raise _StopParsingError
        self.head = RequestHead()
        self.head_began = True
        self.trailer_bytes = 0
        if self.read_kind == "idle":
            now = self.monotonic()
            self.head_t = now  # the exchange's arrival too, if the head ends in this read (on_headers_complete)
            self.set_read_deadline(now + self.limits.header_timeout, "head")
        else:
            self.head_t = 0.0

    def on_url(self, url: bytes) -> None:
        head = self.head
        assert head is not None  # noqa: S101 - llhttp calls on_message_begin first
        head.url = head.url + url if head.url else url  # usually one piece: no concatenation (two buffer views)
        head.size += len(url)
        if head.size > self.max_header_bytes:
            raise HttpRejectError(414 if len(head.url) > self.max_header_bytes // 2 else 431, "http.headers_too_large")

    def on_header(self, name: bytes, value: bytes) -> None:
        head = self.head
        if head is None:
            self._trailer_field(name, value)
            return
        # The count limit is checked once the head is complete: the byte limit already bounds what is held.
        head.size += len(name) + len(value) + 4
        if head.size > self.max_header_bytes:
            raise HttpRejectError(431, "http.headers_too_large")
        if value and (value[-1] == 32 or value[-1] == 9):  # SP or HTAB: compared as ints, natively
            value = value.rstrip(b" \t")
        head.raw.append((name, value))
        # The usual spellings skip the lower-casing; the one every request has, without hashing its name.
        kind = HOST if name == b"Host" else COMMON_SPELLINGS.get(name)
        if kind == PLAIN:
            head.fwd.append(name + b": " + value + CRLF)
            head.fwd_names.append(name)
            return
        if kind is None:
            lname = name.lower()
            kind = REQUEST_HEADER_CLASS.get(lname)
            if kind is None and lname.startswith(FORWARDING_PREFIXES):
                kind = FORWARDING  # any X-Forwarded-*, a TLS terminator's word on the client certificate
            if kind is None:
                if lname.startswith(IDENTITY_PREFIX_BYTES) or (b"_" in lname and is_underscore_alias(lname)):
                    return  # never forward a client's claim to be the gateway (in any spelling)
                if lname == b"content-length":
                    head.content_length = _content_length(value)
                head.fwd.append(name + b": " + value + CRLF)
                head.fwd_names.append(name)
                return
        if kind == HOST:
            if head.host is None:
                head.host = value
            head.host_count += 1
        elif kind == CONTENT_LENGTH:
            head.content_length = _content_length(value)
            head.fwd.append(name + b": " + value + CRLF)
            head.fwd_names.append(name)
        elif kind == FORWARDING:
            forwarding = head.forwarding
            if forwarding:
                forwarding.append((name.lower(), name, value))
            else:
                head.forwarding = [(name.lower(), name, value)]
        elif kind == CONNECTION:
            connection = head.connection
            if connection:
                connection.append(value)
            else:
                head.connection = [value]
        elif kind == PROXY_CONNECTION:
            head.proxy_connection = True
        elif kind == EXPECT:
            head.expect = value
        elif kind == REQUEST_ID:
            if head.request_id is None:
                head.request_id = value
        elif kind == UPGRADE:
            head.upgrade = value
        elif kind == TRANSFER_ENCODING:
            head.chunked = True  # llhttp checks that chunked comes last; on_headers_complete that it is alone

    def _trailer_field(self, name: bytes, value: bytes) -> None:
        """A trailer field after a chunked body: never forwarded, but it counts against the head limit."""
        self.trailer_bytes += len(name) + len(value) + 4
        if self.trailer_bytes > self.max_header_bytes:
            raise HttpRejectError(431, "http.headers_too_large", "trailer fields exceed the limit")

    def on_headers_complete(self) -> None:
        head = self.head
        assert head is not None  # noqa: S101 - llhttp calls on_message_begin first
        if len(head.raw) > self.max_headers:
            raise HttpRejectError(431, "http.headers_too_large", "too many header fields")
        self.head = None
        head.method = common_method(self.parsed_method())  # IDEMPOTENT then tests a kept hash
        head.keep_alive = keep_alive = self.parsed_keep_alive()
        # llhttp parses only HTTP/0.9, 1.0, 1.1 and 2.0, and keeps a connection alive without a Connection or
        # Proxy-Connection header (the two it reads `keep-alive` from) only for 1.1: that common case is "1.1"
        # without a call to get_http_version, which formats a string (~2,400 instructions, 4% of the bare route).
        if keep_alive and not head.connection and not head.proxy_connection:
            head.version = "1.1"
        else:
            head.version = self.parser.get_http_version()
        # llhttp's upgrade needs an Upgrade header (any spelling: on_header kept its value) or CONNECT: without
        # either, its answer is known and not asked for (tests/proxy/test_parsing.py checks the rule against it).
        head.upgrade_flag = (head.upgrade is not None and self.parsed_upgrade()) or head.method == b"CONNECT"
        if head.chunked:
            if not _only_chunked(head.raw):
                # The gateway undoes chunked itself and forwards the body re-framed: any other transfer coding
                # would reach the upstream still applied, unannounced (RFC 9112 6.1: 501).
                raise HttpRejectError(501, "http.not_implemented", "transfer codings other than chunked")
            if head.version != "1.1":
                # RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing; the connection is
                # closed after it (an HTTP/1.0 hop in front, which knows no chunked, framed these bytes otherwise).
                head.keep_alive = False
        if head.upgrade_flag:
            if head.chunked or head.content_length:
                # llhttp stops at an upgrade request's head and leaves its body unparsed: forwarded on a route that
                # does not upgrade, the upstream would take the next request's bytes as that body. A WebSocket
                # handshake has no body (RFC 6455 4.1), and h2c upgrades are never forwarded.
                raise HttpRejectError(400, "http.bad_request", "an upgrade request with a body")
            # llhttp parses nothing after an upgrade request (or CONNECT), whatever its answer: whether refused on
            # the spot (before `upgraded` is set) or forwarded, its response is the connection's last HTTP one.
            head.keep_alive = False
        # Begun in this read, the head's clock reading at on_message_begin is its arrival (the parse since is the
        # gateway's time); begun in an earlier one, the client took its time sending it: the clock is read now.
        ex = Exchange(self, head, self.head_t if self.head_began else 0.0)
        self.parsing = ex
        self.queue.append(ex)
        self.body_left = 0 if head.chunked else head.content_length
        if head.chunked or head.content_length:
            self.set_read_deadline(self.monotonic() + self.limits.body_timeout, "body")
        else:
            self.set_read_deadline(INF, "busy")
        if self.queue.size() == 1:
            ex.start()
        elif self.queue.size() > self.limits.max_pipelined:
            # Past the limit only after _parse's cap on feeds per read. At the limit, reading goes on until this
            # request's body is in (its body timer runs only while the gateway reads); _parse stops before the next.
            self.pause(PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        if self.body_left:
            self.body_left -= len(body)
        ex = self.parsing
        if ex is not None:
            if self.read_kind == "body":
                self.read_deadline = self.monotonic() + self.limits.body_timeout
            ex.request_body(body)

    def on_message_complete(self) -> None:
        ex = self.parsing
        self.parsing = None
        self.body_left = 0
        if self.read_kind == "body":
            if self.queue.first is not None:
                self.set_read_deadline(INF, "busy")
            else:  # the response went out early (a denial); the drained body was the last thing in flight
                self.set_read_deadline(self.monotonic() + self.limits.keepalive_timeout, "idle")
        if ex is not None:
            ex.request_complete()

    # -- used by exchanges ------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport_closing():
            self.transport_write(data)

    def pause(self, reason: int) -> None:
        if not self.pause_mask and self.transport is not None:
            self.transport.pause_reading()
        self.pause_mask |= reason

    def resume(self, reason: int) -> None:
        if self.pause_mask & reason:
            self.pause_mask &= ~reason
            if not self.pause_mask and self.transport is not None and not self.closing:
                self.transport.resume_reading()
                if self.read_kind == "body":  # the body timer starts again (see check_deadlines)
                    self.read_deadline = self.monotonic() + self.limits.body_timeout

    def set_read_deadline(self, deadline: float, kind: str) -> None:
        self.read_deadline = deadline
        self.read_kind = kind

    def exchange_finished(self, ex: Exchange, close: bool) -> None:
        """The head of the queue has sent its whole response: close, or serve the next request."""
        if self.queue.first is ex:
            self.queue.popleft()
        self.requests += 1
        if self.tunnel is not None:
            return
        if close or self.closing or self.upgraded or self.server.draining:
            self.close(linger=not ex.request_done)
            return
        first = self.queue.first
        if first is not None:
            first.start()
        elif self.parsing is None:
            if self.head is None:
                # From the end of the exchange (its log line's clock reading, Exchange._record): microseconds ago.
                self.set_read_deadline(ex.t_end + self.limits.keepalive_timeout, "idle")
            else:
                # The next head began while responses were in flight (its first bytes came with or after the last
                # request): its header_timeout counts from now, when nothing else is, as nginx's
                # client_header_timeout counts from when it starts on the next request. A slow upstream is never
                # the client's header time, and a head that never ends still gets its deadline.
                self.set_read_deadline(self.monotonic() + self.limits.header_timeout, "head")
        elif self.read_kind == "busy":
            # A bodiless request answered on the spot (a 401, a 404, a handler's reply) finishes inside
            # on_headers_complete, its message parsed but for on_message_complete, which re-arms only after a body.
            self.set_read_deadline(self.monotonic() + self.limits.keepalive_timeout, "idle")
        if self.queue.size() < self.limits.max_pipelined:
            if self.unparsed and not self.feeding:  # (while feeding, _parse itself goes on once there is room)
                data, at = self.unparsed, self.unparsed_at
                self.unparsed, self.unparsed_at = b"", 0
                self._parse(data, at)
            if not self.unparsed and self.queue.size() < self.limits.max_pipelined:
                self.resume(PAUSE_PIPELINE)

    def should_close_after(self, ex: Exchange) -> bool:
        """Whether the response now starting must be the connection's last."""
        return (
            not ex.head.keep_alive
            or self.upgraded
            or self.closing
            or self.server.draining
            or self.requests + 1 >= self.limits.keepalive_requests
        )

    def start_tunnel(self, ex: Exchange) -> None:
        """The upstream accepted a WebSocket upgrade: from now on bytes pass through both ways."""
        self.tunnel = ex
        if self.queue.first is ex:
            self.queue.popleft()
        server = self.server
        self.set_read_deadline(self.monotonic() + server.limits.tunnel_idle_timeout, "tunnel")
        early, self.early_data = self.early_data, b""
        self.resume(PAUSE_TUNNEL)
        if early:
            ex.tunnel_from_client(early)

    def protocol_error(self, status: int, reason: str, detail: str) -> None:
        """The request stream is broken: answer once every earlier response is out, then close."""
        self.head = None
        self.body_left = 0
        ex = self.parsing
        self.parsing = None
        if ex is not None and ex.started:
            ex.request_aborted(status, reason, detail)
            return
        failed = ex if ex is not None else Exchange(self, RequestHead())
        failed.fail_on_start(status, reason, detail)
        if ex is None:
            self.queue.append(failed)
        self.closing_soon()
        if self.queue.first is failed:
            failed.start()

    def closing_soon(self) -> None:
        """Stop reading new requests; what is queued is still answered."""
        self.pause(PAUSE_PIPELINE)
        self.set_read_deadline(INF, "busy")

    def close(self, *, linger: bool = False) -> None:
        """Close after the pending writes are flushed. With `linger`, half-close first and discard what the
        client is still sending, so it reads our response instead of a reset."""
        if self.closing:
            return
        self.closing = True
        transport = self.transport
        if transport is None:
            return
        if linger and transport.can_write_eof():
            self.lingering = True
            transport.write_eof()
            if self.pause_mask:
                self.pause_mask = 0
                transport.resume_reading()
            now = self.monotonic()
            self.linger_until = now + LINGER_MAX
            self.set_read_deadline(now + LINGER_IDLE, "linger")
        else:
            transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def reset(self) -> None:
        """Abort with a reset (RST), not a FIN: the way to tell a client that reads to the close that what it got
        is not all (a transport's abort closes the socket, which sends a FIN when nothing is left unread)."""
        transport = self.transport
        if transport is not None and not self.closing:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self.abort()

    def check_deadlines(self, now: float) -> None:
        """Called by the server's sweep: enforce client read/write timeouts and each exchange's deadline."""
        if self.write_paused_at + self.limits.send_timeout <= now:
            self.abort()
            return
        first = self.queue.first
        if first is not None:
            first.check_deadline(now)
        if self.read_deadline > now:
            return
        kind = self.read_kind
        self.read_deadline = INF
        if kind in ("idle", "linger"):
            self.abort() if kind == "linger" else self.close()
        elif kind == "tunnel":
            ex = self.tunnel
            self.tunnel = None
            if ex is not None:
                ex.tunnel_idle()
            self.close()
        elif kind == "head":
            if self.queue.first is not None:
                self.close()  # responses in flight: just stop; nothing to answer for a head never finished
            else:
                self.protocol_error(408, "http.timeout", "request head not received in time")
        elif kind == "body":
            ex = self.parsing
            if (
                self.pause_mask == PAUSE_UPSTREAM
                and ex is not None
                and ex.deadline_kind == "send"
                and ex.deadline < INF
            ):
                # The gateway stopped reading because the upstream does not take the streamed body: the client is
                # not stalling, the upstream has its own (send) deadline, and `resume` restarts this timer. Any
                # other pause keeps the body timer, so no connection can stay open without a deadline.
                self.read_deadline = INF
                return
            if self.pause_mask & PAUSE_PIPELINE and self.queue.first is not None and self.queue.first is not ex:
                # Reading stopped for the queue, whose head has deadlines of its own: not the client's stall.
                # `resume` restarts this timer.
                self.read_deadline = INF
                return
            if ex is not None and ex.started:
                ex.request_aborted(408, "http.timeout", "request body stalled")
            else:
                self.close()
