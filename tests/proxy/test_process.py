"""`stockade serve` as a real process: reload on SIGHUP, drain on SIGTERM, several workers."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from stockade.testing import TestUpstream, read_responses
from tests.ratelimit.redisutil import private_redis

pytestmark = pytest.mark.slow

STOCKADE = str(Path(sys.executable).parent / "stockade")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(
    upstream: str, port: int, admin: int, max_bytes: int = 1024, workers: int = 1, head: str = "", drain: float = 20
) -> str:
    return f"""{head}
listen: {{host: 127.0.0.1, port: {port}}}
admin: {{host: 127.0.0.1, port: {admin}}}
workers: {workers}
log: {{decisions: stdout}}
limits: {{drain_timeout: {drain:g}}}
routes:
  - id: api
    match: {{path: "/api/**"}}
    upstream: {upstream}
    stages:
      - use: anonymous
      - use: request_size
        config: {{max_bytes: {max_bytes}}}
"""


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, admin: int, path: Path) -> None:
        self.proc = proc
        self.port = port
        self.admin = admin
        self.path = path

    def get(self, path: str, *, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        method = b"POST" if body else b"GET"
        raw = method + b" " + path.encode() + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
        raw += b"Content-Length: %d\r\n\r\n" % len(body) + body
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(raw)
            return read_responses(sock, 1)[0]

    def admin_get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}{path}", timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def wait_ready(self, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while self.admin_get("/readyz")[0] != 200:
            assert self.proc.poll() is None, self.proc.stderr.read().decode() if self.proc.stderr else ""
            assert time.monotonic() < end, "gateway did not become ready"
            time.sleep(0.05)


@pytest.fixture
def serve(tmp_path: Path, upstream: TestUpstream) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(
        workers: int = 1,
        max_bytes: int = 1024,
        wait: bool = True,
        cli_workers: int | None = None,
        head: str = "",
        drain: float = 20,
    ) -> Served:
        port, admin = free_port(), free_port()
        path = tmp_path / "gw.yaml"
        path.write_text(config(upstream.url, port, admin, max_bytes, workers, head, drain))
        extra = ["--workers", str(cli_workers)] if cli_workers is not None else []
        proc = subprocess.Popen(
            [STOCKADE, "serve", "--config", str(path), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        procs.append(proc)
        served = Served(proc, port, admin, path)
        if wait:
            served.wait_ready()
        return served

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def until(condition: object, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.05)


def test_sighup_reloads_atomically(serve: object, upstream: TestUpstream) -> None:
    gw: Served = serve()  # type: ignore[operator]
    assert gw.get("/api/x", body=b"a" * 500)[0] == 200
    gw.path.write_text(gw.path.read_text().replace("max_bytes: 1024", "max_bytes: 100"))
    gw.proc.send_signal(signal.SIGHUP)
    until(lambda: gw.get("/api/x", body=b"a" * 500)[0] == 413)
    good = gw.path.read_text()
    gw.path.write_text(good.replace("max_bytes: 100", "max_bytes: lots"))  # a bad file changes nothing
    gw.proc.send_signal(signal.SIGHUP)
    until(lambda: b"config_reload" in gw.admin_get("/metrics")[1] and b'label="error"' in gw.admin_get("/metrics")[1])
    assert gw.get("/api/x", body=b"a" * 500)[0] == 413
    assert gw.get("/api/x", body=b"a" * 50)[0] == 200
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(20) == 0
    stderr = gw.proc.stderr.read().decode() if gw.proc.stderr else ""
    assert "reload refused, configuration unchanged" in stderr
    assert "field 'config.max_bytes'" in stderr


def test_sighup_during_start_up_does_not_kill_the_gateway(serve: object) -> None:
    """Signal handlers are installed before the listener opens: a SIGHUP's default action is to terminate."""
    gw: Served = serve(wait=False)  # type: ignore[operator]
    end = time.monotonic() + 20
    while True:  # the data port accepts before the admin listener (and readiness) exist
        try:
            socket.create_connection(("127.0.0.1", gw.port), timeout=1).close()
            break
        except OSError:
            assert gw.proc.poll() is None and time.monotonic() < end
            time.sleep(0.005)
    gw.proc.send_signal(signal.SIGHUP)
    gw.wait_ready()
    assert gw.get("/api/x")[0] == 200
    assert gw.proc.poll() is None


