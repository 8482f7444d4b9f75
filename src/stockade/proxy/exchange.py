"""One request/response exchange: checks, pipeline, upstream, response, log line.

The pipeline is stepped eagerly inside the parser callback; a Task exists only if a stage awaits I/O.
The request head sent upstream is rebuilt from parsed parts only (never the client's raw bytes), and a
chunked body is re-framed, so nothing the gateway did not parse can reach the upstream.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from stockade.pipeline.context import BodyTooLargeError, RequestContext
from stockade.pipeline.forward import replaced_headers
from stockade.pipeline.intake import bare_context, body_too_large, request_context, route_request
from stockade.pipeline.local import (
    handler_failed,
    handler_reply,
    handler_timed_out,
    pipeline_failed,
    pipeline_timed_out,
    problem,
    run_response_hooks,
)
from stockade.pipeline.record import record_request
from stockade.pipeline.response import Response
from stockade.pipeline.runner import Pipeline, header_safe, step_eagerly
from stockade.pipeline.verdict import Deny
from stockade.proxy.http import (
    CRLF,
    ResponseFraming,
    append_headers,
    build_head,
    connection_tokens,
    cut_headers,
    rewrite_response_head,
    status_line,
)
from stockade.security.forwarded import forwarded_for

if TYPE_CHECKING:
    from stockade.handlers.base import Handler, LocalResponse
    from stockade.proxy.client import ClientConnection
    from stockade.proxy.upstream import UpstreamConnection, UpstreamPool
    from stockade.runtime import CompiledRoute, Runtime

log = logging.getLogger("stockade.proxy")

INF = float("inf")
# Why client reads are paused (a bitmask: one reason ending must not resume reads another still needs paused).
PAUSE_BUFFER = 1
PAUSE_PIPELINE = 2
PAUSE_UPSTREAM = 4
PAUSE_TUNNEL = 8
MAX_BUFFERED_RESPONSE = 16 * 1024 * 1024
MAX_DISCARD = 64 * 1024  # a denied request's unread body up to this size is drained to keep the connection
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS"})
_XF_REBUILT = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})


_FRAMING_NAMES = frozenset({"content-length", "transfer-encoding"})
_drop_cache: dict[frozenset[str], frozenset[bytes]] = {}


def _drop_bytes(names: frozenset[str]) -> frozenset[bytes]:
    """Header names to drop, as bytes, cached by the (hash-caching) frozenset a stage's verdict carries."""
    found = _drop_cache.get(names)
    if found is None:
        found = frozenset(n.encode("latin-1") for n in names)
        if len(_drop_cache) < 1024:
            _drop_cache[names] = found
    return found


class RequestHead:
    """A request head as parsed, with the headers already sorted into what is forwarded and what is not."""

    __slots__ = (
        "chunked",
        "connection",
        "content_length",
        "count",
        "expect",
        "forwarding",
        "fwd",
        "fwd_names",
        "hosts",
        "keep_alive",
        "method",
        "raw",
        "request_id",
        "size",
        "upgrade",
        "upgrade_flag",
        "url",
        "version",
        "wire_bytes",
    )

    def __init__(self) -> None:
        self.url = b""
        self.size = 0
        self.count = 0
        self.wire_bytes = 0
        self.raw: list[tuple[bytes, bytes]] = []
        self.fwd: list[bytes] = []  # the forwarded headers, each a whole "name: value\r\n" line
        self.fwd_names: list[bytes] = []  # their names as received (same order)
        self.hosts: list[bytes] = []
        self.forwarding: list[tuple[bytes, bytes, bytes]] | tuple[()] = ()  # created when one arrives (rare)
        self.connection: list[bytes] | tuple[()] = ()
        self.expect: bytes | None = None
        self.request_id: bytes | None = None
        self.upgrade: bytes | None = None
        self.chunked = False
        self.content_length = 0
        self.method = b""
        self.version = "1.1"
        self.keep_alive = False
        self.upgrade_flag = False


