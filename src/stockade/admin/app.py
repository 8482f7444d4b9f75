"""The admin ASGI app: /metrics, /healthz and /readyz (a framework is fine here: it is not the data plane)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stockade.observability.metrics import Snapshot, SnapshotCollector


@dataclass
class AdminState:
    """What the admin app reads: a metrics snapshot source and a readiness check."""

    snapshot: Callable[[], Snapshot]
    ready: Callable[[], bool]


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

    return Starlette(
        routes=[
            Route("/metrics", metrics),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
        ]
    )
