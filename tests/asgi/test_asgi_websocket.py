"""WebSocket handshakes through StockadeMiddleware: judged by the pipeline, rejected with the proxy's problem."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.sync.client import connect

from stockade.asgi import StockadeMiddleware
from stockade.clock import FakeClock
from stockade.observability.decision_log import DecisionLog
from tests.asgi.asgi_apps import starlette_app
from tests.asgi.asgi_support import Served, config_text, direct_scope, problem, raw_request, serving

UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}


def _handshake(port: int, target: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A WebSocket upgrade request written by hand, so a rejection's status and body can be read."""
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    all_headers = {**UPGRADE, "Sec-WebSocket-Key": key, **(headers or {})}
    pairs = [(k, v) for k, v in all_headers.items() if k != "Connection"]
    pairs.append(("Connection", "Upgrade"))
    return raw_request(port, "GET", target, headers=pairs)


def test_allowed_websocket_reaches_app_with_gateway_identity(served: Served) -> None:
    rid = f"ws-ok-{served.flavor}"
    url = f"ws://127.0.0.1:{served.server.port}/ws"
    headers = {"X-Stockade-Principal": "admin", "X-Request-Id": rid}
    with connect(url, additional_headers=headers, proxy=None, open_timeout=10) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "echo:hello:anonymous"  # the client's claim to be "admin" was stripped
    line = served.decision(rid)
    assert (line["route"], line["decision"], line["status"]) == ("ws", "allow", 101)


@pytest.mark.parametrize(
    ("target", "headers", "status", "reason"),
    [
        pytest.param("/ws-denied", {}, 403, "ip.denied", id="pipeline-denies"),
        pytest.param("/ws-plain", {}, 403, "websocket.not_allowed", id="route-without-websocket-true"),
        pytest.param("/ws-nowhere", {}, 404, "route.not_found", id="unknown-route"),
        pytest.param("/ws/..%2fadmin", {}, 400, "http.bad_path", id="bad-path"),
    ],
)
def test_denied_handshake_rejected_with_problem(
    served: Served, target: str, headers: dict[str, str], status: int, reason: str
) -> None:
    got, resp_headers, body = _handshake(served.server.port, target, headers)
    assert got == status
    assert resp_headers["content-type"] == "application/problem+json"
    assert problem(body)["reason"] == reason


def test_handshake_allowed_via_trusted_proxy(served: Served) -> None:
    got, headers, _ = _handshake(served.server.port, "/ws-denied", {"X-Forwarded-For": "10.9.8.7"})
    assert got == 101
    assert headers["upgrade"].lower() == "websocket"


def test_denied_handshake_logged(served: Served) -> None:
    rid = f"ws-deny-{served.flavor}"
    _handshake(served.server.port, "/ws-denied", {"X-Request-Id": rid})
    line = served.decision(rid)
    assert (line["route"], line["decision"], line["reason"], line["stage"], line["status"]) == (
        "ws-denied",
        "deny",
        "ip.denied",
        "ip_filter",
        403,
    )


class _WithoutHttpResponseExtension:
    """Sits between uvicorn and the middleware like an older server: no `websocket.http.response` extension.

    It records what the middleware sends, so the close code can be checked.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sent: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            scope = {**scope, "extensions": {}}

        async def recording_send(message: Any) -> None:
            self.sent.append(dict(message))
            await send(message)

        await self.app(scope, receive, recording_send)


@pytest.fixture(scope="module")
def old_server(test_stages: None) -> Iterator[tuple[Any, _WithoutHttpResponseExtension]]:
    clock = FakeClock()
    mw = StockadeMiddleware(
        starlette_app(), config_text=config_text(), clock=clock, decision_log=DecisionLog("off", clock)
    )
    app = _WithoutHttpResponseExtension(mw)
    with serving(app) as server:
        yield server, app


def test_denied_handshake_closed_with_policy_violation_without_extension(
    old_server: tuple[Any, _WithoutHttpResponseExtension],
) -> None:
    server, app = old_server
    app.sent.clear()
    got, _, body = _handshake(server.port, "/ws-denied")
    assert got == 403  # what the server answers an app that closes before accepting
    assert b"ip.denied" not in body
    assert app.sent == [{"type": "websocket.close", "code": 1008}]


def test_allowed_handshake_unchanged_without_extension(old_server: tuple[Any, _WithoutHttpResponseExtension]) -> None:
    server, _ = old_server
    with connect(f"ws://127.0.0.1:{server.port}/ws", proxy=None, open_timeout=10) as ws:
        ws.send("x")
        assert ws.recv(timeout=10) == "echo:x:anonymous"


def test_an_accepted_websocket_holds_its_concurrency_slot_until_it_closes() -> None:
    """The slot was released at `websocket.accept`: any number of WebSockets passed a concurrency limit of one."""
    import asyncio

    from stockade.asgi import StockadeMiddleware
    from stockade.clock import FakeClock
    from stockade.observability.decision_log import DecisionLog

    config = (
        "routes:\n  - id: ws\n    match: {path: /ws}\n    websocket: true\n    stages:\n      - use: anonymous\n"
        "      - use: rate_limit\n        config: {limits: [{concurrency: 1, key: ip}]}\n"
    )

    async def main() -> list[str]:
        release = asyncio.Event()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            await release.wait()
            await send({"type": "websocket.close", "code": 1000})

        mw = StockadeMiddleware(app, config_text=config, decision_log=DecisionLog("off", FakeClock()))

        async def session(outcomes: list[str]) -> None:
            scope = direct_scope("websocket", "/ws", [(b"host", b"a")])
            pending = [{"type": "websocket.connect"}]

            async def receive() -> dict[str, Any]:
                if pending:
                    return pending.pop(0)
                await asyncio.Event().wait()  # the client stays connected
                return {}

            async def send(message: dict[str, Any]) -> None:
                if message["type"] in ("websocket.accept", "websocket.close"):
                    outcomes.append(message["type"])

            await mw(scope, receive, send)

        outcomes: list[str] = []
        first = asyncio.create_task(session(outcomes))
        await asyncio.sleep(0.05)
        await asyncio.wait_for(session(outcomes), 5)  # refused at once: the slot is taken
        release.set()
        await asyncio.wait_for(first, 5)
        release.clear()
        third = asyncio.create_task(session(outcomes))
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.wait_for(third, 5)
        return outcomes

    assert asyncio.run(main()) == [
        "websocket.accept",  # first
        "websocket.close",  # second: refused (no extension: policy-violation close)
        "websocket.close",  # first ends
        "websocket.accept",  # third: the slot is free again
        "websocket.close",
    ]
