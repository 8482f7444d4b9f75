"""Helpers for the demo tests: run.py loaded as a module, free ports, a plain HTTP client, starting and stopping
the demo as a real process (run.py, which starts the API and the gateway)."""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo"
HOST = "127.0.0.1"


def load_script(name: str, path: Path) -> ModuleType:
    """A demo script as a module (the demo is scripts, not part of the package), loaded once."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


# run.py imports demo_tour by that name (run as a script, its directory is on sys.path): load it first.
tour = load_script("demo_tour", DEMO / "demo_tour.py")  # SECTIONS, EXAMPLES, Ports, BANNER_END
run = load_script("stockade_demo_run", DEMO / "run.py")  # port_in_use, the process handling


def free_ports(n: int) -> list[int]:
    """n distinct ports free right now (held open together so they differ, then released)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a real process's observable state until `condition` holds; the timeout only bounds a failure."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def call(
    port: int, method: str, path: str, body: bytes | None = None, headers: Sequence[tuple[str, str]] = ()
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=dict(headers))
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@dataclass
class Demo:
    """A running `run.py`: its process, ports, state directory and captured output."""

    proc: subprocess.Popen[bytes]
    ports: Any  # tour.Ports
    state: Path
    out: Path
    err: Path
    key: str = ""  # the API key the banner printed
    client_id: str = ""  # the OAuth2 client the banner printed
    client_secret: str = ""
    token: str = ""  # a token for that client, fetched on first use

    def banner(self) -> str:
        return self.out.read_text()

    def values(self) -> dict[str, str]:
        """What the banner's shell variables hold, by placeholder (tour.KEY, ...): the examples' real values."""
        if not self.token:
            form = f"grant_type=client_credentials&client_id={self.client_id}&client_secret={self.client_secret}"
            status, _, body = call(self.ports.gateway, "POST", "/oauth2/token", form.encode(), [tour.FORM])
            assert status == 200, body
            self.token = json.loads(body)["access_token"]
        return {tour.KEY: self.key, tour.CLIENT_ID: self.client_id, tour.CLIENT_SECRET: self.client_secret} | {
            tour.TOKEN: self.token
        }

    def shell_setup(self) -> str:
        """The banner's KEY=, CLIENT_ID=, CLIENT_SECRET= and TOKEN= lines, as printed, for bash."""
        wanted = ("KEY=", "CLIENT_ID=", "CLIENT_SECRET=", "TOKEN=")
        lines = [line.strip() for line in self.banner().splitlines() if line.strip().startswith(wanted)]
        assert [line.split("=", 1)[0] for line in lines] == [w[:-1] for w in wanted], lines
        return "\n".join(lines) + "\n"

    def port(self, target: str) -> int:
        return int(getattr(self.ports, target))

    def decision(self, request_id: str) -> dict[str, Any]:
        """The decision log line of one request (the log is flushed on a short timer, so poll for it)."""
        log = self.state / "decisions.log"
        found: list[dict[str, Any]] = []

        def look() -> bool:
            lines = log.read_text().splitlines() if log.exists() else []
            found[:] = [e for e in map(json.loads, lines) if e["request_id"] == request_id]
            return bool(found)

        wait_for(look, 15, f"the decision line of request {request_id}")
        return found[0]


def start_demo(tmp: Path) -> Demo:
    """run.py on free ports, the banner awaited. The upstream port is never 9000, so the config copy is used."""
    ports = tour.Ports(*free_ports(3))
    out, err = tmp / "stdout", tmp / "stderr"
    cmd = [sys.executable, str(DEMO / "run.py"), "--port", str(ports.gateway), "--admin-port", str(ports.admin)]
    cmd += ["--upstream-port", str(ports.upstream), "--state-dir", str(tmp / "state")]
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=o, stderr=e, stdin=subprocess.DEVNULL)
    demo = Demo(proc, ports, tmp / "state", out, err)
    try:
        wait_for(lambda: tour.BANNER_END in demo.banner() or proc.poll() is not None, 90, "the demo banner")
        assert proc.poll() is None, f"run.py exited early with {proc.returncode}: {err.read_text()}"
        printed = {
            name: re.search(rf"^  {name}=(\S+)$", demo.banner(), re.MULTILINE)
            for name in ("KEY", "CLIENT_ID", "CLIENT_SECRET")
        }
        assert all(printed.values()), demo.banner()
        demo.key, demo.client_id, demo.client_secret = (m.group(1) for m in printed.values() if m is not None)
    except BaseException:
        stop_demo(demo)
        raise
    return demo


def children_of(pid: int) -> list[int]:
    """Direct children of a process, from /proc (Linux)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def stop_demo(demo: Demo, sig: signal.Signals = signal.SIGINT) -> int:
    """Ctrl-C (SIGINT, as a terminal sends it) by default; the return code of run.py. If run.py does not
    stop, it is killed along with its children, so a failing test never leaves servers behind."""
    if demo.proc.poll() is None:
        children = children_of(demo.proc.pid)
        demo.proc.send_signal(sig)
        try:
            demo.proc.wait(30)
        except subprocess.TimeoutExpired:
            demo.proc.kill()
            demo.proc.wait()
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    return demo.proc.returncode
