"""The exchange's own answers: problems, a built-in handler's reply, and the context of a refused request.

Functions of an Exchange (bound as its methods in exchange.py): split from it for size, not as a separate
object, so they use its state directly.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from stockade.pipeline.context import RequestContext
from stockade.pipeline.intake import bare_context
from stockade.pipeline.local import handler_failed, handler_reply, problem
from stockade.pipeline.runner import Pipeline, header_safe, step_eagerly
from stockade.pipeline.verdict import Deny
from stockade.proxy.common import INF, MAX_DISCARD, PAUSE_BUFFER
from stockade.proxy.http import CRLF, status_line

if TYPE_CHECKING:
    from stockade.handlers.base import Handler, LocalResponse
    from stockade.proxy.exchange import Exchange


def _run_handler(ex: Exchange, handler: Handler) -> None:
    ctx = ex.ctx
    assert ctx is not None  # noqa: S101
    try:
        done, value = step_eagerly(handler.handle(ctx))
    except Exception as exc:
        _handler_failed(ex, exc)
        return
    if done:
        _handler_reply(ex, value)
        return
    ex.task = task = asyncio.get_running_loop().create_task(value)
    task.add_done_callback(ex._handler_done)
    ex._set_deadline(ex.monotonic() + ex.conn.limits.pipeline_timeout, "handler")


def _handler_done(ex: Exchange, task: asyncio.Future[Any]) -> None:
    if ex.task is task:
        ex.task = None
    if ex.finished or task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        _handler_failed(ex, exc)
    else:
        _handler_reply(ex, task.result())


def _handler_failed(ex: Exchange, exc: BaseException) -> None:
    ctx = ex.ctx
    assert ctx is not None  # noqa: S101
    reply = handler_failed(ctx, exc)
    _write_local(ex, reply.status, reply.headers, reply.body, close=False, framed=True)


def _handler_reply(ex: Exchange, reply: LocalResponse) -> None:
    ctx = ex.ctx
    pipeline = ex.pipeline
    assert ctx is not None and pipeline is not None  # noqa: S101
    ex.deadline = INF
    out = handler_reply(pipeline, ctx, reply)
    _write_local(ex, out.status, out.headers, out.body, close=False, framed=True)


def _deny_local(
    ex: Exchange,
    status: int,
    reason: str,
    stage: str,
    detail: str,
    *,
    close: bool = False,
    headers: dict[str, str] | None = None,
) -> None:
    ctx = ex.ctx or _bare_context(ex)
    Pipeline.deny(ctx, stage, Deny(status, reason, detail=detail))
    _respond_local(ex, status, reason, headers, close=close)


def _error_local(ex: Exchange, status: int, reason: str, detail: str, *, keep_decision: bool = False) -> None:
    """A failure that is not a security decision (upstream down, timeout): decision `error`."""
    ctx = ex.ctx or _bare_context(ex)
    if not keep_decision:
        ctx.decision = "error"
        ctx.reason = reason
        ctx.stage = "upstream"
        ctx.detail = detail
    ex.error = reason
    ex._drop_upstream(reusable=False)
    ex._cancel_task()
    if ex.resp_started:
        ex.conn.abort()
        ex._finish(close=True)
    else:
        _respond_local(ex, status, reason, None, close=not ex.request_done)


def _respond_local(
    ex: Exchange, status: int, reason: str, headers: Any, *, close: bool = False, extra: Any = None
) -> None:
    """Render a gateway-generated problem (RFC 9457 problem+json) and finish the exchange."""
    if ex.finished:
        return
    ctx = ex.ctx or _bare_context(ex)
    reply = problem(status, reason, ctx.request_id, headers, extra)
    _write_local(ex, status, reply.headers, reply.body, close=close, framed=True)


def _write_local(
    ex: Exchange, status: int, headers: list[tuple[str, str]], body: bytes, *, close: bool, framed: bool = False
) -> None:
    """Write a response made by the gateway (a problem or a handler's reply) and finish the exchange."""
    if ex.finished:
        return
    h = ex.head
    conn = ex.conn
    if not ex.request_done and not close:
        # The unread body can be drained (and the connection kept) if it is small and on its way.
        remaining = h.content_length - ex.body_size
        close = h.chunked or remaining > MAX_DISCARD or (ex.expect_continue and not ex.continue_sent)
    close = close or conn.should_close_after(ex)
    if not close and not ex.request_done:
        conn.resume(PAUSE_BUFFER)  # drain the rest of the body (it may have filled the buffer before the reply)
    lines = [status_line(status)]
    for name, value in headers:
        if not framed and name in ("content-length", "transfer-encoding", "connection"):
            continue
        lines.append(b"%b: %b\r\n" % (name.encode("latin-1"), header_safe(value).encode("latin-1")))
    if not framed:
        lines.append(b"content-length: %d\r\n" % len(body))
    lines.append(b"date: " + ex.server.dates.get(ex.conn.time()) + CRLF)
    if close:
        lines.append(b"connection: close\r\n")
    elif h.version == "1.0":
        lines.append(b"connection: keep-alive\r\n")
    lines.append(CRLF)
    if h.method != b"HEAD":
        lines.append(body)
    data = b"".join(lines)
    conn.write(data)
    ex.resp_started = True
    ex.status = status
    ex.bytes_sent += len(data)
    ex.t_fwd = ex.monotonic()
    ex._finish(close=close)


def _bare_context(ex: Exchange) -> RequestContext:
    """A context for requests rejected before one could be built (so they are logged the same way)."""
    h = ex.head
    ctx = ex.ctx = bare_context(
        method=h.method,
        version=h.version,
        headers=h.raw,
        peer_ip=ex.conn.peer_ip,
        scheme="https" if ex.conn.tls else "http",
        clock=ex.clock,
        started=ex.t0,
        new_id=ex.server.request_ids,
    )
    return ctx
