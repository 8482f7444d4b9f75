"""Responses the gateway makes itself, and how failures of the pipeline, its hooks and handlers are answered.

Every front renders the same problems and handler replies from here and adds only its own framing (the proxy
its status line, Date and Connection; the ASGI middleware its `http.response.*` messages).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from stockade.handlers.base import LocalResponse
from stockade.pipeline.render import problem_body, problem_headers
from stockade.pipeline.response import Response
from stockade.pipeline.runner import Pipeline, header_safe
from stockade.pipeline.verdict import Deny

if TYPE_CHECKING:
    from stockade.handlers.base import Handler
    from stockade.pipeline.context import RequestContext

log: Final = logging.getLogger("stockade.pipeline")

# Framing belongs to the front: a handler or hook cannot set it (a wrong Content-Length would desync the client).
_FRAMING: Final = frozenset({"content-length", "transfer-encoding", "connection"})


def problem(
    status: int,
    reason: str,
    request_id: str,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, object] | None = None,
) -> LocalResponse:
    """An RFC 9457 problem from the one renderer; header values made safe (they may come from a stage)."""
    body = problem_body(status, reason, request_id, extra)
    return LocalResponse(status, [(n, header_safe(v)) for n, v in problem_headers(len(body), headers)], body)


def denial(ctx: RequestContext, deny: Deny) -> LocalResponse:
    """The problem for a Deny (already recorded on `ctx` by whoever decided it)."""
    return problem(deny.status, deny.reason, ctx.request_id, deny.headers, deny.extra)


def pipeline_failed(ctx: RequestContext, exc: BaseException) -> Deny:
    """The pipeline itself raised (not a stage: the runner catches those): fail closed with 500."""
    log.error("pipeline failed", exc_info=exc, extra={"route": ctx.route_id, "request_id": ctx.request_id})
    return Pipeline.deny(ctx, ctx.stage or "pipeline", Deny(500, "stage.error", detail=type(exc).__name__))


def pipeline_timed_out(ctx: RequestContext) -> Deny:
    """A stage awaited longer than `limits.pipeline_timeout`: fail closed with 503."""
    return Pipeline.deny(ctx, ctx.stage, Deny(503, "stage.timeout", detail="stage did not finish in time"))


def run_response_hooks(pipeline: Pipeline, ctx: RequestContext, response: Response) -> Deny | None:
    """Run the response hooks; a hook that raises fails the response closed (500 `stage.error`), one that calls
    `response.reject()` replaces the response with its problem."""
    try:
        pipeline.response(ctx, response)
    except Exception as exc:
        log.exception("response hook raised", extra={"route": ctx.route_id, "request_id": ctx.request_id})
        return Pipeline.deny(ctx, ctx.stage or "response", Deny(500, "stage.error", detail=type(exc).__name__))
    if response.rejection is not None:
        status, reason, detail = response.rejection
        return Pipeline.deny(ctx, response.rejected_by or "response", Deny(status, reason, detail=detail))
    return None


def handler_failed(ctx: RequestContext, exc: BaseException) -> LocalResponse:
    """A handler (or a response hook on its reply) raised: 500 `handler.error`."""
    log.error("handler raised", exc_info=exc, extra={"route": ctx.route_id, "request_id": ctx.request_id})
    Pipeline.deny(ctx, "handler", Deny(500, "handler.error", detail=type(exc).__name__))
    return problem(500, "handler.error", ctx.request_id)


def handler_timed_out(ctx: RequestContext) -> LocalResponse:
    """A handler awaited longer than `limits.pipeline_timeout`: 504, logged as an error rather than a denial."""
    ctx.decision = "error"
    ctx.reason = "handler.timeout"
    ctx.stage = "handler"
    ctx.detail = "handler did not finish in time"
    return problem(504, "handler.timeout", ctx.request_id)


def handler_reply(pipeline: Pipeline, ctx: RequestContext, reply: LocalResponse) -> LocalResponse:
    """A handler's reply as it goes to the client: response hooks applied, framed by its final body length."""
    headers = reply.headers
    body = reply.body
    if pipeline.response_hooks:
        resp = Response(reply.status, headers=list(headers), body=body)
        try:
            pipeline.response(ctx, resp)
        except Exception as exc:
            return handler_failed(ctx, exc)
        if resp.rejection is not None:
            status, reason, detail = resp.rejection
            return denial(ctx, Pipeline.deny(ctx, resp.rejected_by, Deny(status, reason, detail=detail)))
        headers = resp.final_headers()
        body = resp.body if resp.body is not None else b""
    out = [(n, header_safe(v)) for n, v in headers if n not in _FRAMING]
    if reply.status == 204 or reply.status == 304:
        return LocalResponse(reply.status, out, b"")  # none, and none announced (RFC 9110 8.6)
    out.append(("content-length", str(len(body))))
    return LocalResponse(reply.status, out, body)


async def run_handler(handler: Handler, pipeline: Pipeline, ctx: RequestContext) -> LocalResponse:
    """Answer an allowed request with the route's handler (for fronts that await; the proxy steps it eagerly)."""
    try:
        reply = await handler.handle(ctx)
    except Exception as exc:
        return handler_failed(ctx, exc)
    return handler_reply(pipeline, ctx, reply)
