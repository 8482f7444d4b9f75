"""One JSON decision line per request with the agreed fields, and never a credential."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stockade.observability.decision_log import DecisionLog
from stockade.testing import TestUpstream
from tests.conftest import BASIC, GatewayFactory

FIELDS = {"request_id", "route", "principal", "decision", "reason", "stage", "status", "latency_us", "client_ip"}
SECRETS = ["Bearer eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.c2ln", "stk_live_9f8e7d6c5b4a", "hunter2-password"]


def _drain(reader: int, log: DecisionLog) -> bytes:
    """Read a (non-blocking) pipe until it is empty and the log has nothing more to flush into it."""
    got = b""
    while True:
        try:
            chunk = os.read(reader, 1 << 20)
        except BlockingIOError:
            log.flush()
            try:
                chunk = os.read(reader, 1 << 20)
            except BlockingIOError:
                break
        if not chunk:
            break
        got += chunk
    return got


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_line_per_request_with_fields(tmp_path: Path, make_gateway: GatewayFactory, upstream: TestUpstream) -> None:
    log = tmp_path / "decisions.log"
    gw = make_gateway(BASIC, log_path=log)
    gw.request("GET", "/api/ok")
    gw.request("GET", "/nowhere")
    gw.request("POST", "/upload/x", body=b"x" * 2000)
    with gw.connect() as sock:
        sock.sendall(b"GET /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n")
        sock.recv(65536)
    gw.flush_log()
    entries = lines(log)
    assert len(entries) == 4
    for entry in entries:
        assert FIELDS <= set(entry)
    ok, missing, big, smuggle = entries
    assert (ok["route"], ok["decision"], ok["status"], ok["principal"]) == ("api", "allow", 200, "anonymous")
    assert (missing["decision"], missing["reason"], missing["stage"], missing["status"]) == (
        "deny",
        "route.not_found",
        "router",
        404,
    )
    assert (big["reason"], big["stage"], big["status"]) == ("request.body_too_large", "request_size", 413)
    assert (smuggle["reason"], smuggle["status"]) == ("http.bad_request", 400)
    assert "Content-Length" in str(smuggle["detail"])  # operators see why; the client did not


def test_credentials_never_reach_the_log(tmp_path: Path, make_gateway: GatewayFactory) -> None:
    log = tmp_path / "decisions.log"
    gw = make_gateway(BASIC, log_path=log)
    for path in ("/api/x", "/nowhere"):
        gw.request(
            "GET",
            path + "?token=hunter2-password",
            headers={"Authorization": SECRETS[0], "X-API-Key": SECRETS[1], "Cookie": "session=" + SECRETS[2]},
        )
    gw.flush_log()
    text = log.read_text()
    assert len(text.splitlines()) == 2
    for secret in SECRETS:
        assert secret not in text
    assert "token=" not in text  # the query string is not logged


def test_a_pipe_whose_reader_stops_never_blocks_the_gateway(tmp_path: Path) -> None:
    """A blocking write to a full stdout pipe froze the event loop, and with it every request and /healthz.
    Lines now wait (bounded) for the reader, and are dropped beyond that, never blocking."""
    import threading

    from stockade.clock import FakeClock
    from stockade.testing import make_context

    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader exists, and reads nothing for now
    log = DecisionLog(str(fifo), FakeClock())
    ctx = make_context()
    done = threading.Event()

    def write_many() -> None:
        for _ in range(60_000):  # about 12 MB of lines: far more than a pipe holds
            log.record(ctx, 200, 10, 5)
        log.flush()
        done.set()

    threading.Thread(target=write_many, daemon=True).start()
    assert done.wait(20), "recording blocked on the pipe"
    assert log.dropped > 0  # beyond the pending bound
    got = _drain(reader, log)  # the reader catches up: what was kept goes out, in whole lines
    os.close(reader)
    log.close()
    lines = got.split(b"\n")
    assert len(lines) > 1000
    assert all(json.loads(line)["status"] == 200 for line in lines if line)


def test_a_reload_whose_decision_log_cannot_be_opened_changes_nothing(
    tmp_path: Path, make_gateway: GatewayFactory, upstream: TestUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new runtime was swapped in before the new log file was opened: a failure left the new policy live
    and the reload unrecorded. Now the open comes first, and its failure refuses the reload whole."""
    from stockade.errors import ConfigError
    from stockade.testing import http_request

    gw = make_gateway(BASIC)
    before = gw.server.runtime
    target = str(tmp_path / "new.log")
    real_open = os.open

    def unopenable(path: str, flags: int, mode: int = 0o777) -> int:
        # Root opens any file whatever its mode: the open of this one path fails as it would for another user.
        if str(path) == target:
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", unopenable)
    stricter = BASIC.replace("{upstream}", upstream.url) + f"log: {{decisions: '{target}'}}\n"
    with pytest.raises(ConfigError, match=r"log\.decisions: cannot open"):
        gw.reload(stricter)
    monkeypatch.undo()
    assert gw.server.runtime is before
    with gw.connect() as sock:
        assert http_request(sock, b"GET /api/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")[0][0] == 200


