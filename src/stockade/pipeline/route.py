"""The compiled config as the request path reads it: the Runtime and its routes, built by `build_runtime`.

Native classes when compiled (see `stockade.native`), so the proxy reads their fields as C struct members: as
interpreted dataclasses, each of the twenty-odd reads per request was a generic attribute lookup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Mapping

    from stockade.config.loader import LoadedConfig
    from stockade.config.models import GatewayConfig, Upstream
    from stockade.handlers.base import Handler
    from stockade.pipeline.routing import Router
    from stockade.pipeline.runner import Pipeline
    from stockade.pipeline.stage import Services
    from stockade.proxy.tls import TlsContexts
    from stockade.security.netaddr import NetSet


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


class Runtime:
    """Everything the request path needs, built once per (re)load. Requests hold the one they started with; it is
    never changed after it is built (`Final`: mypy checks)."""

    __slots__ = (
        "decision_log",
        "loaded",
        "needs",
        "path_parameters",
        "router",
        "routes",
        "services",
        "tls",
        "trusted_proxies",
    )

    def __init__(
        self,
        loaded: LoadedConfig,
        router: Router,
        routes: dict[str, CompiledRoute],
        trusted_proxies: NetSet,
        services: Services,
        *,
        decision_log: str,  # stdout | stderr | off | an absolute path (resolved against the config's dir)
        tls: TlsContexts,  # listener and upstream contexts, loaded with the config
        path_parameters: bool,  # limits.path_parameters: ';' allowed in request paths
        needs: Mapping[str, bool],  # backends this config uses (Services.needs): /readyz
    ) -> None:
        self.loaded: Final = loaded
        self.router: Final = router
        self.routes: Final = routes
        self.trusted_proxies: Final = trusted_proxies
        self.services: Final = services
        self.decision_log: Final = decision_log
        self.tls: Final = tls
        self.path_parameters: Final = path_parameters
        self.needs: Final = needs

    @property
    def config(self) -> GatewayConfig:
        return self.loaded.config