def test_sigterm_drains_in_flight_requests(serve: object, upstream: TestUpstream) -> None:
    gw: Served = serve()  # type: ignore[operator]
    upstream.stall()
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    sock.sendall(b"GET /api/slow HTTP/1.1\r\nHost: a\r\n\r\n")
    until(lambda: upstream.received)
    gw.proc.send_signal(signal.SIGTERM)
    until(lambda: gw.admin_get("/readyz")[0] != 200)
    with pytest.raises(OSError):  # the listener is closed while draining
        socket.create_connection(("127.0.0.1", gw.port), timeout=2).close()
    upstream.release()
    responses = read_responses(sock, 1)
    sock.close()
    assert responses[0][0] == 200
    assert responses[0][1]["connection"] == "close"
    assert gw.proc.wait(20) == 0
    out = gw.proc.stdout.read().decode() if gw.proc.stdout else ""
    assert json.loads(out.strip().splitlines()[-1])["status"] == 200  # the decision log was flushed on exit


def _in_flight(gw: Served, upstream: TestUpstream) -> socket.socket:
    """A request the upstream holds (until `upstream.release()`)."""
    upstream.stall()
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    sock.sendall(b"GET /api/slow HTTP/1.1\r\nHost: a\r\n\r\n")
    until(lambda: upstream.received)
    return sock


@pytest.mark.parametrize("workers", [1, 2])
def test_requests_cut_at_drain_timeout_are_logged_as_the_gateways_doing(
    serve: object, upstream: TestUpstream, workers: int
) -> None:
    """They were logged 499 client.closed, the client's fault, and nothing said the drain had cut anything."""
    gw: Served = serve(workers=workers, drain=1)  # type: ignore[operator]
    sock = _in_flight(gw, upstream)
    try:
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(30) == 0
    finally:
        upstream.release()
        sock.close()
    out = gw.proc.stdout.read().decode() if gw.proc.stdout else ""
    err = gw.proc.stderr.read().decode() if gw.proc.stderr else ""
    assert out.strip(), err
    line = json.loads(out.strip().splitlines()[-1])
    assert (line["status"], line["error"]) == (503, "gateway.draining"), line
    assert "connections cut at the end of the drain connections=1 requests=1 cause='drain_timeout'" in err, err


SECOND_SIGNALS = {
    "one-process-sigint": (1, signal.SIGINT),
    "one-process-sigterm": (1, signal.SIGTERM),
    "workers-sigint": (2, signal.SIGINT),
    "workers-sigterm": (2, signal.SIGTERM),
}


@pytest.mark.parametrize(("workers", "second"), SECOND_SIGNALS.values(), ids=SECOND_SIGNALS.keys())
def test_a_second_stop_signal_cuts_the_drain_short(
    serve: object, upstream: TestUpstream, workers: int, second: signal.Signals
) -> None:
    """A second Ctrl-C or SIGTERM during the drain did nothing: the process waited out drain_timeout."""
    gw: Served = serve(workers=workers, drain=60)  # type: ignore[operator]
    sock = _in_flight(gw, upstream)
    try:
        gw.proc.send_signal(signal.SIGTERM)
        until(lambda: gw.admin_get("/readyz")[0] != 200)  # draining
        gw.proc.send_signal(second)
        assert gw.proc.wait(30) == 0  # well before drain_timeout
    finally:
        upstream.release()
        sock.close()
    out = gw.proc.stdout.read().decode() if gw.proc.stdout else ""
    line = json.loads(out.strip().splitlines()[-1])
    assert (line["status"], line["error"]) == (503, "gateway.draining"), line
    err = gw.proc.stderr.read().decode() if gw.proc.stderr else ""
    assert "cause='second signal'" in err, err


