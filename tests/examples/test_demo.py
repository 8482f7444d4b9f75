"""The demo (`make demo`): its policy loads, run.py starts and stops real processes on real ports, and every
example the banner prints answers as the banner promises (the examples are run.py's own `EXAMPLES` data)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .demo_support import DEMO, ROOT, Demo, call, children_of, free_ports, run, start_demo, stop_demo

pytestmark = pytest.mark.slow

STOCKADE = Path(sys.executable).parent / "stockade"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_demo_config_passes_config_check() -> None:
    result = subprocess.run(
        [str(STOCKADE), "config", "check", str(DEMO / "stockade.yaml")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "OK (14 routes" in result.stdout


def test_banner_prints_every_example_with_its_promised_status(demo: Demo) -> None:
    banner = demo.banner()
    for ex in run.EXAMPLES:
        promise = f"{ex.status} {ex.reason}" if ex.reason else str(ex.status)
        assert f"# {ex.says}  -> {promise}\n  {ex.curl(demo.ports, ROOT)}\n" in banner
    assert f"tail -f {demo.state / 'decisions.log'}" in banner


@pytest.mark.parametrize(
    "example", run.EXAMPLES, ids=[f"{i:02d}-{e.method}-{e.target}{e.path}" for i, e in enumerate(run.EXAMPLES)]
)
def test_example_answers_as_the_banner_promises(demo: Demo, example: Any) -> None:
    status, headers, body = call(
        demo.port(example.target), example.method, example.path, example.body_bytes(), example.headers
    )
    assert status == example.status, body
    for name in example.has_headers:
        assert name in headers, f"{name} missing from {sorted(headers)}"
    for name in example.lacks_headers:
        assert name not in headers, f"{name} leaked: {headers[name]}"
    if example.contains is not None:
        assert example.contains in body.decode()
    if example.reason is not None:
        problem = json.loads(body)
        assert headers["content-type"] == "application/problem+json"
        assert problem["reason"] == example.reason
        logged = demo.decision(problem["request_id"])
        assert (logged["decision"], logged["reason"], logged["status"]) == ("deny", example.reason, status)


def test_gateway_strips_client_identity_and_api_sees_the_anonymous_principal(demo: Demo) -> None:
    forged = (("X-Stockade-Principal", "alice"), ("X-Stockade-Anonymous", "false"))
    status, _, body = call(demo.ports.gateway, "GET", "/me", None, forged)
    assert status == 200
    assert json.loads(body) == {"principal": "anonymous", "anonymous": True, "user": None}


def test_demo_keeps_its_log_and_config_copy_in_the_state_dir(demo: Demo) -> None:
    assert (demo.state / "decisions.log").is_file()
    config_copy = demo.state / "demo-stockade.yaml"
    assert f"http://127.0.0.1:{demo.ports.upstream}" in config_copy.read_text()
    assert "http://127.0.0.1:9000" not in config_copy.read_text()


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_signal_stops_the_gateway_and_the_api_and_frees_the_ports(tmp_path: Path, sig: signal.Signals) -> None:
    d = start_demo(tmp_path)
    try:
        children = children_of(d.proc.pid)
        commands = [cmdline(pid) for pid in children]
        assert len(commands) == 2, commands
        assert any("examples/demo/api.py --port" in c for c in commands), commands
        assert any("stockade serve --config" in c for c in commands), commands
        assert stop_demo(d, sig) == 0, d.err.read_text()
    finally:
        stop_demo(d)  # a failed assertion above must not leave the demo running
    assert f"{sig.name} received" in d.err.read_text()
    assert [pid for pid in children if alive(pid)] == []
    for port in (d.ports.gateway, d.ports.admin, d.ports.upstream):
        assert not run.port_in_use(port), port


def test_a_busy_port_fails_fast_and_names_the_flag(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        admin, upstream = free_ports(2)
        cmd = [sys.executable, str(DEMO / "run.py"), "--port", str(busy), "--admin-port", str(admin)]
        cmd += ["--upstream-port", str(upstream), "--state-dir", str(tmp_path / "state")]
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"port {busy} (gateway) is already in use" in result.stderr
    assert "--port" in result.stderr
    assert not (tmp_path / "state").exists()  # failed before doing anything


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "7000", "--admin-port", "7000"], "must differ"),
        (["--port", "70000"], "not a TCP port"),
    ],
    ids=["same-port-twice", "port-out-of-range"],
)
def test_bad_port_arguments_are_usage_errors(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, str(DEMO / "run.py"), *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert message in result.stderr
