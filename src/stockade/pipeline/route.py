"""A route as the request path reads it: built by `build_runtime` once per (re)load.

A native class when compiled (see `stockade.native`), so the proxy reads its fields as C struct members: as an
interpreted dataclass, each of the dozen reads per request was a generic attribute lookup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from stockade.config.models import Upstream
    from stockade.handlers.base import Handler
    from stockade.pipeline.runner import Pipeline


class CompiledRoute:
    """One configured route, ready for requests. Never changed after it is built (`Final`: mypy checks)."""

    __slots__ = (
        "connect_timeout",
        "handler",
        "id",
        "pipeline",
        "preserve_host",
        "read_timeout",
        "request_buffering",
        "upstream",
        "websocket",
    )

    def __init__(
        self,
        id: str,
        pipeline: Pipeline,
        upstream: Upstream | None,
        websocket: bool,
        handler: Handler | None = None,
        # The route's upstream timeouts and Host policy, copied off the pydantic model for the request path. They
        # belong to the route: routes with the same upstream URL share one connection pool, not these settings.
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        preserve_host: bool = False,
        request_buffering: bool = True,
    ) -> None:
        self.id: Final = id
        self.pipeline: Final = pipeline
        self.upstream: Final = upstream
        self.websocket: Final = websocket
        self.handler: Final = handler
        self.connect_timeout: Final = connect_timeout
        self.read_timeout: Final = read_timeout
        self.preserve_host: Final = preserve_host
        self.request_buffering: Final = request_buffering

    def __repr__(self) -> str:
        return f"CompiledRoute(id={self.id!r}, upstream={self.upstream!r}, websocket={self.websocket!r})"