def test_readyz_of_the_supervisor_checks_the_backends_of_the_config(serve: object, tmp_path: Path) -> None:
    with private_redis(tmp_path) as redis:
        gw: Served = serve(workers=2, head=f'limits_storage: "{redis.url}"')  # type: ignore[operator]
        assert json.loads(gw.admin_get("/readyz")[1]) == {"status": "ready", "checks": {"workers": "ok"}}
        # A reload that adds a rate limit makes the supervisor's /readyz depend on Redis: the limit fails closed.
        limit = '      - use: rate_limit\n        config: {limits: [{rate: "9/second", key: ip}]}\n'
        text = gw.path.read_text().replace("      - use: anonymous\n", "      - use: anonymous\n" + limit)
        gw.path.write_text(text)
        gw.proc.send_signal(signal.SIGHUP)
        until(lambda: json.loads(gw.admin_get("/readyz")[1])["checks"] == {"workers": "ok", "limits": "ok"})
        redis.stop()
        until(lambda: gw.admin_get("/readyz")[0] == 503)
        assert json.loads(gw.admin_get("/readyz")[1])["checks"] == {"workers": "ok", "limits": "unreachable"}
        assert gw.admin_get("/healthz")[0] == 200
        assert gw.get("/api/x")[0] == 503
        redis.start()
        until(lambda: gw.admin_get("/readyz")[0] == 200)


def test_two_workers_share_the_port_and_reload_together(serve: object, upstream: TestUpstream) -> None:
    gw: Served = serve(workers=2)  # type: ignore[operator]
    prefixes: set[str] = set()
    end = time.monotonic() + 20
    while len(prefixes) < 2 and time.monotonic() < end:
        status, _, body = gw.get("/api/who")
        assert status == 200
        echoed = dict((k.lower(), v) for k, v in json.loads(body)["headers"])
        prefixes.add(echoed["x-request-id"][:8])  # each worker has its own request-id prefix
    assert len(prefixes) == 2, "requests were not spread over two workers"
    gw.path.write_text(gw.path.read_text().replace("max_bytes: 1024", "max_bytes: 100"))
    gw.proc.send_signal(signal.SIGHUP)
    until(lambda: all(gw.get("/api/x", body=b"a" * 500)[0] == 413 for _ in range(20)))
    _, metrics = gw.admin_get("/metrics")
    until(lambda: b"stockade_workers_ready 2.0" in gw.admin_get("/metrics")[1])
    assert b"stockade_requests_total" in metrics
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(30) == 0


def test_memory_counter_text_of_workers_is_merged(serve: object) -> None:
    gw: Served = serve(workers=2)  # type: ignore[operator]
    for _ in range(10):
        assert gw.get("/api/n")[0] == 200

    def total() -> float:
        _, text = gw.admin_get("/metrics")
        value = 0.0
        for line in text.decode().splitlines():
            if line.startswith("stockade_requests_total{") and 'route="api"' in line:
                value += float(line.rsplit(" ", 1)[1])
        return value

    until(lambda: total() == 10.0)


def test_sighup_reloads_when_workers_come_from_the_command_line(serve: object, upstream: TestUpstream) -> None:
    """`--workers 2` was applied to the first load only: every reload then read `workers: 1` from the file and
    was refused as "reload cannot change workers"."""
    gw: Served = serve(cli_workers=2)  # type: ignore[operator]
    until(lambda: b"stockade_workers_ready 2.0" in gw.admin_get("/metrics")[1])
    gw.path.write_text(gw.path.read_text().replace("max_bytes: 1024", "max_bytes: 100"))
    gw.proc.send_signal(signal.SIGHUP)
    until(lambda: all(gw.get("/api/x", body=b"a" * 500)[0] == 413 for _ in range(10)))
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(30) == 0
    stderr = gw.proc.stderr.read().decode() if gw.proc.stderr else ""
    assert "reload cannot change workers" not in stderr


