"""Prometheus metrics on the admin listener: requests by route/decision/reason/status, latency, pool gauges."""

from __future__ import annotations

import asyncio
import urllib.request
from bisect import bisect_left
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stockade.admin.app import AdminState, admin_app
from stockade.admin.server import AdminServer
from stockade.config.loader import load_config_text
from stockade.observability.metrics import OVERHEAD_BUCKETS, Metrics, Snapshot, SnapshotCollector, merge, retire
from stockade.proxy.workers import Supervisor, _Worker
from stockade.testing import TestUpstream
from tests.conftest import BASIC, GatewayFactory


def test_metrics_and_health_endpoints(make_gateway: GatewayFactory, upstream: TestUpstream) -> None:
    gw = make_gateway(BASIC)
    for _ in range(3):
        gw.request("GET", "/api/x")
    gw.request("GET", "/nowhere")
    server = gw.server
    admin = AdminServer(admin_app(AdminState(server.metrics.snapshot, lambda: server.ready)), "127.0.0.1", 0)
    gw.bg.run(admin.start())
    try:
        base = f"http://127.0.0.1:{admin.port}"
        with urllib.request.urlopen(base + "/metrics") as resp:
            text = resp.read().decode()
        with urllib.request.urlopen(base + "/healthz") as resp:
            assert resp.status == 200
        with urllib.request.urlopen(base + "/readyz") as resp:
            assert resp.status == 200
    finally:
        gw.bg.run(admin.stop())
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = {
        (s.labels["route"], s.labels["decision"], s.labels["reason"], s.labels["status"]): s.value
        for s in families["stockade_requests"].samples
        if s.name == "stockade_requests_total"
    }
    assert requests[("api", "allow", "", "200")] == 3
    assert requests[("", "deny", "route.not_found", "404")] == 1
    overhead = [s for s in families["stockade_gateway_overhead_seconds"].samples if s.name.endswith("_count")]
    assert {s.labels["route"]: s.value for s in overhead}["api"] == 3
    upstream_lat = [s for s in families["stockade_upstream_latency_seconds"].samples if s.name.endswith("_count")]
    assert {s.labels["route"]: s.value for s in upstream_lat}["api"] == 3
    pools = {s.labels["state"]: s.value for s in families["stockade_upstream_connections"].samples}
    assert pools["idle"] == 1 and pools["active"] == 0


