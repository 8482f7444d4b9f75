"""The runner: phase order, first authenticator wins, fail closed, explicit fail_open, hooks, header safety."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, ClassVar

import pytest

from stockade.pipeline.context import RequestContext
from stockade.pipeline.phase import Phase
from stockade.pipeline.principal import Principal
from stockade.pipeline.response import Outcome, Response
from stockade.pipeline.runner import Pipeline, StageSlot, header_safe
from stockade.pipeline.stage import StageConfig
from stockade.pipeline.verdict import CONTINUE, Continue, Deny, Finding, Skip
from stockade.testing import make_context


class Probe:
    """A scriptable stage: returns `verdict` (or raises it), optionally after awaiting once."""

    id: ClassVar[str] = "probe"
    phase: ClassVar[Phase] = Phase.AUTHORIZE
    Config: ClassVar[type[StageConfig]] = StageConfig

    def __init__(
        self,
        verdict: object,
        *,
        awaits: bool = False,
        challenge: str | None = None,
        log: list[str] | None = None,
        name: str = "probe",
    ) -> None:
        self.verdict = verdict
        self.awaits = awaits
        self.log = log if log is not None else []
        self.name = name
        if challenge:
            self.challenge = challenge

    async def check(self, ctx: RequestContext) -> Any:
        self.log.append(self.name)
        if self.awaits:
            await asyncio.sleep(0)
        if isinstance(self.verdict, BaseException):
            raise self.verdict
        return self.verdict


class SyncProbe(Probe):
    """The same as a plain `def check`: the verdict itself, or (`awaits`) a coroutine only when it must wait."""

    def check(self, ctx: RequestContext) -> Any:  # type: ignore[override]
        if self.awaits:
            return Probe.check(self, ctx)
        self.log.append(self.name)
        if isinstance(self.verdict, BaseException):
            raise self.verdict
        return self.verdict


STYLES = [Probe, SyncProbe]
STYLE_IDS = ["async-def", "plain-def"]


def slot(stage: Probe, phase: Phase, *, fail_open: bool = False, name: str | None = None) -> StageSlot:
    return StageSlot(stage, name or stage.name, phase, fail_open)  # type: ignore[arg-type]


def run(pipeline: Pipeline, ctx: RequestContext) -> Deny | None:
    result = pipeline.run(ctx)
    if result is None or isinstance(result, Deny):
        return result
    assert isinstance(result, Coroutine)
    return asyncio.run(result)  # type: ignore[arg-type]


ALICE = Principal(id="alice", kind="test")
BOB = Principal(id="bob", kind="test")


@pytest.mark.parametrize("style", STYLES, ids=STYLE_IDS)
@pytest.mark.parametrize("awaits", [False, True], ids=["eager", "suspending"])
def test_stages_run_in_phase_order_whatever_the_declaration_order(awaits: bool, style: type[Probe]) -> None:
    log: list[str] = []
    slots = [
        slot(style(CONTINUE, log=log, name="detect", awaits=awaits), Phase.DETECT),
        slot(style(Continue(principal=ALICE), log=log, name="authn"), Phase.AUTHENTICATE),
        slot(style(CONTINUE, log=log, name="pre"), Phase.PRE_AUTH),
        slot(style(CONTINUE, log=log, name="validate", awaits=awaits), Phase.VALIDATE),
        slot(SyncProbe(CONTINUE, log=log, name="rate"), Phase.RATE_LIMIT),  # a plain def after a suspended stage
    ]
    ctx = make_context()
    assert run(Pipeline("r", slots, body_limit=10), ctx) is None
    assert log == ["pre", "authn", "validate", "rate", "detect"]
    assert ctx.principal == ALICE
    assert ctx.decision == "allow"


@pytest.mark.parametrize("awaits", [False, True], ids=["eager", "suspending"])
def test_first_authenticator_with_a_principal_wins(awaits: bool) -> None:
    log: list[str] = []
    slots = [
        slot(Probe(Skip("no key"), log=log, name="api_key", awaits=awaits), Phase.AUTHENTICATE),
        slot(Probe(Continue(principal=ALICE), log=log, name="jwt", awaits=awaits), Phase.AUTHENTICATE),
        slot(Probe(Continue(principal=BOB), log=log, name="anonymous"), Phase.AUTHENTICATE),
    ]
    ctx = make_context()
    assert run(Pipeline("r", slots, body_limit=10), ctx) is None
    assert log == ["api_key", "jwt"]
    assert ctx.principal == ALICE


def test_all_authenticators_skip_gives_401_with_every_challenge() -> None:
    slots = [
        slot(Probe(Skip(), challenge='ApiKey realm="stockade"', name="api_key"), Phase.AUTHENTICATE),
        slot(Probe(Skip(), challenge='Bearer realm="stockade"', name="jwt"), Phase.AUTHENTICATE),
        slot(Probe(CONTINUE, name="after"), Phase.AUTHORIZE),
    ]
    ctx = make_context()
    deny = run(Pipeline("r", slots, body_limit=10), ctx)
    assert isinstance(deny, Deny)
    assert (deny.status, deny.reason) == (401, "auth.required")
    assert deny.headers == {"www-authenticate": 'ApiKey realm="stockade", Bearer realm="stockade"'}
    assert (ctx.decision, ctx.stage) == ("deny", "authenticate")


def test_no_principal_after_last_phase_is_still_401() -> None:
    ctx = make_context()
    deny = run(Pipeline("r", [slot(Probe(Skip()), Phase.AUTHENTICATE)], body_limit=10), ctx)
    assert isinstance(deny, Deny) and deny.status == 401


def test_authenticator_deny_gets_route_challenges() -> None:
    slots = [
        slot(Probe(Deny(401, "auth.invalid_credentials", detail="revoked key"), challenge="ApiKey"), Phase.AUTHENTICATE)
    ]
    ctx = make_context()
    deny = run(Pipeline("r", slots, body_limit=10), ctx)
    assert isinstance(deny, Deny)
    assert deny.headers == {"www-authenticate": "ApiKey"}
    assert (ctx.reason, ctx.detail, ctx.stage) == ("auth.invalid_credentials", "revoked key", "probe")


DENIALS = [
    ("deny-stops", Deny(403, "x.denied"), False, 403, "x.denied"),
    ("raise-fails-closed", RuntimeError("boom"), False, 500, "stage.error"),
    ("raise-after-await", RuntimeError("boom"), True, 500, "stage.error"),
    ("wrong-return-type", "not a verdict", False, 500, "stage.error"),
    ("none-return", None, False, 500, "stage.error"),
    ("principal-from-non-authenticator", Continue(principal=BOB), False, 500, "stage.error"),
]


@pytest.mark.parametrize("style", STYLES, ids=STYLE_IDS)
@pytest.mark.parametrize(("verdict", "awaits", "status", "code"), [c[1:] for c in DENIALS], ids=[c[0] for c in DENIALS])
def test_failures_deny(verdict: object, awaits: bool, status: int, code: str, style: type[Probe]) -> None:
    log: list[str] = []
    slots = [
        slot(Probe(Continue(principal=ALICE)), Phase.AUTHENTICATE),
        slot(style(verdict, awaits=awaits, log=log, name="bad"), Phase.AUTHORIZE),
        slot(Probe(CONTINUE, log=log, name="never"), Phase.VALIDATE),
    ]
    ctx = make_context()
    deny = run(Pipeline("r", slots, body_limit=10), ctx)
    assert isinstance(deny, Deny)
    assert (deny.status, deny.reason) == (status, code)
    assert log == ["bad"]
    assert ctx.stage == "bad"


@pytest.mark.parametrize("style", STYLES, ids=STYLE_IDS)
@pytest.mark.parametrize("awaits", [False, True])
def test_fail_open_is_explicit_and_recorded(awaits: bool, style: type[Probe]) -> None:
    slots = [
        slot(style(Continue(principal=ALICE)), Phase.AUTHENTICATE),
        slot(style(ConnectionError("redis down"), awaits=awaits, name="rate_limit"), Phase.RATE_LIMIT, fail_open=True),
    ]
    ctx = make_context()
    assert run(Pipeline("r", slots, body_limit=10), ctx) is None
    assert ctx.state["failed_open"] == ["rate_limit"]


@pytest.mark.parametrize("style", STYLES, ids=STYLE_IDS)
@pytest.mark.parametrize("awaits", [False, True], ids=["eager", "suspending"])
@pytest.mark.parametrize("after_suspended", [False, True], ids=["first", "after-a-suspended-stage"])
@pytest.mark.parametrize("returned", [None, "not a verdict"], ids=["none", "garbage"])
def test_a_fail_open_stage_that_returns_no_verdict_still_denies(
    style: type[Probe], awaits: bool, after_suspended: bool, returned: object
) -> None:
    """fail_open covers a stage that fails (raises), not one that answers nonsense: that is a bug, denied 500
    whether the check is a plain def or a coroutine, compiled or not (compiled code once raised TypeError on the
    awaited value, which fail_open then allowed)."""
    slots = [
        slot(Probe(Continue(principal=ALICE), awaits=after_suspended, name="authn"), Phase.AUTHENTICATE),
        slot(style(returned, awaits=awaits, name="limit"), Phase.RATE_LIMIT, fail_open=True),
    ]
    ctx = make_context()
    deny = run(Pipeline("r", slots, body_limit=10), ctx)
    assert isinstance(deny, Deny)
    assert (deny.status, deny.reason) == (500, "stage.error")
    assert "failed_open" not in ctx.state


def test_edits_and_findings_accumulate() -> None:
    slots = [
        slot(Probe(Continue(principal=ALICE, set_headers={"X-A": "1"})), Phase.AUTHENTICATE),
        slot(
            Probe(
                Continue(set_headers={"x-b": "2"}, remove_headers=["Authorization"], findings=[Finding("sqli", "high")])
            ),
            Phase.DETECT,
        ),
    ]
    ctx = make_context()
    assert run(Pipeline("r", slots, body_limit=10), ctx) is None
    assert ctx.set_headers == {"x-a": "1", "x-b": "2"}
    assert ctx.remove_headers == {"authorization"}
    assert [f.rule for f in ctx.findings] == ["sqli"]


def test_invalid_header_name_from_a_stage_fails_closed() -> None:
    slots = [slot(Probe(Continue(principal=ALICE, set_headers={"bad header\r\n": "x"})), Phase.AUTHENTICATE)]
    deny = run(Pipeline("r", slots, body_limit=10), make_context())
    assert isinstance(deny, Deny) and deny.reason == "stage.error"


@pytest.mark.parametrize(
    ("value", "safe"),
    [
        ("alice", "alice"),
        ("a\r\nX-Admin: true", "a%0D%0AX-Admin: true"),
        ("caf\u00e9", "caf%C3%A9"),
        ("tab\there", "tab%09here"),
        ("nul\x00", "nul%00"),
    ],
)
def test_header_safe(value: str, safe: str) -> None:
    assert header_safe(value) == safe


def test_identity_headers_cannot_be_used_to_inject_headers() -> None:
    ctx = make_context()
    ctx.principal = Principal(id="evil\r\nX-Admin: true", kind="jwt", scopes=frozenset({"a\nb"}))
    headers = Pipeline("r", [], body_limit=10).identity_headers(ctx)
    assert all("\r" not in v and "\n" not in v for _, v in headers)
    assert ("x-stockade-principal", "evil%0D%0AX-Admin: true") in headers


@pytest.mark.parametrize(
    ("principal", "expected"),
    [
        # reversible: `%` is encoded too, so a principal spelled with escapes is not another's
        (Principal(id="bob\r\nx", kind="jwt"), {"x-stockade-principal": "bob%0D%0Ax"}),
        (Principal(id="bob%0D%0Ax", kind="jwt"), {"x-stockade-principal": "bob%250D%250Ax"}),
        (Principal(id="b\u00f8b", kind="jwt"), {"x-stockade-principal": "b%C3%B8b"}),
        (Principal(id="b%C3%B8b", kind="jwt"), {"x-stockade-principal": "b%25C3%25B8b"}),
        # one item stays one item for an upstream that splits the list on spaces or commas
        (
            Principal(id="a", kind="jwt", roles=frozenset({"user admin", "ops,root", "reader"})),
            {"x-stockade-roles": "ops%2Croot reader user%20admin"},
        ),
        (
            Principal(id="a", kind="jwt", scopes=frozenset({"books:read", "x\u00a0admin"})),
            {"x-stockade-scopes": "books:read x%C2%A0admin"},
        ),
        (
            Principal(id="alice", kind="jwt", issuer="https://idp.example"),
            {"x-stockade-principal": "alice", "x-stockade-issuer": "https://idp.example"},
        ),
    ],
    ids=["crlf", "crlf-spelled", "utf8", "utf8-spelled", "roles-with-separators", "scope-with-nbsp", "issuer"],
)
def test_identity_header_encoding_is_unambiguous(principal: Principal, expected: dict[str, str]) -> None:
    ctx = make_context()
    ctx.principal = principal
    headers = dict(Pipeline("r", [], body_limit=10).identity_headers(ctx))
    assert {k: headers[k] for k in expected} == expected


class Hook(Probe):
    def __init__(self, name: str, log: list[str], *, raise_on_complete: bool = False) -> None:
        super().__init__(CONTINUE, name=name, log=log)
        self.raise_on_complete = raise_on_complete

    def on_response(self, ctx: RequestContext, response: Response) -> None:
        self.log.append(f"response:{self.name}")
        response.set_header("x-seen", self.name)

    def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        self.log.append(f"complete:{self.name}")
        if self.raise_on_complete:
            raise RuntimeError("hook bug")


def test_response_hooks_run_in_reverse_and_completion_hooks_never_raise() -> None:
    log: list[str] = []
    slots = [
        slot(Probe(Continue(principal=ALICE)), Phase.AUTHENTICATE),
        slot(Hook("first", log, raise_on_complete=True), Phase.VALIDATE),
        slot(Hook("second", log), Phase.ACT),
    ]
    pipeline = Pipeline("r", slots, body_limit=10)
    ctx = make_context()
    run(pipeline, ctx)
    response = Response(200, headers=[("x-seen", "upstream")])
    pipeline.response(ctx, response)
    pipeline.complete(ctx, Outcome(status=200))
    assert [e for e in log if ":" in e] == ["response:second", "response:first", "complete:first", "complete:second"]
    assert response.get("x-seen") == "first"


def test_body_limit_is_the_smallest_declared() -> None:
    small = Probe(CONTINUE, name="request_size")
    small.max_body_bytes = 100  # type: ignore[attr-defined]
    pipeline = Pipeline("r", [slot(small, Phase.VALIDATE)], body_limit=1000)
    assert (pipeline.body_limit, pipeline.body_limit_stage) == (100, "request_size")


def test_response_edits_compose_in_order() -> None:
    response = Response(200, raw_head=b"HTTP/1.1 200 OK\r\nServer: up\r\nX-A: old\r\n\r\n")
    response.set_header("X-A", "new")
    response.set_header("x-b", "1")
    response.remove_headers(("server",))
    response.remove_header("x-b")
    assert response.get("x-a") == "new"
    assert response.get("x-b") is None
    assert response.get("server") is None
    assert response.added == [("x-a", "new")]
    assert response.removed == {"x-a", "x-b", "server"}


class ResponseOnly(Hook):
    checks_requests = False  # the runner must not call check (which would raise here)

    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__(name, log)
        self.verdict = RuntimeError("check must not run")

    def head_edits(self, ctx: RequestContext, raw_head: bytes) -> tuple[frozenset[str], tuple[tuple[str, str], ...]]:
        return frozenset({"x-seen"}), (("x-seen", self.name),)


@pytest.mark.parametrize("awaits", [False, True])
def test_a_response_only_stage_is_not_checked_but_still_hooks_responses(awaits: bool) -> None:
    log: list[str] = []
    hook = ResponseOnly("hardening", log)
    slots = [slot(Probe(Continue(principal=ALICE), awaits=awaits, log=log, name="auth"), Phase.AUTHENTICATE)]
    pipeline = Pipeline("r", [*slots, slot(hook, Phase.ACT)], body_limit=10)
    ctx = make_context()
    assert run(pipeline, ctx) is None
    assert log == ["auth"]  # not "hardening": its check was never called
    response = Response(200, headers=[])
    pipeline.response(ctx, response)
    assert response.get("x-seen") == "hardening"
    assert pipeline.head_edits == hook.head_edits  # the only response hook: the proxy may use its fast form


def test_head_edits_are_used_only_for_a_lone_response_hook() -> None:
    log: list[str] = []
    auth = slot(Probe(Continue(principal=ALICE)), Phase.AUTHENTICATE)
    two = Pipeline(
        "r", [auth, slot(ResponseOnly("a", log), Phase.ACT), slot(Hook("b", log), Phase.VALIDATE)], body_limit=1
    )
    assert two.head_edits is None  # hooks compose in order: only the full Response path runs them all


class Credentialed(Probe):
    """An authenticator whose credential, if any, is found at `source` on every request."""

    def __init__(self, verdict: object, source: str | None, *, awaits: bool = False, name: str = "probe") -> None:
        super().__init__(verdict, awaits=awaits, name=name)
        self.source = source

    def credential(self, ctx: RequestContext) -> str | None:
        return self.source


@pytest.mark.parametrize("awaits", [False, True], ids=["eager", "suspending"])
@pytest.mark.parametrize(
    ("stages", "expect"),
    [
        # (verdict, credential source) per authenticator, in order; expect None (allowed) or the deny's stage
        pytest.param([("alice", "x-api-key"), ("skip", "authorization")], "b", id="winner-then-other-credential"),
        pytest.param([("alice", "authorization"), ("skip", "authorization")], None, id="same-credential-twice"),
        pytest.param([("alice", "x-api-key"), ("skip", None)], None, id="later-authenticator-sees-nothing"),
        pytest.param([("skip", None), ("alice", "x-api-key")], None, id="earlier-skipped-without-credential"),
        pytest.param([("alice", None), ("skip", "authorization")], "b", id="winner-without-request-credential"),
        pytest.param(
            [("alice", "x-api-key"), ("skip", "x-api-key"), ("skip", "query:k")], "c", id="third-authenticator"
        ),
        # an earlier authenticator that skipped the credential (jwt on an opaque token) did not judge it
        pytest.param(
            [("skip", "authorization"), ("alice", "x-api-key"), ("skip", "authorization")],
            "c",
            id="earlier-skipped-same-place",
        ),
    ],
)
def test_a_credential_no_authenticator_checked_makes_the_request_ambiguous(
    stages: list[tuple[str, str | None]], expect: str | None, awaits: bool
) -> None:
    slots = []
    for (verdict, source), name in zip(stages, "abc", strict=False):
        v = Continue(principal=ALICE) if verdict == "alice" else Skip("none")
        slots.append(slot(Credentialed(v, source, awaits=awaits, name=name), Phase.AUTHENTICATE))
    slots.append(slot(Probe(CONTINUE, name="after"), Phase.AUTHORIZE))
    ctx = make_context()
    result = run(Pipeline("r", slots, body_limit=10), ctx)
    if expect is None:
        assert result is None
        assert ctx.principal is ALICE
    else:
        assert isinstance(result, Deny)
        assert (result.status, result.reason, ctx.stage) == (400, "auth.ambiguous_credentials", expect)