def test_a_restarted_worker_runs_what_the_supervisor_validated_not_the_file(
    serve: object, upstream: TestUpstream
) -> None:
    """A worker restarted after a crash read the file as it was on disk: an edit nobody had reloaded (or a
    broken file) split the policy between workers, or crash-looped the worker."""
    gw: Served = serve(workers=2)  # type: ignore[operator]
    until(lambda: b"stockade_workers_ready 2.0" in gw.admin_get("/metrics")[1])
    gw.path.write_text(gw.path.read_text().replace("max_bytes: 1024", "max_bytes: 100"))  # not reloaded
    children = Path(f"/proc/{gw.proc.pid}/task/{gw.proc.pid}/children").read_text().split()
    assert len(children) == 2
    os.kill(int(children[0]), signal.SIGKILL)
    until(lambda: b"stockade_workers_ready 1.0" in gw.admin_get("/metrics")[1])
    until(lambda: b"stockade_workers_ready 2.0" in gw.admin_get("/metrics")[1], timeout=20)
    assert all(gw.get("/api/x", body=b"a" * 500)[0] == 200 for _ in range(20))  # both still run max_bytes 1024
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(30) == 0


def _children(gw: Served) -> list[int]:
    return [int(pid) for pid in Path(f"/proc/{gw.proc.pid}/task/{gw.proc.pid}/children").read_text().split()]


def test_a_hung_worker_is_not_ready_and_is_killed_and_restarted(serve: object, upstream: TestUpstream) -> None:
    """A SIGSTOPped worker kept its share of the listen port and its ready flag: /readyz said 200 and
    stockade_workers_ready 2 while half of the new connections hung, and it was never restarted."""
    gw: Served = serve(workers=2)  # type: ignore[operator]
    until(lambda: b"stockade_workers_ready 2.0" in gw.admin_get("/metrics")[1])
    hung = _children(gw)[0]
    os.kill(hung, signal.SIGSTOP)
    try:
        until(lambda: gw.admin_get("/readyz")[0] == 503, timeout=20)  # its heartbeats stopped
        until(lambda: hung not in _children(gw), timeout=20)  # killed (SIGTERM does nothing to a stopped process)
        until(lambda: b"stockade_workers_ready 2.0" in gw.admin_get("/metrics")[1], timeout=20)
    finally:
        if hung in _children(gw):
            os.kill(hung, signal.SIGCONT)
    assert gw.admin_get("/readyz")[0] == 200
    assert all(gw.get("/api/x")[0] == 200 for _ in range(20))
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(30) == 0
    err = gw.proc.stderr.read().decode() if gw.proc.stderr else ""
    assert "sent nothing for" in err and err.count("worker exited; restarting") == 1, err


def test_the_supervisor_refuses_a_reload_that_does_not_build(serve: object, upstream: TestUpstream) -> None:
    """It validated the model only, counted the reload as ok and adopted it although every worker refused it."""
    gw: Served = serve(workers=2)  # type: ignore[operator]
    until(lambda: b"stockade_workers_ready 2.0" in gw.admin_get("/metrics")[1])
    gw.path.write_text(
        gw.path.read_text().replace("log: {decisions: stdout}", "log: {decisions: /nonexistent-dir/x.log}")
    )
    gw.proc.send_signal(signal.SIGHUP)

    def reload_events() -> list[str]:
        text = gw.admin_get("/metrics")[1].decode()
        return [line for line in text.splitlines() if "config_reload_supervisor" in line and not line.startswith("#")]

    until(lambda: any('label="error"' in line for line in reload_events()))
    assert not any('label="ok"' in line for line in reload_events())
    assert gw.get("/api/x")[0] == 200
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(30) == 0


SPEC = """openapi: 3.1.0
info: {title: t, version: '1'}
paths:
  /two/x:
    get:
      responses: {'200': {description: ok}}
"""


