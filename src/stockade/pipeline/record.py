"""The end of every request on every front: completion hooks, one decision log line, the request metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from stockade.pipeline.response import Outcome

if TYPE_CHECKING:
    from stockade.observability.decision_log import DecisionLog
    from stockade.observability.metrics import Metrics
    from stockade.pipeline.context import RequestContext
    from stockade.pipeline.runner import Pipeline


class Timings:
    """Monotonic marks of one request: arrival, hand-off to the application, its response head, and when that
    head went out to the client. The gateway's own time is what lies between them."""

    __slots__ = ("t0", "t_fwd", "t_head", "t_sent", "t_wait")

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.t_wait = 0.0  # before t_sent, time spent waiting for the client's body (not the gateway's own)
        self.t_sent = 0.0  # request handed to the upstream / application (0: never)
        self.t_head = 0.0  # its response head arrived
        self.t_fwd = 0.0  # the response head (ours or theirs) was written to the client


class Marks(Protocol):
    """The timing marks `record_request` reads: a `Timings`, or a front's exchange that keeps them itself."""

    t0: float
    t_sent: float
    t_head: float
    t_fwd: float
    t_wait: float


def record_request(
    pipeline: Pipeline | None,
    ctx: RequestContext,
    t0: float,
    t_sent: float,
    t_head: float,
    t_fwd: float,
    t_wait: float,
    now: float,
    status: int,
    upstream_status: int,
    bytes_sent: int,
    error: str,
    decision_log: DecisionLog,
    metrics: Metrics,
    hooks: bool = True,
) -> None:
    """Called exactly once per request, after the response went out (or the exchange broke off).

    `pipeline` is None for requests rejected before routing (they have no route, so no completion hooks).
    `hooks=False` for an upgraded connection (WebSocket): its decision is logged at the 101, but its completion
    hooks run when it closes (`complete_upgraded`), so what they hold (a concurrency slot) lasts as long.
    Positional on purpose: this runs for every request on every front. The marks are those of `Marks`, passed
    as floats: read through the protocol, each would be a generic attribute lookup in compiled code.
    """
    upstream_s = (t_head - t_sent) if t_head else 0.0
    if t_sent:
        # Time before the request went on, plus from the response head to the end of the exchange (for streamed
        # bodies, to the first write after the head): the gateway's own time.
        overhead = (t_sent - t0 - t_wait) + max(0.0, (t_fwd or now) - (t_head or now))
    else:
        overhead = now - t0 - t_wait  # answered by the gateway: less any wait for the client's body
    total_us = int((now - t0) * 1e6)
    upstream_us = int(upstream_s * 1e6)
    if hooks and pipeline is not None and pipeline.completion_hooks:
        pipeline.complete(
            ctx,
            Outcome(
                status=status,
                upstream_status=upstream_status,
                upstream_us=upstream_us,
                total_us=total_us,
                bytes_sent=bytes_sent,
                error=error,
            ),
        )
    decision_log.record(ctx, status, total_us, upstream_us, error)
    if t_head:
        upstream: float | None = upstream_s
    elif t_sent and ctx.reason == "upstream.timeout":
        upstream = now - t_sent  # no head came, but its wait is what a latency percentile must show
    else:
        upstream = None  # answered by the gateway, or a failure (502) rather than a wait
    metrics.request(ctx.route_id, ctx.decision, ctx.reason, status, overhead, upstream)


def complete_upgraded(
    pipeline: Pipeline | None, ctx: RequestContext, marks: Marks, now: float, sent: int, error: str = ""
) -> None:
    """The completion hooks of an upgraded connection, once it has closed (see `record_request`); `error` says why
    the gateway closed it (`tunnel.idle_timeout`), '' if either side did."""
    if pipeline is not None and pipeline.completion_hooks:
        upstream_us = int((marks.t_head - marks.t_sent) * 1e6) if marks.t_head and marks.t_sent else 0
        pipeline.complete(
            ctx,
            Outcome(
                status=101,
                upstream_status=101,
                upstream_us=upstream_us,
                total_us=int((now - marks.t0) * 1e6),
                bytes_sent=sent,
                error=error,
            ),
        )
