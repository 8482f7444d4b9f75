"""One request/response exchange: checks, pipeline, upstream, response, log line.

The pipeline is stepped eagerly inside the parser callback; a Task exists only if a stage awaits I/O.
The request head sent upstream is rebuilt from parsed parts only (never the client's raw bytes), and a
chunked body is re-framed, so nothing the gateway did not parse can reach the upstream.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

from stockade.pipeline.context import BodyTooLargeError, RequestContext
from stockade.pipeline.intake import body_too_large, request_context, route_request
from stockade.pipeline.local import handler_timed_out, pipeline_failed, pipeline_timed_out
from stockade.pipeline.record import complete_upgraded, record_request
from stockade.pipeline.runner import Pipeline
from stockade.pipeline.verdict import Deny
from stockade.proxy import forwarding, local_replies, response_side
from stockade.proxy.common import INF, PAUSE_BUFFER, PAUSE_UPSTREAM
from stockade.proxy.request_head import RequestHead

if TYPE_CHECKING:
    from stockade.pipeline.route import CompiledRoute, Runtime
    from stockade.proxy.client import ClientConnection
    from stockade.proxy.http import ResponseFraming
    from stockade.proxy.spool import Spool
    from stockade.proxy.upstream import UpstreamConnection, UpstreamPool

log: Final = logging.getLogger("stockade.proxy")


class Exchange:
    """One request and its response on a client connection."""

    __slots__ = (
        "body",
        "body_limit",
        "body_size",
        "body_waiter",
        "buffer_cap",
        "bytes_sent",
        "chunk_to_close",
        "clock",
        "close_after",
        "collected",
        "collected_size",
        "conn",
        "continue_sent",
        "ctx",
        "deadline",
        "deadline_kind",
        "error",
        "expect_continue",
        "finished",
        "framing",
        "head",
        "held",
        "monotonic",
        "pending_failure",
        "pipeline",
        "pool",
        "request_done",
        "resp_head",
        "resp_started",
        "retried",
        "route",
        "runtime",
        "server",
        "spool",
        "started",
        "status",
        "streaming",
        "t0",
        "t_end",
        "t_fwd",
        "t_head",
        "t_held",
        "t_sent",
        "t_wait",
        "task",
        "timed_out",
        "too_large",
        "trusted",
        "tunnel_open",
        "upgrade_ok",
        "upstream",
        "upstream_status",
    )
    # All set in __init__: slots, because a dict per request costs more and 40-odd names overflow the
    # instance dicts' shared keys (later exchanges would fall back to slower, materialised dicts).
    ctx: RequestContext | None
    route: CompiledRoute | None
    pipeline: Pipeline | None
    pool: UpstreamPool | None
    upstream: UpstreamConnection | None
    task: asyncio.Future[Any] | None
    body_waiter: asyncio.Future[None] | None
    body: list[bytes] | tuple[()]
    pending_failure: tuple[int, str, str] | None
    framing: ResponseFraming | None
    collected: list[bytes] | None
    spool: Spool | None

    def __init__(self, conn: ClientConnection, head: RequestHead, t0: float = 0.0) -> None:
        """`t0`: when the request arrived, if the connection read the clock for it already (0: read it here)."""
        self.conn = conn
        self.head = head
        server = conn.server
        self.server = server
        self.runtime: Runtime = server.runtime
        # The connection's clock and its bound monotonic(), read natively: a call is one C call (client.py).
        self.clock = conn.clock
        self.monotonic = monotonic = conn.monotonic
        self.t0 = t0 if t0 else monotonic()
        limits = conn.limits
        self.body_limit = limits.max_body_bytes
        self.buffer_cap = limits.buffer_bytes
        self.t_sent = self.t_head = self.t_fwd = self.t_wait = self.t_held = self.t_end = 0.0
        self.started = self.finished = self.request_done = self.too_large = self.timed_out = False
        self.retried = self.resp_started = self.close_after = self.expect_continue = self.continue_sent = False
        self.streaming = self.upgrade_ok = self.tunnel_open = self.trusted = self.held = self.chunk_to_close = False
        self.ctx = self.route = self.pipeline = self.pool = self.upstream = None
        self.task = self.body_waiter = self.pending_failure = self.framing = self.collected = self.spool = None
        self.body = ()
        self.body_size = self.status = self.upstream_status = self.bytes_sent = self.collected_size = 0
        self.deadline = INF
        self.deadline_kind = self.error = ""
        self.resp_head = b""

    # -- request side -----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Validate the head, route it and run the pipeline (called when this exchange reaches the queue head)."""
        if self.started:
            return
        self.started = True
        if self.pending_failure is not None:
            status, reason, detail = self.pending_failure
            local_replies._deny_local(self, status, reason, "http", detail, close=True)
            return
        h = self.head
        conn = self.conn
        if h.version != "1.1" and h.version != "1.0":
            local_replies._deny_local(self, 505, "http.version_not_supported", "http", f"HTTP/{h.version}", close=True)
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
            h.host,
            h.host_count,
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
            local_replies._deny_local(self, made.status, made.reason, "http", made.detail, close=True)
            return
        ctx = self.ctx = made
        if h.expect is not None and h.version == "1.1":  # RFC 9110 10.1.1 and 15.2: never a 1xx to HTTP/1.0
            self.expect_continue = h.chunked or h.content_length > 0
        route = route_request(rt, ctx)
        if isinstance(route, Deny):
            local_replies._respond_local(self, route.status, route.reason, route.headers)
            return
        self.route = route
        self.pipeline = pipeline = route.pipeline
        self.body_limit = pipeline.body_limit
        if self.too_large or h.content_length > self.body_limit or self.body_size > self.body_limit:
            self._body_too_large()
            return
        # RFC 9110 7.8: Upgrade in an HTTP/1.0 request is ignored; it goes on as a plain request (upgrade dropped).
        self.upgrade_ok = (
            h.upgrade_flag
            and route.websocket
            and h.version == "1.1"
            and h.upgrade is not None
            and h.upgrade.lower() == b"websocket"
        )
        ctx.attach_body_source(self)
        result = pipeline.run(ctx)
        if result is None:
            forwarding._forward(self)
        elif type(result) is Deny:
            local_replies._respond_local(self, result.status, result.reason, result.headers, extra=result.extra)
        else:
            self.task = task = asyncio.get_running_loop().create_task(result)  # type: ignore[arg-type]
            task.add_done_callback(self._pipeline_done)
            self._set_deadline(self.monotonic() + self.conn.limits.pipeline_timeout, "pipeline")

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
                local_replies._respond_local(self, deny.status, deny.reason, None)
            return
        exc = task.exception()
        if exc is not None:
            deny = pipeline_failed(ctx, exc)
            local_replies._respond_local(self, deny.status, deny.reason, None)
            return
        result = task.result()
        if result is None:
            forwarding._forward(self)
        else:
            local_replies._respond_local(self, result.status, result.reason, result.headers, extra=result.extra)

    async def read_request_body(self) -> bytes:
        """The body reader handed to stages that need the whole body (bounded by the route's limit)."""
        if self.too_large:
            raise BodyTooLargeError
        if not self.request_done:
            self.buffer_cap = self.body_limit
            self.conn.resume(PAUSE_BUFFER)
            self._send_continue()
            waiter = self.body_waiter = asyncio.get_running_loop().create_future()
            since = self.monotonic()
            try:
                await waiter
            finally:
                now = self.monotonic()
                self.t_wait += now - since  # the client's time, not the gateway's
                if self.deadline_kind == "pipeline" and not self.finished:  # the stages' own time starts now
                    self._set_deadline(now + self.conn.limits.pipeline_timeout, "pipeline")
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
        if self.spool is not None:
            forwarding._spool_more(self, chunk)
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
            if self.held:  # more than the buffer holds: to the spool, or the upstream takes the rest as it comes
                forwarding._buffer_full(self)
            else:
                self.conn.pause(PAUSE_BUFFER)

    def request_complete(self) -> None:
        self.request_done = True
        if self.finished or self.too_large:
            return
        if self.spool is not None:
            if self.held:  # the whole body is in the spool: now the upstream
                self.held = False
                forwarding._to_upstream(self)
            return  # else the spool is being sent, and `_pump` ends the body
        if self.streaming:
            self.streaming = False
            if self.head.chunked and self.upstream is not None:
                self.upstream.write(b"0\r\n\r\n")
            if self.pool is not None and self.route is not None:
                # Without a body, the message ended in the parse that sent its head (_send read the clock then).
                h = self.head
                now = self.t_sent if not (h.chunked or h.content_length) else self.monotonic()
                self._set_deadline(now + self.route.read_timeout, "upstream")
        if self.held:
            self.held = False
            forwarding._to_upstream(self)
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
        local_replies._deny_local(self, status, reason, "http", detail, close=True)

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
            local_replies._respond_local(self, deny.status, deny.reason, None, close=True)
        else:
            detail = f"body exceeds {self.body_limit} bytes"
            local_replies._deny_local(self, 413, "request.body_too_large", "limits", detail, close=True)

    def _send_continue(self) -> None:
        if self.expect_continue and not self.continue_sent and not self.request_done:
            self.continue_sent = True
            self.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    # The halves in proxy/forwarding.py, response_side.py and local_replies.py are module functions taking the
    # exchange, called as such within them; methods remain only where the upstream connection, the client
    # connection or a done-callback needs a bound one.

    # -- forwarding to the upstream: proxy/forwarding.py --------------------------------------------------------

    def _connected(self, task: asyncio.Future[Any]) -> None:
        return forwarding._connected(self, task)

    # -- response side (called by the upstream connection): proxy/response_side.py -----------------------------

    def upstream_head(self, head: bytes, status: int, first: bytes, framing: ResponseFraming) -> None:
        return response_side.upstream_head(self, head, status, first, framing)

    def upstream_body(self, data: bytes) -> None:
        return response_side.upstream_body(self, data)

    def upstream_done(self) -> None:
        return response_side.upstream_done(self)

    def upstream_closed(self, conn: UpstreamConnection) -> None:
        return response_side.upstream_closed(self, conn)

    def upstream_failed(self, reason: str, detail: str) -> None:
        return response_side.upstream_failed(self, reason, detail)

    def upstream_pause(self, paused: bool) -> None:
        return response_side.upstream_pause(self, paused)

    def client_pause(self, paused: bool) -> None:
        return response_side.client_pause(self, paused)

    def tunnel_from_client(self, data: bytes) -> None:
        return response_side.tunnel_from_client(self, data)

    # -- the gateway's own answers and built-in handlers: proxy/local_replies.py --------------------------------

    def _handler_done(self, task: asyncio.Future[Any]) -> None:
        return local_replies._handler_done(self, task)

    # -- the end of the exchange ---------------------------------------------------------------------------------

    def client_lost(self) -> None:
        if self.tunnel_open:
            self._tunnel_done()
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
            waiter = self.body_waiter
            if waiter is not None and not waiter.done():
                # A stage is waiting for the client's body: the body timer judges the client (408); the stages get
                # their own time once it is in. A slow upload is not a 503 stage.timeout.
                self._set_deadline(now + self.conn.limits.pipeline_timeout, "pipeline")
                return
            self.timed_out = True
            self._cancel_task()
        elif kind == "handler":
            self._cancel_task()
            ctx = self.ctx
            assert ctx is not None  # noqa: S101
            reply = handler_timed_out(ctx)
            self.error = "handler.timeout"
            local_replies._write_local(
                self, reply.status, reply.headers, reply.body, close=not self.request_done, framed=True
            )
        elif kind == "connect":
            self._cancel_task()
            local_replies._error_local(self, 504, "upstream.timeout", "connect timeout")
        elif kind == "send":  # the upstream stopped taking a streamed request body
            if self.resp_started:
                response_side._upstream_broken(self, "upstream.timeout", "send timeout mid-response")
            else:
                local_replies._error_local(self, 504, "upstream.timeout", "send timeout")
        elif kind == "upstream":
            up = self.upstream
            if up is not None and up.read_paused:
                # Paused by the gateway for a client that does not take the response as fast: not the upstream's
                # time (send_timeout bounds the client's). client_pause gives the upstream its read_timeout again.
                self.deadline_kind = kind
                return
            if self.resp_started:
                response_side._upstream_broken(self, "upstream.timeout", "read timeout mid-response")
            else:
                local_replies._error_local(self, 504, "upstream.timeout", "read timeout")

    def _finish(self, *, close: bool) -> None:
        if self.finished:
            return
        self._record()
        waiter = self.body_waiter
        if waiter is not None and not waiter.done():
            waiter.cancel()
        self.conn.exchange_finished(self, close)

    def _record(self, hooks: bool = True) -> None:
        """Completion hooks, the decision log line and the request metrics: once per exchange. An upgraded
        connection logs its decision at the 101 and runs its completion hooks when it closes (`_tunnel_done`)."""
        self.finished = True
        self.deadline = INF
        if self.spool is not None:
            self.spool.close()
            self.spool = None
        server = self.server
        if self.collected_size:
            server.collected_total -= self.collected_size
            self.collected = None
        ctx = self.ctx or local_replies._bare_context(self)
        # Read when the response ended (upstream_done, which released the upstream with it), else now.
        now = self.t_end if self.t_end else self.monotonic()
        self.t_end = now
        if self.t_held:  # ended while holding the body (408, the client gone): that wait was the client's too
            self.t_wait += now - self.t_held
        record_request(
            self.pipeline,
            ctx,
            self.t0,
            self.t_sent,
            self.t_head,
            self.t_fwd,
            self.t_wait,
            now,
            self.status,
            self.upstream_status,
            self.bytes_sent,
            self.error,
            server.decision_log,
            server.metrics,
            hooks,
        )
        ctx.attach_body_source(None)

    def tunnel_idle(self) -> None:
        """Nothing passed either way for `limits.tunnel_idle_timeout`: close the upstream side (the client
        connection closes its own) and end the tunnel as a close would, its outcome saying why."""
        if not self.tunnel_open:
            return
        route = self.route
        self.server.metrics.event("tunnel_idle_timeout", route.id if route is not None else "")
        self._tunnel_done("tunnel.idle_timeout")
        self._drop_upstream(reusable=False)

    def _tunnel_done(self, error: str = "") -> None:
        """The upgraded connection closed (either side): now its completion hooks run (a concurrency slot held
        for the WebSocket's lifetime is released here)."""
        self.tunnel_open = False
        ctx = self.ctx
        if ctx is not None:
            complete_upgraded(self.pipeline, ctx, self, self.monotonic(), self.bytes_sent, error)

    def _set_deadline(self, when: float, kind: str) -> None:
        self.deadline = when
        self.deadline_kind = kind

    def _cancel_task(self) -> None:
        task = self.task
        if task is not None:
            self.task = None
            task.cancel()

    def _drop_upstream(self, *, reusable: bool, now: float = 0.0) -> None:
        """`now`: a clock reading of the caller's, for the pool's idle timer (0: the pool reads the clock)."""
        # Its back-pressure ends with it (no resume_writing will come), and so does a pause taken on its behalf
        # before it was even connected (a chunked body that outgrew its spool, then a failed connect).
        self.conn.resume(PAUSE_UPSTREAM)
        up = self.upstream
        if up is None:
            return
        self.upstream = None
        pool = self.pool
        if pool is None:
            up.abort()
        elif reusable:
            pool.release(up, now)
        else:
            up.detach()
            pool.discard(up)
