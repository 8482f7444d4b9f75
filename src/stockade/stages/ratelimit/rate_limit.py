"""`rate_limit` (RATE_LIMIT phase) and `pre_auth_rate_limit` (PRE_AUTH): GCRA, sliding window, calendar
quotas and concurrency limits, one atomic backend call per request, IETF `RateLimit` fields on responses."""

from __future__ import annotations

import itertools
import logging
import secrets
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import Field, field_validator, model_validator

from stockade.pipeline.phase import Phase
from stockade.pipeline.stage import Stage, StageConfig, StageEnv
from stockade.pipeline.verdict import CONTINUE, Continue, Deny
from stockade.ratelimit.backend import LimiterUnavailableError, limits_backend, storage_problems
from stockade.ratelimit.keys import PRINCIPAL_KINDS, part_kind
from stockade.ratelimit.limits import Cost, LimitConfig, check_cost
from stockade.ratelimit.limitset import LimitSet, legacy_fields, ratelimit_field, seconds_up

if TYPE_CHECKING:
    from stockade.config.models import GatewayConfig
    from stockade.pipeline.context import RequestContext
    from stockade.pipeline.response import Outcome, Response

log = logging.getLogger("stockade.ratelimit")

STATE = "ratelimit"  # ctx.state: header fields gathered by every limiter stage of the request, written once
RELEASE = "ratelimit.release"  # ctx.state: concurrency slots to give back when the exchange completes
Limits = Annotated[tuple[LimitConfig, ...], Field(min_length=1, max_length=16)]


class RateLimitConfig(StageConfig):
    limits: Limits
    plans: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")], Limits] = Field(default_factory=dict)
    cost: Cost = 1  # the weight of a request on this route: an integer or {METHOD: n, default: n}
    headers: bool = True  # RateLimit-Policy / RateLimit on allowed responses (429s always carry them)
    legacy_headers: bool = False  # also X-RateLimit-Limit / -Remaining / -Reset
    ipv6_prefix: int = Field(default=64, ge=32, le=128)  # IPv6 clients are counted by this network

    @field_validator("cost", mode="after")
    @classmethod
    def _cost(cls, v: Cost) -> Cost:
        checked = check_cost(v)
        assert checked is not None  # noqa: S101 - never None for a value
        return checked

    @model_validator(mode="after")
    def _compiles(self) -> RateLimitConfig:
        for label, limits in (("limits", self.limits), *((f"plans.{k}", v) for k, v in self.plans.items())):
            try:
                LimitSet(limits, "check", default_cost=self.cost)
            except ValueError as exc:
                raise ValueError(f"{label}: {exc}") from None
        return self


