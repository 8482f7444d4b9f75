"""The end of every request on every front: completion hooks, one decision log line, the request metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stockade.observability.decision_log import DecisionLog
    from stockade.observability.metrics import Metrics
    from stockade.pipeline.context import RequestContext
    from stockade.pipeline.response import Outcome
    from stockade.pipeline.runner import Pipeline


class Timings:
    """Monotonic marks of one request: arrival, hand-off to the application, its response head, and when that
    head went out to the client. The gateway's own time is what lies between them."""

    __slots__ = ("t0", "t_fwd", "t_head", "t_sent")

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.t_sent = 0.0  # request handed to the upstream / application (0: never)
        self.t_head = 0.0  # its response head arrived
        self.t_fwd = 0.0  # the response head (ours or theirs) was written to the client

    def upstream(self) -> float:
        return (self.t_head - self.t_sent) if self.t_head else 0.0

    def overhead(self, now: float) -> float:
        if self.t_sent:
            return (self.t_sent - self.t0) + max(0.0, (self.t_fwd or now) - (self.t_head or now))
        return now - self.t0


def record_request(
    pipeline: Pipeline | None,
    ctx: RequestContext,
    outcome: Outcome,
    decision_log: DecisionLog,
    metrics: Metrics,
    *,
    overhead: float,
    upstream: float,
) -> None:
    """Called exactly once per request, after the response went out (or the exchange broke off).

    `pipeline` is None for requests rejected before routing (they have no route, so no completion hooks);
    `overhead` is the time spent in the gateway itself and `upstream` the time to the application's first
    response byte, both in seconds.
    """
    if pipeline is not None:
        pipeline.complete(ctx, outcome)
    decision_log.record(ctx, outcome)
    metrics.request(ctx.route_id, ctx.decision, ctx.reason, outcome.status, overhead, upstream)
