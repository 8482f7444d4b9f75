"""The intake every front shares: head checks, the context, routing and the declared body limit."""

from __future__ import annotations

from typing import Any

import pytest

from stockade.clock import FakeClock
from stockade.config.loader import load_config_text
from stockade.pipeline.context import RequestContext
from stockade.pipeline.intake import (
    COMMON_METHODS,
    RequestIds,
    bare_context,
    body_too_large,
    common_method,
    method_name,
    parse_host,
    request_context,
    route_request,
    valid_request_id,
)
from stockade.pipeline.stage import Services
from stockade.pipeline.verdict import Deny
from stockade.runtime import build_runtime
from stockade.security.netaddr import NetSet

TRUSTED = NetSet(["10.0.0.1/32"])
IDS = RequestIds()


def _context(**overrides: Any) -> RequestContext | Deny:
    kw: dict[str, Any] = {
        "method": b"GET",
        "target": b"/items?a=1",
        "version": "1.1",
        "headers": [(b"Host", b"api.example.com")],
        "hosts": [b"api.example.com"],
        "expect": None,
        "request_id": None,
        "forwarded_for": [],
        "peer_ip": "192.0.2.1",
        "trusted_proxies": TRUSTED,
        "scheme": "http",
        "clock": FakeClock(),
        "started": 5.0,
        "new_id": IDS,
    }
    kw.update(overrides)
    hosts = kw.pop("hosts")  # the table says the Host values; the function takes the first and their count
    return request_context(**kw, host_value=hosts[0] if hosts else None, host_count=len(hosts))


@pytest.mark.parametrize(
    ("overrides", "status", "reason"),
    [
        pytest.param({"method": b"CONNECT"}, 405, "http.method_not_allowed", id="connect"),
        pytest.param({"hosts": [b"a", b"b"]}, 400, "http.bad_host", id="two-hosts"),
        pytest.param({"hosts": [b"a b"]}, 400, "http.bad_host", id="space-in-host"),
        pytest.param({"hosts": [b"[::1"]}, 400, "http.bad_host", id="unclosed-ipv6"),
        pytest.param({"hosts": []}, 400, "http.bad_host", id="http11-without-host"),
        pytest.param({"target": b"http://evil/x"}, 400, "http.bad_target", id="absolute-form"),
        pytest.param({"target": b"/a#frag"}, 400, "http.bad_target", id="fragment"),
        pytest.param({"target": b"/a/..%2fb"}, 400, "http.bad_path", id="encoded-slash"),
        pytest.param({"target": b"/..;/b"}, 400, "http.bad_path", id="dotdot-semicolon"),
        pytest.param({"expect": b"200-ok"}, 417, "http.expectation_failed", id="unknown-expect"),
    ],
)
def test_bad_head_denied_with_stable_reason(overrides: dict[str, Any], status: int, reason: str) -> None:
    result = _context(**overrides)
    assert isinstance(result, Deny)
    assert (result.status, result.reason) == (status, reason)
    assert result.detail  # for the decision log


@pytest.mark.parametrize(
    ("overrides", "host", "path", "raw_path", "query"),
    [
        pytest.param({}, "api.example.com", "/items", "/items", "a=1", id="plain"),
        pytest.param(
            {"hosts": [b"API.Example.com.:8443"]}, "api.example.com", "/items", "/items", "a=1", id="host-norm"
        ),
        pytest.param({"hosts": [b"[::1]:80"]}, "::1", "/items", "/items", "a=1", id="ipv6-host"),
        pytest.param({"hosts": [], "version": "1.0"}, "", "/items", "/items", "a=1", id="http10-without-host"),
        pytest.param({"hosts": [], "version": "2"}, "", "/items", "/items", "a=1", id="http2-without-host"),
        pytest.param({"target": b"//a/./b/../c%20d"}, "api.example.com", "/a/c d", "/a/c%20d", "", id="normalised"),
        pytest.param({"expect": b"100-Continue"}, "api.example.com", "/items", "/items", "a=1", id="expect-continue"),
    ],
)
def test_context_built(overrides: dict[str, Any], host: str, path: str, raw_path: str, query: str) -> None:
    ctx = _context(**overrides)
    assert isinstance(ctx, RequestContext)
    assert (ctx.host, ctx.path, ctx.raw_path, ctx.query) == (host, path, raw_path, query)
    assert ctx.started == 5.0