def test_readyz_is_503_while_draining(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(BASIC)
    app = admin_app(AdminState(gw.server.metrics.snapshot, lambda: False))
    admin = AdminServer(app, "127.0.0.1", 0)
    gw.bg.run(admin.start())
    try:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{admin.port}/readyz")
            raise AssertionError("expected 503")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
    finally:
        gw.bg.run(admin.stop())


def _worker_snapshot(requests: int, connections: float) -> Snapshot:
    m = Metrics()
    for _ in range(requests):
        m.request("api", "allow", "", 200, 0.001, 0.01)
    m.event("upstream_error", "reset")
    m.gauge_providers.append(lambda: [("stockade_client_connections", {}, connections)])
    return m.snapshot()


async def _died(sup: Supervisor, w: _Worker) -> None:
    reader = asyncio.StreamReader()
    reader.feed_eof()  # the worker's control channel closed: it died
    await sup._watch(w, reader)


@pytest.mark.parametrize("restarts", [1, 50])
def test_supervisor_keeps_dead_workers_counters_but_not_their_gauges(tmp_path: Path, restarts: int) -> None:
    """A worker that died: its counts stay in /metrics (monotonic), its open connections do not, and however often
    it restarts the supervisor keeps one folded snapshot for it, not one per incarnation."""
    loaded = load_config_text("routes: []\n", base_dir=tmp_path)
    sup = Supervisor("gw.yaml", loaded, 1)
    sup.stopping = True  # _watch must not respawn
    w = sup.workers[0]
    for _ in range(restarts):
        w.snapshot = _worker_snapshot(3, 7.0)
        asyncio.run(_died(sup, w))
    w.snapshot = _worker_snapshot(1, 2.0)  # the incarnation alive now
    merged = sup.snapshot()
    assert merged["requests"] == [["api", "allow", "", 200, 3 * restarts + 1]]
    assert ["upstream_error", "reset", restarts + 1] in merged["events"]
    assert merged["overhead"]["api"][0][bisect_left(OVERHEAD_BUCKETS, 0.001)] == 3 * restarts + 1
    assert sum(merged["upstream"]["api"][0]) == 3 * restarts + 1
    gauges = {name: v for name, _, v in merged["gauges"]}
    assert gauges["stockade_client_connections"] == 2.0  # the live worker's alone
    assert w.retired is not None and len(orjson.dumps(w.retired)) == len(orjson.dumps(retire(None, w.retired)))


# -- Metrics.request: the per-route cell and its last-series cache ---------------------------------------------


def _other(s: str) -> str:
    """An equal string that is another object (literals are interned, so a cache could match them by identity)."""
    copy = "".join(list(s))
    assert copy == s and copy is not s
    return copy


@pytest.mark.parametrize("field", ["route", "decision", "reason", "all"])
def test_equal_strings_that_are_other_objects_count_in_one_series(field: str) -> None:
    route, decision, reason = "api", "deny", "auth.missing"
    copied = (
        _other(route) if field in ("route", "all") else route,
        _other(decision) if field in ("decision", "all") else decision,
        _other(reason) if field in ("reason", "all") else reason,
    )
    m = Metrics()
    m.request(route, decision, reason, 401, 1e-5, None)
    m.request(*copied, 401, 1e-5, 0.001)
    m.request(route, decision, reason, 401, 1e-5, None)
    m.request(*copied, 401, 1e-5, None)
    assert m.requests == {("api", "deny", "auth.missing", 401): 4}
    assert list(m.overhead) == ["api"] and sum(m.overhead["api"].counts) == 4
    assert list(m.upstream) == ["api"] and sum(m.upstream["api"].counts) == 1


# (route, decision, reason, status, upstream seconds or None)
Call = tuple[str, str, str, int, float | None]
OK: Call = ("api", "allow", "", 200, 0.002)
NOT_FOUND: Call = ("api", "allow", "", 404, 0.002)
DENIED: Call = ("api", "deny", "auth.missing", 401, None)
REJECTED: Call = ("api", "deny", "auth.invalid", 401, None)
ERROR: Call = ("api", "error", "", 200, None)
OTHER: Call = ("web", "allow", "", 200, 0.002)
UNROUTED: Call = ("", "deny", "route.not_found", 404, None)
TIMEOUT: Call = ("slow", "error", "upstream.timeout", 504, 30.0)


@pytest.mark.parametrize(
    "calls",
    [
        pytest.param([OK] * 3, id="one-series"),
        pytest.param([OK, NOT_FOUND] * 3, id="statuses-alternate"),
        pytest.param([DENIED, REJECTED] * 3, id="reasons-alternate"),
        pytest.param([OK, ERROR, OK, ERROR], id="decisions-alternate"),
        pytest.param([OK, OTHER] * 3, id="routes-alternate"),
        pytest.param([OK, OTHER, OK, NOT_FOUND, OTHER, NOT_FOUND], id="routes-and-series-alternate"),
        pytest.param([OK, DENIED, REJECTED, ERROR, NOT_FOUND, OK, DENIED], id="back-to-earlier-series"),
        pytest.param([DENIED, DENIED, OK], id="upstream-first-seen-later"),
        pytest.param([UNROUTED, OK, UNROUTED, TIMEOUT, OTHER, UNROUTED], id="three-routes-and-the-unrouted"),
    ],
)
def test_request_counts_every_series_and_route_whatever_the_order(calls: list[Call]) -> None:
    m = Metrics()
    expected: dict[tuple[str, str, str, int], int] = {}
    per_route: dict[str, int] = {}
    upstream: dict[str, list[float]] = {}
    for i, (route, decision, reason, status, up) in enumerate(calls):
        m.request(route, decision, reason, status, 1e-5 * (i + 1), up)
        key = (route, decision, reason, status)
        expected[key] = expected.get(key, 0) + 1
        per_route[route] = per_route.get(route, 0) + 1
        if up is not None:
            upstream.setdefault(route, []).append(up)
        # after every call, not only at the end: a cache that counted into the wrong series would show here
        assert list(m.requests.items()) == list(expected.items())  # and in the order they were first seen
    assert {r: sum(h.counts) for r, h in m.overhead.items()} == per_route
    assert list(m.overhead) == list(per_route)
    assert {r: (sum(h.counts), h.sum) for r, h in m.upstream.items()} == {
        r: (len(v), pytest.approx(sum(v))) for r, v in upstream.items()
    }
    assert list(m.upstream) == list(upstream)  # a route never asked upstream has no upstream histogram


def _counts(**at: int) -> list[int]:
    counts = [0] * 16
    for index, n in at.items():
        counts[int(index.removeprefix("i"))] = n
    return counts


def test_snapshot_merge_and_exposition_of_a_known_sequence() -> None:
    m = Metrics()
    m.request("api", "allow", "", 200, 3e-5, 0.002)  # overhead le=5e-05 (index 2), upstream le=0.0025 (1)
    m.request("api", "deny", "auth.missing", 401, 1e-5, None)  # on a bound: its bucket (le=1e-05, index 0)
    m.request("api", "allow", "", 200, 2.0, 0.001)  # over the last bound: +Inf (15); upstream le=0.001 (0)
    m.request("", "deny", "route.not_found", 404, 5e-5, None)
    m.event("reload")
    snap = m.snapshot()
    assert snap == {
        "requests": [
            ["api", "allow", "", 200, 2],
            ["api", "deny", "auth.missing", 401, 1],
            ["", "deny", "route.not_found", 404, 1],
        ],
        "overhead": {"api": [_counts(i0=1, i2=1, i15=1), 0.0 + 3e-5 + 1e-5 + 2.0], "": [_counts(i2=1), 5e-5]},
        "upstream": {"api": [_counts(i0=1, i1=1), 0.0 + 0.002 + 0.001]},
        "events": [["reload", "", 1]],
        "gauges": [],
    }
    assert orjson.loads(orjson.dumps(snap)) == snap
    m.request("api", "allow", "", 200, 3e-5, 0.002)
    assert snap["requests"][0][-1] == 2 and sum(snap["overhead"]["api"][0]) == 3  # a copy, not the live counters
    merged = merge([snap, m.snapshot()])
    assert merged["requests"][0] == ["api", "allow", "", 200, 5]
    assert merged["overhead"]["api"][0] == _counts(i0=2, i2=3, i15=2)
    assert merged["upstream"]["api"][0] == _counts(i0=2, i1=3)
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: snap))
    text = generate_latest(registry).decode()
    for line in [
        'stockade_requests_total{decision="allow",reason="",route="api",status="200"} 2.0',
        'stockade_requests_total{decision="deny",reason="route.not_found",route="",status="404"} 1.0',
        'stockade_gateway_overhead_seconds_bucket{le="1e-05",route="api"} 1.0',
        'stockade_gateway_overhead_seconds_bucket{le="5e-05",route="api"} 2.0',
        'stockade_gateway_overhead_seconds_bucket{le="1.0",route="api"} 2.0',
        'stockade_gateway_overhead_seconds_bucket{le="+Inf",route="api"} 3.0',
        'stockade_gateway_overhead_seconds_count{route="api"} 3.0',
        'stockade_upstream_latency_seconds_bucket{le="0.0025",route="api"} 2.0',
        'stockade_upstream_latency_seconds_count{route="api"} 2.0',
        'stockade_events_total{event="reload",label=""} 1.0',
    ]:
        assert line in text.splitlines()
    assert 'stockade_upstream_latency_seconds_count{route=""}' not in text
