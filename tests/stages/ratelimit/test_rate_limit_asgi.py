"""The limiter behind the ASGI middleware: same answers and headers as the proxy, slots released."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from stockade.asgi import StockadeMiddleware
from stockade.clock import FakeClock
from stockade.ratelimit.backend import SHARED_KEY
from tests.stages.ratelimit.sfv import parse_list

CONFIG = """
routes:
  - id: items
    match: {path: /items}
    stages:
      - use: anonymous
      - use: rate_limit
        config: {limits: [{name: rate, rate: "2/minute", key: ip}, {name: inflight, concurrency: 5, key: ip}]}
"""


async def items(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def test_asgi_limits_with_headers_and_releases_slots() -> None:
    app = StockadeMiddleware(Starlette(routes=[Route("/items", items)]), config_text=CONFIG, clock=FakeClock())

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.4", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return [await client.get("/items") for _ in range(3)]

    first, _, refused = asyncio.run(go())
    assert first.status_code == 200
    assert parse_list(first.headers["ratelimit"]) == {"rate": {"r": 1, "t": 30}, "inflight": {"r": 4}}
    assert refused.status_code == 429 and refused.headers["retry-after"] == "30"
    assert refused.json()["reason"] == "rate_limit.exceeded"
    assert app.services.shared[SHARED_KEY]._conc == {}  # every slot came back
