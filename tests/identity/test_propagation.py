"""Revocation reaches every worker of a real `stockade serve --workers 2` within about a second."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stockade.testing import TestUpstream

pytestmark = pytest.mark.slow

CONFIG = """
listen: {{host: 127.0.0.1, port: {port}}}
admin: {{enabled: false}}
workers: 2
storage: sqlite:///state/stockade.db
log: {{decisions: "off"}}
routes:
  - id: books
    match: {{path: /books}}
    upstream: {upstream}
    stages:
      - use: api_key
"""
BOUND = 1.0 + 2.0  # the 1 s promise plus slack for a loaded 2-core CI machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stockade(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "stockade", "--config", str(config), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)


def status(port: int, key: str) -> int:
    """One request on a fresh connection (SO_REUSEPORT spreads connections over the workers)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET /books HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n".encode())
        head = sock.recv(64)
    return int(head.split(b" ", 2)[1])


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    with TestUpstream() as up:
        port = free_port()
        config = tmp_path / "stockade.yaml"
        config.write_text(CONFIG.format(port=port, upstream=up.url))
        proc = subprocess.Popen(
            [sys.executable, "-m", "stockade", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(
                            f"gateway did not start: {proc.stderr.read() if proc.stderr else ''}"
                        ) from None
                    time.sleep(0.05)
            yield config, port
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_revocation_reaches_both_workers(gateway: tuple[Path, int]) -> None:
    config, port = gateway
    key = stockade(config, "keys", "create", "--consumer", "alice").stdout.strip().splitlines()[-1]
    other = stockade(config, "keys", "create", "--consumer", "bob").stdout.strip().splitlines()[-1]
    # Many connections so that both workers have looked the key up and hold it in their caches.
    assert {status(port, key) for _ in range(60)} == {200}
    stockade(config, "keys", "revoke", key)
    revoked_at = time.monotonic()
    while True:
        statuses = [status(port, key) for _ in range(20)]
        if set(statuses) == {401}:
            break
        assert time.monotonic() - revoked_at < BOUND, f"still accepted after {BOUND}s: {statuses}"
        time.sleep(0.05)
    # It stays refused on every worker, and other keys are unaffected.
    assert {status(port, key) for _ in range(60)} == {401}
    assert {status(port, other) for _ in range(20)} == {200}
