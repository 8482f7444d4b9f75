"""Several worker processes sharing the listen port with SO_REUSEPORT, under one supervisor.

The supervisor validates the config, spawns workers, serves the admin listener (merging the workers'
metrics, which each sends every second), coordinates reloads (it validates the file once and sends the
same text to every worker, so all workers change together or none does) and restarts a worker that dies.
Messages on each control socket are newline-delimited JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from stockade.admin.app import AdminState, admin_app
from stockade.admin.server import AdminServer
from stockade.clock import SYSTEM_CLOCK
from stockade.config.loader import LoadedConfig, load_config_text
from stockade.errors import ConfigError, StorageError
from stockade.observability.metrics import Snapshot, merge, retire
from stockade.pipeline.stage import Services
from stockade.proxy.process import load_for_reload, restart_only_changes, try_reload
from stockade.proxy.server import ProxyServer
from stockade.runtime import build_runtime
from stockade.security.secrets import SecretsError, verify_store_secrets
from stockade.stages.ratelimit.username_key import SHARED_KEY as USERNAME_KEY
from stockade.stages.ratelimit.username_key import username_key, verify_username_key
from stockade.storage import SHARED_KEY as STORE_KEY
from stockade.storage import shared_store

log = logging.getLogger("stockade")
METRICS_INTERVAL = 1.0


async def _send(writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
    writer.write(orjson.dumps(msg) + b"\n")
    await writer.drain()


# -- worker side -------------------------------------------------------------------------------------------------


def config_from_supervisor(control_fd: int, env: Mapping[str, str]) -> LoadedConfig:
    """The first message on the control channel: the config the supervisor runs (its text, source and base
    directory). Read exactly up to its newline (later messages stay in the socket for the event loop), then
    validated here as the supervisor validated it. Raises ConfigError."""
    sock = socket.socket(fileno=os.dup(control_fd))
    try:
        while True:
            peeked = sock.recv(1 << 22, socket.MSG_PEEK)
            if not peeked:
                raise SystemExit(2)  # the supervisor went away before sending it
            end = peeked.find(b"\n")
            if end >= 0:
                break
            time.sleep(0.01)  # the rest of the line is on its way
        buf = b""
        while len(buf) <= end:
            buf += sock.recv(end + 1 - len(buf))  # exactly the first line: later messages stay queued
    finally:
        sock.close()
    msg = orjson.loads(buf)
    return load_config_text(msg["text"], source=msg["source"], base_dir=Path(msg["base_dir"]), env=env)


async def serve_worker(
    path: str, loaded: LoadedConfig, control_fd: int, index: int, workers: int, env: Mapping[str, str] | None = None
) -> None:
    sock = socket.socket(fileno=control_fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    services = Services(clock=SYSTEM_CLOCK, workers=workers)
    server = ProxyServer(build_runtime(loaded, services))
    await verify_store_secrets(services)
    await verify_username_key(services)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the supervisor coordinates reloads
    await server.start(reuse_port=True)
    await _send(writer, {"op": "ready", "index": index})
    current = [loaded]

    async def push_metrics() -> None:
        while True:
            await asyncio.sleep(METRICS_INTERVAL)
            await _send(writer, {"op": "metrics", "snap": server.metrics.snapshot()})

    async def commands() -> None:
        while line := await reader.readline():
            msg = orjson.loads(line)
            if msg["op"] == "reload":
                # The file and directory the supervisor read it from: a Kubernetes ConfigMap swaps a `..data`
                # symlink and deletes the old directory, so the one this worker started from may be gone.
                try:
                    new = load_config_text(msg["text"], source=msg["source"], base_dir=Path(msg["base_dir"]), env=env)
                    problems: list[str] = []
                except ConfigError as exc:
                    new, problems = None, exc.problems
                ok = try_reload(server, current[0], new, problems)
                if ok and new is not None:
                    current[0] = new
                await _send(writer, {"op": "reloaded", "ok": ok, "problems": problems[:5]})
            elif msg["op"] == "stop":
                break
        stop.set()  # the supervisor asked us to stop, or went away

    tasks = [loop.create_task(push_metrics()), loop.create_task(commands())]
    await stop.wait()
    await server.drain()
    server.decision_log.close()
    for task in tasks:
        task.cancel()
    with contextlib.suppress(Exception):
        await _send(writer, {"op": "metrics", "snap": server.metrics.snapshot()})
        writer.close()


# -- supervisor side ---------------------------------------------------------------------------------------------


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    ready: bool = False
    snapshot: Snapshot | None = None
    retired: Snapshot | None = None  # earlier incarnations' counters and histograms, folded (kept monotonic)


class Supervisor:
    def __init__(self, path: str, loaded: LoadedConfig, workers: int, env: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.env = env
        self.loaded = loaded
        self.n = workers
        self.workers = [_Worker(i) for i in range(workers)]
        self.stopping = False
        self.admin: AdminServer | None = None
        self.reloads: dict[str, int] = {"ok": 0, "error": 0}
        self.needs: Mapping[str, bool] = {}  # the backends the workers' config uses (Runtime.needs): /readyz
        # The admin API's store and secrets (the supervisor runs no pipeline, so nothing else uses these).
        self.services = Services(clock=SYSTEM_CLOCK, workers=workers, config=loaded.config, base_dir=loaded.base_dir)

    def snapshot(self) -> Snapshot:
        snaps = [s for w in self.workers for s in (w.retired, w.snapshot) if s is not None]
        merged = merge(snaps) if snaps else merge([])
        merged["gauges"].append(["stockade_workers_ready", {}, float(sum(w.ready for w in self.workers))])
        merged["events"].extend([["config_reload_supervisor", k, v] for k, v in self.reloads.items() if v])
        return merged

    def ready(self) -> bool:
        return not self.stopping and all(w.ready for w in self.workers)

    async def run(self) -> None:
        cfg = self.loaded.config
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        # Before anything can report ready: a SIGHUP's default action is to terminate the process.
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        # Refuse to start (not to crash-loop workers) with a pepper or KEK other than the store's: built as
        # `config check` builds it to learn whether the routes use the store at all.
        probe = Services(clock=SYSTEM_CLOCK, workers=self.n, dry_run=True)
        self.needs = build_runtime(self.loaded, probe).needs
        if STORE_KEY in probe.shared:
            try:
                shared_store(self.services)
            except StorageError as exc:  # made, not reached: the URL itself is unusable
                raise ConfigError([f"storage: {exc}"]) from None
            await verify_store_secrets(self.services)
        if USERNAME_KEY in probe.shared:  # the same refusal for a pepper other than the limits backend's
            try:
                username_key(self.services, "brute_force routes")
            except SecretsError as exc:
                raise ConfigError([f"secrets: {exc}"]) from None
            await verify_username_key(self.services)
        if (busy := _listen_port_taken(cfg.listen.host, cfg.listen.port)) is not None:
            # Workers bind with SO_REUSEPORT, which would let them join another gateway's port silently and
            # answer half its connections under this config: refuse to start, as a single process does.
            log.error("cannot listen on %s:%d: %s", cfg.listen.host, cfg.listen.port, busy)
            raise SystemExit(1)
        for w in self.workers:
            await self._spawn(w)
        if cfg.admin.enabled:
            state = AdminState(self.snapshot, self.ready, self.services, lambda: self.needs)
            self.admin = AdminServer(admin_app(state), cfg.admin.host, cfg.admin.port)
            await self.admin.start()
        log.info(
            "stockade supervisor serving", extra={"workers": self.n, "listen": f"{cfg.listen.host}:{cfg.listen.port}"}
        )
        await stop.wait()
        await self.stop()

    async def _spawn(self, w: _Worker) -> None:
        parent, child = socket.socketpair()
        args = [sys.executable, "-m", "stockade", "serve", "--config", self.path, "--workers", str(self.n)]
        args += ["--worker-fd", str(child.fileno()), "--worker-index", str(w.index)]
        w.proc = await asyncio.create_subprocess_exec(*args, pass_fds=(child.fileno(),))
        child.close()
        reader, w.writer = await asyncio.open_connection(sock=parent)
        loaded = self.loaded  # what the worker runs: see config_from_supervisor
        await _send(
            w.writer, {"op": "config", "text": loaded.text, "source": loaded.source, "base_dir": str(loaded.base_dir)}
        )
        w.ready = False
        asyncio.get_running_loop().create_task(self._watch(w, reader))

    async def _watch(self, w: _Worker, reader: asyncio.StreamReader) -> None:
        while line := await _read_line(reader):
            msg = orjson.loads(line)
            op = msg["op"]
            if op == "ready":
                w.ready = True
            elif op == "metrics":
                w.snapshot = msg["snap"]
            elif op == "reloaded" and msg.get("ok", True):
                w.ready = True  # (again, if it had refused an earlier one)
            elif op == "reloaded":
                # This worker kept the old config while the others took the new one (a file only it could not
                # read): it must not look ready, or a load balancer would send it traffic under another policy.
                w.ready = False
                self.reloads["worker_error"] = self.reloads.get("worker_error", 0) + 1
                for problem in msg.get("problems") or ["(no detail)"]:
                    log.error("worker %d refused the reload and is not ready: %s", w.index, problem)
        w.ready = False
        if w.snapshot is not None:
            w.retired = retire(w.retired, w.snapshot)
            w.snapshot = None
        if w.proc is not None:
            await w.proc.wait()
        if not self.stopping:
            log.error(
                "worker exited; restarting", extra={"worker": w.index, "code": w.proc.returncode if w.proc else None}
            )
            await asyncio.sleep(1.0)
            if not self.stopping:
                await self._spawn(w)

    async def reload(self) -> None:
        new, problems = load_for_reload(self.path, env=self.env)
        if new is not None and (blocked := restart_only_changes(self.loaded, new)):
            problems = [f"{new.source}: reload cannot change {', '.join(blocked)}; restart instead"]
            new = None
        if new is not None:
            # Built once here as `config check` builds it (touching no store or secret file): what fails to build
            # (a spec or key file, the decision log's target) is refused before any worker sees it - and never
            # becomes the text a restarted worker is given.
            try:
                needs = build_runtime(new, Services(clock=SYSTEM_CLOCK, workers=self.n, dry_run=True)).needs
            except ConfigError as exc:
                problems, new = exc.problems, None
        if new is None:
            self.reloads["error"] += 1
            for problem in problems:
                log.error("reload refused, configuration unchanged: %s", problem)
            return
        self.loaded = new
        self.needs = needs
        self.reloads["ok"] += 1
        for w in self.workers:
            if w.writer is not None:
                with contextlib.suppress(ConnectionError):
                    await _send(w.writer, _reload_message(new))
        log.info("configuration sent to workers", extra={"workers": self.n})

    async def stop(self) -> None:
        self.stopping = True
        for w in self.workers:
            if w.writer is not None:
                with contextlib.suppress(ConnectionError):
                    await _send(w.writer, {"op": "stop"})
        grace = self.loaded.config.limits.drain_timeout + 5.0
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                try:
                    await asyncio.wait_for(w.proc.wait(), grace)
                except TimeoutError:
                    w.proc.kill()
                    await w.proc.wait()
        if self.admin is not None:
            await self.admin.stop()
        await self.services.close()
        log.info("stopped")


def _listen_port_taken(host: str, port: int) -> str | None:
    """Why the listen address is taken by another process (a bind without SO_REUSEPORT fails), else None."""
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return str(exc)
    for family, kind, proto, _, addr in infos[:1]:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are not a gateway
            try:
                probe.bind(addr)
            except OSError as exc:
                return exc.strerror or str(exc)
    return None


def _reload_message(loaded: LoadedConfig) -> dict[str, Any]:
    return {"op": "reload", "text": loaded.text, "source": loaded.source, "base_dir": str(loaded.base_dir)}


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    """A worker's next message; b"" once it is gone, however it went (a worker killed mid-write resets the
    socket: the supervisor restarts it, it does not log a traceback)."""
    try:
        return await reader.readline()
    except ConnectionError:
        return b""


async def supervise(path: str, loaded: LoadedConfig, workers: int, env: Mapping[str, str] | None = None) -> None:
    await Supervisor(path, loaded, workers, env).run()
