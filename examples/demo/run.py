"""`make demo`: start the demo API and a Stockade gateway in front of it, print what to try, stop both on Ctrl-C.

The examples the banner prints are data (`EXAMPLES`), shared with tests/examples/test_demo.py, which makes
each request and checks the promised status, so the banner cannot drift from what the demo does.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CONFIG = HERE / "stockade.yaml"
CONFIG_UPSTREAM = "http://127.0.0.1:9000"  # the upstream URL written in stockade.yaml
HOST = "127.0.0.1"
READY_TIMEOUT = 60.0  # seconds; a cold start on a busy 2-core machine takes a few
DECISIONS = "decisions.log"
STOP_TIMEOUT = 10.0  # seconds between TERM and KILL (the gateway drains for at most 5)


@dataclass(frozen=True)
class Ports:
    gateway: int = 8080
    admin: int = 8081
    upstream: int = 9000


@dataclass(frozen=True)
class Example:
    """One request the banner suggests, and what it must answer."""

    says: str
    method: str
    path: str
    status: int
    target: Literal["gateway", "admin", "upstream"] = "gateway"
    reason: str | None = None  # the problem `reason` a gateway denial carries
    headers: tuple[tuple[str, str], ...] = ()
    body: str | None = None
    body_file: str | None = None  # relative to examples/demo/
    contains: str | None = None  # a piece of the response body
    has_headers: tuple[str, ...] = ()
    lacks_headers: tuple[str, ...] = ()
    curl_flags: str = "-si"
    pipe: str = ""  # shell filter appended to the curl command

    def url(self, ports: Ports) -> str:
        return f"http://{HOST}:{getattr(ports, self.target)}{self.path}"

    def curl(self, ports: Ports, cwd: Path | None = None) -> str:
        parts = ["curl", *self.curl_flags.split()]
        if self.method not in ("GET", "HEAD"):
            parts += ["-X", self.method]
        parts.append(self.url(ports))
        for name, value in self.headers:
            parts += ["-H", f"{name}: {value}"]
        if self.body is not None:
            parts += ["-d", self.body]
        if self.body_file is not None:
            parts += ["--data-binary", "@" + _display_path(HERE / self.body_file, cwd or Path.cwd())]
        return " ".join(shlex.quote(p) for p in parts) + (f" | {self.pipe}" if self.pipe else "")

    def body_bytes(self) -> bytes | None:
        if self.body_file is not None:
            return (HERE / self.body_file).read_bytes()
        return None if self.body is None else self.body.encode()


JSON = ("content-type", "application/json")
EXAMPLES: tuple[Example, ...] = (
    Example("A read, open to everyone (anonymous)", "GET", "/books?limit=2", 200, contains='"limit":2'),
    Example(
        "Security headers added, Server header stripped",
        "HEAD",
        "/books/1",
        200,
        curl_flags="-sI",
        has_headers=("x-content-type-options", "cache-control", "x-frame-options"),
        lacks_headers=("server",),
    ),
    Example(
        "...compare the API answering directly",
        "HEAD",
        "/books/1",
        200,
        "upstream",
        curl_flags="-sI",
        has_headers=("server",),
    ),
    Example("Answered by the gateway itself", "GET", "/gateway/health", 200, contains='"answered_by":"stockade"'),
    Example(
        "Identity comes from the gateway: a spoofed X-Stockade-Principal is stripped",
        "GET",
        "/me",
        200,
        headers=(("X-Stockade-Principal", "alice"),),
        contains='"principal":"anonymous"',
        curl_flags="-s",
    ),
    Example("No route for this path: denied", "GET", "/v2/books", 404, reason="route.not_found"),
    Example(
        "Known path, method not allowed (see Allow)",
        "DELETE",
        "/users/1",
        405,
        reason="route.method_not_allowed",
        has_headers=("allow",),
    ),
    Example("A write within the 4 KiB cap", "POST", "/books", 201, headers=(JSON,), body_file="requests/new-book.json"),
    Example(
        "A write over the cap, refused before the API sees it",
        "POST",
        "/books",
        413,
        reason="request.body_too_large",
        headers=(JSON,),
        body_file="requests/too-large-book.json",
    ),
    Example(
        "The API's own validation, field by field",
        "POST",
        "/books",
        422,
        headers=(JSON,),
        body='{"isbn": "12345", "title": "", "price_cents": -1}',
        contains='"field":"isbn"',
    ),
    Example(
        "Ops endpoints only from 10.8.0.0/16; a forged X-Forwarded-For does not help",
        "GET",
        "/admin/stats",
        403,
        reason="ip.denied",
        headers=(("X-Forwarded-For", "10.8.0.5"),),
    ),
    Example(
        "Prometheus metrics on the admin listener",
        "GET",
        "/metrics",
        200,
        "admin",
        contains="stockade_requests_total",
        curl_flags="-s",
        pipe="grep '^stockade_requests_total'",
    ),
)

BANNER_END = "Ctrl-C stops both."


def _display_path(path: Path, cwd: Path) -> str:
    try:
        return str(path.relative_to(cwd))
    except ValueError:
        return str(path)


def banner(ports: Ports, config: Path, decisions: Path, cwd: Path | None = None) -> str:
    cwd = cwd or Path.cwd()
    spec = _display_path(HERE / "openapi.yaml", cwd)
    lines = [
        "",
        "Stockade demo is running",
        f"  gateway   http://{HOST}:{ports.gateway}   policy {_display_path(config, cwd)}",
        f"  admin     http://{HOST}:{ports.admin}   /metrics /healthz /readyz",
        f"  upstream  http://{HOST}:{ports.upstream}   the bookshop API, spec {spec}",
        "",
        "Try, from another terminal:",
    ]
    for ex in EXAMPLES:
        expect = f"{ex.status} {ex.reason}" if ex.reason else str(ex.status)
        lines += ["", f"  # {ex.says}  -> {expect}", f"  {ex.curl(ports, cwd)}"]
    lines += [
        "",
        "Every decision, one JSON line per request (route, principal, decision, reason, stage, status):",
        f"  tail -f {shlex.quote(_display_path(decisions, cwd))}",
        "",
        BANNER_END,
        "",
    ]
    return "\n".join(lines)


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is not "in use"
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # http_proxy must not catch loopback


def ok(url: str) -> bool:
    try:
        with _NO_PROXY.open(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def spawn(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    # Its own process group: a terminal's Ctrl-C reaches only this script, which then stops the gateway
    # first (it drains in-flight requests) and the API after it.
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, process_group=0)


def stop(proc: subprocess.Popen[bytes], name: str) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        print(f"demo: {name} did not stop within {STOP_TIMEOUT:.0f}s; killing it", file=sys.stderr)
        proc.kill()
        proc.wait()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Start the demo API and a Stockade gateway in front of it.")
    parser.add_argument("--port", type=int, default=Ports.gateway, help="gateway port (default 8080)")
    parser.add_argument("--admin-port", type=int, default=Ports.admin, help="admin port (default 8081)")
    parser.add_argument("--upstream-port", type=int, default=Ports.upstream, help="demo API port (default 9000)")
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".stockade", help="SQLite store and decision log")
    args = parser.parse_args(argv)
    for flag, port in (
        ("--port", args.port),
        ("--admin-port", args.admin_port),
        ("--upstream-port", args.upstream_port),
    ):
        if not 1 <= port <= 65535:
            parser.error(f"{flag} {port}: not a TCP port")
    if len({args.port, args.admin_port, args.upstream_port}) != 3:
        parser.error("the gateway, admin and upstream ports must differ")
    return args


def busy_port(ports: Ports) -> str | None:
    """A message naming the first port something else already listens on, if any."""
    for what, flag, port in (
        ("gateway", "--port", ports.gateway),
        ("admin", "--admin-port", ports.admin),
        ("upstream", "--upstream-port", ports.upstream),
    ):
        if port_in_use(port):
            return f"port {port} ({what}) is already in use on {HOST}; free it or pick another with {flag}"
    return None


def gateway_setup(ports: Ports, state: Path) -> tuple[Path, dict[str, str]]:
    """The config file to serve and the environment overrides that point the gateway at these ports and files."""
    config = CONFIG
    if ports.upstream != Ports.upstream:
        # Routes are not overridable from the environment, so the upstream URL is changed in a copy.
        config = state / "demo-stockade.yaml"
        text = CONFIG.read_text(encoding="utf-8").replace(CONFIG_UPSTREAM, f"http://{HOST}:{ports.upstream}")
        config.write_text(text, encoding="utf-8")
    env = dict(os.environ)
    env |= {"STOCKADE_LISTEN__PORT": str(ports.gateway), "STOCKADE_ADMIN__PORT": str(ports.admin)}
    env |= {"STOCKADE_STORAGE": f"sqlite:///{state / 'stockade.db'}", "STOCKADE_LOG__DECISIONS": str(state / DECISIONS)}
    return config, env


def wait_ready(checks: list[tuple[str, subprocess.Popen[bytes], str]], stopping: threading.Event) -> str | None:
    """Poll each readiness URL until it answers 200. Returns why not (a child exited, time ran out) or None."""
    deadline = time.monotonic() + READY_TIMEOUT
    for name, proc, url in checks:
        while not ok(url):
            if proc.poll() is not None:
                return f"the {name} exited with code {proc.returncode} while starting (see above)"
            if stopping.is_set():
                return None
            if time.monotonic() > deadline:
                return f"the {name} was not ready after {READY_TIMEOUT:.0f}s ({url})"
            stopping.wait(0.1)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ports = Ports(args.port, args.admin_port, args.upstream_port)
    stockade = Path(sys.executable).parent / "stockade"  # the console script of this same environment
    problem = busy_port(ports)
    if problem is None and not stockade.exists():
        problem = f"{stockade} not found; run `make install` (or `make demo`, which installs first)"
    if problem is not None:
        print(f"demo: {problem}", file=sys.stderr)
        return 1
    state = args.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    config, env = gateway_setup(ports, state)

    stopping = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signal.Signals(signum).name)
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal went away
        signal.signal(sig, on_signal)

    upstream = spawn([sys.executable, str(HERE / "api.py"), "--port", str(ports.upstream)])
    procs = [("upstream", upstream)]
    try:
        gateway = spawn([str(stockade), "serve", "--config", str(config)], env)
        procs.insert(0, ("gateway", gateway))  # stopped first
        problem = wait_ready(
            [
                ("upstream", upstream, f"http://{HOST}:{ports.upstream}/healthz"),
                ("gateway", gateway, f"http://{HOST}:{ports.admin}/readyz"),
            ],
            stopping,
        )
        if problem is not None:
            print(f"demo: {problem}", file=sys.stderr)
            return 1
        if not stopping.is_set():
            print(banner(ports, config, state / DECISIONS), flush=True)
        while not stopping.wait(0.5):
            for name, proc in procs:
                if proc.poll() is not None:
                    print(f"demo: the {name} exited unexpectedly with code {proc.returncode}", file=sys.stderr)
                    return 1
        print(f"demo: {received[0]} received, stopping the gateway and the API", file=sys.stderr)
        return 0
    finally:
        for name, proc in procs:
            stop(proc, name)


if __name__ == "__main__":
    sys.exit(main())
