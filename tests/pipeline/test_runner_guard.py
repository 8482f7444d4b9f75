"""after_authenticate guards: they run once an authenticator recognised a credential and may replace its
verdict - on the eager path and when a stage awaits real I/O."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest

from stockade.pipeline.phase import Phase
from stockade.pipeline.principal import Principal
from stockade.pipeline.runner import Pipeline, StageSlot
from stockade.pipeline.stage import StageConfig
from stockade.pipeline.verdict import CONTINUE, Continue, Deny, Skip
from stockade.testing import make_context


class Auth:
    id: ClassVar[str] = "auth"
    phase: ClassVar[Phase] = Phase.AUTHENTICATE
    Config: ClassVar[type[StageConfig]] = StageConfig

    def __init__(self, verdict: Continue | Skip | Deny, *, awaits: bool = False) -> None:
        self.verdict = verdict
        self.awaits = awaits

    async def check(self, ctx: Any) -> Continue | Skip | Deny:
        if self.awaits:
            await asyncio.sleep(0)
        return self.verdict


class Guard:
    id: ClassVar[str] = "guard"
    phase: ClassVar[Phase] = Phase.PRE_AUTH
    Config: ClassVar[type[StageConfig]] = StageConfig

    def __init__(self, refuse: bool, *, awaits: bool = False, raises: bool = False) -> None:
        self.refuse = refuse
        self.awaits = awaits
        self.raises = raises
        self.calls = 0

    async def check(self, ctx: Any) -> Continue:
        return CONTINUE

    async def after_authenticate(self, ctx: Any) -> Deny | None:
        self.calls += 1
        if self.awaits:
            await asyncio.sleep(0)
        if self.raises:
            raise RuntimeError("backend exploded")
        return Deny(429, "auth.locked_out") if self.refuse else None


class Later:
    id: ClassVar[str] = "later"
    phase: ClassVar[Phase] = Phase.RATE_LIMIT
    Config: ClassVar[type[StageConfig]] = StageConfig
    seen = 0

    async def check(self, ctx: Any) -> Continue:
        Later.seen += 1
        return CONTINUE


OK = Continue(principal=Principal(id="ann", kind="test"))


def run(auth: Auth, guard: Guard) -> tuple[Deny | None, Any]:
    Later.seen = 0
    slots = [StageSlot(guard, "guard", Phase.PRE_AUTH), StageSlot(auth, "auth", Phase.AUTHENTICATE)]
    slots.append(StageSlot(Later(), "later", Phase.RATE_LIMIT))
    pipeline = Pipeline("r", slots, body_limit=1024)
    ctx = make_context()
    result = pipeline.run(ctx)
    if result is not None and not isinstance(result, Deny):
        result = asyncio.run(_drive(result))
    return result, ctx


async def _drive(coro: Any) -> Any:
    return await coro


@pytest.mark.parametrize("auth_awaits", [False, True], ids=["eager-auth", "awaiting-auth"])
@pytest.mark.parametrize("guard_awaits", [False, True], ids=["eager-guard", "awaiting-guard"])
@pytest.mark.parametrize("verdict", [OK, Deny(401, "auth.invalid")], ids=["right-credential", "wrong-credential"])
def test_refusing_guard_replaces_verdict_either_way(auth_awaits: bool, guard_awaits: bool, verdict: Any) -> None:
    guard = Guard(refuse=True, awaits=guard_awaits)
    result, ctx = run(Auth(verdict, awaits=auth_awaits), guard)
    assert isinstance(result, Deny) and (result.status, result.reason) == (429, "auth.locked_out")
    assert (ctx.decision, ctx.stage, ctx.principal) == ("deny", "guard", None)
    assert Later.seen == 0 and guard.calls == 1


@pytest.mark.parametrize("auth_awaits", [False, True], ids=["eager-auth", "awaiting-auth"])
@pytest.mark.parametrize("guard_awaits", [False, True], ids=["eager-guard", "awaiting-guard"])
def test_passing_guard_lets_the_verdict_take_effect(auth_awaits: bool, guard_awaits: bool) -> None:
    result, ctx = run(Auth(OK, awaits=auth_awaits), Guard(refuse=False, awaits=guard_awaits))
    assert result is None and ctx.principal is OK.principal and Later.seen == 1
    result, ctx = run(Auth(Deny(401, "auth.invalid"), awaits=auth_awaits), Guard(refuse=False, awaits=guard_awaits))
    assert isinstance(result, Deny) and result.reason == "auth.invalid" and Later.seen == 0


def test_guard_is_not_asked_when_no_credential_was_recognised() -> None:
    guard = Guard(refuse=True)
    result, _ = run(Auth(Skip("none")), guard)
    assert isinstance(result, Deny) and result.reason == "auth.required" and guard.calls == 0


def test_guard_that_raises_fails_closed() -> None:
    result, ctx = run(Auth(OK), Guard(refuse=False, raises=True))
    assert isinstance(result, Deny) and (result.status, result.reason) == (500, "stage.error")
    assert ctx.stage == "guard"
