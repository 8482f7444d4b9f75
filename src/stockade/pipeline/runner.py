"""The runner: applies stage verdicts in phase order, fails closed, and is the only writer of request edits."""

from __future__ import annotations

import logging
import re
import types
from collections.abc import Callable, Coroutine, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

from stockade.pipeline.context import BodyTooLargeError
from stockade.pipeline.phase import Phase
from stockade.pipeline.stage import Stage
from stockade.pipeline.verdict import CONTINUE, Continue, Deny, Skip

if TYPE_CHECKING:
    from stockade.pipeline.context import RequestContext
    from stockade.pipeline.principal import Principal
    from stockade.pipeline.response import Outcome, Response

AUTHENTICATED_BY: Final = "auth.winner"  # ctx.state: the StageSlot whose authenticator set the principal

log: Final = logging.getLogger("stockade.pipeline")
# A C static when compiled: `Phase.AUTHENTICATE` is a global lookup and an attribute read on every request.
_AUTHENTICATE: Final = Phase.AUTHENTICATE
_COROUTINE: Final = types.CoroutineType  # what an `async def check` returns; other awaitables by isinstance

IDENTITY_PREFIX: Final = "x-stockade-"
_TOKEN: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_UNSAFE_VALUE: Final = re.compile(r"[^\x20-\x7e]")
# Identity header values are percent-encoded (UTF-8) reversibly: `%` itself too, so `bob%0D%0Ax` and `bob\r\nx`
# stay two principals; in the space-separated scope and role lists, a space or comma inside one item too
# (`["user admin"]` is one role, never `user` and `admin` to an upstream that splits the header).
_UNSAFE_IDENTITY: Final = re.compile(r"[^\x20-\x7e]|%")
_UNSAFE_ITEM: Final = re.compile(r"[^\x21-\x7e]|[%,]")

PipelineResult = Deny | None


@dataclass(frozen=True, slots=True)
class StageSlot:
    """A stage as placed on one route."""

    stage: Stage
    id: str
    phase: Phase
    fail_open: bool = False


class _Resume:
    """Awaitable that finishes a coroutine which was already started with `send(None)` and suspended.

    The runner steps each stage eagerly; if one awaits real I/O, the value it yielded is handed up to the
    Task that now drives us, exactly as `yield from coro` would have done from the start.
    """

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self._coro = coro
        self._first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self._coro
        value = self._first
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                value = coro.send(sent)
            except StopIteration as stop:
                return stop.value


def _check(slot: StageSlot, ctx: RequestContext) -> object:
    """A stage's `check(ctx)`, its answer untyped: compiled code would otherwise check it against the declared
    return type and raise TypeError on a wrong one, which a fail_open stage would turn into an allow. The runner
    sorts what came back itself (`_pending`)."""
    stage: Any = slot.stage
    return stage.check(ctx)


def _pending(answer: object) -> Coroutine[Any, Any, object] | None:
    """The coroutine a check returned, still to be driven; None when it answered at once: a verdict (a plain
    `def check`), or anything else, which _apply denies (500) whether the stage fails open or not. Typed object
    for the same reason as `_check`: what the coroutine finally returns is sorted by _apply too."""
    kind = type(answer)
    if kind is Continue or kind is Deny or kind is Skip:
        return None
    if kind is _COROUTINE or isinstance(answer, Coroutine):
        return cast("Coroutine[Any, Any, object]", answer)
    return None