def test_a_dangling_decision_log_symlink_is_a_config_error(tmp_path: Path) -> None:
    from stockade.clock import FakeClock
    from stockade.config.loader import load_config_text
    from stockade.errors import ConfigError
    from stockade.pipeline.stage import Services
    from stockade.runtime import build_runtime

    (tmp_path / "dangling.log").symlink_to(tmp_path / "missing" / "x.log")
    loaded = load_config_text("log: {decisions: dangling.log}\n", base_dir=tmp_path, env={}, require_upstreams=False)
    with pytest.raises(ConfigError, match="symbolic link to nothing"):
        build_runtime(loaded, Services(clock=FakeClock()))


def test_a_long_line_cannot_block_a_pipe_and_drops_are_counted(tmp_path: Path) -> None:
    """A pipe with some room, but less than one long line (a 12 KB path), blocked the event loop in os.write: a
    poll says a pipe is writable when one page is free. Lines are now at most one page (client fields cut at
    1024 characters, `truncated` said), and dropped lines show in the metrics."""
    import array
    import fcntl
    import termios
    import threading

    from stockade.clock import FakeClock
    from stockade.observability.metrics import Metrics
    from stockade.testing import make_context

    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    metrics = Metrics()
    log = DecisionLog(str(fifo), FakeClock(), metrics)
    short = make_context()
    long_path = make_context(path="/" + "a" * 12_000)
    wide = make_context(path="/" + "\u00e9" * 1000 + "\u2603" * 20)  # 1021 characters, up to 3 bytes each

    def queued() -> int:
        buf = array.array("i", [0])
        fcntl.ioctl(reader, termios.FIONREAD, buf)
        return buf[0]

    while queued() < 40_000:  # a log shipper that stopped reading: ordinary lines fill the pipe part way
        log.record(short, 200, 10, 5)
        log.flush()
    done = threading.Event()

    def write() -> None:
        for ctx in (long_path, wide):
            log.record(ctx, 404, 10, 0)
            log.flush()  # here a 12 KB line blocked: the pipe had room, but less than the line
        for ctx in (long_path, wide) * 3000:  # about 10 MB once cut: past the pending bound, so some are dropped
            log.record(ctx, 404, 10, 0)
        log.flush()
        done.set()

    threading.Thread(target=write, daemon=True).start()
    assert done.wait(20), "a long line blocked on the pipe"
    assert log.dropped > 0 and metrics.events[("decision_log", "dropped")] == log.dropped
    got = _drain(reader, log)
    os.close(reader)
    log.close()
    written = [line for line in got.split(b"\n") if line]
    assert all(len(line) < 4096 for line in written)
    cut = [json.loads(line) for line in written if b'"truncated"' in line]
    assert cut and all(len(str(doc.get("path", ""))) <= 1024 for doc in cut)


def test_a_long_wide_path_is_cut_but_the_principal_and_a_path_prefix_stay() -> None:
    """Cut by characters, a path of 4-byte characters still made the line longer than a pipe page, and the
    fallback then removed the path and the principal: a client could take itself out of its own audit line."""
    import dataclasses

    from stockade.clock import FakeClock
    from stockade.pipeline.principal import Principal
    from stockade.testing import make_context

    ctx = make_context(path="/" + "\U0001f600" * 1023)
    ctx.principal = Principal(id="alice", kind="api_key")
    long_sub = dataclasses.replace(ctx.principal, id="s" * 5000)
    captured: list[bytes] = []
    for principal in (ctx.principal, long_sub):
        ctx.principal = principal
        log = DecisionLog("off", FakeClock())
        log._fd = 1  # recording only: the lines are taken from the buffer below, never written
        log.record(ctx, 200, 10, 5)
        captured.append(log._buf[0])
        log._buf.clear()
        log._fd = -1
    short, long = (json.loads(line) for line in captured)
    assert all(len(line) <= 4096 for line in captured)
    assert short["principal"] == "alice" and short["truncated"] is True
    assert str(short["path"]).startswith("/\U0001f600") and len(str(short["path"])) >= 16
    assert long["principal"] == "s" * 256