class RateLimit:
    """Counts each request against the route's limits (or its principal's plan's) and answers 429 with
    `Retry-After` once one is exhausted. Allowed responses carry `RateLimit-Policy` and `RateLimit`.

    All of the route's limits go to the backend in one call and are decided atomically: a request refused by
    one limit is counted by none. A backend outage answers 503 `rate_limit.unavailable`, or lets requests
    through if the stage entry says `fail_open: true`; either way it is logged and counted.
    """

    id: ClassVar[str] = "rate_limit"
    phase: ClassVar[Phase] = Phase.RATE_LIMIT
    Config: ClassVar[type[StageConfig]] = RateLimitConfig

    def __init__(self, config: RateLimitConfig, env: StageEnv) -> None:
        self._backend = limits_backend(env.services, required=not env.fail_open)
        self._clock = env.clock
        self._metrics = env.services.metrics
        self._fail_open = env.fail_open
        self._headers = config.headers
        self._legacy = config.legacy_headers

        def compile_set(limits: tuple[LimitConfig, ...], plan: str) -> LimitSet:
            namespace = f"{self.id}:{env.route_id}:{plan}"
            prefix = self._backend.prefix
            return LimitSet(limits, namespace, default_cost=config.cost, prefix=prefix, ipv6_prefix=config.ipv6_prefix)

        self._default = compile_set(config.limits, "")
        self._plans = {plan: compile_set(limits, plan) for plan, limits in config.plans.items()}
        self._tokens = itertools.count()
        self._token_prefix = secrets.token_hex(6)

    @classmethod
    def check_deployment(cls, config: StageConfig, gateway_config: GatewayConfig) -> list[str]:
        return storage_problems(gateway_config.limits_storage, gateway_config.workers)

    async def check(self, ctx: RequestContext) -> Continue | Deny:
        lset = self._default
        if self._plans:
            p = ctx.principal
            if p is not None and p.plan is not None:
                lset = self._plans.get(p.plan, lset)
        hits, used = lset.hits(ctx, self._clock.time())
        if not hits:
            return CONTINUE
        token = ""
        if lset.concurrency:
            # Recorded before the call: if the request is abandoned while the call is in flight, the completion
            # hook still releases whatever the backend may have granted.
            token = f"{self._token_prefix}{next(self._tokens):x}"
            held = [h[1] for h, lim in zip(hits, used, strict=True) if lim in lset.concurrency]
            ctx.state.setdefault(RELEASE, []).append((self._backend, held, token))
        backend = self._backend
        try:
            ok, results = backend.hit(hits, token) if backend.sync else await backend.hit_async(hits, token)
        except LimiterUnavailableError as exc:
            return self._unavailable(ctx, exc)
        if token and RELEASE not in ctx.state:
            # The exchange completed (its hook released the slots) while the backend was deciding: give back what
            # was granted since, or the lease renewals would keep it.
            backend.release(held, token)
        fields = ctx.state.get(STATE)
        if fields is None:
            fields = ctx.state[STATE] = []
        fields.append((lset.policy, ratelimit_field(used, results), used, results))
        if ok:
            return CONTINUE
        retry = max(r[3] for r in results if not r[0])
        headers = _header_fields(fields, self._legacy)
        headers["retry-after"] = str(max(1, seconds_up(retry)))
        denied = ", ".join(lim.name for lim, r in zip(used, results, strict=True) if not r[0])
        return Deny(429, "rate_limit.exceeded", headers=headers, detail=f"limit {denied} exhausted")

    def _unavailable(self, ctx: RequestContext, exc: LimiterUnavailableError) -> Continue | Deny:
        # The backend logs the outage once when it starts and once when it ends; every request is counted.
        if self._fail_open:
            self._metrics.event("rate_limit_failed_open", ctx.route_id)
            ctx.state.setdefault("failed_open", []).append(self.id)
            return CONTINUE
        self._metrics.event("rate_limit_unavailable", ctx.route_id)
        return Deny(503, "rate_limit.unavailable", detail=str(exc))

    def on_response(self, ctx: RequestContext, response: Response) -> None:
        fields = ctx.state.get(STATE)
        if fields is None or not self._headers or ctx.state.get("ratelimit.written"):
            return
        ctx.state["ratelimit.written"] = True  # the first limiter's hook writes every limiter's fields
        for name, value in _header_fields(fields, self._legacy).items():
            response.set_header(name, value)

    def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        held = ctx.state.pop(RELEASE, None)
        if held:
            for backend, keys, token in held:
                backend.release(keys, token)


def _header_fields(fields: list[Any], legacy: bool) -> dict[str, str]:
    out = {
        "ratelimit-policy": ", ".join(f[0] for f in fields),
        "ratelimit": ", ".join(f[1] for f in fields),
    }
    if legacy:
        out.update(legacy_fields([lim for f in fields for lim in f[2]], [r for f in fields for r in f[3]]))
    return out


class PreAuthRateLimitConfig(RateLimitConfig):
    @model_validator(mode="after")
    def _no_principal(self) -> PreAuthRateLimitConfig:
        if self.plans:
            raise ValueError("`plans` need a principal; use them on `rate_limit` (the principal is unknown here)")
        for i, lim in enumerate(self.limits):
            late = [p for p in lim.key if part_kind(p) in PRINCIPAL_KINDS]
            if late:
                raise ValueError(f"limits[{i}]: key {', '.join(late)} is known only after authentication")
        return self


class PreAuthRateLimit(RateLimit):
    """The same limiter in PRE_AUTH, before any authenticator runs: per-IP (or per-header, per-route) limits
    that shed abusive clients before they cost a key lookup or a signature check."""

    id: ClassVar[str] = "pre_auth_rate_limit"
    phase: ClassVar[Phase] = Phase.PRE_AUTH
    Config: ClassVar[type[StageConfig]] = PreAuthRateLimitConfig


_: type[Stage] = RateLimit
_pre: type[Stage] = PreAuthRateLimit