def step_eagerly(coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """Run a coroutine until it first suspends. `(True, result)` if it finished without awaiting I/O,
    else `(False, coroutine)` that finishes it, for the caller to drive as a Task. Exceptions propagate."""
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    return False, _finish(coro, yielded)


async def _finish(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    return await _Resume(coro, yielded)


# A response body buffered for hooks is cut off (502) beyond this, on both fronts.
MAX_RESPONSE_BYTES: Final = 16 * 1024 * 1024


def header_safe(value: str, unsafe: re.Pattern[str] = _UNSAFE_VALUE) -> str:
    """Percent-encode anything that is not visible ASCII (or else `unsafe`), so no value can split or smuggle a
    header."""
    if unsafe.search(value) is None:
        return value
    return unsafe.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8", "surrogatepass")), value)


def header_list(items: Iterable[str]) -> str:
    """A space-separated header list whose items cannot be split into others."""
    return " ".join(header_safe(item, _UNSAFE_ITEM) for item in sorted(items))


class Pipeline:
    """One route's compiled pipeline: its stages sorted by phase, hooks collected, challenges precomputed."""

    __slots__ = (
        "_identity_cache",
        "_identity_last",
        "auth_end",
        "auth_guards",
        "body_limit",
        "body_limit_stage",
        "challenges",
        "completion_hooks",
        "credentials",
        "credentials_later",
        "head_edits",
        "needs_response_body",
        "response_hooks",
        "route_id",
        "slots",
    )

    def __init__(self, route_id: str, slots: Sequence[StageSlot], *, body_limit: int) -> None:
        ordered = sorted(slots, key=lambda s: s.phase)  # stable: declaration order within a phase
        self.route_id = route_id
        # Stages that only hook responses (`checks_requests = False`) are not stepped for every request.
        checking = [s for s in ordered if getattr(s.stage, "checks_requests", True)]
        self.slots = tuple(checking)
        # Index of the first stage after the authenticators: reaching it with no principal is a 401.
        self.auth_end = next((i for i, s in enumerate(checking) if s.phase > Phase.AUTHENTICATE), len(checking))
        self.challenges = tuple(c for s in ordered if (c := getattr(s.stage, "challenge", None)))
        # Per checking slot: its `credential` method if it is an authenticator with one (see CredentialSource).
        self.credentials: tuple[Callable[[RequestContext], str | None] | None, ...] = tuple(
            getattr(s.stage, "credential", None) if s.phase is Phase.AUTHENTICATE else None for s in checking
        )
        # Whether any authenticator with a credential follows another one: only then is the winner recorded.
        self.credentials_later = any(c is not None for c in self.credentials[1:])
        self.response_hooks = tuple(s for s in reversed(ordered) if hasattr(s.stage, "on_response"))
        self.completion_hooks = tuple(s for s in ordered if hasattr(s.stage, "on_complete"))
        # Stages that decide once a credential was recognised (a principal or a denial), before that outcome
        # takes effect: e.g. an identity lockout, which must answer the same whether the credential was right.
        self.auth_guards = tuple(s for s in ordered if hasattr(s.stage, "after_authenticate"))
        self.needs_response_body = any(getattr(s.stage, "needs_response_body", False) for s in self.response_hooks)
        # The only response hook can say its header edits without a Response object (see HeadEdits).
        only = self.response_hooks[0].stage if len(self.response_hooks) == 1 else None
        self.head_edits: Callable[[RequestContext, bytes], tuple[frozenset[str], tuple[tuple[str, str], ...]]] | None
        self.head_edits = getattr(only, "head_edits", None) if not self.needs_response_body else None
        self.body_limit = body_limit
        self.body_limit_stage = ""
        self._identity_cache: dict[int, tuple[Principal, bytes]] = {}
        self._identity_last: tuple[Principal, bytes] | None = None  # the last principal's: no lookup at all
        for s in ordered:
            self.cap_body(getattr(s.stage, "max_body_bytes", None), s.id)

    def cap_body(self, limit: object, by: str) -> None:
        """Lower the route's body limit to a stage's or handler's `max_body_bytes` (the 413 then names `by`)."""
        if isinstance(limit, int) and limit < self.body_limit:
            self.body_limit = limit
            self.body_limit_stage = by

    def run(self, ctx: RequestContext) -> PipelineResult | Coroutine[Any, Any, PipelineResult]:
        """Run the stages. Returns None (allowed) or a Deny, or - only if a stage really awaited I/O -
        a coroutine for the caller to drive as a Task."""
        slots = self.slots
        auth_end = self.auth_end
        for i in range(len(slots)):
            if i == auth_end and ctx.principal is None:
                return self._unauthenticated(ctx)
            slot = slots[i]
            if ctx.principal is not None and slot.phase is _AUTHENTICATE:
                # First authenticator that recognised a credential wins; this one's must not be there too.
                if (presented := self.credentials[i]) is not None and (deny := self._ambiguous(ctx, i, presented)):
                    return deny
                continue
            ctx.stage = slot.id
            try:
                verdict: object = _check(slot, ctx)
                coro = _pending(verdict)
                if coro is not None:
                    try:
                        yielded = coro.send(None)
                    except StopIteration as stop:
                        verdict = stop.value
                    else:
                        return self._continue(ctx, i, coro, yielded)
            except Exception as exc:
                verdict = self._failed(ctx, slot, exc)
            if self.auth_guards and slot.phase is _AUTHENTICATE and type(verdict) is not Skip:
                guarded: PipelineResult | Coroutine[Any, Any, PipelineResult]
                _, guarded = step_eagerly(self._guarded(ctx, i, verdict))  # the result, or what finishes it
                return guarded
            if verdict is not CONTINUE and (deny := self._apply(ctx, slot, verdict)) is not None:
                return deny
        if auth_end == len(slots) and ctx.principal is None:
            return self._unauthenticated(ctx)
        ctx.stage = ""
        return None

    async def _continue(
        self, ctx: RequestContext, i: int, coro: Coroutine[Any, Any, Any], yielded: Any
    ) -> PipelineResult:
        slot = self.slots[i]
        try:
            verdict = await _Resume(coro, yielded)
        except Exception as exc:
            verdict = self._failed(ctx, slot, exc)
        if self.auth_guards and slot.phase is _AUTHENTICATE and type(verdict) is not Skip:
            return await self._guarded(ctx, i, verdict)
        return await self._rest(ctx, i, verdict)

    async def _guarded(self, ctx: RequestContext, i: int, verdict: object) -> PipelineResult:
        """Authenticator `i` recognised a credential: its guards may refuse the request whatever the verdict."""
        for guard in self.auth_guards:
            try:
                refusal = await guard.stage.after_authenticate(ctx)  # type: ignore[attr-defined]
            except Exception as exc:
                failed = self._failed(ctx, guard, exc)
                refusal = failed if type(failed) is Deny else None
            if refusal is not None:
                return self.deny(ctx, guard.id, refusal)
        return await self._rest(ctx, i, verdict)

    async def _rest(self, ctx: RequestContext, i: int, verdict: object) -> PipelineResult:
        """Apply stage `i`'s verdict, then run the stages after it (awaiting whatever they await)."""
        slots = self.slots
        if (deny := self._apply(ctx, slots[i], verdict)) is not None:
            return deny
        for j in range(i + 1, len(slots)):
            if j == self.auth_end and ctx.principal is None:
                return self._unauthenticated(ctx)
            slot = slots[j]
            if ctx.principal is not None and slot.phase is _AUTHENTICATE:
                if (presented := self.credentials[j]) is not None and (deny := self._ambiguous(ctx, j, presented)):
                    return deny
                continue
            ctx.stage = slot.id
            try:
                verdict = _check(slot, ctx)
                coro = _pending(verdict)
                if coro is not None:
                    verdict = await coro
            except Exception as exc:
                verdict = self._failed(ctx, slot, exc)
            if self.auth_guards and slot.phase is _AUTHENTICATE and type(verdict) is not Skip:
                return await self._guarded(ctx, j, verdict)
            if (deny := self._apply(ctx, slot, verdict)) is not None:
                return deny
        if self.auth_end == len(slots) and ctx.principal is None:
            return self._unauthenticated(ctx)
        ctx.stage = ""
        return None

    def _apply(self, ctx: RequestContext, slot: StageSlot, verdict: object) -> Deny | None:
        kind = type(verdict)
        if kind is Continue:
            assert isinstance(verdict, Continue)  # noqa: S101 - narrowing for the type checker only
            if verdict is CONTINUE:
                return None
            return self._edit(ctx, slot, verdict)
        if kind is Skip:
            return None
        if kind is Deny:
            assert isinstance(verdict, Deny)  # noqa: S101 - narrowing for the type checker only
            if verdict.status == 401 and self.challenges and not _has_header(verdict, "www-authenticate"):
                verdict = Deny(
                    401,
                    verdict.reason,
                    headers={**(verdict.headers or {}), "www-authenticate": ", ".join(self.challenges)},
                    detail=verdict.detail,
                )
            return self.deny(ctx, slot.id, verdict)
        return self.deny(ctx, slot.id, Deny(500, "stage.error", detail=f"stage returned {kind.__name__}"))

    def _edit(self, ctx: RequestContext, slot: StageSlot, verdict: Continue) -> Deny | None:
        if verdict.principal is not None:
            if slot.phase is not _AUTHENTICATE:
                return self.deny(ctx, slot.id, Deny(500, "stage.error", detail="only authenticators set principals"))
            ctx.principal = verdict.principal
            if self.credentials_later:
                ctx.state[AUTHENTICATED_BY] = slot  # whose credential was verified (see _ambiguous)
        if verdict.set_headers:
            target = ctx.set_headers if ctx.set_headers is not None else {}
            for name, value in verdict.set_headers.items():
                lname = name.lower()
                if not _TOKEN.match(lname):
                    return self.deny(ctx, slot.id, Deny(500, "stage.error", detail=f"invalid header name {name!r}"))
                target[lname] = header_safe(value)
            ctx.set_headers = target
        removal = verdict.removal
        if removal:
            current = ctx.remove_headers
            ctx.remove_headers = removal if current is None else current | removal
        if verdict.set_query is not None:
            ctx.replace_query(verdict.set_query)
        if verdict.findings:
            ctx.findings.extend(verdict.findings)
        return None

    def _failed(self, ctx: RequestContext, slot: StageSlot, exc: Exception) -> Continue | Deny:
        """Fail closed: a stage that raises denies - unless it is explicitly `fail_open`, which is logged."""
        if isinstance(exc, BodyTooLargeError):
            return Deny(413, "request.body_too_large", detail="body exceeds the route's limit")
        if slot.fail_open:
            log.warning(
                "stage failed open",
                extra={"route": self.route_id, "stage": slot.id, "request_id": ctx.request_id, "error": repr(exc)},
            )
            ctx.state.setdefault("failed_open", []).append(slot.id)
            return CONTINUE
        log.error(
            "stage raised; request denied",
            exc_info=exc,
            extra={"route": self.route_id, "stage": slot.id, "request_id": ctx.request_id},
        )
        return Deny(500, "stage.error", detail=type(exc).__name__)

    def _ambiguous(self, ctx: RequestContext, i: int, presented: Callable[[RequestContext], str | None]) -> Deny | None:
        """Authenticator `i` was not needed (an earlier one won). If the request carries a credential only it
        would have checked, which identity the upstream will act on is ambiguous: refuse, never guess."""
        source = presented(ctx)
        if source is None:
            return None
        winner = ctx.state.get(AUTHENTICATED_BY)
        judged = getattr(winner.stage, "credential", None) if winner is not None else None
        if judged is not None and judged(ctx) == source:
            return None  # the very credential the winning authenticator verified (one that skipped it did not)
        return self.deny(
            ctx, self.slots[i].id, Deny(400, "auth.ambiguous_credentials", detail=f"a second credential in {source}")
        )

    def _unauthenticated(self, ctx: RequestContext) -> Deny:
        headers = {"www-authenticate": ", ".join(self.challenges)} if self.challenges else None
        return self.deny(ctx, "authenticate", Deny(401, "auth.required", headers=headers))

    @staticmethod
    def deny(ctx: RequestContext, stage: str, verdict: Deny) -> Deny:
        ctx.decision = "deny"
        ctx.reason = verdict.reason
        ctx.stage = stage
        ctx.status = verdict.status
        ctx.detail = verdict.detail
        return verdict

    def identity_headers(self, ctx: RequestContext) -> list[tuple[str, str]]:
        """Trusted identity headers for the upstream; client-sent `x-stockade-*` headers are stripped first."""
        p = ctx.principal
        if p is None:
            return []
        out = [("x-stockade-principal", header_safe(p.id, _UNSAFE_IDENTITY)), ("x-stockade-auth", p.kind)]
        if p.anonymous:
            out.append(("x-stockade-anonymous", "true"))
        if p.consumer_id:
            out.append(("x-stockade-consumer", header_safe(p.consumer_id, _UNSAFE_IDENTITY)))
        if p.issuer:
            out.append(("x-stockade-issuer", header_safe(p.issuer, _UNSAFE_IDENTITY)))
        if p.scopes:
            out.append(("x-stockade-scopes", header_list(p.scopes)))
        if p.roles:
            out.append(("x-stockade-roles", header_list(p.roles)))
        return out

    def identity_header_bytes(self, ctx: RequestContext) -> bytes:
        """`identity_headers` as wire bytes, memoised per principal object: authenticators hand out the same
        object for the same credential (anonymous always), so the usual request pays an identity test (the last
        principal) or one dict lookup."""
        p = ctx.principal
        if p is None:
            return b""
        hit = self._identity_last
        if hit is not None and hit[0] is p:
            return hit[1]
        hit = self._identity_cache.get(id(p))
        if hit is not None and hit[0] is p:
            self._identity_last = hit
            return hit[1]
        raw = b"".join(
            b"%s: %s\r\n" % (n.encode("latin-1"), v.encode("latin-1")) for n, v in self.identity_headers(ctx)
        )
        if len(self._identity_cache) >= 4096:
            self._identity_cache.clear()
        self._identity_cache[id(p)] = self._identity_last = (p, raw)  # holding `p` keeps its id from being reused
        return raw

    def response(self, ctx: RequestContext, response: Response) -> None:
        """Run response hooks in reverse stage order. A hook that raises fails the response closed (500); one
        that calls `response.reject()` stops the rest and is recorded as the deciding stage."""
        for slot in self.response_hooks:
            slot.stage.on_response(ctx, response)  # type: ignore[attr-defined]
            if response.rejection is not None:
                response.rejected_by = slot.id
                return

    def complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        """Run completion hooks; they observe, so an exception is logged and never changes the outcome."""
        for slot in self.completion_hooks:
            try:
                slot.stage.on_complete(ctx, outcome)  # type: ignore[attr-defined]
            except Exception:
                log.exception("completion hook raised", extra={"route": self.route_id, "stage": slot.id})


def _has_header(verdict: Deny, name: str) -> bool:
    return bool(verdict.headers) and any(k.lower() == name for k in verdict.headers or {})
