"""The demo API behind the `openapi` stage with `responses: enforce`: its leaky user endpoint (a DEMO FLAW)
stops leaking at the gateway, its honest responses pass byte for byte, and invalid requests never reach it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from stockade.testing import TestGateway
from tests.asgi.asgi_support import AsgiServer, raw_request, serving

from .demo_support import DEMO, load_script

api = load_script("stockade_demo_api", DEMO / "api.py")

CONFIG = f"""
routes:
  - id: demo
    match: {{path: "/**"}}
    upstream: "{{upstream}}"
    stages:
      - use: anonymous
      - use: openapi
        config: {{spec: "{DEMO / "openapi.yaml"}", responses: enforce}}
"""
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def demo() -> Iterator[tuple[TestGateway, AsgiServer]]:
    with serving(api.create_app()) as upstream:
        config = CONFIG.replace("{upstream}", f"http://127.0.0.1:{upstream.port}")
        with TestGateway(config, loop=upstream.bg) as gw:
            yield gw, upstream


def _direct(server: AsgiServer, method: str, target: str) -> tuple[int, bytes]:
    status, _, body = raw_request(server.port, method, target)
    return status, body


def test_leaky_user_endpoint_is_filtered_to_the_public_profile(demo: tuple[TestGateway, AsgiServer]) -> None:
    gw, upstream = demo
    _, leaked = _direct(upstream, "GET", "/users/1")
    assert {"email", "password_hash"} <= set(json.loads(leaked))  # the flaw is real
    status, _, body = gw.request("GET", "/users/1")
    assert status == 200
    assert set(json.loads(body)) == {"id", "username", "name", "role", "created_at"}


@pytest.mark.parametrize("target", ["/healthz", "/books?limit=3", "/books/1", "/users?limit=2", "/admin/stats"])
def test_honest_responses_pass_unchanged(demo: tuple[TestGateway, AsgiServer], target: str) -> None:
    gw, upstream = demo
    assert gw.request("GET", target)[::2] == _direct(upstream, "GET", target)


def test_invalid_requests_never_reach_the_api(demo: tuple[TestGateway, AsgiServer]) -> None:
    gw, upstream = demo
    before: Any = json.loads(_direct(upstream, "GET", "/admin/stats")[1])
    bad = [
        ("POST", "/books", b'{"isbn":"x","title":"T","author":"A","year":1,"price_cents":-1}'),
        ("POST", "/users", b'{"username":"eve","name":"Eve","email":"e@example.com","password":"x","role":"staff"}'),
        ("PATCH", "/books/1", b'{"isbn":"9780000000000"}'),
    ]
    for method, target, body in bad:
        status, _, _ = gw.request(method, target, headers=JSON, body=body)
        assert status == 422, target
    assert json.loads(_direct(upstream, "GET", "/admin/stats")[1]) == before
