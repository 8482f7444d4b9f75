"""Reading an ASGI scope as a request head, and the scope the app receives."""

from __future__ import annotations

from typing import Any

import pytest

from stockade.asgi.scope import (
    INVALID_LENGTH,
    HeadFields,
    app_scope,
    http_scheme,
    peer_address,
    request_target,
    scope_headers,
)
from stockade.pipeline.runner import Pipeline
from stockade.security.netaddr import NetSet
from stockade.testing import make_context


@pytest.mark.parametrize(
    ("scope", "target"),
    [
        pytest.param({"raw_path": b"/a%2Fb", "path": "/a/b", "query_string": b"x=1"}, b"/a%2Fb?x=1", id="raw-path"),
        pytest.param({"raw_path": b"/a", "path": "/a", "query_string": b""}, b"/a", id="no-query"),
        pytest.param({"path": "/a b/\u00e9", "query_string": b""}, b"/a%20b/%C3%A9", id="no-raw-path-reencoded"),
        pytest.param({"raw_path": None, "path": "/a/../b"}, b"/a/../b", id="dots-kept-for-the-normaliser"),
    ],
)
def test_request_target(scope: dict[str, Any], target: bytes) -> None:
    assert request_target(scope) == target


@pytest.mark.parametrize(
    ("client", "peer"),
    [
        (("127.0.0.1", 5000), "127.0.0.1"),
        (["::ffff:10.0.0.1", 5000], "10.0.0.1"),
        (("2001:db8::1", 1), "2001:db8::1"),
        (None, ""),
        (("testclient", 50000), "testclient"),
    ],
)
def test_peer_address(client: Any, peer: str) -> None:
    assert peer_address({"client": client}) == peer


@pytest.mark.parametrize(("scheme", "http"), [("http", "http"), ("https", "https"), ("ws", "http"), ("wss", "https")])
def test_http_scheme(scheme: str, http: str) -> None:
    assert http_scheme({"scheme": scheme}) == http


@pytest.mark.parametrize(
    ("headers", "length"),
    [
        pytest.param([], None, id="none"),
        pytest.param([(b"content-length", b"12")], 12, id="one"),
        pytest.param([(b"Content-Length", b"12"), (b"content-length", b"12")], 12, id="repeated-same"),
        pytest.param([(b"content-length", b"12"), (b"content-length", b"13")], INVALID_LENGTH, id="conflicting"),
        pytest.param([(b"content-length", b"-1")], INVALID_LENGTH, id="negative"),
        pytest.param([(b"content-length", b"1e3")], INVALID_LENGTH, id="not-digits"),
        pytest.param([(b"content-length", b"0" * 5000 + b"5")], INVALID_LENGTH, id="5001-digits"),  # int() raised
        pytest.param([(b"content-length", b"0" * 19 + b"5")], INVALID_LENGTH, id="20-digits"),
        pytest.param([(b"content-length", b"0" * 18 + b"5")], 5, id="19-digits"),
    ],
)
def test_head_fields_content_length(headers: list[tuple[bytes, bytes]], length: int | None) -> None:
    assert HeadFields(headers).content_length == length


def test_head_fields_collects_what_intake_checks() -> None:
    fields = HeadFields(
        [
            (b"Host", b"a"),
            (b"host", b"b"),
            (b"X-Request-Id", b"first"),
            (b"x-request-id", b"second"),
            (b"X-Forwarded-For", b"1.1.1.1"),
            (b"x-forwarded-for", b"2.2.2.2"),
            (b"Expect", b"100-continue"),
        ]
    )
    assert fields.hosts == [b"a", b"b"]
    assert fields.request_id == b"first"
    assert fields.forwarded_for == [b"1.1.1.1", b"2.2.2.2"]
    assert fields.expect == b"100-continue"


def test_scope_headers_accepts_any_iterable() -> None:
    pairs = [(b"a", b"1")]
    assert scope_headers({"headers": iter(pairs)}) == pairs
    assert scope_headers({}) == []


