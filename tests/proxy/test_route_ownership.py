"""Route ownership end to end: the route whose template owns a path keeps every method it leaves out (405), and
its path with a trailing slash, away from a broader route: what a guard route guards cannot be reached around it."""

from __future__ import annotations

import pytest

from stockade.testing import TestUpstream
from tests.conftest import GatewayFactory
from tests.proxy.helpers import reason

DENY_ALL = "{use: ip_filter, config: {deny: [0.0.0.0/0, '::/0']}}"
CONFIG = f"""
routes:
  - id: admin-read
    match: {{path: /admin/**, methods: [GET]}}
    upstream: {{upstream}}
    stages: [{{use: anonymous}}, {DENY_ALL}]
  - id: secret
    match: {{path: /secret}}
    upstream: {{upstream}}
    stages: [{{use: anonymous}}, {DENY_ALL}]
  - id: dav
    match: {{path: /dav/**, methods: [PROPFIND, QUERY]}}
    upstream: {{upstream}}
    stages: [{{use: anonymous}}]
  - id: public
    match: {{path: /**}}
    upstream: {{upstream}}
    stages: [{{use: anonymous}}]
"""


@pytest.mark.parametrize(
    ("method", "path", "status", "why"),
    [
        ("GET", "/admin/users/1", 403, "ip.denied"),
        ("PATCH", "/admin/users/1", 405, "route.method_not_allowed"),
        ("PROPFIND", "/admin/users/1", 405, "route.method_not_allowed"),
        ("PURGE", "/admin", 405, "route.method_not_allowed"),
        ("GET", "/secret", 403, "ip.denied"),
        ("GET", "/secret/", 403, "ip.denied"),
        ("POST", "/secret//", 403, "ip.denied"),  # merged to /secret/ first
        ("GET", "/secret/./", 403, "ip.denied"),
        ("PROPFIND", "/dav/a", 200, ""),
        ("QUERY", "/dav/a", 200, ""),
        ("GET", "/dav/a", 405, "route.method_not_allowed"),
        ("PROPFIND", "/elsewhere", 200, ""),
        ("GET", "/secret/x", 200, ""),
        # Express, ASP.NET and IIS serve /ADMIN/x as /admin/x
        ("GET", "/ADMIN/users/1", 404, "route.not_found"),
        ("GET", "/Secret", 404, "route.not_found"),
        ("GET", "/%53ecret", 404, "route.not_found"),
        ("GET", "/Elsewhere", 200, ""),
    ],
)
def test_a_guard_route_cannot_be_reached_around(
    make_gateway: GatewayFactory, upstream: TestUpstream, method: str, path: str, status: int, why: str
) -> None:
    gw = make_gateway(CONFIG)
    response = gw.request(method, path, headers={"Content-Length": "0"})
    assert (response[0], reason(response) if status != 200 else "") == (status, why)
    if status == 405:
        assert "allow" in response[1]
    assert len(upstream.received) == (1 if status == 200 else 0)
    if status == 200:
        assert upstream.received[0].method == method


def test_case_insensitive_routing_applies_the_guard(make_gateway: GatewayFactory, upstream: TestUpstream) -> None:
    gw = make_gateway("limits: {case_insensitive_routing: true}\n" + CONFIG)
    assert reason(gw.request("GET", "/ADMIN/users/1")) == "ip.denied"
    assert reason(gw.request("PATCH", "/Admin/users/1", headers={"Content-Length": "0"})) == "route.method_not_allowed"
    assert gw.request("GET", "/SECRET/")[0] == 403
    assert upstream.received == []
