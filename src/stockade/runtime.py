"""A Runtime: one validated config compiled into a router and per-route pipelines, swapped atomically on reload."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import cast

from stockade.config.loader import LoadedConfig, StagePlan
from stockade.errors import ConfigError, StorageError
from stockade.handlers.base import Handler
from stockade.pipeline.route import CompiledRoute, Runtime
from stockade.pipeline.routing import Router, RouteSpec
from stockade.pipeline.runner import Pipeline, StageSlot
from stockade.pipeline.stage import Services, Stage, StageConfig, StageEnv
from stockade.proxy.tls import TlsContexts, build_tls
from stockade.security.netaddr import NetSet

log = logging.getLogger("stockade.tls")


def build_runtime(loaded: LoadedConfig, services: Services) -> Runtime:
    """Instantiate stages (global ones once, shared by every route) and compile routes. Raises ConfigError."""
    config = loaded.config
    services.config = config
    services.base_dir = loaded.base_dir
    services.needs = {}
    problems: list[str] = []
    instances: dict[int, Stage] = {}

    def instantiate(plan: StagePlan, route_id: str, base_dir: Path) -> Stage | None:
        key = id(plan)
        if key in instances:
            return instances[key]
        factory = cast(Callable[[StageConfig, StageEnv], Stage], plan.cls)
        try:
            env = StageEnv(route_id=route_id, base_dir=base_dir, services=services, fail_open=plan.entry.fail_open)
            stage = factory(plan.config, env)
        except (ValueError, OSError, StorageError) as exc:  # StorageError: a store URL made but unusable
            problems.append(f"{plan.at or loaded.source}: {plan.where}: {exc}")
            return None
        instances[key] = stage
        return stage

    for plan in loaded.global_stages:
        instantiate(plan, "*", loaded.base_dir)
    routes: dict[str, CompiledRoute] = {}
    for route in config.routes:
        slots = []
        for plan in loaded.route_stages.get(route.id, ()):
            stage = instantiate(plan, route.id, loaded.base_dir)
            if stage is not None:
                slots.append(StageSlot(stage, plan.entry.use, plan.cls.phase, plan.entry.fail_open))
        pipeline = Pipeline(route.id, slots, body_limit=config.limits.max_body_bytes)
        handler = None
        hplan = loaded.route_handlers.get(route.id)
        if hplan is not None:
            make = cast(Callable[[StageConfig, StageEnv], Handler], hplan.cls)
            try:
                handler = make(hplan.config, StageEnv(route_id=route.id, base_dir=loaded.base_dir, services=services))
            except (ValueError, OSError, StorageError) as exc:
                problems.append(f"{hplan.at or loaded.source}: {hplan.where}: {exc}")
            else:
                pipeline.cap_body(getattr(handler, "max_body_bytes", None), handler.id)
        up = route.upstream
        routes[route.id] = CompiledRoute(
            route.id,
            pipeline,
            up,
            route.websocket,
            handler,
            *((up.connect_timeout, up.read_timeout, up.preserve_host, up.request_buffering) if up is not None else ()),
        )
    tls = TlsContexts()
    try:
        tls = build_tls(config, loaded.base_dir, loaded.at, services.clock.time(), asgi=loaded.asgi)
    except ConfigError as exc:
        problems.extend(exc.problems)
    log_target = _decision_log_target(loaded, problems)
    if problems:
        raise ConfigError(problems)
    router = Router(
        [
            RouteSpec(r.id, r.match.path, frozenset(r.match.methods) if r.match.methods else None, r.match.hosts())
            for r in config.routes
        ],
        fold_case=config.limits.case_insensitive_routing,
    )
    return Runtime(
        loaded,
        router,
        routes,
        NetSet(config.trusted_proxies),
        services,
        decision_log=log_target,
        tls=tls,
        path_parameters=config.limits.path_parameters,
        needs=MappingProxyType(dict(services.needs)),
    )


def log_load_warnings(runtime: Runtime) -> None:
    """Log what is valid but worth a word (an expiring certificate, trusted_proxies of /0), once per load: by the
    process that reads the file (the supervisor with workers, which say nothing), not by each build of it."""
    for warning in runtime.tls.warnings:
        log.warning("TLS: %s", warning)
    for warning in runtime.loaded.warnings:
        logging.getLogger("stockade.config").warning("%s", warning)


def _decision_log_target(loaded: LoadedConfig, problems: list[str]) -> str:
    """`log.decisions` as the log will open it: a file path resolved against the config's directory (like
    every other path in the config), checked now so a bad one is a config error, not a crash at start."""
    target = loaded.config.log.decisions
    if target in ("stdout", "stderr", "off"):
        return target
    path = Path(target)
    if not path.is_absolute():
        path = loaded.base_dir / path
    where = f"{loaded.source}: field 'log.decisions'"
    if not path.parent.is_dir():
        problems.append(f"{where}: directory {path.parent} does not exist")
    elif path.is_symlink() and not path.exists():
        problems.append(f"{where}: {path} is a symbolic link to nothing")
    elif path.exists() and not (path.is_file() or path.is_fifo()):
        problems.append(f"{where}: {path} is not a file")
    elif not os.access(path if path.exists() else path.parent, os.W_OK):
        problems.append(f"{where}: {path if path.exists() else path.parent} is not writable")
    return str(path)
