"""Test-only stages and a handler, registered into the built-in registries by a fixture (never by import)."""

from __future__ import annotations

import asyncio
import threading
from typing import ClassVar

from stockade.handlers.base import LocalResponse
from stockade.pipeline.context import RequestContext
from stockade.pipeline.phase import Phase
from stockade.pipeline.response import Outcome, Response
from stockade.pipeline.stage import StageConfig, StageEnv
from stockade.pipeline.verdict import CONTINUE, Continue


class RaisingStage:
    """A stage with a bug: the runner must deny (500 stage.error), never let the request through."""

    id: ClassVar[str] = "test_raise"
    phase: ClassVar[Phase] = Phase.VALIDATE
    Config: ClassVar[type[StageConfig]] = StageConfig

    def __init__(self, config: StageConfig, env: StageEnv) -> None:
        pass

    async def check(self, ctx: RequestContext) -> Continue:
        raise RuntimeError("stage bug with a secret=hunter2 in the message")


BODY_READ_STARTED = threading.Event()


class BodyReaderStage:
    """Reads the whole body (as a validator would) and tells the app how much it saw."""

    id: ClassVar[str] = "test_body_reader"
    phase: ClassVar[Phase] = Phase.VALIDATE
    Config: ClassVar[type[StageConfig]] = StageConfig

    def __init__(self, config: StageConfig, env: StageEnv) -> None:
        pass

    async def check(self, ctx: RequestContext) -> Continue:
        BODY_READ_STARTED.set()
        body = await ctx.read_body()
        return Continue(set_headers={"x-test-body-len": str(len(body))}, remove_headers=["x-remove-me"])


STALL_ENTERED = threading.Event()


class StallStage:
    """Awaits I/O that never completes, so only the pipeline deadline can end the request."""

    id: ClassVar[str] = "test_stall"
    phase: ClassVar[Phase] = Phase.RATE_LIMIT
    Config: ClassVar[type[StageConfig]] = StageConfig

    def __init__(self, config: StageConfig, env: StageEnv) -> None:
        pass

    async def check(self, ctx: RequestContext) -> Continue:
        STALL_ENTERED.set()
        await asyncio.Event().wait()
        return CONTINUE


class UpperHook:
    """A response hook that needs the body: upper-cases it (so the length check on the replaced body matters)."""

    id: ClassVar[str] = "test_upper"
    phase: ClassVar[Phase] = Phase.ACT
    Config: ClassVar[type[StageConfig]] = StageConfig
    needs_response_body = True

    def __init__(self, config: StageConfig, env: StageEnv) -> None:
        pass

    async def check(self, ctx: RequestContext) -> Continue:
        return CONTINUE

    def on_response(self, ctx: RequestContext, response: Response) -> None:
        body = response.body or b""
        response.replace_body(body.upper() + b"!")
        response.set_header("x-test-hooked", "yes")


class RaisingHook:
    """A response hook with a bug: the response must become 500 stage.error, not pass through unprocessed."""

    id: ClassVar[str] = "test_hook_raise"
    phase: ClassVar[Phase] = Phase.ACT
    Config: ClassVar[type[StageConfig]] = StageConfig

    def __init__(self, config: StageConfig, env: StageEnv) -> None:
        pass

    async def check(self, ctx: RequestContext) -> Continue:
        return CONTINUE

    def on_response(self, ctx: RequestContext, response: Response) -> None:
        raise LookupError("hook bug")


HANDLER_ENTERED = threading.Event()


class StallHandler:
    """A handler awaiting I/O that never completes: only the deadline ends it."""

    id: ClassVar[str] = "test_stall_handler"
    Config: ClassVar[type[StageConfig]] = StageConfig

    def __init__(self, config: StageConfig, env: StageEnv) -> None:
        pass

    async def handle(self, ctx: RequestContext) -> LocalResponse:
        HANDLER_ENTERED.set()
        await asyncio.Event().wait()
        return LocalResponse(200)


COMPLETED: dict[str, Outcome] = {}


class CompletionProbe:
    """Records the outcome its completion hook is given, by request id."""

    id: ClassVar[str] = "test_probe"
    phase: ClassVar[Phase] = Phase.DETECT
    Config: ClassVar[type[StageConfig]] = StageConfig

    def __init__(self, config: StageConfig, env: StageEnv) -> None:
        pass

    async def check(self, ctx: RequestContext) -> Continue:
        return CONTINUE

    def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        COMPLETED[ctx.request_id] = outcome


def _registered(*classes: type) -> dict[str, str]:
    return {getattr(cls, "id"): f"{__name__}:{cls.__name__}" for cls in classes}  # noqa: B009


TEST_STAGES = _registered(RaisingStage, BodyReaderStage, StallStage, UpperHook, RaisingHook, CompletionProbe)
TEST_HANDLERS = _registered(StallHandler)
