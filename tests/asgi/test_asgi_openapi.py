"""The `openapi` stage in StockadeMiddleware: the same errors list, response filtering and 502 as the proxy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stockade.asgi import StockadeMiddleware
from stockade.clock import FakeClock
from stockade.observability.decision_log import DecisionLog
from tests.asgi.asgi_support import AsgiServer, direct_scope, raw_request, serving

SPEC = Path(__file__).resolve().parents[1] / "openapi" / "specs" / "petstore.yaml"
OWNER = "/v1/owners/9b2f3c1e-8d4a-4b6e-9f0a-1c2d3e4f5a6b"
CONFIG = f"""
routes:
  - id: pets
    match: {{path: "/v1/**"}}
    stages:
      - use: anonymous
      - use: openapi
        config: {{spec: "{SPEC}", responses: enforce}}
"""
REPLIES: dict[str, Any] = {}


async def owner(request: Request) -> Response:
    return Response(orjson.dumps(REPLIES["owner"]), media_type="application/json")


async def create(request: Request) -> Response:
    return Response(await request.body(), status_code=201, media_type="application/json")


@pytest.fixture(scope="module")
def server() -> Iterator[AsgiServer]:
    app = Starlette(routes=[Route(OWNER, owner), Route("/v1/pets", create, methods=["POST"])])
    mw = StockadeMiddleware(app, config_text=CONFIG, decision_log=DecisionLog("off", FakeClock()))
    with serving(mw) as srv:
        yield srv


def _request(server: AsgiServer, method: str, target: str, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    status, _, raw = raw_request(server.port, method, target, headers=headers, body=body)
    return status, orjson.loads(raw) if raw else {}


def test_invalid_request_lists_pointers_and_rules(server: AsgiServer) -> None:
    status, doc = _request(server, "POST", "/v1/pets", b'{"name":"Rex","weight":-1}')
    assert (status, doc["reason"]) == (422, "openapi.invalid_request")
    assert doc["errors"] == [{"pointer": "/body/weight", "rule": "exclusiveMinimum"}]


def test_response_is_filtered(server: AsgiServer) -> None:
    REPLIES["owner"] = {"email": "a@example.com", "password": "hunter2hunter2", "ssn": "078-05-1120"}
    status, doc = _request(server, "GET", OWNER)
    assert (status, doc) == (200, {"email": "a@example.com"})


def test_unrepairable_response_is_502(server: AsgiServer) -> None:
    REPLIES["owner"] = {"email": 42, "password": "hunter2hunter2"}
    status, doc = _request(server, "GET", OWNER)
    assert (status, doc["reason"]) == (502, "response.invalid")


@pytest.mark.parametrize("http_version", ["2", "3"])
def test_http2_bodies_are_validated_without_framing_headers(http_version: str) -> None:
    """HTTP/2 and 3 carry a body in DATA frames with neither Content-Length nor Transfer-Encoding: the stages
    once took such a request for bodiless and passed any body through unchecked."""
    import asyncio

    seen: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        seen.append(message.get("body", b""))
        await send({"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"id":1,"name":"Rex"}'})  # the pet as created

    mw = StockadeMiddleware(app, config_text=CONFIG, decision_log=DecisionLog("off", FakeClock()))

    async def call(body: bytes) -> int:
        headers = [(b"host", b"api.example"), (b"content-type", b"application/json")]
        https = {"scheme": "https", "server": ("192.0.2.2", 443)}
        scope = direct_scope("http", "/v1/pets", headers, http_version=http_version, method="POST", **https)
        pending = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            return pending.pop(0) if pending else {"type": "http.disconnect"}

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await mw(scope, receive, send)
        return next(int(m["status"]) for m in sent if m["type"] == "http.response.start")

    assert asyncio.run(call(b'{"name":"Rex","weight":-1}')) == 422
    assert seen == []
    assert asyncio.run(call(b'{"name":"Rex"}')) == 201
    assert seen == [b'{"name":"Rex"}']
