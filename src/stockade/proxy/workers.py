"""Several worker processes sharing the listen port with SO_REUSEPORT, under one supervisor.

The supervisor validates the config, spawns workers, serves the admin listener (merging the workers'
metrics, which each sends every second), coordinates reloads (it validates the file once, sends the same
text to every worker and keeps it only if every worker applied it; otherwise those that did are sent the
previous config again, so all workers change together or none does) and restarts a worker that dies, with the
config every worker accepted. A worker that stops sending (hung, or SIGSTOPped) is killed, and so restarted. A
worker that cannot bind the listen port stops the gateway.
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
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from stockade import native
from stockade.admin.app import AdminState, admin_app
from stockade.admin.server import AdminServer
from stockade.clock import SYSTEM_CLOCK, Clock
from stockade.config.loader import LoadedConfig, load_config_text
from stockade.errors import ConfigError, ListenError, StorageError
from stockade.observability.logs import apply_level
from stockade.observability.metrics import Snapshot, merge, retire
from stockade.pipeline.stage import Services
from stockade.proxy import fd_limit
from stockade.proxy.process import (
    listen_error,
    listener_url,
    load_for_reload,
    restart_only_changes,
    try_reload,
    unexpected,
)
from stockade.proxy.server import ProxyServer
from stockade.runtime import build_runtime, log_load_warnings
from stockade.security.secrets import SecretsError, verify_store_secrets
from stockade.stages.ratelimit.identity_key import fetch_identity_key
from stockade.stages.ratelimit.username_key import SHARED_KEY as USERNAME_KEY
from stockade.stages.ratelimit.username_key import username_key, verify_username_key
from stockade.storage import SHARED_KEY as STORE_KEY
from stockade.storage import shared_store

log = logging.getLogger("stockade")
METRICS_INTERVAL = 1.0
RELOAD_ANSWER_TIMEOUT = 30.0  # a worker that has not answered a reload by then is restarted on the common config
# A ready worker that has sent nothing for this long (it sends metrics every METRICS_INTERVAL) is hung: it still
# holds its share of the listen port, so the kernel keeps queueing connections nobody accepts. It is killed.
HEARTBEAT_TIMEOUT = 5.0


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
    await fetch_identity_key(services)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = [0]

    def on_stop_signal() -> None:
        # Counted apart from the supervisor's `stop`: a Ctrl-C reaches the whole process group, this worker and its
        # supervisor (which then sends `stop`) alike, and only a second Ctrl-C cuts the drain short.
        signals[0] += 1
        if signals[0] > 1:
            server.cut_drain()
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, on_stop_signal)
    loop.add_signal_handler(signal.SIGINT, on_stop_signal)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the supervisor coordinates reloads
    try:
        await server.start(reuse_port=True)
    except OSError as exc:
        # Not a crash to restart from: the next attempt would fail the same way. The supervisor stops the
        # gateway and reports it (once, not once per worker).
        cfg = loaded.config
        problem = listen_error("listen.port", cfg.listen.host, cfg.listen.port, exc)
        await _send(writer, {"op": "fatal", "problem": str(problem)})
        raise SystemExit(2) from None
    await _send(writer, {"op": "ready", "index": index, "port": server.ports[0]})
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
                except Exception as exc:  # fail closed, and keep reading commands
                    new, problems = None, [unexpected(msg["source"], exc)]
                # The problems of this worker's own build too (a secret file the supervisor's dry run does not
                # read), so the supervisor can say why.
                problems = try_reload(server, current[0], new, problems, announce=False)
                if not problems and new is not None:
                    current[0] = new
                await _send(writer, {"op": "reloaded", "ok": not problems, "problems": problems[:5]})
            elif msg["op"] == "stop":
                stop.set()  # and read on: a `cut` may follow
            elif msg["op"] == "cut":  # the supervisor got a second stop signal
                server.cut_drain()
                stop.set()
        stop.set()  # the supervisor went away

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


@dataclass(eq=False)  # identity: workers key the answers of a reload round
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    ready: bool = False
    heard: float | None = None  # when its last message came (monotonic), from its first on; None once it is gone
    killed: bool = False  # by the supervisor, as hung: not ready until it is restarted
    snapshot: Snapshot | None = None
    retired: Snapshot | None = None  # earlier incarnations' counters and histograms, folded (kept monotonic)
    answer: asyncio.Future[dict[str, Any]] | None = None  # its reply to the reload under way


class Supervisor:
    def __init__(
        self,
        path: str,
        loaded: LoadedConfig,
        workers: int,
        env: Mapping[str, str] | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
    ) -> None:
        self.path = path
        self.env = env
        self.clock = clock
        self.heartbeat_timeout = heartbeat_timeout
        # The config every worker accepted (at start, or in a reload they all took): what a restarted one gets.
        self.loaded = loaded
        self.n = workers
        self.workers = [_Worker(i) for i in range(workers)]
        self.stopping = False
        self.fatal: str | None = None  # why the gateway cannot run (a worker could not bind the listen port)
        self._announced = False
        self._stop = asyncio.Event()
        self._one_at_a_time = asyncio.Lock()  # a reload round, or a spawn: a spawn never sees a config half-way
        self._tasks: set[asyncio.Task[None]] = set()
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

    def _connections(self) -> int:
        """Client connections open in the workers, as of their last snapshots."""
        total = 0.0
        for w in self.workers:
            for name, _, value in (w.snapshot or {}).get("gauges", ()):
                if name == "stockade_client_connections":
                    total += value
        return int(total)

    def ready(self) -> bool:
        return not self.stopping and all(w.ready for w in self.workers)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT. Raises ConfigError or ListenError (the CLI exits 2) for what stops the
        gateway from starting, including a listen port the workers cannot bind."""
        cfg = self.loaded.config
        loop = asyncio.get_running_loop()
        # Before anything can report ready: a SIGHUP's default action is to terminate the process.
        loop.add_signal_handler(signal.SIGTERM, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGINT, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._background(self.reload()))
        # Refuse to start (not to crash-loop workers) with a pepper or KEK other than the store's: built as
        # `config check` builds it to learn whether the routes use the store at all.
        probe = Services(clock=SYSTEM_CLOCK, workers=self.n, dry_run=True)
        built = build_runtime(self.loaded, probe)
        log_load_warnings(built)  # here, once: the workers say nothing of them
        fd_limit.raise_soft_limit()  # the workers inherit it
        fd_limit.warn_if_short(cfg.limits.max_client_connections)  # per worker: each holds its own connections
        self.needs = built.needs
        if STORE_KEY in probe.shared:
            try:
                shared_store(self.services)
            except StorageError as exc:  # made, not reached: the URL itself is unusable
                raise ConfigError([f"storage: {exc}"]) from None
            await verify_store_secrets(self.services)
        if USERNAME_KEY in probe.shared:  # the same refusal for a pepper other than the limits backend's
            try:
                username_key(self.services, "login routes")
            except SecretsError as exc:
                raise ConfigError([f"secrets: {exc}"]) from None
            await verify_username_key(self.services)
        if (busy := _listen_port_taken(cfg.listen.host, cfg.listen.port)) is not None:
            # Workers bind with SO_REUSEPORT, which would let them join another gateway's port silently and
            # answer half its connections under this config: refuse to start, as a single process does.
            raise listen_error("listen.port", cfg.listen.host, cfg.listen.port, OSError(0, busy))
        if cfg.admin.enabled:
            # Bound before any worker binds the listen port: an admin port that is taken (or is the listen port)
            # fails here, once, instead of in every worker.
            state = AdminState(self.snapshot, self.ready, self.services, lambda: self.needs)
            self.admin = AdminServer(admin_app(state), cfg.admin.host, cfg.admin.port)
            try:
                self.admin.bind()
            except OSError as exc:
                raise listen_error("admin.port", cfg.admin.host, cfg.admin.port, exc) from None
        for w in self.workers:
            await self._spawn(w)
        self._background(self._heartbeats())
        if self.admin is not None and self.fatal is None:
            await self.admin.start()
        await self._stop.wait()
        if self.fatal is None:
            log.info("draining", extra={"workers": self.n, "connections": self._connections()})
        await self.stop()
        if self.fatal is not None:
            raise ListenError(self.fatal)

    def _announce(self, port: int) -> None:
        """The start-up line, as a single process writes it (`port`: the one the workers bound)."""
        cfg = self.loaded.config
        admin = self.admin
        log.info(
            "stockade supervisor serving",
            extra={
                "workers": self.n,
                "listen": listener_url("https" if cfg.listen.tls else "http", cfg.listen.host, port),
                "admin": listener_url("http", cfg.admin.host, admin.port) if admin is not None else "off",
                "routes": len(cfg.routes),
                "data_plane": native.status,
            },
        )

    def _on_stop_signal(self) -> None:
        """SIGTERM/SIGINT: drain. A second one: every worker cuts its drain short (`cut`)."""
        if not self._stop.is_set():
            self._stop.set()
            return
        log.warning("second stop signal: the workers cut their drain short")
        for w in self.workers:
            if w.writer is not None and not w.writer.is_closing():
                w.writer.write(orjson.dumps({"op": "cut"}) + b"\n")

    async def _spawn(self, w: _Worker) -> None:
        async with self._one_at_a_time:  # after a reload round has settled what the workers run
            if self.stopping:
                return
            parent, child = socket.socketpair()
            args = [sys.executable, "-m", "stockade", "serve", "--config", self.path, "--workers", str(self.n)]
            args += ["--worker-fd", str(child.fileno()), "--worker-index", str(w.index)]
            w.proc = await asyncio.create_subprocess_exec(*args, pass_fds=(child.fileno(),))
            child.close()
            reader, w.writer = await asyncio.open_connection(sock=parent)
            loaded = self.loaded  # what the worker runs: see config_from_supervisor
            await _send(w.writer, {"op": "config", **_config_message(loaded)})
            w.ready = w.killed = False
            w.heard = None
            self._background(self._watch(w, reader))

    async def _watch(self, w: _Worker, reader: asyncio.StreamReader) -> None:
        while line := await _read_line(reader):
            msg = orjson.loads(line)
            op = msg["op"]
            w.heard = self.clock.monotonic()
            if op == "ready":
                w.ready = True
                if not self._announced and all(x.ready for x in self.workers):
                    self._announced = True  # once every worker listens: one that cannot stops the gateway
                    self._announce(int(msg.get("port") or self.loaded.config.listen.port))
            elif op == "metrics":
                w.snapshot = msg["snap"]
            elif op == "reloaded":
                if w.answer is not None and not w.answer.done():
                    w.answer.set_result(msg)
            elif op == "fatal" and self.fatal is None:
                # A listen port this worker cannot bind, the others cannot either: stop, do not restart for ever.
                self.fatal = str(msg.get("problem") or "a worker could not start")
                self.stopping = True
                self._stop.set()
        w.ready = False
        w.heard = None
        if w.answer is not None and not w.answer.done():
            w.answer.set_result({"op": "gone"})
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

    async def _heartbeats(self) -> None:
        """Kill a worker that has sent nothing for `heartbeat_timeout`: a hung or stopped one answers no connection
        the kernel gives it, no reload and no stop. Its control socket then closes and _watch restarts it. A worker
        asked to reload is left to that round's own timeout (a large config can take its loop a while to build)."""
        last = self.clock.monotonic()
        while not self.stopping:
            await asyncio.sleep(METRICS_INTERVAL)
            now = self.clock.monotonic()
            held_up = now - last > 2 * METRICS_INTERVAL  # this loop itself was (a long dry-run build): nothing read
            last = now
            for w in self.workers:
                if w.heard is None or w.answer is not None:
                    continue
                if held_up:
                    w.heard = now
                elif now - w.heard > self.heartbeat_timeout:
                    self._kill(w, f"sent nothing for {now - w.heard:.0f} s (hung or stopped)")

    def _kill(self, w: _Worker, why: str) -> None:
        """SIGKILL, the one signal a stopped process acts on; not ready from now on. _watch restarts it."""
        w.ready = False
        w.killed = True
        w.heard = None
        if w.proc is not None and w.proc.returncode is None:
            log.error("worker %d %s; killing it", w.index, why)
            w.proc.kill()

    async def reload(self) -> None:
        """SIGHUP: check the file, send it to every worker, and keep it only if every worker took it. Never
        raises: whatever goes wrong is a refused reload, logged and counted."""
        async with self._one_at_a_time:
            try:
                await self._reload()
            except Exception as exc:
                self.reloads["error"] += 1
                log.error("reload refused, configuration unchanged: %s", unexpected(self.path, exc))

    async def _reload(self) -> None:
        new, problems = await load_for_reload(self.path, env=self.env, clock=self.clock)
        if new is not None and (blocked := restart_only_changes(self.loaded, new)):
            problems = [f"{new.source}: reload cannot change {', '.join(blocked)}; restart instead"]
            new = None
        if new is not None:
            # Built once here as `config check` builds it (touching no store or secret file): what fails to build
            # (a spec or key file, the decision log's target) is refused before any worker sees it.
            try:
                built = build_runtime(new, Services(clock=SYSTEM_CLOCK, workers=self.n, dry_run=True))
                log_load_warnings(built)
                fd_limit.warn_if_short(new.config.limits.max_client_connections)
                needs = built.needs
            except ConfigError as exc:
                problems, new = exc.problems, None
            except Exception as exc:
                problems, new = [unexpected(new.source, exc)], None
        if new is None:
            self.reloads["error"] += 1
            for problem in problems:
                log.error("reload refused, configuration unchanged: %s", problem)
            return
        answers = await self._ask(self.workers, new)
        refused = {w.index: answer for w, answer in answers.items() if answer is not None}
        if not refused:
            # Workers that were restarting (no answer) are spawned after this round, with this config.
            self.loaded = new
            self.needs = needs
            self.reloads["ok"] += 1
            apply_level(new.config.log.level)  # the supervisor's own lines, as the workers' (ProxyServer.reload)
            for w in answers:
                w.ready = not w.killed  # (again, if it had been left on another config by an earlier round)
            log.info("configuration reloaded by every worker", extra={"workers": self.n})
            return
        # All workers serve one config: the ones that took the new one go back to the previous one, which the
        # others still run (a worker's reload is all-or-nothing, so a refusal leaves it as it was).
        self.reloads["error"] += 1
        for index, why in sorted(refused.items()):
            for problem in why:
                log.error("worker %d refused the reload: %s", index, problem)
        back = await self._ask([w for w, answer in answers.items() if answer is None], self.loaded)
        for w in answers:
            w.ready = not w.killed and (w not in back or back[w] is None)
        for w, answer in back.items():
            for problem in answer or ():
                log.error(
                    "worker %d took the reload, could not return to the previous configuration, and is not ready: %s",
                    w.index,
                    problem,
                )
        log.error(
            "reload refused, configuration unchanged: %d of %d workers refused it; every worker keeps the "
            "previous configuration",
            len(refused),
            self.n,
        )

    async def _ask(self, workers: list[_Worker], loaded: LoadedConfig) -> dict[_Worker, list[str] | None]:
        """Send `loaded` to each live worker and wait for its answer: None if it applied it, else why not. A
        worker that goes away meanwhile is left out (it is restarted, after this round, with `self.loaded`); one
        that does not answer in time is counted as refusing, and killed (so restarted, on `self.loaded`)."""
        loop = asyncio.get_running_loop()
        asked: list[_Worker] = []
        for w in workers:
            if w.writer is None or (w.proc is not None and w.proc.returncode is not None):
                continue
            w.answer = loop.create_future()
            try:
                await _send(w.writer, {"op": "reload", **_config_message(loaded)})
            except ConnectionError:
                w.answer = None
                continue
            asked.append(w)
        out: dict[_Worker, list[str] | None] = {}
        for w in asked:
            assert w.answer is not None  # noqa: S101  (set above; for the type checker)
            try:
                msg = await asyncio.wait_for(asyncio.shield(w.answer), RELOAD_ANSWER_TIMEOUT)
            except TimeoutError:
                msg = {"op": "reloaded", "ok": False, "problems": [f"no answer in {RELOAD_ANSWER_TIMEOUT:g} s"]}
                # It may apply it later, or be hung (a stopped process ignores SIGTERM): a restart puts it on the
                # common config either way.
                self._kill(w, f"did not answer the reload in {RELOAD_ANSWER_TIMEOUT:g} s")
            finally:
                w.answer = None
            if msg["op"] == "gone":
                continue
            out[w] = None if msg.get("ok") else list(msg.get("problems") or ["(the worker gave no reason)"])
        return out

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
        if self.fatal is None:
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


def _config_message(loaded: LoadedConfig) -> dict[str, Any]:
    return {"text": loaded.text, "source": loaded.source, "base_dir": str(loaded.base_dir)}


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    """A worker's next message; b"" once it is gone, however it went (a worker killed mid-write resets the
    socket: the supervisor restarts it, it does not log a traceback)."""
    try:
        return await reader.readline()
    except ConnectionError:
        return b""


async def supervise(path: str, loaded: LoadedConfig, workers: int, env: Mapping[str, str] | None = None) -> None:
    await Supervisor(path, loaded, workers, env).run()
