"""One JSON decision line per request with the agreed fields, and never a credential."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import orjson
import pytest

from stockade.clock import FakeClock
from stockade.observability.decision_log import DecisionLog
from stockade.pipeline.context import RequestContext
from stockade.pipeline.principal import Principal
from stockade.pipeline.verdict import Finding
from stockade.testing import TestUpstream, make_context
from tests.conftest import BASIC, GatewayFactory

FIELDS = {"request_id", "route", "principal", "decision", "reason", "stage", "status", "latency_us", "client_ip"}
T = TypeVar("T")
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


# The line of a request as the plain recipe builds it: a fresh dict every time, dumped. The common line's reused dict
# sets only the fields that changed; it must give exactly these bytes whatever came before.
def _expected(ctx: RequestContext, now: float, status: int, total_us: int, upstream_us: int, error: str) -> bytes:
    entry: dict[str, object] = {
        "ts": int(now * 1000) / 1000,
        "request_id": ctx.request_id,
        "route": ctx.route_id,
        "method": ctx.method[:32],
        "path": re.sub(r";[^/]*", ";", ctx.path),
        "principal": ctx.principal.id if ctx.principal is not None else None,
        "decision": ctx.decision,
        "reason": ctx.reason,
        "stage": ctx.stage,
        "status": status,
        "latency_us": total_us,
        "upstream_us": upstream_us,
        "client_ip": ctx.client_ip,
    }
    if ctx.detail:
        entry["detail"] = ctx.detail
    if error:
        entry["error"] = error
    if ctx.findings:
        entry["findings"] = [f.rule for f in ctx.findings]
    if "failed_open" in ctx.state:
        entry["failed_open"] = ctx.state["failed_open"]
    return orjson.dumps(entry) + b"\n"


def _taken(log: DecisionLog) -> bytes:
    """The line just recorded, taken from the buffer (so that no flush ever writes it)."""
    log._size = 0
    return log._buf.pop()


def _copy(s: str) -> str:
    """An equal string that is another object."""
    return "".join(list(s)) if len(s) > 1 else s


ALICE = Principal(id="alice", kind="api_key")
BOB = Principal(id="bob", kind="api_key")

# One step: the context's fields to set (the rest stay as the step before left them), then the call's arguments
# (status, latency, upstream time, error) and how far the clock moves first. Each step's line must be the plain
# recipe's: never a value of an earlier line.
BASE: dict[str, object] = {"status": 200, "total_us": 100, "upstream_us": 50, "error": "", "advance": 0.0}
_FIELDS: list[tuple[str, object, object]] = [
    ("request_id", "rid-1", "rid-2"),
    ("route_id", "api", "admin"),
    ("method", "GET", "POST"),
    ("path", "/api/items/42", "/api/items/43"),
    ("principal", ALICE, BOB),
    ("decision", "allow", "deny"),
    ("reason", "", "auth.required"),
    ("stage", "", "api_key"),
    ("client_ip", "127.0.0.1", "127.0.0.2"),
    ("status", 200, 404),
    ("total_us", 100, 101),
    ("upstream_us", 50, 0),
]
STEPS: dict[str, list[dict[str, object]]] = {
    # every field changes alone, then back, then to an equal value again
    **{f"{name}-alone": [{name: a}, {name: b}, {name: a}, {name: a}, {name: b}] for name, a, b in _FIELDS},
    "principal-none-and-back": [{"principal": ALICE}, {"principal": None}, {"principal": None}, {"principal": BOB}],
    "all-at-once": [dict((name, a) for name, a, _ in _FIELDS), dict((name, b) for name, _, b in _FIELDS)],
    "ts-within-and-across-milliseconds": [{}, {"advance": 0.0002}, {"advance": 0.0002}, {"advance": 0.001}, {}],
    "equal-strings-other-objects": [
        {"request_id": "rid", "route_id": "api", "method": "GET", "path": "/api/x", "client_ip": "10.0.0.1"},
        {"request_id": _copy("rid"), "route_id": _copy("api"), "method": _copy("GET"), "path": _copy("/api/x")},
        {"principal": Principal(id=_copy("alice"), kind="api_key"), "client_ip": _copy("10.0.0.1")},
        {"decision": _copy("allow"), "reason": _copy(""), "stage": _copy("")},
        {"status": 404, "total_us": 2**40, "upstream_us": 2**40},
        {"status": int("404"), "total_us": int(str(2**40)), "upstream_us": int(str(2**40))},  # equal, other objects
    ],
    # a line with extras builds its own dict: the common line's dict and what it was set from stay as they were
    "extras-between-common-lines": [
        {"route_id": "api", "reason": "", "principal": ALICE},
        {"route_id": "admin", "reason": "x", "principal": BOB, "detail": "why", "status": 403},
        {"detail": ""},  # the same values as the extras line, now in the reused dict
        {"route_id": "api", "reason": "", "principal": ALICE, "status": 200},
        {"route_id": "admin", "error": "upstream.reset"},
        {"route_id": "api"},
        {"findings": [Finding(rule="sqli.union", detail="x")], "path": "/api/other"},
        {"findings": []},
        {"state": {"failed_open": ["rate_limit"]}, "method": "PUT"},
        {"state": {"auth.identity": "h"}},
        {"state": {}, "method": "GET"},
    ],
    "path-parameters-masked-each-time": [
        {"path": "/api/a;jsessionid=S1/b;v=1"},
        {"path": "/api/a;jsessionid=S2/b;v=2"},  # another raw path, the same masked one
        {"path": "/api/a;jsessionid=S2/b;v=2"},
        {"path": "/api/a"},
        {"path": "/api/a;x", "detail": "d"},
        {"path": "/api/a;x", "detail": ""},
    ],
    # the values the reused dict starts with
    "to-empty-values-and-back": [
        {name: ("" if isinstance(a, str) else None if isinstance(a, Principal) else 0) for name, a, _ in _FIELDS},
        dict((name, a) for name, a, _ in _FIELDS),
        {name: ("" if isinstance(a, str) else None if isinstance(a, Principal) else 0) for name, a, _ in _FIELDS},
    ],
    # intake lets only [A-Za-z0-9._:-] through, but a context built elsewhere must not forge fields with its id
    "request-id-escaped": [
        {"request_id": 'x","route":"forged'},
        {"request_id": "back\\slash"},
        {"request_id": "ctl\n\x00\x1f"},
        {"request_id": "del\x7f"},
        {"request_id": "caf\u00e9"},
        {"request_id": ""},
        {"request_id": "A-z0.9_:-"},
        {"request_id": "9f3a11c042"},
        {"request_id": "\u00e9\u0663\u4e00"},  # letters and digits of other scripts go in raw, as orjson writes them
    ],
    "method-cut": [{"method": "M" * 40}, {"method": "M" * 32}, {"method": "M" * 41}, {"method": "GET"}],
}


@pytest.mark.parametrize("steps", STEPS.values(), ids=STEPS.keys())
def test_the_common_line_holds_each_requests_own_values(steps: list[dict[str, object]]) -> None:
    clock = FakeClock(1_700_000_000.0)
    log = DecisionLog("off", clock)
    log._fd = 1  # recording only: the lines are taken from the buffer below, never written
    ctx = make_context()
    call = dict(BASE)
    for i, step in enumerate([{}, *steps, {}]):  # the defaults first: a field at its default is a change too
        call["advance"] = 0.0
        for name, value in step.items():
            if name in call:
                call[name] = value
            else:
                setattr(ctx, name, value)
        clock.advance(float(call["advance"]))  # type: ignore[arg-type]
        args = (int(call["status"]), int(call["total_us"]), int(call["upstream_us"]), str(call["error"]))  # type: ignore[call-overload]
        log.record(ctx, *args)
        assert _taken(log) == _expected(ctx, clock.time(), *args), (i, step)
        call["error"] = ""
    log._fd = -1


class _Picks:
    """Reproducible picks (a linear congruential generator; the `random` module is banned from the code base)."""

    def __init__(self, seed: int) -> None:
        self.x = seed

    def random(self) -> float:
        self.x = (self.x * 6364136223846793005 + 1442695040888963407) % 2**64
        return (self.x >> 11) / 2**53

    def choice(self, values: Sequence[T]) -> T:
        return values[int(self.random() * len(values))]


def test_lines_match_the_plain_recipe_over_a_random_run() -> None:
    """Thousands of requests whose fields change at random, often to equal strings that are other objects."""
    rng = _Picks(7)
    clock = FakeClock(1_700_000_000.0)
    log = DecisionLog("off", clock)
    log._fd = 1
    choices: dict[str, list[object]] = {
        "request_id": ["a", "b", "test-request", 'r"id', "r\\id", "r\x01", "r\x7f", "\u00e9"],
        "route_id": ["", "api", "admin"],
        "method": ["GET", "POST", "X" * 33],
        "path": ["/", "/api/x", "/api/x;s=1", "/api/y;", "/\u00e9\u2603"],
        "principal": [None, ALICE, BOB, Principal(id='\x00"\\', kind="k")],
        "decision": ["allow", "deny", "monitor"],
        "reason": ["", "auth.required"],
        "stage": ["", "api_key"],
        "client_ip": ["127.0.0.1", "::1"],
        "detail": ["", "", "", "why"],
        "findings": [[], [], [], [Finding(rule="sqli.union", detail="x")]],
        "state": [{}, {}, {"auth.identity": "h"}, {"failed_open": ["rate_limit"]}],
    }
    ctx = make_context()
    for i in range(5000):
        for name, values in choices.items():
            if rng.random() < 0.3:
                value = rng.choice(values)
                setattr(ctx, name, _copy(value) if isinstance(value, str) and rng.random() < 0.5 else value)
        clock.advance(rng.choice([0.0, 0.0003, 0.001, 1.0]))
        args = (rng.choice([200, 404, 2**40]), rng.choice([0, 7, 2**40]), rng.choice([0, 3]), rng.choice(["", "", "e"]))
        log.record(ctx, *args)
        assert _taken(log) == _expected(ctx, clock.time(), *args), i
    log._fd = -1
