"""Running the gateway as a process: the data plane plus (for one worker) the admin listener, signals,
atomic reload on SIGHUP and graceful drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Mapping

from stockade.admin.app import AdminState, admin_app
from stockade.admin.server import AdminServer
from stockade.clock import SYSTEM_CLOCK
from stockade.config.loader import LoadedConfig, load_config, load_config_text
from stockade.errors import ConfigError
from stockade.pipeline.stage import Services
from stockade.proxy.server import ProxyServer
from stockade.runtime import build_runtime
from stockade.security.secrets import verify_store_secrets
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


def try_reload(server: ProxyServer, current: LoadedConfig, new: LoadedConfig | None, problems: list[str]) -> bool:
    """Apply `new` to `server` all-or-nothing. Returns whether it was applied; every problem is logged."""
    if new is not None:
        blocked = restart_only_changes(current, new)
        if blocked:
            problems = [f"{new.source}: reload cannot change {', '.join(blocked)}; restart instead"]
        else:
            try:
                runtime = build_runtime(new, server.runtime.services)
                server.reload(runtime)
            except ConfigError as exc:
                problems = exc.problems
            else:
                server.metrics.event("config_reload", "ok")
                log.info("configuration reloaded", extra={"routes": len(new.config.routes)})
                return True
    server.metrics.event("config_reload", "error")
    for problem in problems:
        log.error("reload refused, configuration unchanged: %s", problem)
    return False


def load_for_reload(
    path: str, text: str | None = None, base: LoadedConfig | None = None, env: Mapping[str, str] | None = None
) -> tuple[LoadedConfig | None, list[str]]:
    """The config again, as the first load read it: `env` is that load's environment (with `--workers`)."""
    try:
        if text is not None and base is not None:
            return load_config_text(text, source=base.source, base_dir=base.base_dir, env=env, require_routes=True), []
        return load_config(path, env=env, require_routes=True), []
    except ConfigError as exc:
        return None, exc.problems


async def serve_single(path: str, loaded: LoadedConfig, env: Mapping[str, str] | None = None) -> None:
    """One process: data plane and admin listener on one uvloop loop."""
    cfg = loaded.config
    services = Services(clock=SYSTEM_CLOCK, workers=1)
    server = ProxyServer(build_runtime(loaded, services))
    await verify_store_secrets(services)
    await verify_username_key(services)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    current = [loaded]

    def reload() -> None:
        new, problems = load_for_reload(path, env=env)
        if try_reload(server, current[0], new, problems) and new is not None:
            current[0] = new

    # Before anything can report ready: a SIGHUP's default action is to terminate the process.
    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await server.start()
    admin = None
    if cfg.admin.enabled:
        admin = AdminServer(
            admin_app(
                AdminState(server.metrics.snapshot, lambda: server.ready, services, lambda: server.runtime.needs)
            ),
            cfg.admin.host,
            cfg.admin.port,
        )
        await admin.start()
    log.info(
        "stockade serving",
        extra={
            "listen": f"{'https' if cfg.listen.tls else 'http'}://{cfg.listen.host}:{server.ports[0]}",
            "admin": f"http://{cfg.admin.host}:{cfg.admin.port}" if admin else "off",
            "routes": len(cfg.routes),
        },
    )
    await stop.wait()
    log.info("draining", extra={"connections": len(server.connections)})
    await server.drain()
    if admin is not None:
        await admin.stop()
    server.decision_log.close()
    log.info("stopped")
