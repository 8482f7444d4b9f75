"""One limit's config (rate, quota or concurrency; key; burst; cost) and its compiled, per-request form."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from stockade.pipeline.stage import StageConfig
from stockade.ratelimit.backend import CONCURRENCY, GCRA, QUOTA, US, WINDOW
from stockade.ratelimit.calendar import CalendarPeriod, zone
from stockade.ratelimit.keys import validate_part
from stockade.ratelimit.rates import MAX_COUNT, parse_quota, parse_rate

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
DEFAULT_LEASE = 300.0


def _listify(v: object) -> object:
    return [v] if isinstance(v, str) else v


Cost = int | dict[str, int]
KeyParts = Annotated[tuple[str, ...], Field(min_length=1, max_length=4)]


def check_cost(v: Cost | None) -> Cost | None:
    """A weight: an integer, or `{METHOD: n, default: n}`; 0 means the request does not count."""
    if v is None:
        return v
    if isinstance(v, int):
        if not 0 <= v <= MAX_COUNT:
            raise ValueError(f"cost must be between 0 and {MAX_COUNT}")
        return v
    out: dict[str, int] = {}
    for method, n in v.items():
        name = method if method == "default" else method.upper()
        if name != "default" and name not in METHODS:
            raise ValueError(f"cost: {method!r} is not an HTTP method or 'default'")
        if not 0 <= n <= MAX_COUNT:
            raise ValueError(f"cost for {method}: must be between 0 and {MAX_COUNT}")
        out[name] = n
    return out


def cost_table(cost: Cost) -> tuple[int, dict[str, int]]:
    """`(default, per-method)` from a cost setting."""
    if isinstance(cost, int):
        return cost, {}
    return cost.get("default", 1), {m: n for m, n in cost.items() if m != "default"}


class LimitConfig(StageConfig):
    """One limit: exactly one of `rate` (GCRA or sliding window), `quota` (calendar) or `concurrency`."""

    key: Annotated[KeyParts, BeforeValidator(_listify, json_schema_input_type=str | KeyParts)]  # one part or a list
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,48}$")
    rate: str | None = None  # "N/second|minute|hour|day", optionally "N/15 minutes"
    burst: int | None = Field(default=None, ge=1, le=MAX_COUNT)  # GCRA only; default: the rate's N
    algorithm: Literal["gcra", "sliding_window"] | None = None  # for `rate`; default gcra
    quota: str | None = None  # "N/day" or "N/month", reset at local midnight / the first of the month
    timezone: str | None = None  # IANA zone for `quota`; default UTC
    concurrency: int | None = Field(default=None, ge=1, le=1_000_000)  # requests in flight
    lease: float | None = Field(default=None, ge=1, le=86400)  # concurrency: a slot never released expires
    cost: Cost | None = None  # overrides the stage's `cost` for this limit
    missing: Literal["shared", "skip"] = "shared"  # no value for the key: one shared bucket, or not limited

    @field_validator("key")
    @classmethod
    def _key(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        parts = tuple(validate_part(p) for p in v)
        if len(set(parts)) != len(parts):
            raise ValueError("a key part is listed twice")
        return parts

    @field_validator("rate")
    @classmethod
    def _rate(cls, v: str | None) -> str | None:
        if v is not None:
            parse_rate(v)
        return v

    @field_validator("quota")
    @classmethod
    def _quota(cls, v: str | None) -> str | None:
        if v is not None:
            parse_quota(v)
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        if v is not None:
            zone(v)
        return v

    @field_validator("cost", mode="after")
    @classmethod
    def _cost(cls, v: Cost | None) -> Cost | None:
        return check_cost(v)

    @model_validator(mode="after")
    def _one_kind(self) -> LimitConfig:
        kinds = [k for k in ("rate", "quota", "concurrency") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a limit needs exactly one of `rate`, `quota` or `concurrency`")
        only = {"burst": "rate", "algorithm": "rate", "timezone": "quota", "lease": "concurrency"}
        for fld, owner in only.items():
            if getattr(self, fld) is not None and kinds[0] != owner:
                raise ValueError(f"`{fld}` applies only to a `{owner}` limit")
        if self.burst is not None and self.algorithm == "sliding_window":
            raise ValueError("`burst` applies only to the gcra algorithm")
        if self.concurrency is not None and self.cost is not None:
            raise ValueError("`cost` does not apply to a concurrency limit (a request holds one slot)")
        return self

    def capacity(self) -> int:
        """The most units one request may cost and still be admitted."""
        if self.rate is not None:
            return self.burst or parse_rate(self.rate).count
        if self.quota is not None:
            return parse_quota(self.quota).count
        return self.concurrency or 1

    def default_name(self) -> str:
        keys = "+".join(p.replace(":", "-") for p in self.key)
        if self.rate is not None:
            rate = parse_rate(self.rate)
            return f"{keys}-{rate.count}-per-{rate.period}s"
        if self.quota is not None:
            q = parse_quota(self.quota)
            return f"{keys}-{q.count}-per-{q.unit}"
        return f"{keys}-{self.concurrency}-concurrent"


class Limit:
    """A compiled limit: what goes into a backend hit, and how it is described in `RateLimit-Policy`."""

    __slots__ = (
        "algo",
        "calendar",
        "cost",
        "costs",
        "item",
        "name",
        "p1",
        "p2",
        "parts",
        "policy",
        "quota",
        "skip_missing",
        "suffix",
    )

    def __init__(self, cfg: LimitConfig, namespace: str, default_cost: Cost) -> None:
        self.name = cfg.name or cfg.default_name()
        self.item = f'"{self.name}";r='  # the start of this limit's item in the RateLimit field
        self.parts = cfg.key
        self.skip_missing = cfg.missing == "skip"
        self.cost, self.costs = cost_table(cfg.cost if cfg.cost is not None else default_cost)
        self.calendar: CalendarPeriod | None = None
        if cfg.rate is not None:
            rate = parse_rate(cfg.rate)
            if cfg.algorithm == "sliding_window":
                self.algo, self.p1, self.p2 = WINDOW, rate.period * US, rate.count
            else:
                # The interval is rounded to a whole microsecond so every later sum is exact in integers and
                # in Lua's doubles alike; the rate changes by less than one part in a million.
                interval = max(1, round(rate.period * US / rate.count))
                self.algo, self.p1, self.p2 = GCRA, interval, interval * (cfg.burst or rate.count)
            if self.algo == WINDOW:
                self.quota, window = rate.count, rate.period
            else:  # GCRA is a bucket of `burst` refilled at the rate: advertise exactly that
                self.quota = cfg.burst or rate.count
                window = max(1, round(self.quota * self.p1 / US))
            self.policy = f'"{self.name}";q={self.quota};w={window}'
        elif cfg.quota is not None:
            quota = parse_quota(cfg.quota)
            self.algo, self.p1, self.p2 = QUOTA, 0, quota.count
            self.calendar = CalendarPeriod(quota.unit, zone(cfg.timezone or "UTC"))
            self.quota = quota.count
            self.policy = f'"{self.name}";q={quota.count}'  # no `w`: calendar periods have no fixed length
        else:
            self.algo, self.p1, self.p2 = CONCURRENCY, round((cfg.lease or DEFAULT_LEASE) * US), cfg.concurrency or 1
            self.quota = self.p2
            self.policy = f'"{self.name}";q={self.p2};qu="concurrent-requests"'
            self.cost, self.costs = 1, {}
        self.suffix = f":{namespace}:{self.name}:{self.algo}"

    def cost_for(self, method: str) -> int:
        """The cost of a request by method. HEAD costs what GET does unless it has its own entry: the router
        answers HEAD on GET routes, and the upstream does the same work for it."""
        costs = self.costs
        if not costs:
            return self.cost
        found = costs.get(method)
        if found is None and method == "HEAD":
            found = costs.get("GET")
        return self.cost if found is None else found

    def over_capacity(self, cfg: LimitConfig) -> str | None:
        cap = cfg.capacity()
        worst = max((self.cost, *self.costs.values()))
        if worst > cap:
            return f"limit {self.name!r}: a cost of {worst} exceeds its capacity of {cap}, so no request could pass"
        return None