class Exchange:
    """One request and its response on a client connection."""

    # Defaults at class level: construction assigns only what differs per exchange (it runs per request).
    t_sent = 0.0
    t_head = 0.0
    t_fwd = 0.0
    started = False
    finished = False
    request_done = False
    too_large = False
    timed_out = False
    retried = False
    resp_started = False
    close_after = False
    expect_continue = False
    continue_sent = False
    streaming = False
    upgrade_ok = False
    tunnel_open = False
    trusted = False
    ctx: RequestContext | None = None
    route: CompiledRoute | None = None
    pipeline: Pipeline | None = None
    pool: UpstreamPool | None = None
    upstream: UpstreamConnection | None = None
    task: asyncio.Future[Any] | None = None
    body_waiter: asyncio.Future[None] | None = None
    body: list[bytes] | tuple[()] = ()
    body_size = 0
    deadline = INF
    deadline_kind = ""
    status = 0
    upstream_status = 0
    bytes_sent = 0
    error = ""
    pending_failure: tuple[int, str, str] | None = None
    framing: ResponseFraming | None = None
    resp_head = b""
    collected: list[bytes] | None = None
    collected_size = 0

    def __init__(self, conn: ClientConnection, head: RequestHead) -> None:
        self.conn = conn
        self.head = head
        server = conn.server
        self.server = server
        self.runtime: Runtime = server.runtime
        self.clock = clock = server.clock
        self.t0 = clock.monotonic()
        limits = conn.limits
        self.body_limit = limits.max_body_bytes
        self.buffer_cap = limits.buffer_bytes

    # -- request side -----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Validate the head, route it and run the pipeline (called when this exchange reaches the queue head)."""
        if self.started:
            return
        self.started = True
        if self.pending_failure is not None:
            status, reason, detail = self.pending_failure
            self._deny_local(status, reason, "http", detail, close=True)
            return
        h = self.head
        conn = self.conn
        if h.version != "1.1" and h.version != "1.0":
            self._deny_local(505, "http.version_not_supported", "http", f"HTTP/{h.version}", close=True)
            return
        peer = conn.peer_ip
        rt = self.runtime
        trusted = bool(rt.trusted_proxies) and peer in rt.trusted_proxies
        self.trusted = trusted
        made = request_context(
            h.method,
            h.url,
            h.version,
            h.raw,
            h.hosts,
            h.expect,
            h.request_id,
            [v for n, _, v in h.forwarding if n == b"x-forwarded-for"] if h.forwarding else (),
            peer,
            rt.trusted_proxies,
            "https" if conn.tls else "http",
            self.clock,
            self.t0,
            self.server.request_ids,
            conn.peer_cert,
            conn.peer_cert_der,
        )
        if isinstance(made, Deny):
            self._deny_local(made.status, made.reason, "http", made.detail, close=True)
            return
        ctx = self.ctx = made
        if h.expect is not None:
            self.expect_continue = h.chunked or h.content_length > 0
        route = route_request(rt, ctx)
        if isinstance(route, Deny):
            self._respond_local(route.status, route.reason, route.headers)
            return
        self.route = route
        self.pipeline = pipeline = route.pipeline
        self.body_limit = pipeline.body_limit
        if self.too_large or h.content_length > self.body_limit or self.body_size > self.body_limit:
            self._body_too_large()
            return
        self.upgrade_ok = (
            h.upgrade_flag and route.websocket and h.upgrade is not None and h.upgrade.lower() == b"websocket"
        )
        ctx.attach_body_reader(self._read_body)
        result = pipeline.run(ctx)
        if result is None:
            self._forward()
        elif type(result) is Deny:
            self._respond_local(result.status, result.reason, result.headers, extra=result.extra)
        else:
            self.task = task = asyncio.get_running_loop().create_task(result)  # type: ignore[arg-type]
            task.add_done_callback(self._pipeline_done)
            self._set_deadline(self.clock.monotonic() + self.conn.limits.pipeline_timeout, "pipeline")

    def _pipeline_done(self, task: asyncio.Future[Any]) -> None:
        if self.task is task:
            self.task = None
        if self.finished:
            return
        self.deadline = INF
        ctx = self.ctx
        assert ctx is not None and self.pipeline is not None  # noqa: S101 - set before the task was created
        if task.cancelled():
            if self.timed_out:
                deny = pipeline_timed_out(ctx)
                self._respond_local(deny.status, deny.reason, None)
            return
        exc = task.exception()
        if exc is not None:
            deny = pipeline_failed(ctx, exc)
            self._respond_local(deny.status, deny.reason, None)
            return
        result = task.result()
        if result is None:
            self._forward()
        else:
            self._respond_local(result.status, result.reason, result.headers, extra=result.extra)

    async def _read_body(self) -> bytes:
        """The body reader handed to stages that need the whole body (bounded by the route's limit)."""
        if self.too_large:
            raise BodyTooLargeError
        if not self.request_done:
            self.buffer_cap = self.body_limit
            self.conn.resume(PAUSE_BUFFER)
            self._send_continue()
            waiter = self.body_waiter = asyncio.get_running_loop().create_future()
            await waiter
        return b"".join(self.body)

    def request_body(self, chunk: bytes) -> None:
        if self.finished or self.too_large:
            return
        size = self.body_size = self.body_size + len(chunk)
        if size > self.body_limit:
            self.too_large = True
            self.body = ()
            if self.started:
                self._body_too_large()
            return
        if self.streaming:
            up = self.upstream
            if up is not None:
                up.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if self.head.chunked else chunk)
            return
        body = self.body
        if body:
            body.append(chunk)
        else:
            self.body = [chunk]
        if size > self.buffer_cap:
            self.conn.pause(PAUSE_BUFFER)

    def request_complete(self) -> None:
        self.request_done = True
        if self.finished or self.too_large:
            return
        if self.streaming:
            self.streaming = False
            if self.head.chunked and self.upstream is not None:
                self.upstream.write(b"0\r\n\r\n")
            if self.pool is not None:
                self._set_deadline(self.clock.monotonic() + self.pool.spec.read_timeout, "upstream")
        waiter = self.body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def request_aborted(self, status: int, reason: str, detail: str) -> None:
        """The request stream broke mid-body (bad chunk framing, stalled upload)."""
        if self.finished:
            self.conn.close()
            return
        self._drop_upstream(reusable=False)
        self._cancel_task()
        if self.resp_started:
            self.error = reason
            self.conn.abort()
            self._finish(close=True)
            return
        self._deny_local(status, reason, "http", detail, close=True)

    def fail_on_start(self, status: int, reason: str, detail: str) -> None:
        self.pending_failure = (status, reason, detail)

    def _body_too_large(self) -> None:
        waiter = self.body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(BodyTooLargeError())  # the waiting stage fails, and the runner answers 413
            return
        if self.resp_started:
            self.error = "request.body_too_large"
            self.conn.abort()
            self._finish(close=True)
            return
        self._drop_upstream(reusable=False)
        self._cancel_task()
        ctx = self.ctx
        pipeline = self.pipeline
        if ctx is not None and pipeline is not None:
            deny = body_too_large(pipeline, ctx)
            self._respond_local(deny.status, deny.reason, None, close=True)
        else:
            detail = f"body exceeds {self.body_limit} bytes"
            self._deny_local(413, "request.body_too_large", "limits", detail, close=True)

    def _send_continue(self) -> None:
        if self.expect_continue and not self.continue_sent and not self.request_done:
            self.continue_sent = True
            self.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    # -- forwarding -------------------------------------------------------------------------------------------

    def _forward(self) -> None:
        route = self.route
        assert route is not None  # noqa: S101 - only called after routing
        if route.handler is not None:
            self._run_handler(route.handler)
            return
        if route.upstream is None:
            self._error_local(502, "upstream.unavailable", "route has no upstream")
            return
        self.pool = pool = self.server.pools.get(route.upstream)
        up = pool.acquire()
        if up is not None:
            self._send(up)
        else:
            self._connect()

    def _run_handler(self, handler: Handler) -> None:
        ctx = self.ctx
        assert ctx is not None  # noqa: S101
        try:
            done, value = step_eagerly(handler.handle(ctx))
        except Exception as exc:
            self._handler_failed(exc)
            return
        if done:
            self._handler_reply(value)
            return
        self.task = task = asyncio.get_running_loop().create_task(value)
        task.add_done_callback(self._handler_done)
        self._set_deadline(self.clock.monotonic() + self.conn.limits.pipeline_timeout, "handler")

    def _handler_done(self, task: asyncio.Future[Any]) -> None:
        if self.task is task:
            self.task = None
        if self.finished or task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._handler_failed(exc)
        else:
            self._handler_reply(task.result())

    def _handler_failed(self, exc: BaseException) -> None:
        ctx = self.ctx
        assert ctx is not None  # noqa: S101
        reply = handler_failed(ctx, exc)
        self._write_local(reply.status, reply.headers, reply.body, close=False, framed=True)

    def _handler_reply(self, reply: LocalResponse) -> None:
        ctx = self.ctx
        pipeline = self.pipeline
        assert ctx is not None and pipeline is not None  # noqa: S101
        self.deadline = INF
        out = handler_reply(pipeline, ctx, reply)
        self._write_local(out.status, out.headers, out.body, close=False, framed=True)

    def _connect(self) -> None:
        pool = self.pool
        assert pool is not None  # noqa: S101
        self._set_deadline(self.clock.monotonic() + pool.spec.connect_timeout, "connect")
        self.task = task = asyncio.get_running_loop().create_task(pool.connect())
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Future[Any]) -> None:
        if self.task is task:
            self.task = None
        if task.cancelled():
            return
        exc = task.exception()
        if self.finished:
            if exc is None and self.pool is not None:
                self.pool.release(task.result())
            return
        self.deadline = INF
        if exc is not None:
            self._error_local(502, "upstream.unavailable", f"connect failed: {exc!r}")
            return
        self._send(task.result())

    def _send(self, up: UpstreamConnection) -> None:
        self.upstream = up
        h = self.head
        pipeline = self.pipeline
        assert pipeline is not None and self.pool is not None  # noqa: S101
        head_only = h.method == b"HEAD"
        buffer_response = pipeline.needs_response_body and not head_only
        self.collected = [] if buffer_response else None
        up.begin(self, decode=buffer_response or h.version == "1.0", head_only=head_only)
        data = self._request_head()
        if self.body:
            if h.chunked:
                data += b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in self.body if c)
            else:
                data += b"".join(self.body)
        if self.request_done and h.chunked:
            data += b"0\r\n\r\n"
        if not (self.request_done and h.method in _IDEMPOTENT):
            self.body = ()  # kept only while a retry on a fresh connection is still possible
        up.write(data)
        self.conn.resume(PAUSE_BUFFER)
        now = self.clock.monotonic()
        self.t_sent = now
        if self.request_done:
            self._set_deadline(now + self.pool.spec.read_timeout, "upstream")
        else:
            self.streaming = True
            self.deadline = INF
            self._send_continue()

    def _request_head(self) -> bytes:
        h = self.head
        ctx = self.ctx
        pool = self.pool
        pipeline = self.pipeline
        assert ctx is not None and pool is not None and pipeline is not None  # noqa: S101
        target = pool.base_path + ctx.raw_path.encode("latin-1")
        if ctx.query:
            target += b"?" + ctx.query.encode("latin-1")
        host = h.hosts[0] if pool.spec.preserve_host and h.hosts else pool.host_header
        parts = [h.method, b" ", target, b" HTTP/1.1\r\nhost: ", host, CRLF]
        removed = ctx.remove_headers
        if h.connection or removed or ctx.set_headers:
            if ctx.set_headers:
                drop = frozenset(n.encode("latin-1") for n in replaced_headers(ctx) or ())
            else:
                drop = _drop_bytes(removed or frozenset())
            if h.connection:
                drop |= connection_tokens(h.connection)
            # A name cannot contain a newline: join-lower-split lower-cases every name in one C call.
            if h.fwd:
                lowered = b"\n".join(h.fwd_names).lower().split(b"\n")
                parts += [line for name, line in zip(lowered, h.fwd, strict=True) if name not in drop]
        else:
            parts += h.fwd
        conn = self.conn
        proto = b"https" if conn.tls else b"http"
        fhost = h.hosts[0] if h.hosts else pool.host_header
        if self.trusted and h.forwarding:
            xff_values = []
            for lname, name, value in h.forwarding:
                if lname == b"x-forwarded-for":
                    xff_values.append(value.decode("latin-1"))
                elif lname == b"x-forwarded-proto":
                    proto = value
                elif lname == b"x-forwarded-host":
                    fhost = value
                if lname not in _XF_REBUILT:
                    parts.extend((name, b": ", value, CRLF))
            xff = forwarded_for(conn.peer_ip, xff_values, self.runtime.trusted_proxies).encode("latin-1")
        else:
            xff = conn.peer_ip.encode("ascii")
        parts.extend((b"x-forwarded-for: ", xff, b"\r\nx-forwarded-proto: ", proto, b"\r\nx-forwarded-host: ", fhost))
        parts.extend((b"\r\nx-request-id: ", ctx.request_id.encode("ascii"), CRLF))
        if h.chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        if self.upgrade_ok:
            parts.append(b"connection: upgrade\r\nupgrade: websocket\r\n")
        parts.append(pipeline.identity_header_bytes(ctx))
        if ctx.set_headers:
            for sname, svalue in ctx.set_headers.items():
                parts.extend((sname.encode("latin-1"), b": ", svalue.encode("latin-1"), CRLF))
        parts.append(CRLF)
        return b"".join(parts)

    # -- response side (called by the upstream connection) ----------------------------------------------------

    def upstream_head(self, head: bytes, status: int, first: bytes) -> None:
        """The upstream's response head arrived, with `first`: the body bytes that came in the same read."""
        now = self.clock.monotonic()
        self.t_head = now
        self.upstream_status = status
        pool = self.pool
        assert pool is not None  # noqa: S101
        self._set_deadline(now + pool.spec.read_timeout, "upstream")
        if status == 101:
            if not self.upgrade_ok:
                self._upstream_broken("upstream.bad_response", "101 without an upgrade request")
                return
            self._write_head(
                head, status, ResponseFraming(head), None, b"connection: upgrade\r\nupgrade: websocket\r\n"
            )
            self.tunnel_open = True
            self.deadline = INF
            self._record()
            self.conn.start_tunnel(self)
            return
        framing = self.framing = ResponseFraming.of(head)
        if self.collected is not None:
            self.resp_head = head
            if first:
                self.upstream_body(first)
            return
        self._write_head(head, status, framing, None, None, first)

    def _write_head(
        self,
        head: bytes,
        status: int,
        framing: ResponseFraming,
        body: bytes | None,
        extra: bytes | None,
        first: bytes = b"",
    ) -> bytes | None:
        """Write the response head (and `first`, streamed body bytes that came with it) to the client; returns the
        buffered body to send when hooks had it (they may have replaced it)."""
        h = self.head
        conn = self.conn
        pipeline = self.pipeline
        ctx = self.ctx
        assert pipeline is not None and ctx is not None  # noqa: S101
        dechunk = h.version == "1.0" and framing.chunked
        close = (
            conn.should_close_after(self)
            or not self.request_done
            or dechunk
            or (framing.delimited_by_close and status not in (204, 304) and h.method != b"HEAD" and status >= 200)
        )
        self.close_after = close
        if extra is None:
            extra = (
                b"connection: close\r\n" if close else (b"connection: keep-alive\r\n" if h.version == "1.0" else b"")
            )
        if pipeline.response_hooks or framing.needs_rebuild or dechunk or body is not None:
            resp = Response(status, raw_head=head, body=body)
            failed = run_response_hooks(pipeline, ctx, resp)
            if failed is not None:
                self._error_local(failed.status, failed.reason, failed.detail, keep_decision=True)
                return None
            if body is not None:
                body = resp.body
            if framing.needs_rebuild:
                # The upstream's Connection header names other headers as hop-by-hop: parse and rebuild.
                headers = resp.final_headers()
                if dechunk or body is not None:
                    headers = [(n, v) for n, v in headers if n != "transfer-encoding" and n != "content-length"]
                    if body is not None:
                        headers.append(("content-length", str(len(body))))
                out = build_head(status_line(status), headers, extra)
            else:
                # Surgical edits on the verbatim head: hop-by-hop lines cut as usual, the hooks' removals (and,
                # when the body is re-framed, the framing lines) cut with one search, additions appended -
                # instead of parsing and rebuilding every header.
                out = rewrite_response_head(head, framing, extra)
                removed = resp.removed
                added = resp.added
                if dechunk or body is not None:
                    removed = removed | _FRAMING_NAMES
                    if body is not None:
                        added = [*added, ("content-length", str(len(body)))]
                if removed:
                    out = cut_headers(out, removed)
                if added:
                    out = append_headers(out, added)
        else:
            out = rewrite_response_head(head, framing, extra)
        if first:
            out += first
        conn.write(out)
        self.resp_started = True
        self.status = status
        self.bytes_sent += len(out)
        return body

    def upstream_body(self, data: bytes) -> None:
        if self.tunnel_open:
            self.conn.write(data)
            return
        collected = self.collected
        if collected is not None:
            collected.append(data)
            self.collected_size += len(data)
            if self.collected_size > MAX_BUFFERED_RESPONSE:
                self._upstream_broken("upstream.response_too_large", "response body exceeds the buffer for hooks")
            return
        self.conn.write(data)
        self.bytes_sent += len(data)
        pool = self.pool
        if pool is not None:
            now = self.clock.monotonic()
            if not self.t_fwd:
                self.t_fwd = now
            self.deadline = now + pool.spec.read_timeout

    def upstream_done(self) -> None:
        up = self.upstream
        if up is not None:
            self._drop_upstream(reusable=up.keep_alive and self.request_done and not up.decoded)
        if self.collected is not None:
            self._flush_collected()
            if self.finished:
                return
        self._finish(close=self.close_after)

    def _flush_collected(self) -> None:
        collected = self.collected
        assert collected is not None and self.framing is not None  # noqa: S101
        self.collected = None
        body = self._write_head(self.resp_head, self.upstream_status, self.framing, b"".join(collected), None)
        if body is not None and not self.finished:
            self.conn.write(body)
            self.bytes_sent += len(body)

    def upstream_closed(self, conn: UpstreamConnection) -> None:
        if self.tunnel_open:
            self.tunnel_open = False
            self._drop_upstream(reusable=False)
            self.conn.close()
            return
        if self.finished or self.upstream is not conn:
            return
        self._drop_upstream(reusable=False)
        if not conn.head_sent:
            h = self.head
            if (
                not conn.received_any
                and conn.reused
                and not self.retried
                and self.request_done
                and h.method in _IDEMPOTENT
            ):
                self.retried = True  # a pooled connection the upstream had already closed: try a fresh one
                self._connect()
                return
            self._error_local(502, "upstream.unavailable", "upstream closed the connection")
            return
        framing = self.framing
        if framing is not None and framing.delimited_by_close:
            if self.collected is not None:
                self._flush_collected()
            self._finish(close=True)
            return
        self._upstream_broken("upstream.truncated", "upstream closed mid-response")

    def upstream_failed(self, reason: str, detail: str) -> None:
        self._upstream_broken(reason, detail)

    def _upstream_broken(self, reason: str, detail: str) -> None:
        if self.finished:
            return
        self._drop_upstream(reusable=False)
        if self.resp_started:
            self.error = reason
            log.warning("upstream failed mid-response: %s", detail)
            self.conn.abort()
            self._finish(close=True)
        else:
            self._error_local(502, "upstream.bad_response" if reason != "upstream.unavailable" else reason, detail)

    def upstream_pause(self, paused: bool) -> None:
        if paused:
            self.conn.pause(PAUSE_UPSTREAM)
        else:
            self.conn.resume(PAUSE_UPSTREAM)

    def client_pause(self, paused: bool) -> None:
        up = self.upstream
        if up is not None and up.transport is not None and not up.closed:
            if paused:
                up.transport.pause_reading()
            else:
                up.transport.resume_reading()

    def tunnel_from_client(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.write(data)

    def client_lost(self) -> None:
        if self.tunnel_open:
            self.tunnel_open = False
            self._drop_upstream(reusable=False)
            return
        if self.finished:
            return
        self._cancel_task()
        self._drop_upstream(reusable=False)
        waiter = self.body_waiter
        if waiter is not None and not waiter.done():
            waiter.cancel()
        if not self.error:
            self.error = "client.closed"
        if not self.status:
            self.status = 499  # nginx's code for "client closed the connection before the response"
        self._finish(close=True)

    def check_deadline(self, now: float) -> None:
        if self.deadline > now:
            return
        kind = self.deadline_kind
        self.deadline = INF
        if kind == "pipeline":
            self.timed_out = True
            self._cancel_task()
        elif kind == "handler":
            self._cancel_task()
            ctx = self.ctx
            assert ctx is not None  # noqa: S101
            reply = handler_timed_out(ctx)
            self.error = "handler.timeout"
            self._write_local(reply.status, reply.headers, reply.body, close=not self.request_done, framed=True)
        elif kind == "connect":
            self._cancel_task()
            self._error_local(504, "upstream.timeout", "connect timeout")
        elif kind == "upstream":
            if self.resp_started:
                self._upstream_broken("upstream.timeout", "read timeout mid-response")
            else:
                self._error_local(504, "upstream.timeout", "read timeout")

    # -- local responses and the end of the exchange ----------------------------------------------------------

    def _deny_local(
        self,
        status: int,
        reason: str,
        stage: str,
        detail: str,
        *,
        close: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        ctx = self.ctx or self._bare_context()
        Pipeline.deny(ctx, stage, Deny(status, reason, detail=detail))
        self._respond_local(status, reason, headers, close=close)

    def _error_local(self, status: int, reason: str, detail: str, *, keep_decision: bool = False) -> None:
        """A failure that is not a security decision (upstream down, timeout): decision `error`."""
        ctx = self.ctx or self._bare_context()
        if not keep_decision:
            ctx.decision = "error"
            ctx.reason = reason
            ctx.stage = "upstream"
            ctx.detail = detail
        self.error = reason
        self._drop_upstream(reusable=False)
        self._cancel_task()
        if self.resp_started:
            self.conn.abort()
            self._finish(close=True)
        else:
            self._respond_local(status, reason, None, close=not self.request_done)

    def _respond_local(self, status: int, reason: str, headers: Any, *, close: bool = False, extra: Any = None) -> None:
        """Render a gateway-generated problem (RFC 9457 problem+json) and finish the exchange."""
        if self.finished:
            return
        ctx = self.ctx or self._bare_context()
        reply = problem(status, reason, ctx.request_id, headers, extra)
        self._write_local(status, reply.headers, reply.body, close=close, framed=True)

    def _write_local(
        self, status: int, headers: list[tuple[str, str]], body: bytes, *, close: bool, framed: bool = False
    ) -> None:
        """Write a response made by the gateway (a problem or a handler's reply) and finish the exchange."""
        if self.finished:
            return
        h = self.head
        conn = self.conn
        if not self.request_done and not close:
            # The unread body can be drained (and the connection kept) if it is small and on its way.
            remaining = h.content_length - self.body_size
            close = h.chunked or remaining > MAX_DISCARD or (self.expect_continue and not self.continue_sent)
        close = close or conn.should_close_after(self)
        lines = [status_line(status)]
        for name, value in headers:
            if not framed and name in ("content-length", "transfer-encoding", "connection"):
                continue
            lines.append(b"%b: %b\r\n" % (name.encode("latin-1"), header_safe(value).encode("latin-1")))
        if not framed:
            lines.append(b"content-length: %d\r\n" % len(body))
        lines.append(b"date: " + self.server.dates.get(self.clock.time()) + CRLF)
        if close:
            lines.append(b"connection: close\r\n")
        elif h.version == "1.0":
            lines.append(b"connection: keep-alive\r\n")
        lines.append(CRLF)
        if h.method != b"HEAD":
            lines.append(body)
        data = b"".join(lines)
        conn.write(data)
        self.resp_started = True
        self.status = status
        self.bytes_sent += len(data)
        self.t_fwd = self.clock.monotonic()
        self._finish(close=close)

    def _bare_context(self) -> RequestContext:
        """A context for requests rejected before one could be built (so they are logged the same way)."""
        h = self.head
        ctx = self.ctx = bare_context(
            method=h.method,
            version=h.version,
            headers=h.raw,
            peer_ip=self.conn.peer_ip,
            scheme="https" if self.conn.tls else "http",
            clock=self.clock,
            started=self.t0,
            new_id=self.server.request_ids,
        )
        return ctx

    def _finish(self, *, close: bool) -> None:
        if self.finished:
            return
        self._record()
        waiter = self.body_waiter
        if waiter is not None and not waiter.done():
            waiter.cancel()
        self.conn.exchange_finished(self, close)

    def _record(self) -> None:
        """Completion hooks, the decision log line and the request metrics: once per exchange."""
        self.finished = True
        self.deadline = INF
        ctx = self.ctx or self._bare_context()
        server = self.server
        record_request(
            self.pipeline,
            ctx,
            self,
            self.clock.monotonic(),
            self.status,
            self.upstream_status,
            self.bytes_sent,
            self.error,
            server.decision_log,
            server.metrics,
        )
        ctx.attach_body_reader(None)

    def _set_deadline(self, when: float, kind: str) -> None:
        self.deadline = when
        self.deadline_kind = kind

    def _cancel_task(self) -> None:
        task = self.task
        if task is not None:
            self.task = None
            task.cancel()

    def _drop_upstream(self, *, reusable: bool) -> None:
        up = self.upstream
        if up is None:
            return
        self.upstream = None
        pool = self.pool
        if pool is None:
            up.abort()
        elif reusable:
            pool.release(up)
        else:
            up.detach()
            pool.discard(up)
