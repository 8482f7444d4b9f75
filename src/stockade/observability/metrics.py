"""Request metrics kept as plain counters on the hot path, exported to Prometheus on scrape.

Workers keep their own counters; with several workers the supervisor merges snapshots for `/metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# fmt: off
OVERHEAD_BUCKETS: Final[tuple[float, ...]] = (
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.5, 1.0
)
UPSTREAM_BUCKETS: Final[tuple[float, ...]] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0
)
# fmt: on

Snapshot = dict[str, Any]


class _Bucket:
    """One histogram bucket: its upper bound as a C double and its count as a C field (no int objects made)."""

    __slots__ = ("le", "n")

    def __init__(self, le: float) -> None:
        self.le = le
        self.n = 0


class Histogram:
    __slots__ = ("bounds", "buckets", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        # the last bucket is +Inf: `inf < value` is never true, so observe() always finds a bucket
        self.buckets = [_Bucket(b) for b in bounds] + [_Bucket(math.inf)]
        self.sum = 0.0

    @property
    def counts(self) -> list[int]:
        """The count of each bucket (the last one is +Inf), a new list."""
        return [b.n for b in self.buckets]

    def observe(self, value: float) -> None:
        # bisect_left as a scan: the first bucket whose bound is not below the value (NaN lands in the first, as
        # with bisect_left). Compiled, a step reads a C double; request times mostly fall in the first few buckets.
        for b in self.buckets:
            if not b.le < value:
                b.n += 1
                break
        self.sum += value


class _Series:
    """The count of one (route, decision, reason, status) series, as a C field."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


class _RouteCell:
    """What `Metrics.request` keeps per route: its histograms, and the series it counted last.

    A route's requests mostly repeat one series (allow, '', 200), so the last one is kept here and compared field by
    field: an int compare and two string compares (pointer compares when the strings are the same objects, as the
    request path's constants are), where the 4-tuple key cost building, hashing and comparing a tuple twice."""

    __slots__ = ("decision", "overhead", "reason", "series", "status", "upstream")

    def __init__(self, overhead: Histogram, decision: str, reason: str, status: int, series: _Series) -> None:
        self.overhead = overhead
        self.upstream: Histogram | None = None  # created at the first upstream observation, as `Metrics.upstream`
        self.decision = decision
        self.reason = reason
        self.status = status
        self.series = series