def test_a_reload_reopens_a_decision_log_file_logrotate_moved(
    tmp_path: Path, make_gateway: GatewayFactory, upstream: TestUpstream
) -> None:
    """logrotate's create mode moves the file and sends SIGHUP: every line after it went on into the moved file."""
    log_file = tmp_path / "decisions.log"
    text = BASIC.replace("{upstream}", upstream.url) + f"log: {{decisions: '{log_file}'}}\n"
    gw = make_gateway(text)
    gw.reload(text)  # the config as served, with its file target
    assert gw.request("GET", "/api/one")[0] == 200
    gw.bg.call(gw.server.decision_log.flush)
    log_file.rename(tmp_path / "decisions.log.1")
    gw.reload(text)  # SIGHUP, the config unchanged
    assert gw.request("GET", "/api/two")[0] == 200
    gw.bg.call(gw.server.decision_log.flush)
    rotated = (tmp_path / "decisions.log.1").read_text()
    assert "/api/one" in rotated and "/api/two" not in rotated
    assert "/api/two" in log_file.read_text()


PARAMS = """
limits: {path_parameters: PARAMS}
routes:
  - id: api
    match: {path: "/api/**"}
    upstream: {upstream}
    stages:
      - use: anonymous
"""


@pytest.mark.parametrize(
    ("allowed", "target", "logged", "status"),
    [
        (True, "/api/account;jsessionid=SECRET", "/api/account;", 200),
        (True, "/api/a;jsessionid=SECRET;x=1/b;v=SECRET2?q=1", "/api/a;/b;", 200),
        (True, "/api/plain", "/api/plain", 200),
        (False, "/api/account;jsessionid=SECRET", "/api/account;", 400),  # http.bad_path keeps the raw path
    ],
    ids=["one-param", "several", "none", "refused"],
)
def test_path_parameters_are_masked_in_the_log(
    tmp_path: Path,
    make_gateway: GatewayFactory,
    upstream: TestUpstream,
    allowed: bool,
    target: str,
    logged: str,
    status: int,
) -> None:
    """A `;jsessionid=` travels in the path as tokens travel in the query, which the log leaves out too."""
    log = tmp_path / "decisions.log"
    gw = make_gateway(PARAMS.replace("PARAMS", str(allowed).lower()), log_path=log)
    assert gw.request("GET", target)[0] == status
    gw.flush_log()
    (entry,) = lines(log)
    assert entry["path"] == logged
    assert "SECRET" not in log.read_text()


def test_lines_with_and_without_extras_in_turn_keep_their_own_fields() -> None:
    """A line without extras reuses one dict: a detail, error, finding or fail-open of the line before must not
    show up in it, and every line holds exactly its own fields, in the documented order."""
    from stockade.clock import FakeClock
    from stockade.pipeline.principal import Principal
    from stockade.pipeline.verdict import Finding
    from stockade.testing import make_context

    base = ["ts", "request_id", "route", "method", "path", "principal", "decision", "reason", "stage", "status"]
    base += ["latency_us", "upstream_us", "client_ip"]
    log = DecisionLog("off", FakeClock())
    log._fd = 1  # recording only: the lines are taken from the buffer below, never written
    turns: list[tuple[dict[str, object], str, list[str]]] = [
        ({}, "", []),
        ({"detail": "revoked key"}, "", ["detail"]),
        ({}, "", []),
        ({}, "upstream.reset", ["error"]),
        ({"findings": [Finding(rule="sqli.union", detail="x")]}, "", ["findings"]),
        ({"state": {"failed_open": ["rate_limit"]}}, "", ["failed_open"]),
        ({"path": "/" + "a" * 2000}, "", ["truncated"]),
        ({}, "", []),
    ]
    for i, (fields, error, extras) in enumerate(turns):
        ctx = make_context(path=str(fields.get("path", f"/api/{i}")))
        ctx.principal = Principal(id=f"p{i}", kind="test")
        ctx.detail = str(fields.get("detail", ""))
        ctx.findings = list(fields.get("findings", []))  # type: ignore[call-overload]
        ctx.state = dict(fields.get("state", {}))  # type: ignore[call-overload]
        log.record(ctx, 200 + i, 10 + i, 5, error)
        line = log._buf.pop()
        doc = json.loads(line)
        assert line.endswith(b"}\n") and line.count(b"\n") == 1
        assert list(doc) == base + extras, i
        assert (doc["principal"], doc["status"], doc["latency_us"]) == (f"p{i}", 200 + i, 10 + i)
    log._fd = -1
