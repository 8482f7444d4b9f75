"""Prometheus metrics on the admin listener: requests by route/decision/reason/status, latency, pool gauges."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from stockade.admin.app import AdminState, admin_app
from stockade.admin.server import AdminServer
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
