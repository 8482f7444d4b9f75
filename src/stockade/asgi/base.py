"""What an HTTP request and a WebSocket handshake share in the middleware: intake, the pipeline, the record."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from stockade.asgi.root import trimmed
from stockade.asgi.scope import (
    INVALID_LENGTH,
    HeadFields,
    Receive,
    Scope,
    Send,
    http_scheme,
    peer_address,
    scope_headers,
)
from stockade.asgi.scope import request_target as scope_target
from stockade.config.models import HTTP_METHODS
from stockade.pipeline.intake import bare_context, body_too_large, request_context, route_request
from stockade.pipeline.local import pipeline_failed, pipeline_timed_out
from stockade.pipeline.record import Timings, record_request
from stockade.pipeline.runner import Pipeline
from stockade.pipeline.verdict import Deny

if TYPE_CHECKING:
    from stockade.asgi.middleware import StockadeMiddleware
    from stockade.pipeline.context import RequestContext
    from stockade.pipeline.route import CompiledRoute, Runtime

T = TypeVar("T")
INF = float("inf")
# The methods the proxy's parser (llhttp) takes, in its spelling; CONNECT is then refused (405) as it is there.
# Servers that pass others on (`post` from uvicorn's h11 and daphne) would have them judged as unknown methods,
# outside every per-method rule, while Starlette and Django serve `post` as POST.
PARSED_METHODS = frozenset(m.encode("ascii") for m in HTTP_METHODS) | {b"CONNECT"}


class ClientDisconnectedError(BaseException):
    """The client went away while a stage was reading the body.

    A BaseException on purpose, like CancelledError: the runner turns every Exception from a stage into a
    500 `stage.error`, and a client hanging up is not a stage failure (it is logged as 499 `client.closed`).
    """


class DeadlineExpiredError(Exception):
    """A stage or handler ran past `limits.pipeline_timeout` and was cancelled by the sweep."""


class Exchange:
    """One request through the middleware. Subclasses supply the body reader and how answers are sent."""

    # The root path taken off the judged path (decoded, encoded), put back in front of it for the app.
    mount: tuple[str, str] = ("", "")

    def __init__(self, mw: StockadeMiddleware, scope: Scope, receive: Receive, send: Send) -> None:
        self.mw = mw
        self.runtime: Runtime = mw.runtime  # a reload mid-request does not change the rules it is judged by
        self.scope = scope
        self.receive = receive
        self.send = send
        self.clock = mw.clock
        self.times = Timings(self.clock.monotonic())
        self.ctx: RequestContext | None = None
        self.pipeline: Pipeline | None = None
        self.status = 0
        self.app_status = 0
        self.bytes_sent = 0
        self.error = ""
        self.recorded = False
        self.disconnected = False
        self.deadline = INF
        self.task: asyncio.Task[Any] | None = None
        self.expired = False
        self.reading_body = False  # a stage is waiting for the client's body (the front's read_request_body)
        self.expired_in_body = False

    def _bare(self, method: bytes) -> RequestContext:
        """A context for a request refused (or broken) before a full one could be built."""
        scope = self.scope
        ctx = self.ctx = bare_context(
            method=method,
            version=str(scope.get("http_version", "1.1")),
            headers=scope_headers(scope),
            peer_ip=peer_address(scope),
            scheme=http_scheme(scope),
            clock=self.clock,
            started=self.times.t0,
            new_id=self.mw.request_ids,
        )
        return ctx

    def intake(self, method: bytes) -> tuple[RequestContext, CompiledRoute | Deny]:
        """Build the context and route the request exactly as the proxy does; a Deny is already recorded."""
        if method not in PARSED_METHODS:
            ctx = self._bare(method)
            return ctx, Pipeline.deny(ctx, "http", Deny(400, "http.bad_request", detail="a method llhttp refuses"))
        scope = self.scope
        rt = self.runtime
        headers = scope_headers(scope)
        fields = HeadFields(headers)
        version = str(scope.get("http_version", "1.1"))
        peer = peer_address(scope)
        scheme = http_scheme(scope)
        result = request_context(
            method=method,
            target=scope_target(scope),
            version=version,
            headers=headers,
            host_value=fields.hosts[0] if fields.hosts else None,
            host_count=len(fields.hosts),
            expect=fields.expect,
            request_id=fields.request_id,
            forwarded_for=fields.forwarded_for,
            peer_ip=peer,
            trusted_proxies=rt.trusted_proxies,
            scheme=scheme,
            clock=self.clock,
            started=self.times.t0,
            new_id=self.mw.request_ids,
        )
        if isinstance(result, Deny):
            ctx = self._bare(method)
            return ctx, Pipeline.deny(ctx, "http", result)
        ctx = self.ctx = result
        root = self.mw.root
        unexpected = root.check(scope)
        if unexpected is not None:
            return ctx, Pipeline.deny(ctx, "http", unexpected)
        sent_root = scope.get("root_path") or ""
        if sent_root.endswith("/"):
            self.scope = {**scope, "root_path": trimmed(sent_root)}  # so the app takes off what the routes did not see
        if root.path:
            mount = root.take_off(scope, ctx)
            if mount is None:
                detail = "the path climbs out of the root path"
                return ctx, Pipeline.deny(ctx, "http", Deny(400, "http.bad_path", detail=detail))
            self.mount = mount
        route = route_request(rt, ctx)
        if isinstance(route, Deny):
            return ctx, route
        self.pipeline = pipeline = route.pipeline
        length = fields.content_length
        if length == INVALID_LENGTH:
            return ctx, Pipeline.deny(ctx, "http", Deny(400, "http.bad_request", detail="invalid Content-Length"))
        if length is not None and length > pipeline.body_limit:
            return ctx, body_too_large(pipeline, ctx)
        return ctx, route

    async def run_pipeline(self, ctx: RequestContext, pipeline: Pipeline) -> Deny | None:
        """Run the route's pipeline: stepped eagerly, driven as a Task under the deadline only if it awaits."""
        try:
            result = pipeline.run(ctx)
            if result is None or isinstance(result, Deny):
                return result
            return await self.bounded(result)
        except DeadlineExpiredError:
            if self.expired_in_body:  # the client did not send its body in time: its fault, not the stage's
                return Pipeline.deny(ctx, "http", Deny(408, "http.timeout", detail="request body not received in time"))
            return pipeline_timed_out(ctx)
        except Exception as exc:
            return pipeline_failed(ctx, exc)

    async def bounded(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro` as a Task the sweep cancels at `limits.pipeline_timeout` (on the injected clock).

        Raises DeadlineExpiredError if it was cut off; its own exceptions propagate.
        """
        task = asyncio.get_running_loop().create_task(coro)
        self.task = task
        self.expired = False
        self.deadline = self.clock.monotonic() + self.runtime.config.limits.pipeline_timeout
        self.mw.watch(self)
        try:
            await asyncio.wait((task,))  # never raises the task's outcome; read below
        finally:
            self.mw.unwatch(self)
            self.deadline = INF
            self.task = None
            if not task.done():
                task.cancel()  # we ourselves were cancelled (server shutdown): take the stage down with us
        if task.cancelled() and self.expired:
            raise DeadlineExpiredError
        return task.result()

    def expire(self) -> None:
        """Called by the middleware's sweep when the deadline has passed."""
        task = self.task
        if task is not None and not task.done():
            self.expired = True
            self.expired_in_body = self.reading_body
            task.cancel()

    def client_gone(self) -> None:
        self.disconnected = True
        self.error = "client.closed"
        if not self.status:
            self.status = 499  # nginx's code for "client closed the connection before the response"

    def record(self, hooks: bool = True) -> None:
        """Completion hooks, the decision log line and the metrics: exactly once (`hooks=False`: the hooks run
        later, when an accepted WebSocket closes)."""
        if self.recorded:
            return
        self.recorded = True
        now = self.clock.monotonic()
        ctx = self.ctx or self._bare(b"")
        mw = self.mw
        times = self.times
        record_request(
            self.pipeline,
            ctx,
            times.t0,
            times.t_sent,
            times.t_head,
            times.t_fwd,
            times.t_wait,
            now,
            self.status,
            self.app_status,
            self.bytes_sent,
            self.error,
            mw.decision_log,
            mw.metrics,
            hooks,
        )
        mw.logged()
