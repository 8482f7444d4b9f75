"""The per-request record: completion hooks, the decision line and the metrics, with the time split."""

from __future__ import annotations

import bisect
import math
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest

from stockade.clock import FakeClock
from stockade.observability.decision_log import DecisionLog
from stockade.observability.metrics import Histogram, Metrics
from stockade.pipeline.context import RequestContext
from stockade.pipeline.phase import Phase
from stockade.pipeline.record import Timings, record_request
from stockade.pipeline.response import Outcome
from stockade.pipeline.runner import Pipeline, StageSlot
from stockade.pipeline.stage import StageConfig
from stockade.pipeline.verdict import CONTINUE, Continue
from stockade.testing import make_context


def _record(pipeline: Pipeline | None, ctx: RequestContext, t: Timings, *rest: Any) -> None:
    """record_request with the marks of a Timings, as the ASGI front passes them."""
    record_request(pipeline, ctx, t.t0, t.t_sent, t.t_head, t.t_fwd, t.t_wait, *rest)


@pytest.mark.parametrize(
    ("marks", "wait", "now", "overhead", "upstream"),
    [
        pytest.param((0.0, 0.0, 0.0), 0.0, 10.5, 0.5, None, id="answered-locally"),
        pytest.param((10.1, 10.4, 10.45), 0.0, 10.6, 0.15, 0.3, id="forwarded"),
        pytest.param((10.1, 10.4, 0.0), 0.0, 10.6, 0.3, 0.3, id="forwarded-whole-response-at-once"),
        pytest.param((10.1, 0.0, 0.0), 0.0, 10.6, 0.1, None, id="forwarded-no-response"),
        # 2 s of the 2.1 before the request went on were spent waiting for the client's body: not the gateway's
        pytest.param((12.1, 12.4, 12.45), 2.0, 12.6, 0.15, 0.3, id="forwarded-after-the-body"),
    ],
)
def test_record_splits_gateway_and_upstream_time(
    tmp_path: Path,
    marks: tuple[float, float, float],
    wait: float,
    now: float,
    overhead: float,
    upstream: float | None,
) -> None:
    t = Timings(10.0)
    t.t_sent, t.t_head, t.t_fwd = marks
    t.t_wait = wait
    log = DecisionLog(str(tmp_path / "d.log"), FakeClock())
    metrics = Metrics()
    ctx = make_context()
    ctx.route_id = "r"
    _record(None, ctx, t, now, 200, 200, 10, "", log, metrics)
    log.close()
    line = orjson.loads((tmp_path / "d.log").read_bytes())
    assert line["latency_us"] == int((now - 10.0) * 1e6)
    assert line["upstream_us"] == (int(upstream * 1e6) if upstream is not None else 0)
    assert metrics.overhead["r"].sum == pytest.approx(overhead)
    if upstream is None:
        assert "r" not in metrics.upstream
    else:
        assert metrics.upstream["r"].sum == pytest.approx(upstream)


@pytest.mark.parametrize(
    ("status", "reason", "upstream"),
    [(504, "upstream.timeout", 2.5), (502, "upstream.unavailable", None), (502, "upstream.bad_response", None)],
)
def test_record_counts_an_upstream_timeout_in_upstream_latency(
    tmp_path: Path, status: int, reason: str, upstream: float | None
) -> None:
    """A 504 has no response head, but leaving it out of the histogram would show a healthy p99 exactly while
    the upstream times out; a 502 is a failure, not a wait, and stays out."""
    t = Timings(10.0)
    t.t_sent = 10.1
    log = DecisionLog(str(tmp_path / "d.log"), FakeClock())
    metrics = Metrics()
    ctx = make_context()
    ctx.route_id, ctx.decision, ctx.reason = "r", "error", reason
    _record(None, ctx, t, 12.6, status, 0, 10, reason, log, metrics)
    log.close()
    assert metrics.overhead["r"].sum == pytest.approx(0.1)
    if upstream is None:
        assert "r" not in metrics.upstream
    else:
        assert metrics.upstream["r"].sum == pytest.approx(upstream)


class _Counter:
    id: ClassVar[str] = "counter"
    phase: ClassVar[Phase] = Phase.DETECT
    Config: ClassVar[type[StageConfig]] = StageConfig

    def __init__(self) -> None:
        self.seen: list[int] = []

    async def check(self, ctx: Any) -> Continue:
        return CONTINUE

    def on_complete(self, ctx: Any, outcome: Outcome) -> None:
        self.seen.append(outcome.status)


def test_record_runs_hooks_writes_one_line_and_counts(tmp_path: Path) -> None:
    clock = FakeClock()
    log = DecisionLog(str(tmp_path / "d.log"), clock)
    metrics = Metrics()
    counter = _Counter()
    ctx = make_context()
    ctx.route_id = "r"
    pipeline = Pipeline("r", [StageSlot(counter, "counter", Phase.DETECT)], body_limit=1)
    marks = Timings(clock.monotonic())
    _record(pipeline, ctx, marks, clock.monotonic(), 204, 0, 0, "", log, metrics)
    _record(None, ctx, marks, clock.monotonic(), 400, 0, 0, "", log, metrics)
    log.close()
    assert counter.seen == [204]  # no pipeline (rejected before routing): no completion hooks
    lines = [orjson.loads(x) for x in (tmp_path / "d.log").read_bytes().splitlines()]
    assert [(x["route"], x["status"]) for x in lines] == [("r", 204), ("r", 400)]
    assert metrics.requests == {("r", "allow", "", 204): 1, ("r", "allow", "", 400): 1}


BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025)


@pytest.mark.parametrize(
    "value",
    [0.0, -1.0, 0.0005, 0.001, 0.0010001, 0.0025, 0.004, 0.005, 0.025, 0.0250001, 30.0, math.inf, -math.inf, math.nan],
)
def test_histogram_buckets_as_bisect_left(value: float) -> None:
    """The compiled observe() bisects by hand: a value on a bound counts in that bound's bucket (le=)."""
    h = Histogram(BOUNDS)
    h.observe(value)
    expected = [0] * (len(BOUNDS) + 1)
    expected[bisect.bisect_left(BOUNDS, value)] = 1
    assert h.counts == expected
