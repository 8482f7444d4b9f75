"""The admin ASGI app: /metrics, /healthz and /readyz, plus the admin API endpoints features contribute.

A framework is fine here: this is the control plane, not the data plane. Feature modules listed in
`ADMIN_MODULES` each expose `endpoints(state) -> list[AdminEndpoint]`; every endpoint declares the minimum
role it needs (viewer < operator < admin), which the admin authentication enforces.
"""

from __future__ import annotations

import importlib
import ipaddress
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from stockade.admin.ready import Readiness
from stockade.observability.metrics import Snapshot, SnapshotCollector
from stockade.pipeline.render import problem_body, problem_headers

Role = Literal["viewer", "operator", "admin"]
ROLE_RANK: dict[str, int] = {"viewer": 0, "operator": 1, "admin": 2}

# Modules that contribute admin endpoints (explicit, like the stage registry).
ADMIN_MODULES: list[str] = [
    "stockade.admin.identity:endpoints",
    "stockade.admin.clients:endpoints",
    "stockade.admin.lockouts:endpoints",
]
# Middleware factories that wrap the admin app (admin authentication registers itself here).
ADMIN_MIDDLEWARE: list[str] = ["stockade.admin.auth:middleware"]


@dataclass(frozen=True)
class AdminEndpoint:
    path: str
    endpoint: Callable[[Request], Awaitable[Response]]
    methods: tuple[str, ...]
    role: Role  # minimum role allowed to call it


@dataclass
class AdminState:
    """What the admin app reads: a metrics snapshot source, readiness, and shared services."""

    snapshot: Callable[[], Snapshot]
    ready: Callable[[], bool]  # serving: workers up, not draining
    services: Any = None  # stockade.pipeline.stage.Services of this process (stores live in services.shared)
    needs: Callable[[], Mapping[str, bool]] = dict  # the current config's backends (Runtime.needs), for /readyz
    extra: dict[str, Any] = field(default_factory=dict)


async def refuse(scope: Scope, send: Send, status: int, reason: str, headers: Mapping[str, str] | None = None) -> None:
    """Answer a request with a problem before the app sees it. A WebSocket handshake gets the same HTTP response
    instead of an accept (the ASGI denial-response extension), or where the server lacks it a close (403)."""
    body = problem_body(status, reason, "admin")
    raw = [(k.encode(), v.encode()) for k, v in problem_headers(len(body), headers)]
    prefix = ""
    if scope["type"] == "websocket":
        if "websocket.http.response" not in (scope.get("extensions") or {}):
            await send({"type": "websocket.close", "code": 1008})
            return
        prefix = "websocket."
    await send({"type": prefix + "http.response.start", "status": status, "headers": raw})
    await send({"type": prefix + "http.response.body", "body": body})


class HostGuard:
    """Answers only requests whose Host is an IP literal, `localhost` or a configured `admin.allowed_hosts` name:
    a page on evil.example that resolves to 127.0.0.1 (DNS rebinding) gets 421, not the metrics or the API. WebSocket
    handshakes too: a rebound page can open a WebSocket as easily as it can fetch."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not self._ok(scope):
            await refuse(scope, send, 421, "admin.bad_host")
            return
        await self.app(scope, receive, send)

    def _ok(self, scope: Scope) -> bool:
        hosts = [v for k, v in scope["headers"] if k == b"host"]
        if len(hosts) != 1:
            return len(hosts) == 0 and scope.get("http_version") == "1.0"
        m = _HOST.fullmatch(hosts[0].decode("latin-1").strip().lower())
        if m is None:  # `[::1]evil`, `a, b`, a zone id, an unbracketed v6 literal: not a Host a browser sends
            return False
        name = m.group(1) or m.group(2)
        if name == "localhost" or name in self.allowed:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True


# `[v6]` or a name / IPv4 literal, then an optional port; nothing else.
_HOST = re.compile(r"(?:\[([0-9a-f:.]+)\]|([a-z0-9._-]+))(?::[0-9]{1,5})?")  # `_`: container names


def _load(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr or "endpoints")


def admin_app(state: AdminState) -> Starlette:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(state.snapshot))

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    readiness = Readiness(state.ready, state.needs, state.services)

    async def readyz(request: Request) -> Response:
        ready, checks = await readiness.check()
        if ready:
            return JSONResponse({"status": "ready", "checks": checks})
        return JSONResponse({"status": "not ready", "checks": checks}, status_code=503)

    routes = [Route("/metrics", metrics), Route("/healthz", healthz), Route("/readyz", readyz)]
    endpoints: list[AdminEndpoint] = []
    for target in ADMIN_MODULES:
        endpoints.extend(_load(target)(state))
    routes += [Route(e.path, e.endpoint, methods=list(e.methods)) for e in endpoints]
    middleware = [_load(target)(state, endpoints) for target in ADMIN_MIDDLEWARE]
    config = getattr(state.services, "config", None)
    allowed = frozenset(h.lower() for h in (config.admin.allowed_hosts if config is not None else ()))
    guard = Middleware(HostGuard, allowed=allowed)
    app = Starlette(routes=routes, middleware=[guard, *(m for m in middleware if isinstance(m, Middleware))])
    app.state.admin = state
    app.state.endpoints = endpoints
    return app
