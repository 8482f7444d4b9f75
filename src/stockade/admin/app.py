"""The admin ASGI app: /metrics, /healthz and /readyz, plus the admin API endpoints features contribute.

A framework is fine here: this is the control plane, not the data plane. Feature modules listed in
`ADMIN_MODULES` each expose `endpoints(state) -> list[AdminEndpoint]`; every endpoint declares the minimum
role it needs (viewer < operator < admin), which the admin authentication enforces.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stockade.observability.metrics import Snapshot, SnapshotCollector

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
    """What the admin app reads: a metrics snapshot source, a readiness check, and shared services."""

    snapshot: Callable[[], Snapshot]
    ready: Callable[[], bool]
    services: Any = None  # stockade.pipeline.stage.Services of this process (stores live in services.shared)
    extra: dict[str, Any] = field(default_factory=dict)


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

    async def readyz(request: Request) -> Response:
        if state.ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready"}, status_code=503)

    routes = [Route("/metrics", metrics), Route("/healthz", healthz), Route("/readyz", readyz)]
    endpoints: list[AdminEndpoint] = []
    for target in ADMIN_MODULES:
        endpoints.extend(_load(target)(state))
    routes += [Route(e.path, e.endpoint, methods=list(e.methods)) for e in endpoints]
    middleware = [_load(target)(state, endpoints) for target in ADMIN_MIDDLEWARE]
    app = Starlette(routes=routes, middleware=[m for m in middleware if isinstance(m, Middleware)])
    app.state.admin = state
    app.state.endpoints = endpoints
    return app