@pytest.mark.parametrize(
    ("method", "name"),
    [
        *[(m.encode(), m) for m in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")],
        (b"PROPFIND", "PROPFIND"),
        (b"get", "get"),  # llhttp refuses it; the name is the bytes as they are, never another method's
        (b"GETX", "GETX"),
        (b"", ""),
        (b"G\xffT", "G\ufffdT"),
    ],
)
def test_method_name(method: bytes, name: str) -> None:
    assert method_name(method) == name
    assert common_method(bytes(method)) == method
    if method in {raw for raw, _ in COMMON_METHODS}:  # one object, whichever request's bytes it came from
        assert common_method(bytes(method)) is common_method(bytes(method))
    ctx = _context(method=method)
    assert isinstance(ctx, RequestContext) and ctx.method == name


@pytest.mark.parametrize(
    ("peer", "xff", "client"),
    [
        pytest.param("192.0.2.1", [b"203.0.113.5"], "192.0.2.1", id="untrusted-peer-xff-ignored"),
        pytest.param("10.0.0.1", [b"203.0.113.5"], "203.0.113.5", id="trusted-peer-xff-used"),
        pytest.param("10.0.0.1", [b"203.0.113.5, 10.0.0.1"], "203.0.113.5", id="trusted-hops-skipped"),
        pytest.param("10.0.0.1", [b"1.1.1.1", b"203.0.113.5"], "203.0.113.5", id="several-headers"),
        pytest.param("10.0.0.1", [b"garbage"], "10.0.0.1", id="garbage-hop"),
        pytest.param("10.0.0.1", [], "10.0.0.1", id="trusted-peer-no-xff"),
    ],
)
def test_client_ip_from_trusted_proxies_only(peer: str, xff: list[bytes], client: str) -> None:
    ctx = _context(peer_ip=peer, forwarded_for=xff)
    assert isinstance(ctx, RequestContext)
    assert (ctx.client_ip, ctx.peer_ip) == (client, peer)


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        pytest.param(b"abc-123", True, id="plain"),
        pytest.param(b"a.b:c_d-e", True, id="punctuation"),
        pytest.param(b"x" * 128, True, id="max-length"),
        pytest.param(b"x" * 129, False, id="too-long"),
        pytest.param(b"a b", False, id="space"),
        pytest.param(b"a\xffb", False, id="non-ascii"),
        pytest.param(b"", False, id="empty"),
    ],
)
def test_request_id_kept_only_when_valid(sent: bytes, kept: bool) -> None:
    assert valid_request_id(sent) is kept
    ctx = _context(request_id=sent)
    assert isinstance(ctx, RequestContext)
    assert (ctx.request_id == sent.decode("latin-1")) is kept


def test_generated_request_ids_are_unique_and_valid() -> None:
    ids = RequestIds()
    made = {ids.make() for _ in range(1000)}
    assert len(made) == 1000
    assert all(valid_request_id(i.encode()) for i in made)
    assert all(i.isascii() and i.isalnum() for i in made)  # the decision log's fast path


def test_bare_context_never_trusts_the_client_request_id() -> None:
    ctx = bare_context(
        method=b"G\xffT",
        version="1.1",
        headers=[(b"X-Request-Id", b"client-id")],
        peer_ip="192.0.2.9",
        scheme="https",
        clock=FakeClock(),
        started=1.0,
        new_id=IDS,
    )
    assert ctx.request_id != "client-id"
    assert (ctx.path, ctx.client_ip, ctx.method) == ("", "192.0.2.9", "G\ufffdT")


@pytest.mark.parametrize(
    "host", ["bad host", "a:b:c", "x:999999", ".admin.example.com", "admin..example.com", "admin.example.com..", "."]
)
def test_parse_host_rejects_malformed(host: str) -> None:
    assert parse_host(host.encode()) is None


ROUTES = """
limits: {max_body_bytes: 1000}
routes:
  - id: items
    match: {path: "/items/{id}", methods: [GET]}
    stages: [{use: anonymous}]
  - id: upload
    match: {path: "/upload", methods: [POST]}
    stages: [{use: anonymous}, {use: request_size, config: {max_bytes: 10}}]
"""


@pytest.fixture(scope="module")
def runtime() -> Any:
    loaded = load_config_text(ROUTES, require_upstreams=False, env={})
    return build_runtime(loaded, Services(clock=FakeClock()))


@pytest.mark.parametrize(
    ("method", "target", "outcome"),
    [
        pytest.param("GET", b"/items/7", ("items", {"id": "7"}), id="match-with-param"),
        pytest.param("HEAD", b"/items/7", ("items", {"id": "7"}), id="head-follows-get"),
        pytest.param("GET", b"/nope", (404, "route.not_found", None), id="unknown"),
        pytest.param("DELETE", b"/items/7", (405, "route.method_not_allowed", "GET, HEAD"), id="wrong-method"),
    ],
)
def test_route_request(runtime: Any, method: str, target: bytes, outcome: tuple[Any, ...]) -> None:
    ctx = _context(method=method.encode(), target=target)
    assert isinstance(ctx, RequestContext)
    result = route_request(runtime, ctx)
    if isinstance(result, Deny):
        status, reason, allow = outcome
        assert (result.status, result.reason) == (status, reason)
        assert (result.headers or {}).get("allow") == allow
        assert (ctx.decision, ctx.reason, ctx.stage, ctx.status) == ("deny", reason, "router", status)
    else:
        assert (result.id, ctx.route_id, ctx.path_params) == (outcome[0], outcome[0], outcome[1])
        assert ctx.decision == "allow"


@pytest.mark.parametrize(("route_id", "stage", "limit"), [("upload", "request_size", 10), ("items", "limits", 1000)])
def test_body_too_large_names_the_stage_that_set_the_limit(runtime: Any, route_id: str, stage: str, limit: int) -> None:
    ctx = _context()
    assert isinstance(ctx, RequestContext)
    deny = body_too_large(runtime.routes[route_id].pipeline, ctx)
    assert (deny.status, deny.reason) == (413, "request.body_too_large")
    assert (ctx.decision, ctx.stage, ctx.detail) == ("deny", stage, f"body exceeds {limit} bytes")


@pytest.mark.parametrize(
    "order",
    [
        [b"a.example", b"a.example", b"B.example:80", b"a..b", b"a.example", b"a..b", b"a..b"],
        [b"x", b"", b"x", b"[::1]", b"X.", b"x"],
    ],
    ids=["switch-and-malformed", "empty-ipv6-case"],
)
def test_parse_host_answers_each_value_whatever_came_before(order: list[bytes]) -> None:
    """The last value parsed is remembered: the next, if different, must get its own answer."""
    expected = {b"a.example": "a.example", b"B.example:80": "b.example", b"a..b": None, b"x": "x", b"": ""}
    expected |= {b"[::1]": "::1", b"X.": "x"}
    assert [parse_host(bytes(v)) for v in order] == [expected[v] for v in order]
