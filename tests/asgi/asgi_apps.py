"""The apps behind the middleware: the same endpoints as a Starlette app and as a FastAPI app."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from stockade.asgi import StockadeMiddleware

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


async def _describe(request: Request) -> JSONResponse:
    body = await request.body()
    scope = request.scope
    doc = {
        "method": request.method,
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "query": scope["query_string"].decode("latin-1"),
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        "body_len": len(body),
    }
    return JSONResponse(doc, headers={"x-powered-by": "test-app", "server": "test-app"})


async def _stream(request: Request) -> StreamingResponse:
    async def chunks() -> Any:
        for part in (b"one ", b"two ", b"three"):
            yield part

    return StreamingResponse(chunks(), media_type="text/plain")


async def _crash(request: Request) -> JSONResponse:
    raise RuntimeError("app bug")


async def _huge(request: Request) -> StreamingResponse:
    async def chunks() -> Any:
        for _ in range(17):
            yield b"h" * (1024 * 1024)

    return StreamingResponse(chunks(), media_type="text/plain")


async def _ws(websocket: WebSocket) -> None:
    await websocket.accept()
    text = await websocket.receive_text()
    principal = websocket.headers.get("x-stockade-principal", "")
    await websocket.send_text(f"echo:{text}:{principal}")
    await websocket.close()


class RawEarly:
    """A plain ASGI endpoint that starts its response before reading the body: an oversized upload can then
    only be cut off."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"started ", "more_body": True})
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            total += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.body", "body": b"read %d" % total, "more_body": False})


def starlette_app() -> Starlette:
    return Starlette(
        routes=[
            WebSocketRoute("/ws", _ws),
            WebSocketRoute("/ws-plain", _ws),
            WebSocketRoute("/ws-denied", _ws),
            Route("/raw/early", RawEarly(), methods=["POST"]),
            Route("/shout/stream", _stream),
            Route("/shout/huge", _huge),
            Route("/public/crash", _crash),
            Route("/{path:path}", _describe, methods=ALL_METHODS),
        ]
    )


def fastapi_app() -> FastAPI:
    api = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    api.add_api_websocket_route("/ws", _ws)
    api.add_api_websocket_route("/ws-plain", _ws)
    api.add_api_websocket_route("/ws-denied", _ws)
    api.add_route("/raw/early", RawEarly(), methods=["POST"])

    api.add_api_route("/shout/stream", _stream)
    api.add_api_route("/shout/huge", _huge)
    api.add_api_route("/public/crash", _crash)

    @api.api_route("/{path:path}", methods=ALL_METHODS)
    async def describe(request: Request) -> JSONResponse:
        return await _describe(request)

    return api


def find_middleware(app: Any) -> StockadeMiddleware:
    """The middleware instance Starlette built from `add_middleware` (its stack exists after lifespan startup)."""
    node = getattr(app, "middleware_stack", None) or app
    while not isinstance(node, StockadeMiddleware):
        node = node.app
    return node
