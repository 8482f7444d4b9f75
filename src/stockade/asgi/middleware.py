"""`StockadeMiddleware`: the gateway's pipeline and routes in front of any ASGI app, in the same process."""

from __future__ import annotations

import asyncio
import atexit
import logging
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from stockade.asgi.exchange import HttpExchange
from stockade.asgi.root import RootPath
from stockade.asgi.scope import ASGIApp, Message, Receive, Scope, Send
from stockade.asgi.websocket import WebSocketExchange
from stockade.clock import SYSTEM_CLOCK, Clock
from stockade.config.loader import LoadedConfig, load_config, load_config_text
from stockade.observability.decision_log import DecisionLog
from stockade.observability.metrics import Metrics
from stockade.pipeline.intake import RequestIds
from stockade.pipeline.route import Runtime
from stockade.pipeline.stage import Services
from stockade.runtime import build_runtime, log_load_warnings

if TYPE_CHECKING:
    from stockade.asgi.base import Exchange

log = logging.getLogger("stockade.asgi")

# What apps that do not speak lifespan raise on its scope, word for word: Django's ASGIHandler, Channels'
# ProtocolTypeRouter. Anything else an app raises there is its own failure and stops the server.
_LIFESPAN_REFUSALS = frozenset(
    {
        "Django can only handle ASGI/HTTP connections, not lifespan.",
        "No application configured for scope type 'lifespan'",
    }
)
SWEEP_INTERVAL = 0.25  # as the proxy: deadlines and decision-log flushes are checked four times a second


# Every middleware alive when the interpreter exits is flushed by one hook: one registration per instance grew
# without bound where apps are built per test or per tenant. Weak, so it keeps none of them alive.
_LIVE: weakref.WeakSet[StockadeMiddleware] = weakref.WeakSet()


def _flush_at_exit() -> None:
    for mw in list(_LIVE):
        try:
            mw.flush()
        except Exception:  # one log that cannot be written must not cost the others their lines
            log.exception("decision log flush at exit failed")


atexit.register(_flush_at_exit)


class StockadeMiddleware:
    """Wrap an ASGI app so every request passes the Stockade pipeline first.

    `config` is a file path or an already loaded config; `config_text` is YAML. Routes may omit `upstream` (the
    wrapped app is the upstream; a route's `upstream` is ignored here). Unknown routes are denied. The decision
    log goes where `log.decisions` says unless `decision_log` is given; `metrics` collects request counters
    (expose them with `stockade.observability.metrics.SnapshotCollector(metrics.snapshot)`). `root_path` is where the
    server or an outer app mounts this one ('' for none): a scope with another is refused, and routes match the path
    after it, as the app routes (see docs/asgi.md); a route whose path starts with the root is refused unless
    `root_prefixed_routes` says the app's own paths do.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        config: str | Path | LoadedConfig | None = None,
        config_text: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        decision_log: DecisionLog | None = None,
        metrics: Metrics | None = None,
        root_path: str = "",
        root_prefixed_routes: bool = False,
    ) -> None:
        if (config is None) == (config_text is None):
            raise TypeError("StockadeMiddleware needs exactly one of config= (a path or LoadedConfig) or config_text=")
        if isinstance(config, LoadedConfig):
            loaded = config
        elif config is not None:
            loaded = load_config(config, require_upstreams=False)
        else:
            assert config_text is not None  # noqa: S101 - narrowed by the check above
            loaded = load_config_text(config_text, require_upstreams=False)
        self.root = RootPath(root_path, app)  # checked before the runtime and the decision log file are set up
        self.root_prefixed_routes = root_prefixed_routes
        self.root.check_routes(loaded.config, allowed=root_prefixed_routes)
        self.app = app
        self.clock = clock
        self.services = Services(clock=clock, metrics=metrics or Metrics())  # stages count events here too
        self.runtime: Runtime = build_runtime(loaded, self.services)
        log_load_warnings(self.runtime)
        self.decision_log = decision_log or DecisionLog(self.runtime.decision_log, clock, self.services.metrics)
        self.metrics = self.services.metrics
        self.request_ids = RequestIds()
        self.buffered = 0  # bytes of app response bodies held for hooks (limits.response_buffer_total_bytes)
        self._watched: set[Exchange] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        # Servers without lifespan (daphne) never say they are stopping: lines the timer has not written yet are
        # written when the interpreter exits normally (not on a fatal signal: see docs/asgi.md).
        _LIVE.add(self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await HttpExchange(self, scope, receive, send).run()
        elif kind == "websocket":
            await WebSocketExchange(self, scope, receive, send).run()
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            # A connection type this version does not know could carry requests the pipeline never saw.
            raise ValueError(f"StockadeMiddleware: unsupported ASGI scope type {kind!r}")

    def reload(self, config: LoadedConfig) -> None:
        """Swap in a new config atomically (it was validated when loaded); requests under way keep the old one."""
        self.root.check_routes(config.config, allowed=self.root_prefixed_routes)
        self.runtime = build_runtime(config, self.services)
        log_load_warnings(self.runtime)

    # -- deadlines and the decision log -----------------------------------------------------------------------

    def watch(self, ex: Exchange) -> None:
        """Track an exchange whose pipeline or handler is awaiting, so the sweep can enforce its deadline."""
        self._watched.add(ex)
        self._schedule()

    def unwatch(self, ex: Exchange) -> None:
        self._watched.discard(ex)

    def logged(self) -> None:
        """A decision line was buffered: make sure a flush is coming."""
        self._schedule()

    def sweep(self) -> None:
        """Cut off pipelines and handlers past their deadline (by the injected clock). Runs on a timer."""
        now = self.clock.monotonic()
        for ex in list(self._watched):
            if ex.deadline <= now:
                self._watched.discard(ex)
                ex.expire()

    def flush(self) -> None:
        """Write buffered decision lines now (also done on a timer and at lifespan shutdown)."""
        self.decision_log.flush()

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        # One app object may be served by several loops in turn (test clients make one per request): a timer left
        # on a loop that stopped would never fire, so a timer only counts on the loop that is running now.
        if self._timer is None or self._timer_loop is not loop:
            self._timer_loop = loop
            self._timer = loop.call_later(SWEEP_INTERVAL, self._tick)

    def _tick(self) -> None:
        self._timer = None
        try:
            self.sweep()
            self.flush()
        finally:
            if self._watched:
                self._schedule()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the lifespan scope to the app, flushing the decision log when the server has drained; answer it
        for an app that does not speak it, so the log is still flushed at shutdown."""
        took_part = False

        async def app_receive() -> Message:
            nonlocal took_part
            took_part = True
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                self.flush()  # the server has drained its connections: every line is written before exit
            return message

        async def app_send(message: Message) -> None:
            nonlocal took_part
            took_part = True
            await send(message)

        try:
            await self.app(scope, app_receive, app_send)
        except ValueError as exc:
            # Django's ASGI handler and Channels' router refuse the scope (others return at once); uvicorn then never
            # sends shutdown, and lines from the last quarter second were lost. Any other error, even one raised
            # before the app read a message (Starlette builds its middleware stack then), is a startup failure.
            if took_part or str(exc) not in _LIFESPAN_REFUSALS:
                raise
            log.debug("the app does not support lifespan; StockadeMiddleware answers it", exc_info=True)
        if took_part:
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.flush()
                await send({"type": "lifespan.shutdown.complete"})
                return
