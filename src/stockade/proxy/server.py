"""The proxy server: listeners, live connections, upstream pools, the deadline sweep, reload and drain."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import socket
import ssl
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from stockade.clock import SYSTEM_CLOCK, Clock
from stockade.errors import ConfigError
from stockade.observability.decision_log import DecisionLog
from stockade.observability.logs import apply_level
from stockade.pipeline.intake import RequestIds
from stockade.proxy.client import ClientConnection
from stockade.proxy.common import HotLimits
from stockade.proxy.http import DateCache
from stockade.proxy.tls import ListenerContext
from stockade.proxy.upstream import PoolManager

if TYPE_CHECKING:
    from stockade.observability.metrics import Metrics
    from stockade.pipeline.route import Runtime

log: Final = logging.getLogger("stockade.proxy")

SWEEP_INTERVAL: Final = 0.25


class ProxyServer:
    """One worker's data plane."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        clock: Clock = SYSTEM_CLOCK,
        metrics: Metrics | None = None,
        decision_log: DecisionLog | None = None,
    ) -> None:
        self.runtime = runtime
        self.limits = HotLimits.of(runtime.config.limits)  # what new client connections read
        self.clock = clock
        self.metrics = metrics or runtime.services.metrics  # shared with the stages (backend outages, ...)
        self.decision_log = decision_log or DecisionLog(runtime.decision_log, clock, self.metrics)
        self._log_target = runtime.decision_log
        self.connections: set[ClientConnection] = set()
        self.pools = PoolManager(clock, runtime.tls.upstreams)
        self.dates = DateCache()
        self.draining = False
        self.cut_short = False  # a second stop signal: the drain ends now (cut_drain)
        self.ready = False
        self.tls: ListenerContext | None = None  # set when listening with TLS; reload swaps its context
        # Handshakes begun under client-certificate rules a reload has since changed (see reload).
        self._stale_handshakes: weakref.WeakSet[ssl.SSLObject] = weakref.WeakSet()
        self._servers: list[asyncio.Server] = []
        self._tick_handle: asyncio.TimerHandle | None = None
        self.request_ids = RequestIds()
        self.spool_reserved = 0  # bytes the request body spools of this worker have reserved (proxy/spool.py)
        self.collected_total = (
            0  # bytes of response bodies this worker holds for hooks (limits.response_buffer_total_bytes)
        )
        self.metrics.gauge_providers.append(self._gauges)

    async def start(self, *, reuse_port: bool = False, sock: socket.socket | None = None) -> None:
        """Bind the listener (or serve on `sock`) and start the periodic sweep."""
        loop = asyncio.get_running_loop()
        cfg = self.runtime.config
        if self.runtime.tls.listener is not None:
            self.tls = ListenerContext(self.runtime.tls.listener)
            self.tls.admit = functools.partial(self._admit_tls, self.tls)
        ssl_ctx = self.tls
        timeout = cfg.limits.tls_handshake_timeout or cfg.limits.header_timeout
        if sock is not None:
            server = await loop.create_server(
                self._accept,
                sock=sock,
                ssl=ssl_ctx,
                ssl_handshake_timeout=timeout if ssl_ctx else None,
            )
        else:
            server = await loop.create_server(
                self._accept,
                cfg.listen.host,
                cfg.listen.port,
                ssl=ssl_ctx,
                backlog=cfg.listen.backlog,
                reuse_port=reuse_port or None,
                ssl_handshake_timeout=timeout if ssl_ctx else None,
            )
        self._servers.append(server)
        self._tick_handle = loop.call_later(SWEEP_INTERVAL, self._tick)
        # Everything built so far (modules, config, compiled routes) lives for the process: move it out of the
        # collector's generations so collections only look at per-request objects.
        gc.collect()
        gc.freeze()
        self.ready = True

    def _accept(self) -> asyncio.Protocol:
        """The protocol for a connection just accepted. Over TLS, the listener context admits it (below), before
        the handshake that would cost the memory the cap is there to bound."""
        if self.tls is None and len(self.connections) >= self.limits.max_client_connections:
            self.metrics.event("client_connections", "refused")
            return _Refused()
        return ClientConnection(self)

    def _admit_tls(self, tls: ListenerContext) -> bool:
        """Whether one more TLS connection may open: established ones and handshakes in progress count."""
        if len(self.connections) + len(tls.handshakes) < self.limits.max_client_connections:
            return True
        self.metrics.event("client_connections", "refused")
        return False

    def tls_established(self, conn: ClientConnection, obj: ssl.SSLObject) -> None:
        """A TLS connection's handshake completed (its connection_made): counted as a connection from now on, not
        as a handshake; one begun under client-certificate rules a reload has since changed serves one request."""
        assert self.tls is not None  # noqa: S101 - only a TLS listener's connections have an SSL object
        self.tls.handshakes.discard(obj)
        if obj in self._stale_handshakes:
            self._stale_handshakes.discard(obj)
            _retire(conn)

    @property
    def ports(self) -> list[int]:
        out = []
        for server in self._servers:
            # Iterated generically: uvloop's servers give a list where typeshed says tuple, and compiled code
            # would check the declared type.
            sockets: Iterable[socket.socket] = getattr(server, "sockets")  # noqa: B009
            for s in sockets:
                out.append(s.getsockname()[1])
        return out

    def _tick(self) -> None:
        try:
            self.sweep()
            self.decision_log.flush()
        finally:
            if not self.draining or self.connections:
                self._tick_handle = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._tick)

    def sweep(self) -> None:
        """Enforce every deadline (client timeouts, stage, connect and upstream timeouts, idle pool entries)."""
        now = self.clock.monotonic()
        for conn in list(self.connections):
            conn.check_deadlines(now)
        self.pools.sweep(now)

    def reload(self, runtime: Runtime) -> None:
        """Swap in a new runtime: requests already under way finish on the one they started with. All or
        nothing: what can fail (opening a new decision-log file) is done before anything is swapped, and a
        failure is a ConfigError that leaves the running configuration as it was."""
        cfg = runtime.config
        new_log = None
        # A file is reopened on every reload, changed or not: logrotate moves it away and sends SIGHUP, and the
        # lines must go to the new file, not on into the rotated one.
        if runtime.decision_log != self._log_target or runtime.decision_log.startswith("/"):
            try:
                new_log = DecisionLog(runtime.decision_log, self.clock, self.metrics)
            except OSError as exc:
                raise ConfigError([f"log.decisions: cannot open {runtime.decision_log!r}: {exc.strerror}"]) from None
        if self.tls is not None and runtime.tls.listener is not None:
            self.tls.current = runtime.tls.listener  # new handshakes only; TLS on/off needs a restart
            if runtime.tls.client_trust != self.runtime.tls.client_trust:
                self._retire_verified(self.tls)
        self.runtime = runtime
        self.limits = HotLimits.of(cfg.limits)
        self.pools.retain([r.upstream for r in cfg.routes if r.upstream is not None], runtime.tls.upstreams)
        if new_log is not None:
            old = self.decision_log
            self.decision_log = new_log
            self._log_target = runtime.decision_log
            old.close()
        apply_level(cfg.log.level)

    def _retire_verified(self, tls: ListenerContext) -> None:
        """The client CA or client_auth changed: connections let in under the old rules must not serve on for
        keepalive_requests x keepalive_timeout. Idle ones close now; the others answer what they were sent, that
        answer saying `Connection: close`; so do connections whose handshake the old context is still doing
        (`tls_established`). Open WebSocket tunnels carry on. Costs nothing per request."""
        self._stale_handshakes = weakref.WeakSet(tls.handshakes)
        for conn in list(self.connections):
            _retire(conn)

    def cut_drain(self) -> None:
        """A second SIGTERM/SIGINT: the drain under way (or the next one) cuts what is left at once."""
        self.cut_short = True

    async def drain(self, timeout: float | None = None) -> None:
        """Graceful stop: close listeners, close idle connections, let in-flight requests finish (up to
        `limits.drain_timeout`, or until `cut_drain`), then cut what is left."""
        self.draining = True
        self.ready = False
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            if not conn.queue and conn.head is None and conn.parsing is None and conn.tunnel is None:
                conn.close()
        limit = self.runtime.config.limits.drain_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        end = loop.time() + limit
        while self.connections and loop.time() < end and not self.cut_short:
            await asyncio.sleep(0.02)
        self._cut("second signal" if self.cut_short else "drain_timeout")
        for _ in range(100):  # connection_lost comes on a later turn of the loop: let it log the cut requests
            if not self.connections:
                break
            await asyncio.sleep(0)
        await self.close()

    def _cut(self, cause: str) -> None:
        """Abort the connections the drain leaves. Their requests are logged as the gateway's doing (503
        `gateway.draining`; a response already begun keeps its status), not as the client's 499 `client.closed`."""
        conns = list(self.connections)
        requests = 0
        for conn in conns:
            for ex in conn.queue:
                if not ex.finished and not ex.tunnel_open:
                    requests += 1
                    ex.error = "gateway.draining"  # read by client_lost, when the abort's connection_lost comes
                    if not ex.status:
                        ex.status = 503
            conn.abort()
        if conns:
            log.warning(
                "connections cut at the end of the drain",
                extra={"connections": len(conns), "requests": requests, "cause": cause},
            )

    async def close(self) -> None:
        self.ready = False
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.abort()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self.pools.close()
        self.decision_log.flush()
        await self.runtime.services.close()

    def _gauges(self) -> list[tuple[str, dict[str, str], float]]:
        out = self.pools.gauges()
        out.append(("stockade_client_connections", {}, len(self.connections)))
        return out


def _retire(conn: ClientConnection) -> None:
    """Make `conn`'s next response its last (`should_close_after` compares `requests` with keepalive_requests);
    close it now if it is idle between requests."""
    idle = conn.requests and not conn.queue and conn.head is None and conn.parsing is None and conn.tunnel is None
    conn.requests = max(conn.requests, conn.limits.keepalive_requests)
    if idle:
        conn.close()


class _Refused(asyncio.Protocol):
    """A plain-HTTP connection over limits.max_client_connections: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]
