"""The limits that apply to a request (a route's, or one plan's), compiled: keys, hash tag, header fields."""

from __future__ import annotations

from collections.abc import Sequence

from stockade.pipeline.context import RequestContext
from stockade.ratelimit.backend import CONCURRENCY, QUOTA, US, Hit, HitResult
from stockade.ratelimit.keys import MISSING, extractor
from stockade.ratelimit.limits import Cost, Limit, LimitConfig


def seconds_up(us: int) -> int:
    """Microseconds as whole seconds, rounded up (never tell a client to come back too early)."""
    return -(-us // US) if us > 0 else 0


class LimitSet:
    """Compiled once per route (and per plan). `hits()` turns a request into the backend's batch.

    Every key of one request starts with the same Redis Cluster hash tag, so one script can touch them all:
    the values of the key parts every limit shares (e.g. the consumer), else the set's namespace. Each
    counter key so always carries the same tag, whichever request touches it.
    """

    __slots__ = ("_extract", "_head_ns", "_plan", "_tag_idx", "concurrency", "limits", "policy", "prefix")

    def __init__(
        self,
        configs: Sequence[LimitConfig],
        namespace: str,
        *,
        default_cost: Cost = 1,
        prefix: str = "",
        ipv6_prefix: int = 64,
    ) -> None:
        limits = [Limit(cfg, namespace, default_cost) for cfg in configs]
        problems = [p for lim, cfg in zip(limits, configs, strict=True) if (p := lim.over_capacity(cfg))]
        names = [lim.name for lim in limits]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"limit names must be unique, {', '.join(dupes)} repeats; set `name:` on each limit")
        if problems:
            raise ValueError("; ".join(problems))
        self.limits = tuple(limits)
        self.prefix = prefix
        parts: list[str] = []
        for lim in limits:
            parts.extend(p for p in lim.parts if p not in parts)
        self._extract = tuple(extractor(p, ipv6_prefix) for p in parts)
        common = [p for p in limits[0].parts if all(p in lim.parts for lim in limits)]
        self._tag_idx = tuple(parts.index(p) for p in common)
        self._head_ns = f"{prefix}{{{namespace}}}"
        self._plan = tuple(
            (
                lim,
                tuple(parts.index(p) for p in lim.parts),
                tuple(parts.index(p) for p in lim.parts if p not in common),
            )
            for lim in limits
        )
        self.policy = ", ".join(lim.policy for lim in limits)
        self.concurrency = tuple(lim for lim in limits if lim.algo == CONCURRENCY)

    def hits(self, ctx: RequestContext, now: float) -> tuple[list[Hit], list[Limit]]:
        """The backend hits for this request, and the limit behind each (limits that do not apply are left out)."""
        values = [f(ctx) for f in self._extract]
        tag_idx = self._tag_idx
        if len(tag_idx) == 1:
            head = f"{self.prefix}{{{values[tag_idx[0]] or MISSING}}}"
        elif tag_idx:
            head = f"{self.prefix}{{{'|'.join([values[i] or MISSING for i in tag_idx])}}}"
        else:
            head = self._head_ns
        hits: list[Hit] = []
        used: list[Limit] = []
        method = ctx.method
        for lim, own, rest in self._plan:
            if lim.skip_missing and any(values[i] is None for i in own):
                continue
            cost = lim.cost_for(method)
            if cost == 0:
                continue
            key = head + lim.suffix
            if rest:
                key += ":" + "|".join([values[i] or MISSING for i in rest])
            p1 = lim.p1
            if lim.algo == QUOTA:
                assert lim.calendar is not None  # noqa: S101 - set for every quota limit
                end, period = lim.calendar.at(now)
                key += ":" + period
                p1 = round(end * US)
            hits.append((lim.algo, key, p1, lim.p2, cost))
            used.append(lim)
        return hits, used


def ratelimit_field(used: Sequence[Limit], results: Sequence[HitResult]) -> str:
    """The `RateLimit` field (draft-ietf-httpapi-ratelimit-headers): remaining `r` and reset `t` per policy."""
    if len(used) == 1:
        lim, (_ok, remaining, reset, _retry) = used[0], results[0]
        return f"{lim.item}{remaining}" if lim.algo == CONCURRENCY else f"{lim.item}{remaining};t={-(-reset // US)}"
    items = []
    for lim, (_ok, remaining, reset, _retry) in zip(used, results, strict=True):
        if lim.algo == CONCURRENCY:
            items.append(f"{lim.item}{remaining}")
        else:
            items.append(f"{lim.item}{remaining};t={-(-reset // US)}")
    return ", ".join(items)


def legacy_fields(used: Sequence[Limit], results: Sequence[HitResult]) -> dict[str, str]:
    """`X-RateLimit-Limit/Remaining/Reset` for the binding limit (the one with the least left)."""
    best = min(range(len(used)), key=lambda i: results[i][1])
    lim, (_ok, remaining, reset, _retry) = used[best], results[best]
    return {
        "x-ratelimit-limit": str(lim.quota),
        "x-ratelimit-remaining": str(remaining),
        "x-ratelimit-reset": str(seconds_up(reset)),
    }
