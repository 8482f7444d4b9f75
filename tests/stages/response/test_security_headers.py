"""security_headers: fingerprinting headers removed, hardening headers added, cache opt-out per route."""

from __future__ import annotations

from stockade.testing import Reply, TestUpstream
from tests.conftest import GatewayFactory

CONFIG = """
routes:
  - id: default
    match: {path: "/a/**"}
    upstream: {upstream}
    stages: [{use: anonymous}, {use: security_headers}]
  - id: cacheable
    match: {path: "/b/**"}
    upstream: {upstream}
    stages: [{use: anonymous}, {use: security_headers, config: {cache_control: null, frame_options: null}}]
"""

UPSTREAM_HEADERS = [
    ("Server", "Apache/2.4.1 (Unix)"),
    ("X-Powered-By", "PHP/5.4"),
    ("Cache-Control", "public, max-age=3600"),
    ("Content-Security-Policy", "default-src 'self'"),
    ("Content-Type", "application/json"),
]


def test_defaults(make_gateway: GatewayFactory, upstream: TestUpstream) -> None:
    upstream.reply("/a/x", Reply(200, UPSTREAM_HEADERS, b"{}"))
    gw = make_gateway(CONFIG)
    status, headers, body = gw.request("GET", "/a/x")
    assert (status, body) == (200, b"{}")
    assert "server" not in headers and "x-powered-by" not in headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"
    assert headers["x-frame-options"] == "DENY"
    assert headers["content-security-policy"] == "default-src 'self'"  # the upstream's policy is kept
    assert "strict-transport-security" not in headers  # plain HTTP: HSTS would be meaningless
    assert headers["content-length"] == "2"


def test_route_opts_out_of_cache_control(make_gateway: GatewayFactory, upstream: TestUpstream) -> None:
    upstream.reply("/b/x", Reply(200, UPSTREAM_HEADERS, b"{}"))
    gw = make_gateway(CONFIG)
    _, headers, _ = gw.request("GET", "/b/x")
    assert headers["cache-control"] == "public, max-age=3600"
    assert "x-frame-options" not in headers
    assert headers["x-content-type-options"] == "nosniff"


def test_denials_carry_nosniff_and_no_store(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(CONFIG)
    status, headers, _ = gw.request("GET", "/elsewhere")
    assert status == 404
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"
