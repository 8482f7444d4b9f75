"""Gateway-made responses: problems, handler replies through response hooks, and how failures are recorded."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import orjson
import pytest

from stockade.handlers.base import LocalResponse
from stockade.pipeline.local import (
    denial,
    handler_reply,
    handler_timed_out,
    pipeline_failed,
    pipeline_timed_out,
    problem,
    run_handler,
    run_response_hooks,
)
from stockade.pipeline.phase import Phase
from stockade.pipeline.response import Response
from stockade.pipeline.runner import Pipeline, StageSlot
from stockade.pipeline.stage import StageConfig
from stockade.pipeline.verdict import CONTINUE, Continue, Deny
from stockade.testing import make_context


class _Hook:
    id: ClassVar[str] = "hook"
    phase: ClassVar[Phase] = Phase.ACT
    Config: ClassVar[type[StageConfig]] = StageConfig

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    async def check(self, ctx: Any) -> Continue:
        return CONTINUE

    def on_response(self, ctx: Any, response: Response) -> None:
        if self.fail:
            raise KeyError("secret-detail")
        response.set_header("x-hooked", "1")
        response.remove_header("server")
        if response.body is not None:
            response.replace_body(response.body + b"+")


def _pipeline(*hooks: _Hook) -> Pipeline:
    return Pipeline("r", [StageSlot(h, "hook", Phase.ACT) for h in hooks], body_limit=10)


def test_problem_is_the_renderers_with_safe_header_values() -> None:
    reply = problem(401, "auth.required", "rid-1", {"WWW-Authenticate": 'Bearer realm="a\r\nx: y"'})
    assert orjson.loads(reply.body) == {
        "type": "about:blank",
        "title": "Unauthorized",
        "status": 401,
        "reason": "auth.required",
        "request_id": "rid-1",
    }
    headers = dict(reply.headers)
    assert headers["content-length"] == str(len(reply.body))
    assert headers["www-authenticate"] == 'Bearer realm="a%0D%0Ax: y"'


def test_denial_renders_the_verdict() -> None:
    ctx = make_context()
    reply = denial(ctx, Deny(429, "rate.limited", headers={"Retry-After": "3"}))
    assert reply.status == 429
    assert ("retry-after", "3") in reply.headers


@pytest.mark.parametrize(
    ("hooks", "status", "headers", "body"),
    [
        pytest.param(
            (),
            200,
            [("content-type", "text/plain"), ("server", "h"), ("content-length", "2")],
            b"ok",
            id="no-hooks",
        ),
        pytest.param(
            (_Hook(),),
            200,
            [("content-type", "text/plain"), ("x-hooked", "1"), ("content-length", "3")],
            b"ok+",
            id="hook-edits-head-and-body",
        ),
    ],
)
def test_handler_reply_framed_after_hooks(
    hooks: tuple[_Hook, ...], status: int, headers: list[tuple[str, str]], body: bytes
) -> None:
    ctx = make_context()
    reply = LocalResponse(
        200, [("content-type", "text/plain"), ("server", "h"), ("content-length", "999"), ("connection", "x")], b"ok"
    )
    out = handler_reply(_pipeline(*hooks), ctx, reply)
    assert (out.status, out.headers, out.body) == (status, headers, body)


@pytest.mark.parametrize("status", [204, 304])
@pytest.mark.parametrize("hooks", [(), (_Hook(),)], ids=["no-hooks", "hook-adds-a-body"])
def test_handler_reply_without_a_body_announces_none(status: int, hooks: tuple[_Hook, ...]) -> None:
    """A static handler's default body is `{}`: framed with a Content-Length after a 204, the client read it as the
    next response on the connection (RFC 9110 8.6 forbids the field on a 204)."""
    reply = LocalResponse(status, [("content-type", "application/json"), ("content-length", "2")], b"{}")
    out = handler_reply(_pipeline(*hooks), make_context(), reply)
    assert out.status == status and out.body == b""
    assert [n for n, _ in out.headers if n in ("content-length", "transfer-encoding")] == []


def test_hook_failing_on_handler_reply_is_handler_error() -> None:
    ctx = make_context()
    out = handler_reply(_pipeline(_Hook(fail=True)), ctx, LocalResponse(200, [], b"ok"))
    assert out.status == 500
    assert orjson.loads(out.body)["reason"] == "handler.error"
    assert (ctx.decision, ctx.stage, ctx.detail) == ("deny", "handler", "KeyError")
    assert b"secret-detail" not in out.body


def test_run_handler_failure_fails_closed() -> None:
    class Broken:
        async def handle(self, ctx: Any) -> LocalResponse:
            raise OSError("disk")

    ctx = make_context()
    out = asyncio.run(run_handler(Broken(), _pipeline(), ctx))  # type: ignore[arg-type]
    assert out.status == 500
    assert (ctx.decision, ctx.reason) == ("deny", "handler.error")


def test_response_hook_failure_recorded_as_stage_error() -> None:
    ctx = make_context()
    deny = run_response_hooks(_pipeline(_Hook(fail=True)), ctx, Response(200, headers=[]))
    assert deny is not None and (deny.status, deny.reason) == (500, "stage.error")
    assert (ctx.decision, ctx.stage, ctx.detail) == ("deny", "response", "KeyError")
    assert run_response_hooks(_pipeline(_Hook()), make_context(), Response(200, headers=[])) is None


def test_pipeline_failures_recorded() -> None:
    ctx = make_context()
    ctx.stage = "jwt"
    assert pipeline_failed(ctx, ValueError("x")).status == 500
    assert (ctx.reason, ctx.stage, ctx.detail) == ("stage.error", "jwt", "ValueError")
    ctx = make_context()
    ctx.stage = "introspection"
    assert pipeline_timed_out(ctx).status == 503
    assert (ctx.reason, ctx.stage) == ("stage.timeout", "introspection")
    ctx = make_context()
    out = handler_timed_out(ctx)
    assert out.status == 504
    assert (ctx.decision, ctx.reason, ctx.stage) == ("error", "handler.timeout", "handler")