class Metrics:
    """Counters for one process. Gauges (pools, connections) are read from providers at scrape time."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str, str, int], _Series] = {}
        self.overhead: dict[str, Histogram] = {}
        self.upstream: dict[str, Histogram] = {}
        self._routes: dict[str, _RouteCell] = {}  # the same histograms as `overhead` and `upstream`, and a cache
        self.events: dict[tuple[str, str], int] = {}  # (event, label): reloads, stage failures, upstream errors
        self.gauge_providers: list[Callable[[], Iterable[tuple[str, dict[str, str], float]]]] = []

    @property
    def requests(self) -> dict[tuple[str, str, str, int], int]:
        """Requests by (route, decision, reason, status), a new dict."""
        return {k: s.n for k, s in self._series.items()}

    def request(
        self, route: str, decision: str, reason: str, status: int, overhead: float, upstream: float | None
    ) -> None:
        """Count one request; `upstream` is the time to the upstream's response head (or to its timeout), None if
        the upstream was not asked or failed."""
        cell = self._routes.get(route)
        # `==` on two str is a pointer compare first in compiled code; equal strings of other objects still match
        if cell is None or status != cell.status or decision != cell.decision or reason != cell.reason:
            cell = self._switch(route, decision, reason, status)
        cell.series.n += 1
        cell.overhead.observe(overhead)
        if upstream is not None:
            u = cell.upstream
            if u is None:
                u = cell.upstream = self.upstream[route] = Histogram(UPSTREAM_BUCKETS)
            u.observe(upstream)

    def _switch(self, route: str, decision: str, reason: str, status: int) -> _RouteCell:
        """The route's cell, its cached series now (route, decision, reason, status), created on first use."""
        key = (route, decision, reason, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        cell = self._routes.get(route)
        if cell is None:
            h = self.overhead[route] = Histogram(OVERHEAD_BUCKETS)
            cell = self._routes[route] = _RouteCell(h, decision, reason, status, series)
        else:
            cell.decision, cell.reason, cell.status, cell.series = decision, reason, status, series
        return cell

    def event(self, name: str, label: str = "") -> None:
        key = (name, label)
        self.events[key] = self.events.get(key, 0) + 1

    def snapshot(self) -> Snapshot:
        """A JSON-able copy (workers send these to the supervisor)."""
        return {
            "requests": [[*k, s.n] for k, s in self._series.items()],
            "overhead": {r: [h.counts, h.sum] for r, h in self.overhead.items()},
            "upstream": {r: [h.counts, h.sum] for r, h in self.upstream.items()},
            "events": [[*k, v] for k, v in self.events.items()],
            "gauges": [[n, labels, v] for p in self.gauge_providers for n, labels, v in p()],
        }


def merge(snapshots: Iterable[Snapshot]) -> Snapshot:
    requests: dict[tuple[Any, ...], int] = {}
    events: dict[tuple[Any, ...], int] = {}
    hists: dict[str, dict[str, list[Any]]] = {"overhead": {}, "upstream": {}}
    gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for snap in snapshots:
        for *key, v in snap["requests"]:
            requests[tuple(key)] = requests.get(tuple(key), 0) + v
        for *key, v in snap["events"]:
            events[tuple(key)] = events.get(tuple(key), 0) + v
        for kind in ("overhead", "upstream"):
            for route, (counts, total) in snap[kind].items():
                cur = hists[kind].get(route)
                if cur is None:
                    hists[kind][route] = [list(counts), total]
                else:
                    cur[0] = [a + b for a, b in zip(cur[0], counts, strict=True)]
                    cur[1] += total
        for name, labels, v in snap["gauges"]:
            gkey = (name, tuple(sorted(labels.items())))
            gauges[gkey] = gauges.get(gkey, 0.0) + v
    return {
        "requests": [[*k, v] for k, v in requests.items()],
        "events": [[*k, v] for k, v in events.items()],
        "overhead": hists["overhead"],
        "upstream": hists["upstream"],
        "gauges": [[n, dict(lbls), v] for (n, lbls), v in gauges.items()],
    }


def retire(retired: Snapshot | None, last: Snapshot) -> Snapshot:
    """A dead worker's last snapshot folded into what its earlier incarnations counted: one snapshot however
    often it restarts. Counters and histograms only: its gauges (connections, pools) died with it."""
    folded = merge([last] if retired is None else [retired, last])
    folded["gauges"] = []
    return folded


class SnapshotCollector(Collector):
    """Exposes a snapshot source (one process, or the supervisor's merge) as Prometheus metric families."""

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        snap = self.source()
        req = CounterMetricFamily(
            "stockade_requests",
            "Requests by route, decision, reason and status",
            labels=["route", "decision", "reason", "status"],
        )
        for route, decision, reason, status, v in snap["requests"]:
            req.add_metric([route, decision, reason, str(status)], v)
        yield req
        ev = CounterMetricFamily(
            "stockade_events", "Gateway events (reloads, stage failures, upstream errors)", labels=["event", "label"]
        )
        for name, label, v in snap["events"]:
            ev.add_metric([name, label], v)
        yield ev
        for kind, bounds, help_text in (
            ("overhead", OVERHEAD_BUCKETS, "Time spent in the gateway itself per request (excludes upstream)"),
            (
                "upstream",
                UPSTREAM_BUCKETS,
                "Upstream time to first response byte; a timeout (504 upstream.timeout, connect included) counts the"
                " time waited, a failure (502: refused, reset, bad response) is not observed",
            ),
        ):
            name = "stockade_gateway_overhead_seconds" if kind == "overhead" else "stockade_upstream_latency_seconds"
            fam = HistogramMetricFamily(name, help_text, labels=["route"])
            for route, (counts, total) in snap[kind].items():
                cumulative, buckets = 0, []
                for bound, c in zip((*map(str, bounds), "+Inf"), counts, strict=True):
                    cumulative += c
                    buckets.append((bound, cumulative))
                fam.add_metric([route], buckets, total)
            yield fam
        by_name: dict[str, GaugeMetricFamily] = {}
        for name, labels, v in snap["gauges"]:
            fam_g = by_name.get(name)
            if fam_g is None:
                fam_g = by_name[name] = GaugeMetricFamily(name, _GAUGE_HELP.get(name, name), labels=sorted(labels))
            fam_g.add_metric([labels[k] for k in sorted(labels)], v)
        yield from by_name.values()


_GAUGE_HELP: Final = {
    "stockade_upstream_connections": "Upstream pool connections by upstream and state (idle, active)",
    "stockade_client_connections": "Open client connections",
    "stockade_workers_ready": "Workers serving traffic",
}
