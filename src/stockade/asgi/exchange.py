"""One HTTP request through the middleware: intake, pipeline, the app (or a handler), response hooks, the record.

The app sees the request only if the pipeline allowed it, with the normalised path and the gateway's header
edits; its body is bounded by the route's limit whether a stage buffered it or the app streams it. Denials
and failures are answered by the one renderer, exactly as the proxy answers them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from stockade.asgi.base import ClientDisconnectedError, DeadlineExpiredError, Exchange
from stockade.asgi.scope import Message, Receive, Scope, Send, app_scope, from_raw_headers, to_raw_headers
from stockade.pipeline.context import BodyTooLargeError
from stockade.pipeline.intake import body_too_large
from stockade.pipeline.local import denial, handler_timed_out, problem, run_handler, run_response_hooks
from stockade.pipeline.response import Response
from stockade.pipeline.runner import MAX_RESPONSE_BYTES, step_eagerly
from stockade.pipeline.verdict import Deny

if TYPE_CHECKING:
    from stockade.asgi.middleware import StockadeMiddleware
    from stockade.handlers.base import Handler, LocalResponse
    from stockade.pipeline.context import RequestContext
    from stockade.pipeline.runner import Pipeline

log = logging.getLogger("stockade.asgi")

_DISCONNECT: Message = {"type": "http.disconnect"}
_BODY_BYPASS = frozenset({"http.response.pathsend", "http.response.zerocopy"})  # a file the server sends itself


def _without_length(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(n, v) for n, v in headers if n.lower() not in (b"content-length", b"transfer-encoding")]


class HttpExchange(Exchange):
    """One `http` scope. `answered` means the gateway has taken over the response: the app's output is dropped."""

    bodiless = False  # the app's response may not have a body (HEAD, 1xx, 204, 304): set at its start

    def __init__(self, mw: StockadeMiddleware, scope: Scope, receive: Receive, send: Send) -> None:
        super().__init__(mw, scope, receive, send)
        self.body_size = 0
        self.body_limit = 0
        self.body_done = False
        self.replay: bytes | None = None
        self.answered = False
        self.start_sent = False
        self.held: Message | None = None  # the app's response start, held while its body is buffered for hooks
        self.collected: list[bytes] | None = None
        self.collected_size = 0
        self.trailers = False
        self.head_request = False

    async def run(self) -> None:
        try:
            await self._run()
        except ClientDisconnectedError:
            self.client_gone()
        finally:
            self._release()  # if the app stopped or failed mid-body
            if not self.recorded:
                self._settle()

    async def _run(self) -> None:
        method = str(self.scope["method"]).encode("ascii", "replace")
        self.head_request = method == b"HEAD"
        ctx, route = self.intake(method)
        if isinstance(route, Deny):
            # Like the proxy, stop reading a connection whose request head was refused or whose body is too big.
            await self._answer(denial(ctx, route), close=route.status == 413 or ctx.stage == "http")
            return
        pipeline = route.pipeline
        self.body_limit = pipeline.body_limit
        ctx.attach_body_source(self)
        deny = await self.run_pipeline(ctx, pipeline)
        if deny is not None:
            await self._answer(denial(ctx, deny), close=deny.status == 413 and not self.body_done)
            return
        if route.handler is not None:
            await self._answer(await self._handle(route.handler, pipeline, ctx))
            return
        buffer_body = pipeline.needs_response_body and not self.head_request
        self.collected = [] if buffer_body else None
        runtime = self.runtime
        scope = app_scope(
            self.scope,
            ctx,
            pipeline,
            runtime.trusted_proxies,
            mount=self.mount,
            hide_body_bypass=buffer_body,
            by_host=runtime.router.by_host,
        )
        self.times.t_sent = self.clock.monotonic()
        try:
            await self.mw.app(scope, self._app_receive, self._app_send)
        except Exception:
            if self.answered:
                # The gateway already answered (body over the limit, a failing hook): the app only saw its input
                # cut off. Its error changes nothing the client gets, and re-raising would make the server log a
                # failure for a request that was handled.
                log.debug("app raised after the gateway answered", exc_info=True)
                return
            if self.disconnected:  # Starlette's ClientDisconnect: the client left, so no 5xx for clients to inflate
                self.error = "client.closed"
                if not self.start_sent:
                    self.status = 499
            else:
                self.error = "app.error"
                if not self.start_sent:
                    self.status = 500  # what the server answers for an app that raised before responding
            self.record()
            raise

    async def _handle(self, handler: Handler, pipeline: Pipeline, ctx: RequestContext) -> LocalResponse:
        """The route's handler, stepped eagerly like the pipeline; under the deadline only if it awaits I/O."""
        done, value = step_eagerly(run_handler(handler, pipeline, ctx))
        if done:
            return value  # type: ignore[no-any-return]
        try:
            return await self.bounded(value)
        except DeadlineExpiredError:
            return handler_timed_out(ctx)

    def _settle(self) -> None:
        """Record a request whose response never completed (the app returned early, or the client left)."""
        if not self.error:
            self.error = "client.closed" if self.disconnected else "app.incomplete"
        if not self.status:
            self.status = 499 if self.disconnected else 500
        self.record()

    # -- the request body -------------------------------------------------------------------------------------

    async def read_request_body(self) -> bytes:
        """The body reader handed to stages (`await ctx.read_body()`): buffered, bounded, replayed to the app."""
        chunks: list[bytes] = []
        since = self.clock.monotonic()
        self.reading_body = True
        try:
            while not self.body_done:
                message = await self.receive()
                kind = message["type"]
                if kind == "http.disconnect":
                    raise ClientDisconnectedError
                if kind != "http.request":
                    continue
                chunk = message.get("body", b"")
                if chunk:
                    self.body_size += len(chunk)
                    if self.body_size > self.body_limit:
                        raise BodyTooLargeError  # the runner answers 413 on behalf of the stage that was reading
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    self.body_done = True
        finally:
            self.reading_body = False
            self.times.t_wait += self.clock.monotonic() - since  # the client's time, not the gateway's
        body = b"".join(chunks)
        self.replay = body
        return body

    async def _app_receive(self) -> Message:
        if self.answered:
            return _DISCONNECT
        replay = self.replay
        if replay is not None:
            self.replay = None
            return {"type": "http.request", "body": replay, "more_body": False}
        message = await self.receive()
        kind = message["type"]
        if kind == "http.disconnect":
            self.disconnected = True
        elif kind == "http.request" and not self.body_done:
            chunk = message.get("body", b"")
            self.body_size += len(chunk)
            if self.body_size > self.body_limit:
                await self._overflow()
                return _DISCONNECT
            if not message.get("more_body", False):
                self.body_done = True
        return message

    async def _overflow(self) -> None:
        """The streamed body outgrew the route's limit: 413 if the app has not answered yet, else cut it off."""
        ctx = self.ctx
        pipeline = self.pipeline
        assert ctx is not None and pipeline is not None  # noqa: S101 - set by intake
        if self.start_sent:
            self.answered = True
            self.error = "request.body_too_large"
            self.record()  # the server closes the connection when the app returns with the response unfinished
            return
        await self._answer(denial(ctx, body_too_large(pipeline, ctx)), close=True)

    # -- the response -----------------------------------------------------------------------------------------

    async def _app_send(self, message: Message) -> None:
        if self.answered:
            return
        kind = message["type"]
        if kind == "http.response.start":
            self.times.t_head = self.clock.monotonic()
            status = self.app_status = int(message["status"])
            self.trailers = bool(message.get("trailers", False))
            no_body = status < 200 or status == 204 or status == 304
            self.bodiless = self.head_request or no_body
            if no_body:
                # The body is dropped below, so no length may be announced for it: uvicorn-httptools fails a response
                # "shorter than Content-Length" and drops the connection. A HEAD keeps it: GET's length, RFC 9110 9.3.2.
                message = {**message, "headers": _without_length(message.get("headers", []))}
            if self.collected is not None:
                self.held = message
                return
            pipeline = self.pipeline
            if pipeline is not None and pipeline.response_hooks:
                hooked = await self._hook(message, None)
                if hooked is None:
                    return
                message = hooked[0]
            await self._start(message)
        elif kind == "http.response.body":
            if self.collected is not None and self.held is not None:
                await self._collect(message)
                return
            if self.bodiless:
                # Some servers write what the app sends after a HEAD (daphne does), and hooks that filter bodies
                # never saw it (HEAD is not buffered); after a 204 or 304 it would be read as the next response.
                # No body byte leaves, whatever the server would do.
                message = {"type": kind, "body": b"", "more_body": message.get("more_body", False)}
            await self.send(message)
            self.bytes_sent += len(message.get("body", b""))
            if not message.get("more_body", False) and not self.trailers:
                self.record()
        elif kind == "http.response.trailers":
            await self.send(message)
            if not message.get("more_trailers", False):
                self.record()
        elif self.bodiless and kind in _BODY_BYPASS:
            more = kind == "http.response.zerocopy" and message.get("more_body", False)
            await self._app_send({"type": "http.response.body", "body": b"", "more_body": more})
        elif kind == "http.response.pathsend":
            await self.send(message)
            self.record()
        elif kind == "http.response.zerocopy":
            await self.send(message)
            self.bytes_sent += int(message.get("count") or 0)
            if not message.get("more_body", False) and not self.trailers:
                self.record()
        else:
            await self.send(message)  # other extensions (early hints, push) are the server's to judge

    async def _collect(self, message: Message) -> None:
        collected = self.collected
        assert collected is not None  # noqa: S101 - checked by the caller
        chunk = message.get("body", b"")
        collected.append(chunk)
        self.collected_size += len(chunk)
        mw = self.mw
        mw.buffered += len(chunk)
        if self.collected_size > MAX_RESPONSE_BYTES:
            await self._refuse_response(502, "upstream.bad_response", "response body exceeds the buffer for hooks")
            return
        if mw.buffered > self.runtime.config.limits.response_buffer_total_bytes:
            await self._refuse_response(503, "gateway.busy", "response buffers of this process are full")
            return
        if message.get("more_body", False):
            return
        held = self.held
        assert held is not None  # noqa: S101 - checked by the caller
        self.held = None
        self.collected = None
        hooked = await self._hook(held, b"".join(collected))
        if hooked is None:
            self._release()
            return
        start, body = hooked
        await self._start(start)
        await self.send({"type": "http.response.body", "body": body or b"", "more_body": self.trailers})
        # Given back now, not when the app returns: Starlette's BackgroundTasks run inside the app call, long after
        # the body left, and would hold the budget (false 503 gateway.busy for everyone else) until they finish.
        self._release()
        self.bytes_sent += len(body or b"")
        if not self.trailers:
            self.record()

    async def _refuse_response(self, status: int, reason: str, detail: str) -> None:
        """Answer in place of an app response whose body cannot be buffered for the hooks."""
        ctx = self.ctx
        assert ctx is not None  # noqa: S101 - set before the app runs
        ctx.decision = "error"
        ctx.reason = reason
        ctx.stage = "app"
        ctx.detail = detail
        self.collected = None
        self._release()  # the app may go on sending (and working) for long after: its body is dropped
        self.error = reason
        await self._answer(problem(status, reason, ctx.request_id))

    def _release(self) -> None:
        """Give the buffered bytes back to the process budget; once, whichever path gets here first."""
        self.mw.buffered -= self.collected_size
        self.collected_size = 0

    async def _hook(self, start: Message, body: bytes | None) -> tuple[Message, bytes | None] | None:
        """Run response hooks on the app's response head (and buffered body); None if a hook failed and the
        gateway answered instead."""
        ctx = self.ctx
        pipeline = self.pipeline
        assert ctx is not None and pipeline is not None  # noqa: S101
        raw = start.get("headers", [])
        app_headers = from_raw_headers(raw)
        resp = Response(int(start["status"]), headers=app_headers, body=body)
        deny = run_response_hooks(pipeline, ctx, resp)
        if deny is not None:
            self.error = deny.reason
            await self._answer(denial(ctx, deny))
            return None
        if body is not None:
            body = resp.body
        if resp.modified or body is not None:
            headers = resp.final_headers()
            if body is not None:
                headers = [(n, v) for n, v in headers if n != "content-length" and n != "transfer-encoding"]
                if self.bodiless:
                    body = b""  # a 1xx, 204 or 304 has none, and announces none (RFC 9110 8.6)
                else:
                    headers.append(("content-length", str(len(body or b""))))
            start = {**start, "headers": to_raw_headers(headers, kept=frozenset(app_headers))}
        return start, body

    async def _start(self, message: Message) -> None:
        await self.send(message)
        self.start_sent = True
        self.status = int(message["status"])
        if self.disconnected:  # the app answered a client it had been told was gone (Starlette's 500): the proxy's 499
            self.status, self.error = 499, "client.closed"
        self.times.t_fwd = self.clock.monotonic()

    async def _answer(self, reply: LocalResponse, *, close: bool = False) -> None:
        """Send a response the gateway made (a problem or a handler's reply) in place of the app's."""
        self.answered = True
        if self.start_sent:
            return  # callers answer only before the app's head went out; a second head would break the stream
        headers = to_raw_headers(reply.headers)
        if close and self.scope.get("http_version") in ("1.0", "1.1"):
            # As the proxy does after refusing a request whose body it did not read: the server would otherwise
            # read and discard an upload nobody wants (HTTP/2 forbids the header; its streams reset instead).
            headers.append((b"connection", b"close"))
        body = b"" if self.head_request else reply.body
        await self._start({"type": "http.response.start", "status": reply.status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})
        self.bytes_sent += len(body)
        self.record()
