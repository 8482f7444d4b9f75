"""The static handler: a route answered by the gateway, still behind the route's pipeline."""

from __future__ import annotations

from stockade.testing import TestUpstream
from tests.conftest import GatewayFactory

CONFIG = """
routes:
  - id: health
    match: {path: /gateway/health, methods: [GET]}
    handler: {use: static, config: {body: '{"ok":true}', headers: {X-Served-By: gateway}}}
    stages: [{use: anonymous}, {use: security_headers}]
  - id: internal
    match: {path: /internal}
    handler: {use: static, config: {status: 204, body: ""}}
    stages: [{use: ip_filter, config: {allow: [10.0.0.0/8]}}, {use: anonymous}]
"""


def test_static_reply_goes_through_response_hooks(make_gateway: GatewayFactory, upstream: TestUpstream) -> None:
    gw = make_gateway(CONFIG)
    status, headers, body = gw.request("GET", "/gateway/health")
    assert (status, body) == (200, b'{"ok":true}')
    assert headers["content-type"] == "application/json"
    assert headers["x-served-by"] == "gateway"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-length"] == "11"
    assert upstream.received == []


def test_static_route_is_still_protected_by_its_pipeline(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(CONFIG)
    assert gw.request("GET", "/internal")[0] == 403


def test_head_on_static_route_has_no_body(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(CONFIG)
    status, headers, body = gw.request("HEAD", "/gateway/health")
    assert (status, body) == (200, b"")
    assert headers["content-length"] == "11"
