"""Redis for the tests: the shared server (mandatory under CI=true) with a fresh key prefix per test, and
private `redis-server` processes for outage and recovery tests."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_URL_ENV = "STOCKADE_TEST_REDIS_URL"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def _ping(host: str, port: int, timeout: float = 2.0) -> None:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"PING\r\n")
        if not sock.recv(64).startswith(b"+PONG"):
            raise OSError("no PONG")


def require_redis() -> str:
    """The shared test Redis URL; fails under CI=true when unreachable, else skips saying why."""
    url = os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS)
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    try:
        _ping(host, int(port))
    except OSError as exc:
        reason = f"Redis at {url} unreachable ({exc}); set {REDIS_URL_ENV} to use another"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires Redis: {reason}")
        pytest.skip(reason)
    return url


def fresh_redis_url() -> str:
    """The shared Redis with a prefix no other test (or engineer) uses."""
    return f"{require_redis()}?prefix=t{secrets.token_hex(6)}:"


def redis_command(url: str, *args: str) -> str:
    """Run one redis-cli command against the server of `url` (test assertions only)."""
    host_port = url.split("//", 1)[1].split("/", 1)[0].split("?", 1)[0]
    host, _, port = host_port.rpartition(":")
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli is not installed")
    out = subprocess.run([cli, "-h", host, "-p", port, *args], capture_output=True, text=True, timeout=10, check=True)
    return out.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A `redis-server` of our own on a free port, which a test may stop and start again (an outage)."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("CI") == "true":
                pytest.fail("CI=true requires redis-server for the outage tests")
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen([*args, "--dir", str(self.workdir)], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                _ping("127.0.0.1", self.port, 0.5)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)  # waiting for a real process to listen, not timing the code under test

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def closed_port_url() -> str:
    """A Redis URL nothing listens on: every call fails at once (connection refused)."""
    return f"redis://127.0.0.1:{free_port()}/0"


class Monitor:
    """Redis MONITOR on its own connection: the commands clients sent (commands run by scripts are tagged
    `lua` by Redis and left out), read up to a marker this helper sends itself."""

    def __init__(self, url: str) -> None:
        host_port = url.split("//", 1)[1].split("/", 1)[0]
        host, _, port = host_port.rpartition(":")
        self.addr = (host, int(port))
        self.sock = socket.create_connection(self.addr, timeout=10)
        self.sock.sendall(b"MONITOR\r\n")
        self.buf = b""
        assert self._line() == "+OK"

    def _line(self) -> str:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("monitor connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def client_commands(self) -> list[str]:
        """Commands received since the last call (client-issued only), e.g. ['EVALSHA', ...]."""
        marker = f"monitor-marker-{secrets.token_hex(4)}"
        with socket.create_connection(self.addr, timeout=10) as other:
            other.sendall(f"ECHO {marker}\r\n".encode())
            other.recv(256)
        out = []
        while True:
            line = self._line()
            if marker in line:
                return out
            source = line.split("[", 1)[1].split("]", 1)[0] if "[" in line else ""
            if source.endswith(" lua") or source == "lua":
                continue
            out.append(line.split("] ", 1)[1].split(" ", 1)[0].strip('"').upper())

    def close(self) -> None:
        self.sock.close()
