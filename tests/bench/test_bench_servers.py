"""Starting, probing and stopping the benchmark's processes (bench/servers.py), for real."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Mapping
from pathlib import Path

import pytest
from bench.profiles import Profile, SetupEnv
from bench.upstream import BODY

from bench import procfs, servers

pytestmark = pytest.mark.slow


def test_builtin_upstream_answers_the_fixed_body_and_stops(tmp_path: Path) -> None:
    up = servers.start_builtin_upstream(tmp_path / "up", None)
    try:
        servers.probe(up)  # raises unless 200 and the exact body
        assert up.pids == [up.proc.pid]
        assert procfs.cpu_seconds(up.pids) >= 0
        assert procfs.rss_bytes(up.pids) > 0
    finally:
        servers.stop(up)
    assert up.proc.returncode is not None


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_proxy_is_master_and_worker_pinned_to_the_given_cpu(tmp_path: Path) -> None:
    cpu = min(os.sched_getaffinity(0))
    up = servers.start_nginx("upstream", tmp_path / "up", None)
    try:
        servers.probe(up)
        proxy = servers.start_nginx("nginx", tmp_path / "proxy", {cpu}, upstream=up.port)
        try:
            servers.probe(proxy)
            assert len(proxy.pids) == 2  # master + one worker
            assert set(map(tuple, procfs.affinity(proxy.pids).values())) == {(cpu,)}
        finally:
            servers.stop(proxy)
    finally:
        servers.stop(up)


def test_stockade_setup_hook_runs_before_start_and_adds_headers(tmp_path: Path) -> None:
    seen: list[SetupEnv] = []

    def setup(env: SetupEnv) -> Mapping[str, str]:
        seen.append(env)
        assert env.config.exists()  # the hook may run `stockade ... --config` against it
        return {"X-Bench-Key": "from-setup"}

    profile = Profile("t", "stockade", "test", stages=({"use": "anonymous"},), headers={"X-A": "1"}, setup=setup)
    up = servers.start_builtin_upstream(tmp_path / "up", None)
    try:
        servers.probe(up)
        gw = servers.start_stockade(profile, tmp_path / "gw", None, up.port)
        try:
            servers.probe(gw)
            assert gw.headers == {"X-A": "1", "X-Bench-Key": "from-setup"}
            assert [e.workdir for e in seen] == [tmp_path / "gw"]
            assert gw.decision_log == tmp_path / "gw" / "decisions.log"
        finally:
            servers.stop(gw)
    finally:
        servers.stop(up)


def test_probe_reports_a_proxy_that_exits(tmp_path: Path) -> None:
    profile = Profile("bad", "stockade", "test")  # a route without an authenticator: the loader refuses it
    gw = servers.start_stockade(profile, tmp_path / "gw", None, 9)
    try:
        with pytest.raises(servers.BenchError, match="bad exited") as err:
            servers.probe(gw)
        assert "stockade.yaml" in str(err.value)  # the gateway's own error message is shown
    finally:
        servers.stop(gw)


def test_floor_proxy_forwards_keep_alive_and_pipelined_requests_in_order(tmp_path: Path) -> None:
    """The floor row is only a fair reference if it really proxies: each answer is the upstream's, in order."""
    up = servers.start_builtin_upstream(tmp_path / "up", None)
    try:
        servers.probe(up)
        floor = servers.start_floor("python-floor", tmp_path / "floor", None, up.port)
        try:
            servers.probe(floor)
            request = f"GET {servers.PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            with socket.create_connection(("127.0.0.1", floor.port), timeout=5) as sock:
                sock.sendall(request * 3)  # pipelined: answered one after another on the pooled upstream
                got = b""
                while got.count(BODY) < 3:
                    chunk = sock.recv(65536)
                    assert chunk, f"closed after {got!r}"
                    got += chunk
            assert got.count(b"HTTP/1.1 200 ") == 3
        finally:
            servers.stop(floor)
    finally:
        servers.stop(up)
