"""security_headers: fingerprinting headers removed, hardening headers added, cache opt-out per route."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.clock import SYSTEM_CLOCK
from stockade.config.loader import load_config_text
from stockade.errors import ConfigError
from stockade.pipeline.context import RequestContext
from stockade.pipeline.response import Response
from stockade.pipeline.stage import Services, StageEnv
from stockade.stages.response.security_headers import SecurityHeaders, SecurityHeadersConfig
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


# head_edits, the proxy's fast path, must say exactly what on_response does: checked against it directly.
_LINES = st.sampled_from(
    [
        b"Server: nginx",
        b"X-Powered-By: PHP",
        b"X-Frame-Options: SAMEORIGIN",
        b"x-frame-options:DENY",
        b"X-Frame-Options-Report: prefix, not the header",
        b"Content-Security-Policy: default-src 'self'",
        b"CONTENT-SECURITY-POLICY \t: frame-ancestors 'self'",
        b"Strict-Transport-Security: max-age=1",
        b"Cache-Control: public",
        b"Content-Type: application/json",
    ]
)
_CONFIGS = [
    {},
    {"frame_options": None},
    {"cache_control": None, "content_security_policy": None},
    {"hsts": False, "remove": ["x-frame-options"]},
    {"frame_options": "SAMEORIGIN", "hsts_preload": True, "remove": []},
]
_STAGES = [
    SecurityHeaders(SecurityHeadersConfig(**c), StageEnv("r", Path("."), Services(clock=SYSTEM_CLOCK)))
    for c in _CONFIGS
]


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(_LINES, max_size=6),
    config=st.integers(0, len(_CONFIGS) - 1),
    scheme=st.sampled_from(["http", "https"]),
)
def test_head_edits_are_what_on_response_does(lines: list[bytes], config: int, scheme: str) -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"
    stage = _STAGES[config]  # shared across examples, so plans cached from other heads are checked too
    ctx = cast(RequestContext, SimpleNamespace(scheme=scheme))
    response = Response(200, raw_head=head)
    stage.on_response(ctx, response)
    assert stage.head_edits(ctx, head) == (frozenset(response.removed), tuple(response.added))


def test_an_upstream_cannot_strip_the_hardening_headers_by_naming_them_in_connection(
    make_gateway: GatewayFactory, upstream: TestUpstream
) -> None:
    """Connection-named fields are hop-by-hop: the upstream's X-Frame-Options so named never reaches the client,
    so the hook must not count it as present, and what the hook adds must not be dropped for the name."""
    named = [
        ("X-Frame-Options", "SAMEORIGIN"),
        ("Cache-Control", "public"),
        ("Connection", "x-frame-options, cache-control"),
    ]
    upstream.reply("/a/x", Reply(200, [*named, ("Content-Type", "application/json")], b"{}"))
    gw = make_gateway(CONFIG)
    status, headers, body = gw.request("GET", "/a/x")
    assert (status, body) == (200, b"{}")
    assert headers["x-frame-options"] == "DENY"  # ours; the upstream's was hop-by-hop
    assert headers["cache-control"] == "no-store"
    assert headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("name", ["x-€", "bad name", "x:y", ""])
def test_a_remove_entry_must_be_a_header_name(name: str) -> None:
    config = CONFIG.replace(
        "{use: security_headers}]", "{use: security_headers, config: {remove: [" + repr(name) + "]}}]"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(config.replace("{upstream}", "http://127.0.0.1:9"), source="gw.yaml", env={})
    assert "not a header field name" in str(info.value) and "remove" in str(info.value)