def test_workers_reload_from_a_configmap_style_symlink_swap(tmp_path: Path, upstream: TestUpstream) -> None:
    """Kubernetes swaps a `..data` symlink to a new directory and deletes the old one: the workers looked for
    files relative to the directory they started from, refused the reload, and the supervisor said it was done."""
    port, admin = free_port(), free_port()
    cm = tmp_path / "cm"
    cm.mkdir()
    v1, v2 = cm / "..v1", cm / "..v2"
    v1.mkdir()
    v2.mkdir()
    (v1 / "gw.yaml").write_text(config(upstream.url, port, admin, workers=2))
    two = '  - id: two\n    match: {path: "/two/**"}\n    upstream: ' + upstream.url + "\n"
    two += "    stages: [{use: anonymous}, {use: openapi, config: {spec: spec.yaml}}]\n"
    (v2 / "gw.yaml").write_text(config(upstream.url, port, admin, workers=2) + two)
    (v2 / "spec.yaml").write_text(SPEC)
    (cm / "..data").symlink_to("..v1")
    (cm / "gw.yaml").symlink_to("..data/gw.yaml")
    proc = subprocess.Popen(
        [STOCKADE, "serve", "--config", str(cm / "gw.yaml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    gw = Served(proc, port, admin, cm / "gw.yaml")
    try:
        gw.wait_ready()
        assert gw.get("/two/x")[0] == 404
        (cm / "..data.tmp").symlink_to("..v2")
        os.replace(cm / "..data.tmp", cm / "..data")  # the kubelet's atomic swap
        for f in v1.iterdir():
            f.unlink()
        v1.rmdir()
        proc.send_signal(signal.SIGHUP)
        until(lambda: all(gw.get("/two/x")[0] == 200 for _ in range(6)))  # on every worker
        assert gw.admin_get("/readyz")[0] == 200
    finally:
        proc.kill()
        proc.wait()


def test_a_second_gateway_cannot_join_the_port_of_another(
    serve: object, tmp_path: Path, upstream: TestUpstream
) -> None:
    """Workers bind with SO_REUSEPORT: a second `stockade serve --workers 2` on the same port started, said it
    was ready and answered about half of the first one's connections under its own config."""
    gw: Served = serve(workers=2)  # type: ignore[operator]
    other = tmp_path / "other.yaml"
    other.write_text(config(upstream.url, gw.port, free_port(), workers=2))
    result = subprocess.run([STOCKADE, "serve", "--config", str(other)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2  # a port that cannot be bound is a configuration problem, as in one process
    assert f"listen.port: cannot listen on 127.0.0.1:{gw.port}" in result.stderr
    assert gw.get("/api/x")[0] == 200


def test_a_reload_of_a_truncated_file_changes_nothing(serve: object) -> None:
    gw: Served = serve()  # type: ignore[operator]
    gw.path.write_text(gw.path.read_text().split("routes:")[0])  # a write caught at a line boundary
    gw.proc.send_signal(signal.SIGHUP)
    until(lambda: reload_errors(gw, "config_reload") == 1)
    assert gw.get("/api/x")[0] == 200
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(20) == 0
    err = gw.proc.stderr.read().decode() if gw.proc.stderr else ""
    assert "reload refused" in err and "no `routes:` in the file" in err


def reload_errors(gw: Served, event: str) -> float:
    """The `event` counter's error count on /metrics (`config_reload` in a process, `config_reload_supervisor`)."""
    total = 0.0
    for line in gw.admin_get("/metrics")[1].decode().splitlines():
        if line.startswith("stockade_events_total{") and f'event="{event}"' in line and 'label="error"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("workers", [1, 2])
def test_a_reload_that_raises_is_refused_counted_and_changes_nothing(serve: object, workers: int) -> None:
    """A port of 5,000 digits made the YAML loader raise ValueError, not ConfigError: it escaped the reload
    ("Exception in callback", "Task exception was never retrieved") and no counter moved."""
    gw: Served = serve(workers=workers)  # type: ignore[operator]
    good = gw.path.read_text()
    gw.path.write_text(good.replace(f"port: {gw.port}", "port: " + "1" * 5000))
    gw.proc.send_signal(signal.SIGHUP)
    event = "config_reload" if workers == 1 else "config_reload_supervisor"
    until(lambda: reload_errors(gw, event) == 1)
    assert gw.get("/api/x")[0] == 200
    gw.path.write_text(good.replace("max_bytes: 1024", "max_bytes: 100"))  # and reloads still work after it
    gw.proc.send_signal(signal.SIGHUP)
    until(lambda: all(gw.get("/api/x", body=b"a" * 500)[0] == 413 for _ in range(6)))
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(30) == 0
    err = gw.proc.stderr.read().decode() if gw.proc.stderr else ""
    assert "reload refused, configuration unchanged: " in err
    assert "Traceback" not in err and "never retrieved" not in err and "Exception in callback" not in err


def test_a_reload_every_worker_refuses_is_not_given_to_a_restarted_worker(
    serve: object, tmp_path: Path, upstream: TestUpstream
) -> None:
    """The supervisor's dry-run build touches no secret file, so it passed an API-key route with no pepper; both
    workers refused it ("(no detail)"), yet it became the config a restarted worker got: that one crash-looped."""
    head = f"storage: sqlite:///{tmp_path}/s.db\nsecrets: {{generate: false}}"
    gw: Served = serve(workers=2, head=head)  # type: ignore[operator]
    keyed = f'  - id: keyed\n    match: {{path: "/keyed/**"}}\n    upstream: {upstream.url}\n'
    gw.path.write_text(gw.path.read_text() + keyed + "    stages: [{use: api_key}]\n")
    gw.proc.send_signal(signal.SIGHUP)
    until(lambda: reload_errors(gw, "config_reload_supervisor") == 1)
    assert gw.admin_get("/readyz")[0] == 200  # both kept the previous config: one policy, still ready
    children = Path(f"/proc/{gw.proc.pid}/task/{gw.proc.pid}/children").read_text().split()
    os.kill(int(children[0]), signal.SIGKILL)
    until(lambda: b"stockade_workers_ready 1.0" in gw.admin_get("/metrics")[1])
    until(lambda: b"stockade_workers_ready 2.0" in gw.admin_get("/metrics")[1], timeout=20)
    assert all(gw.get("/api/x")[0] == 200 for _ in range(6))
    assert gw.get("/keyed/x")[0] == 404
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(30) == 0
    err = gw.proc.stderr.read().decode() if gw.proc.stderr else ""
    assert err.count("worker exited; restarting") == 1, err  # the killed one, once
    assert "refused the reload" in err and "pepper" in err and "no detail" not in err


def _held(port: int) -> socket.socket:
    """Another process's listener on `port` (no SO_REUSEPORT: workers cannot join it)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


BIND_FAILURES = {
    "one-process-admin-port-taken": (1, "admin", "admin.port"),
    "one-process-listen-port-taken": (1, "listen", "listen.port"),
    "workers-admin-port-taken": (2, "admin", "admin.port"),
    "workers-listen-port-taken": (2, "listen", "listen.port"),
}


@pytest.mark.parametrize(("workers", "taken", "field"), BIND_FAILURES.values(), ids=BIND_FAILURES.keys())
def test_serve_on_a_port_it_cannot_bind_exits_2_naming_the_field(
    tmp_path: Path, upstream: TestUpstream, workers: int, taken: str, field: str
) -> None:
    """An admin port in use exited 3 (uvicorn's start-up failure), a listen port in use was a traceback."""
    port, admin = free_port(), free_port()
    path = tmp_path / "gw.yaml"
    path.write_text(config(upstream.url, port, admin, workers=workers))
    busy = port if taken == "listen" else admin
    with _held(busy):
        result = subprocess.run([STOCKADE, "serve", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert (result.returncode, "Traceback" in result.stderr) == (2, False), result.stderr
    assert f"{field}: cannot listen on 127.0.0.1:{busy}: " in result.stderr
    assert "restarting" not in result.stderr


def test_workers_that_cannot_bind_the_listen_port_stop_the_supervisor(tmp_path: Path, upstream: TestUpstream) -> None:
    """`admin.port` equal to `listen.port`: the supervisor's admin listener took the port, every worker failed to
    bind it and was restarted every 1.5 s for ever, and the admin app answered on the data-plane port."""
    port = free_port()
    path = tmp_path / "gw.yaml"
    path.write_text(config(upstream.url, port, port, workers=2))
    result = subprocess.run([STOCKADE, "serve", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert (result.returncode, "Traceback" in result.stderr) == (2, False), result.stderr
    assert "restarting" not in result.stderr
    # The config model may refuse equal ports itself; if it lets them through, the bind failure names the port.
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr or "admin.port" in result.stderr


def test_a_reload_that_raises_log_level_quiets_the_supervisor_too(serve: object, upstream: TestUpstream) -> None:
    """The workers applied a new `log.level`; the supervisor kept logging at the level it started with."""
    gw: Served = serve(workers=2)  # type: ignore[operator]
    text = gw.path.read_text().replace("log: {decisions: stdout}", "log: {decisions: stdout, level: warning}")
    gw.path.write_text(text.replace("max_bytes: 1024", "max_bytes: 100"))
    gw.proc.send_signal(signal.SIGHUP)
    until(lambda: all(gw.get("/api/x", body=b"a" * 500)[0] == 413 for _ in range(20)))
    gw.path.write_text(text.replace("max_bytes: 1024", "max_bytes: lots"))  # warnings and errors still show
    gw.proc.send_signal(signal.SIGHUP)
    until(lambda: b'config_reload_supervisor",label="error"' in gw.admin_get("/metrics")[1])
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(30) == 0
    stderr = gw.proc.stderr.read().decode() if gw.proc.stderr else ""
    assert "reload refused, configuration unchanged" in stderr
    assert "configuration reloaded" not in stderr, stderr


@pytest.mark.parametrize(
    ("scheme", "host", "port", "url"),
    [
        ("http", "127.0.0.1", 8081, "http://127.0.0.1:8081"),
        ("http", "::1", 8081, "http://[::1]:8081"),  # was http://::1:8081
        ("https", "::", 443, "https://[::]:443"),
        ("http", "localhost", 40001, "http://localhost:40001"),
    ],
)
def test_the_start_up_line_names_listeners_as_urls(scheme: str, host: str, port: int, url: str) -> None:
    from stockade.proxy.process import listener_url

    assert listener_url(scheme, host, port) == url


def test_the_start_up_line_names_the_admin_port_bound_not_port_0(tmp_path: Path, upstream: TestUpstream) -> None:
    port = free_port()
    path = tmp_path / "gw.yaml"
    path.write_text(config(upstream.url, port, 0))
    proc = subprocess.Popen([STOCKADE, "serve", "--config", str(path)], stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "stockade serving" not in line:
            line = proc.stderr.readline() if proc.stderr else ""
            assert line or proc.poll() is None, "the gateway exited"
        assert "admin='http://127.0.0.1:0'" not in line and "admin='http://127.0.0.1:" in line, line
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.mark.parametrize(("host", "shown"), [("127.0.0.1", "127.0.0.1"), ("::1", "[::1]")])
def test_the_supervisor_start_up_line_names_listeners_as_urls(
    tmp_path: Path, upstream: TestUpstream, host: str, shown: str
) -> None:
    """Under --workers it read listen='::1:8080': no brackets, no scheme, no admin URL, and no `draining` line."""
    port, admin = free_port(), free_port()
    path = tmp_path / "gw.yaml"
    path.write_text(
        config(upstream.url, port, admin, workers=2).replace("listen: {host: 127.0.0.1", f"listen: {{host: '{host}'")
    )
    proc = subprocess.Popen([STOCKADE, "serve", "--config", str(path)], stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "serving" not in line:
            line = proc.stderr.readline() if proc.stderr else ""
            assert line or proc.poll() is None, "the gateway exited"
        assert f"listen='http://{shown}:{port}' admin='http://127.0.0.1:{admin}' routes=1" in line, line
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    rest = proc.stderr.read() if proc.stderr else ""
    assert "draining workers=2" in rest, rest


FD_LIMITS = {
    # 2 x max_client_connections (a client and an upstream connection each) + 128 do not fit in 256.
    "one-process-short": (1, (256, 256), 1000, 256),
    "workers-short": (2, (256, 256), 1000, 256),  # said once, by the supervisor
    # A soft limit below the hard one is raised to it, as nginx's worker_rlimit_nofile or Go's runtime do.
    "one-process-raised": (1, (256, 4096), 1000, 4096),
    "workers-raised": (2, (256, 4096), 1000, 4096),
}


@pytest.mark.parametrize(("workers", "limit", "conns", "soft"), FD_LIMITS.values(), ids=FD_LIMITS.keys())
def test_a_file_descriptor_limit_below_max_client_connections_is_raised_or_warned_of(
    tmp_path: Path, upstream: TestUpstream, workers: int, limit: tuple[int, int], conns: int, soft: int
) -> None:
    """Under `ulimit -n 128` the connections beyond the limit were accepted and closed at once, silently (libuv
    does that on EMFILE and tells no one), with nothing at start to say the limit was short."""
    port, admin = free_port(), free_port()
    path = tmp_path / "gw.yaml"
    path.write_text(config(upstream.url, port, admin, workers=workers))
    env = {**os.environ, "STOCKADE_LIMITS__MAX_CLIENT_CONNECTIONS": str(conns)}
    proc = subprocess.Popen(
        [STOCKADE, "serve", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limit),
    )
    gw = Served(proc, port, admin, path)
    try:
        gw.wait_ready()
        assert gw.get("/api/x")[0] == 200
        pids = [proc.pid] + (_children(gw) if workers > 1 else [])
        for pid in pids:
            line = next(x for x in Path(f"/proc/{pid}/limits").read_text().splitlines() if "open files" in x)
            assert line.split()[3] == str(soft), line
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    err = proc.stderr.read().decode() if proc.stderr else ""
    expected = 1 if soft < 2 * conns + 128 else 0
    assert err.count("file descriptors") == expected, err
    if expected:
        assert "limit is 256" in err and "limits.max_client_connections 1000 needs 2128" in err, err


WARNED = "trusted_proxies: [0.0.0.0/0]\n"  # valid, and warned of at every load


@pytest.mark.parametrize("workers", [1, 2])
def test_load_warnings_are_logged_once_per_load(serve: object, workers: int) -> None:
    """With --workers 2 every warning appeared twice at start and at each reload (once per worker), and the
    supervisor, which reads the file, said nothing."""
    gw: Served = serve(workers=workers, head=WARNED)  # type: ignore[operator]
    gw.path.write_text(gw.path.read_text().replace("max_bytes: 1024", "max_bytes: 100"))
    os.utime(gw.path, ns=(0, 0))
    gw.proc.send_signal(signal.SIGHUP)
    until(lambda: gw.get("/api/x", body=b"a" * 500)[0] == 413)
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(30) == 0
    err = gw.proc.stderr.read().decode() if gw.proc.stderr else ""
    assert err.count("trusts every address") == 2, err  # start, reload


def test_load_warnings_are_logged_by_a_supervisor_that_stops_before_its_workers(
    tmp_path: Path, upstream: TestUpstream
) -> None:
    port, admin = free_port(), free_port()
    path = tmp_path / "gw.yaml"
    path.write_text(config(upstream.url, port, admin, workers=2, head=WARNED))
    with _held(port):
        result = subprocess.run([STOCKADE, "serve", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("trusts every address") == 1, result.stderr
