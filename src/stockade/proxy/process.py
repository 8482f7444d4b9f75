"""Running the gateway as a process: the data plane plus (for one worker) the admin listener, signals,
atomic reload on SIGHUP and graceful drain on SIGTERM/SIGINT (a second one cuts the drain short)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from stockade import native
from stockade.admin.app import AdminState, admin_app
from stockade.admin.server import AdminServer
from stockade.clock import SYSTEM_CLOCK, Clock
from stockade.config.loader import LoadedConfig, load_config_text
from stockade.errors import ConfigError, ListenError
from stockade.pipeline.stage import Services
from stockade.proxy import fd_limit
from stockade.proxy.reload_file import read_settled
from stockade.proxy.server import ProxyServer
from stockade.runtime import build_runtime, log_load_warnings
from stockade.security.secrets import verify_store_secrets
from stockade.stages.ratelimit.identity_key import fetch_identity_key
from stockade.stages.ratelimit.username_key import verify_username_key

log = logging.getLogger("stockade")


def restart_only_changes(old: LoadedConfig, new: LoadedConfig) -> list[str]:
    """Settings a reload cannot apply (they need a restart); a reload that changes them is refused whole."""
    a, b = old.config, new.config
    out = []
    if (a.listen.host, a.listen.port, a.listen.backlog) != (b.listen.host, b.listen.port, b.listen.backlog):
        out.append("listen address")
    if (a.listen.tls is None) != (b.listen.tls is None):
        out.append("listen.tls on/off")
    if a.admin != b.admin:
        out.append("admin")
    if a.workers != b.workers:
        out.append("workers")
    if a.storage != b.storage or a.limits_storage != b.limits_storage:
        out.append("storage")
    if a.secrets != b.secrets:
        out.append("secrets")  # the pepper and KEKs are loaded once per process
    return out


def try_reload(
    server: ProxyServer, current: LoadedConfig, new: LoadedConfig | None, problems: list[str], *, announce: bool = True
) -> list[str]:
    """Apply `new` to `server` all-or-nothing. Returns why it was refused ([] if it was applied: a worker sends
    these to its supervisor); every problem is logged and counted. `announce`: log the load warnings (a worker
    does not: its supervisor has)."""
    if new is not None:
        blocked = restart_only_changes(current, new)
        if blocked:
            problems = [f"{new.source}: reload cannot change {', '.join(blocked)}; restart instead"]
        else:
            try:
                runtime = build_runtime(new, server.runtime.services)
                if announce:
                    log_load_warnings(runtime)
                    fd_limit.warn_if_short(new.config.limits.max_client_connections)
                server.reload(runtime)
            except ConfigError as exc:
                problems = exc.problems
            except Exception as exc:  # fail closed: whatever a new config makes go wrong, the running one stays
                problems = [unexpected(new.source, exc)]
            else:
                server.metrics.event("config_reload", "ok")
                log.info("configuration reloaded", extra={"routes": len(new.config.routes)})
                return []
    problems = problems or [f"{new.source if new else 'config'}: refused"]
    server.metrics.event("config_reload", "error")
    for problem in problems:
        log.error("reload refused, configuration unchanged: %s", problem)
    return problems


def unexpected(source: str, exc: BaseException) -> str:
    """A problem line for an exception that is not a ConfigError (a loader or stage bug an odd file reaches:
    RecursionError, ValueError, MemoryError). The traceback goes to the debug log."""
    log.debug("reload failed", exc_info=exc)
    detail = str(exc)[:300]
    return f"{source}: {type(exc).__name__}{': ' + detail if detail else ''}"


async def load_for_reload(
    path: str,
    env: Mapping[str, str] | None = None,
    *,
    clock: Clock = SYSTEM_CLOCK,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> tuple[LoadedConfig | None, list[str]]:
    """The config file again, as the first load read it (`env` is that load's environment, with `--workers`),
    once nothing is writing it (see reload_file.py). Never raises: (None, problems) when it is refused."""
    try:
        text = await read_settled(path, clock=clock, sleep=sleep)
        p = Path(path)
        return load_config_text(text, source=str(p), base_dir=p.resolve().parent, env=env, require_routes=True), []
    except ConfigError as exc:
        return None, exc.problems
    except Exception as exc:
        return None, [unexpected(path, exc)]


def listen_error(field: str, host: str, port: int, exc: OSError) -> ListenError:
    where = f"[{host}]" if ":" in host else host
    # uvloop's strerror repeats the address ("error while attempting to bind on address ..."): the errno's is enough.
    reason = os.strerror(exc.errno).lower() if exc.errno else (exc.strerror or str(exc))
    return ListenError(f"{field}: cannot listen on {where}:{port}: {reason}")


def listener_url(scheme: str, host: str, port: int) -> str:
    """The URL a listener is reached at, for the start-up line: an IPv6 host in brackets, the port it bound (a
    configured port 0 is the kernel's choice)."""
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


async def serve_single(path: str, loaded: LoadedConfig, env: Mapping[str, str] | None = None) -> None:
    """One process: data plane and admin listener on one uvloop loop. Raises ListenError for an address it
    cannot bind."""
    cfg = loaded.config
    fd_limit.raise_soft_limit()
    services = Services(clock=SYSTEM_CLOCK, workers=1)
    runtime = build_runtime(loaded, services)
    log_load_warnings(runtime)
    fd_limit.warn_if_short(cfg.limits.max_client_connections)
    server = ProxyServer(runtime)
    await verify_store_secrets(services)
    await verify_username_key(services)
    await fetch_identity_key(services)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    current = [loaded]
    one_at_a_time = asyncio.Lock()
    reloads: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        async with one_at_a_time:  # two quick SIGHUPs: the second reads the file after the first is applied
            try:
                new, problems = await load_for_reload(path, env=env)
                if not try_reload(server, current[0], new, problems) and new is not None:
                    current[0] = new
            except Exception as exc:  # never an unhandled task error, never a half-applied config
                server.metrics.event("config_reload", "error")
                log.error("reload refused, configuration unchanged: %s", unexpected(path, exc))

    def on_sighup() -> None:
        task = loop.create_task(reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    def on_stop_signal() -> None:
        if stop.is_set():  # a second SIGTERM or Ctrl-C: do not wait out drain_timeout
            server.cut_drain()
        stop.set()

    # Before anything can report ready: a SIGHUP's default action is to terminate the process.
    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    loop.add_signal_handler(signal.SIGTERM, on_stop_signal)
    loop.add_signal_handler(signal.SIGINT, on_stop_signal)
    admin = None
    if cfg.admin.enabled:
        admin = AdminServer(
            admin_app(
                AdminState(server.metrics.snapshot, lambda: server.ready, services, lambda: server.runtime.needs)
            ),
            cfg.admin.host,
            cfg.admin.port,
        )
        try:
            admin.bind()  # before the data plane opens: nothing has been served when this fails
        except OSError as exc:
            raise listen_error("admin.port", cfg.admin.host, cfg.admin.port, exc) from None
    try:
        await server.start()
    except OSError as exc:
        if admin is not None:
            admin.close()
        raise listen_error("listen.port", cfg.listen.host, cfg.listen.port, exc) from None
    if admin is not None:
        await admin.start()
    log.info(
        "stockade serving",
        extra={
            "listen": listener_url("https" if cfg.listen.tls else "http", cfg.listen.host, server.ports[0]),
            "admin": listener_url("http", cfg.admin.host, admin.port) if admin else "off",
            "routes": len(cfg.routes),
            "data_plane": native.status,
        },
    )
    await stop.wait()
    for task in list(reloads):
        task.cancel()  # a reload still waiting for its file to settle: the process is going away
    log.info("draining", extra={"connections": len(server.connections)})
    await server.drain()
    if admin is not None:
        await admin.stop()
    server.decision_log.close()
    log.info("stopped")