def test_app_scope_is_a_copy_with_the_judged_path_and_edited_headers() -> None:
    ctx = make_context(path="/a/b", headers=[("x-stockade-principal", "evil"), ("accept", "*/*")])
    ext = {"http.response.pathsend": {}, "http.response.zerocopy": {}, "http.response.trailers": {}}
    scope = {"type": "http", "path": "//a/./b", "raw_path": b"//a/./b", "headers": ctx.headers.raw, "extensions": ext}
    pipeline = Pipeline("r", [], body_limit=1)
    out = app_scope(scope, ctx, pipeline, NetSet([]))
    assert (out["path"], out["raw_path"]) == ("/a/b", b"/a/b")
    assert out["headers"] == [(b"accept", b"*/*"), (b"x-request-id", b"test-request")]
    assert out["extensions"] is ext
    assert scope["path"] == "//a/./b"  # the server's scope is not changed
    hidden = app_scope(scope, ctx, pipeline, NetSet([]), hide_body_bypass=True)
    assert hidden["extensions"] == {"http.response.trailers": {}}  # hooks that need the body must see it
    assert len(ext) == 3


def test_app_scope_carries_the_query_a_stage_rewrote() -> None:
    """A credential a stage removed from the query (api_key `query_param`) must not reach the app either."""
    ctx = make_context(path="/a", query="api_key=stk_live_secret&page=2")
    ctx.replace_query("page=2")
    scope = {"type": "http", "path": "/a", "query_string": b"api_key=stk_live_secret&page=2", "headers": []}
    out = app_scope(scope, ctx, Pipeline("r", [], body_limit=1), NetSet([]))
    assert out["query_string"] == b"page=2"
    assert scope["query_string"] == b"api_key=stk_live_secret&page=2"


@pytest.mark.parametrize(
    ("peer", "trusted", "kept"),
    [("203.0.113.5", False, False), ("10.0.0.2", True, True)],
    ids=["untrusted-peer", "trusted-proxy"],
)
def test_app_scope_keeps_forwarding_headers_only_from_a_trusted_proxy(peer: str, trusted: bool, kept: bool) -> None:
    """An app written for the proxy front takes X-Forwarded-* for the gateway's own word: from an untrusted peer
    they steered its idea of the client, the host (tenant) and the scheme."""
    forged = [
        ("x-forwarded-for", "10.1.2.3"),
        ("x-forwarded-host", "admin.internal"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-prefix", "/evil"),
        ("x-real-ip", "10.1.2.3"),
        ("forwarded", "for=10.1.2.3"),
        ("x-forwarded-client-cert", 'Subject="CN=admin"'),
        ("x-ssl-client-verify", "SUCCESS"),
        ("x-forwarded-ssl", "on"),
        ("x-forwarded-protocol", "https"),
        ("front-end-https", "on"),
        ("true-client-ip", "10.1.2.3"),
        ("cf-connecting-ip", "10.1.2.3"),
        ("accept", "*/*"),
    ]
    ctx = make_context(path="/a", headers=forged, client_ip=peer, host="admin.internal")
    proxies = NetSet(["10.0.0.0/8"])
    assert (peer in proxies) is trusted
    scope = {"type": "http", "path": "/a", "headers": ctx.headers.raw}
    names = [n for n, _ in app_scope(scope, ctx, Pipeline("r", [], body_limit=1), proxies)["headers"]]
    for name in (
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"forwarded",
        b"x-real-ip",
        b"x-forwarded-client-cert",
        b"x-ssl-client-verify",
        b"x-forwarded-ssl",
        b"x-forwarded-protocol",
        b"front-end-https",
        b"true-client-ip",
        b"cf-connecting-ip",
    ):
        assert (name in names) is kept, name
    assert b"accept" in names


@pytest.mark.parametrize(
    ("name", "value", "kept"),
    [
        ("x-forwarded-host", "Admin.Internal:8443", True),
        ("x-forwarded-host", "www.example.com", False),
        ("x-forwarded-host", "admin.internal, www.example.com", False),
        ("forwarded", "for=10.1.2.3;host=www.example.com", False),
        ("forwarded", 'for=10.1.2.3;host="admin.internal"', True),
    ],
)
def test_a_trusted_proxy_cannot_name_another_host_than_the_one_routed(name: str, value: str, kept: bool) -> None:
    """A proxy that passes the client's value through (an AWS ALB does) let it pick the virtual host the app serves
    (Werkzeug's ProxyFix, Starlette's proxy-headers middleware) while the gateway applied the Host header's routes."""
    ctx = make_context(path="/a", headers=[(name, value)], client_ip="10.0.0.2", host="admin.internal")
    scope = {"type": "http", "path": "/a", "headers": ctx.headers.raw}
    out = app_scope(scope, ctx, Pipeline("r", [], body_limit=1), NetSet(["10.0.0.0/8"]))["headers"]
    assert ((name.encode(), value.encode()) in out) is kept
