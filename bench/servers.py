"""Starting, probing and stopping what the benchmark runs: the upstream and the proxy of each profile."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import procfs
from bench.profiles import Profile, SetupEnv
from bench.upstream import BODY
from stockade import native

ROOT = Path(__file__).resolve().parent.parent
PATH = "/api/items/42"
# Clients and upstreams keep their connections for the whole run: we measure steady-state proxying, not
# connection churn. Both proxies get the same setting (both default to 1000 requests per connection).
KEEPALIVE_REQUESTS = 1_000_000
STARTUP_SECONDS = 20.0


class BenchError(RuntimeError):
    """Something the benchmark started did not come up or did not answer as expected."""


@dataclass
class Server:
    """A started process tree listening on `port`. `pids` are the processes whose CPU time is measured."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    pids: list[int] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    decision_log: Path | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    """A preexec function pinning the child (and so everything it forks) to `cpus` before it runs."""
    if cpus is None:
        return None
    frozen = set(cpus)
    return lambda: os.sched_setaffinity(0, frozen)


def spawn(name: str, cmd: Sequence[str], workdir: Path, cpus: set[int] | None, port: int) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    # The bench config is the config; STOCKADE_NATIVE=off still reaches the gateway, to measure the pure modules.
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_") or k == native.NATIVE_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with open(workdir / "output.log", "wb") as out:
        proc = subprocess.Popen(
            list(cmd), stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=env, preexec_fn=pinned(cpus)
        )
    return Server(name, proc, port, workdir)


def _tail(server: Server) -> str:
    text = ""
    for log in sorted(server.workdir.glob("*.log")):
        if log != server.decision_log:
            text += f"--- {log.name}\n" + log.read_text(errors="replace")[-2000:]
    return text


def probe(server: Server, expect_headers: Mapping[str, str | None] | None = None) -> None:
    """Wait until `server` answers GET PATH with 200 and the upstream's body (and the expected headers)."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        if server.proc.poll() is not None:
            raise BenchError(f"{server.name} exited with {server.proc.returncode}\n{_tail(server)}")
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        try:
            conn.request("GET", PATH, headers=server.headers)
            resp = conn.getresponse()
            body = resp.read()
            got = {k.lower(): v for k, v in resp.getheaders()}
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(f"{server.name} did not answer on port {server.port}\n{_tail(server)}") from None
            time.sleep(0.1)
            continue
        finally:
            conn.close()
        break
    if resp.status != 200 or body != BODY:
        raise BenchError(f"{server.name}: GET {PATH} answered {resp.status} {body[:200]!r}, expected 200 {BODY!r}")
    for name, want in (expect_headers or {}).items():
        if got.get(name) != want:
            raise BenchError(f"{server.name}: response header {name} is {got.get(name)!r}, expected {want!r}")
    server.pids = procfs.tree_pids(server.proc.pid)


def stop(server: Server) -> None:
    """SIGTERM the process (nginx: fast shutdown; stockade: drain), SIGKILL its tree if it lingers."""
    if server.proc.poll() is None:
        pids = procfs.tree_pids(server.proc.pid)
        server.proc.terminate()
        try:
            server.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            server.proc.wait()


_NGINX_MAIN = """worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests {keepalive};
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{body}}}
"""

_NGINX_UPSTREAM = """    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ default_type application/json; return 200 '{payload}'; }}
    }}
"""

_NGINX_PROXY = """    upstream backend {{
        server 127.0.0.1:{upstream};
        keepalive 64;
        keepalive_requests {keepalive};
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""


def start_nginx(name: str, workdir: Path, cpus: set[int] | None, upstream: int | None = None) -> Server:
    """nginx with its own prefix: a fixed JSON answer (upstream=None) or a keep-alive `proxy_pass` to it."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    if upstream is None:
        body = _NGINX_UPSTREAM.format(port=port, payload=BODY.decode())
    else:
        body = _NGINX_PROXY.format(port=port, upstream=upstream, keepalive=KEEPALIVE_REQUESTS)
    conf = workdir / "nginx.conf"
    conf.write_text(_NGINX_MAIN.format(prefix=workdir, keepalive=KEEPALIVE_REQUESTS, body=body))
    cmd = ["nginx", "-p", f"{workdir}/", "-c", str(conf), "-e", str(workdir / "error.log")]
    return spawn(name, cmd, workdir, cpus, port)


def start_floor(name: str, workdir: Path, cpus: set[int] | None, upstream: int) -> Server:
    """The floor proxy (bench/floor_proxy.py): the design with none of stockade's per-request work."""
    port = free_port()
    return spawn(name, [sys.executable, "-m", "bench.floor_proxy", str(port), str(upstream)], workdir, cpus, port)


def start_builtin_upstream(workdir: Path, cpus: set[int] | None) -> Server:
    port = free_port()
    return spawn("upstream", [sys.executable, "-m", "bench.upstream", "--port", str(port)], workdir, cpus, port)


def stockade_config(profile: Profile, port: int, upstream: int, workdir: Path) -> dict[str, Any]:
    """A complete gateway config: one worker, admin off, the store and decision log in the profile's directory."""
    route = {
        "id": "bench",
        "match": {"path": "/**"},
        "upstream": f"http://127.0.0.1:{upstream}",
        "stages": [dict(s) for s in profile.stages],
    }
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port, "backlog": 4096},
        "admin": {"enabled": False},
        "workers": 1,
        "storage": f"sqlite:///{workdir}/stockade.db",
        "limits": {"keepalive_requests": KEEPALIVE_REQUESTS},
        "log": {"decisions": str(workdir / "decisions.log") if profile.decision_log else "off"},
        "routes": [route],
    }
    config.update(profile.gateway)
    return config


def start_stockade(profile: Profile, workdir: Path, cpus: set[int] | None, upstream: int) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    path = workdir / "stockade.yaml"
    path.write_text(yaml.safe_dump(stockade_config(profile, port, upstream, workdir), sort_keys=False))
    headers = dict(profile.headers)
    if profile.setup is not None:
        headers.update(profile.setup(SetupEnv(workdir=workdir, config=path, python=sys.executable)))
    cmd = [sys.executable, "-m", "stockade", "serve", "--config", str(path), "--workers", "1"]
    server = spawn(profile.name, cmd, workdir, cpus, port)
    server.headers = headers
    server.decision_log = workdir / "decisions.log" if profile.decision_log else None
    return server
