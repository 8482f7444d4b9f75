"""Response bodies the middleware buffers for hooks: bounded per process as the proxy bounds them per worker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from stockade.asgi import StockadeMiddleware
from stockade.stages import BUILTIN_STAGES
from tests.asgi.asgi_stages import TEST_STAGES
from tests.asgi.asgi_support import direct_scope

CONFIG = """
limits: {response_buffer_total_bytes: 65536}
routes:
  - id: hooked
    match: {path: /**}
    stages: [{use: anonymous}, {use: test_upper}]
"""
PART = b"x" * 40_000
TAIL = b"y" * 1000


@pytest.fixture(autouse=True)
def upper_hook(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(BUILTIN_STAGES, "test_upper", TEST_STAGES["test_upper"])
    yield


class Apps:
    """`/slow` sends half its body and waits for `go`; `/small` sends its whole body at once; `/boom` raises
    after half its body; `/background` sends its whole body, then works on (a Starlette BackgroundTask) until `go`;
    `/big` sends more than the budget, then works on until `go`."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.halfway = asyncio.Event()
        self.sent = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        if path == "/small":
            await send({"type": "http.response.body", "body": PART})
            return
        if path in ("/background", "/big"):
            await send({"type": "http.response.body", "body": PART, "more_body": path == "/big"})
            if path == "/big":
                await send({"type": "http.response.body", "body": PART})  # refused: over the budget
            self.sent.set()
            await self.go.wait()
            return
        await send({"type": "http.response.body", "body": PART, "more_body": True})
        self.halfway.set()
        if path == "/boom":
            raise RuntimeError("the app failed mid-body")
        await self.go.wait()
        await send({"type": "http.response.body", "body": TAIL})


async def call(mw: StockadeMiddleware, path: str) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    try:
        await mw(direct_scope("http", path), receive, send)
    except RuntimeError:
        pass  # /boom: the middleware re-raises the app's error after recording it
    status = next((int(m["status"]) for m in sent if m["type"] == "http.response.start"), 0)
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_a_process_holds_at_most_its_response_buffer_budget() -> None:
    apps = Apps()
    mw = StockadeMiddleware(apps, config_text=CONFIG)

    async def scenario() -> None:
        slow = asyncio.create_task(call(mw, "/slow"))
        await apps.halfway.wait()
        assert mw.buffered == len(PART)  # half a body held while the hook waits for the rest

        status, body = await call(mw, "/small")  # 40 KB more would pass the 64 KiB budget
        assert (status, orjson.loads(body)["reason"]) == (503, "gateway.busy")
        assert mw.buffered == len(PART)  # the refused exchange gave back what it had taken

        apps.go.set()
        assert await slow == (200, (PART + TAIL).upper() + b"!")
        assert mw.buffered == 0
        assert await call(mw, "/small") == (200, PART.upper() + b"!")  # room again
        assert mw.buffered == 0

    asyncio.run(scenario())


def test_an_app_that_fails_mid_body_gives_its_buffer_back() -> None:
    mw = StockadeMiddleware(Apps(), config_text=CONFIG)

    async def scenario() -> None:
        status, _ = await call(mw, "/boom")
        assert status == 0  # nothing was sent: the hook never saw a whole body, the server answers 500
        assert mw.buffered == 0

    asyncio.run(scenario())


@pytest.mark.parametrize("path", ["/background", "/big"], ids=["body-sent", "body-refused"])
def test_a_buffer_is_given_back_when_its_response_is_answered_not_when_the_app_returns(path: str) -> None:
    apps = Apps()
    mw = StockadeMiddleware(apps, config_text=CONFIG)

    async def scenario() -> None:
        task = asyncio.create_task(call(mw, path))
        await apps.sent.wait()
        assert mw.buffered == 0  # the response went out; the app's background work holds nothing
        assert (await call(mw, "/small"))[0] == 200  # so no other request is refused as busy meanwhile
        apps.go.set()
        await task
        assert mw.buffered == 0  # and nothing is given back twice

    asyncio.run(scenario())
