"""Loading a target with wrk or the built-in generator, and reading CPU time of the measured processes."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from collections.abc import Mapping
from typing import Any, Protocol

from bench import procfs
from bench.servers import PATH, ROOT, pinned

_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
_LATENCY = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_TOTAL = re.compile(r"^\s+(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


class Runner(Protocol):
    """One load run against 127.0.0.1:`port`, reading the CPU time of each named group of pids around it."""

    def __call__(
        self,
        port: int,
        headers: Mapping[str, str],
        connections: int,
        seconds: int,
        cpus: set[int] | None,
        groups: Mapping[str, list[int]],
    ) -> dict[str, Any]: ...


def parse_wrk(text: str) -> dict[str, Any]:
    """req/s, p50, p99 (µs), the request count and window, and errors from `wrk --latency` output."""
    latency = {q: float(v) * _UNITS[u] for q, v, u in _LATENCY.findall(text)}
    total, rps = _TOTAL.search(text), _RPS.search(text)
    if total is None or rps is None or set(latency) != {"50", "99"}:
        raise ValueError(f"cannot parse wrk output:\n{text}")
    socket_errors = _SOCKET.search(text)
    non_2xx = _NON_2XX.search(text)
    return {
        "tool": "wrk",
        "requests": int(total.group(1)),
        "seconds": float(total.group(2)) * _UNITS[total.group(3)] / 1e6,
        "rps": float(rps.group(1)),
        "p50_us": latency["50"],
        "p99_us": latency["99"],
        "errors": {
            "status": int(non_2xx.group(1)) if non_2xx else 0,
            "socket": sum(int(x) for x in socket_errors.groups()) if socket_errors else 0,
        },
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(
    port: int,
    headers: Mapping[str, str],
    connections: int,
    seconds: int,
    cpus: set[int] | None,
    groups: Mapping[str, list[int]],
) -> dict[str, Any]:
    """One wrk run. CPU of `groups` is read just before wrk starts and just after it exits: outside wrk's own
    window the processes are idle, so the difference is their work for the requests wrk counted."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    cmd.append(f"http://127.0.0.1:{port}{PATH}")
    before = {name: procfs.cpu_split(pids) for name, pids in groups.items()}
    wrk_before = _children_cpu()
    done = subprocess.run(
        cmd, capture_output=True, text=True, check=False, timeout=seconds + 60, preexec_fn=pinned(cpus)
    )
    cpu, kernel = procfs.cpu_spent(groups, before)
    cpu["loadgen"] = _children_cpu() - wrk_before  # wrk is the only child reaped in between
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    result = parse_wrk(done.stdout)
    result["cpu_seconds"] = cpu
    result["kernel_cpu_seconds"] = kernel
    return result


def run_builtin(
    port: int,
    headers: Mapping[str, str],
    connections: int,
    seconds: int,
    cpus: set[int] | None,
    groups: Mapping[str, list[int]],
) -> dict[str, Any]:
    """One run of bench/loadgen.py, which reads the CPU of `groups` at exactly its window's start and end."""
    cmd = [sys.executable, "-m", "bench.loadgen", "--port", str(port), "--path", PATH]
    cmd += ["--connections", str(connections), "--duration", str(seconds)]
    for name, value in headers.items():
        cmd += ["--header", f"{name}: {value}"]
    for name, pids in groups.items():
        cmd += ["--cpu", f"{name}={','.join(map(str, pids))}"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(
        cmd, capture_output=True, text=True, check=False, timeout=seconds + 60, env=env, preexec_fn=pinned(cpus)
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench/loadgen.py failed ({done.returncode}): {done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


_: list[Runner] = [run_wrk, run_builtin]
