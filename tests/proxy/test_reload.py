"""Reload in one process: whatever a new config raises, it is refused, counted, and the running one stays."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from stockade.clock import FakeClock
from stockade.config.loader import LoadedConfig, load_config_text
from stockade.errors import ConfigError
from stockade.pipeline.stage import Services
from stockade.proxy import process
from stockade.proxy.server import ProxyServer
from stockade.runtime import build_runtime

TEXT = """
listen: {host: 127.0.0.1, port: 0}
admin: {enabled: false}
routes:
  - id: api
    match: {path: "/api/**"}
    upstream: http://127.0.0.1:9
    stages: [{use: anonymous}]
"""

RAISED = [
    pytest.param(RecursionError("maximum recursion depth exceeded"), "RecursionError", id="recursion"),
    pytest.param(ValueError("Exceeds the limit (4300 digits)"), "Exceeds the limit", id="value"),
    pytest.param(MemoryError(), "MemoryError", id="memory"),
    pytest.param(ConfigError(["gw.yaml:3: field 'x': bad"]), "field 'x': bad", id="config-error"),
]


def _loaded(text: str = TEXT) -> LoadedConfig:
    return load_config_text(text, source="gw.yaml", env={})


def _write(path: Path, text: str) -> None:
    """A file written long ago: a reload reads it at once (a fresh one waits for the writer to finish)."""
    path.write_text(text)
    os.utime(path, ns=(0, 0))


def _reload_errors(server: ProxyServer) -> int:
    events = server.metrics.snapshot()["events"]
    return sum(int(v) for name, label, v in events if (name, label) == ("config_reload", "error"))


@pytest.mark.parametrize(("exc", "shown"), RAISED)
def test_try_reload_build_that_raises_is_refused_and_counted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, exc: BaseException, shown: str
) -> None:
    current = _loaded()
    server = ProxyServer(build_runtime(current, Services(clock=FakeClock())))
    runtime = server.runtime
    new = _loaded(TEXT.replace('"/api/**"', '"/v2/**"'))

    def explode(*_: object) -> None:
        raise exc

    monkeypatch.setattr(process, "build_runtime", explode)
    problems = process.try_reload(server, current, new, [])
    assert problems and any(shown in p for p in problems)  # a worker sends these to the supervisor
    assert server.runtime is runtime
    assert _reload_errors(server) == 1
    assert any(
        r.getMessage().startswith("reload refused, configuration unchanged: ") and shown in r.getMessage()
        for r in caplog.records
    )


def test_try_reload_returns_no_problems_when_applied() -> None:
    current = _loaded()
    server = ProxyServer(build_runtime(current, Services(clock=FakeClock())))
    assert process.try_reload(server, current, _loaded(TEXT.replace('"/api/**"', '"/v2/**"')), []) == []
    assert server.runtime.config.routes[0].match.path == "/v2/**"


@pytest.mark.parametrize(("exc", "shown"), RAISED)
def test_load_for_reload_that_raises_returns_the_problem(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, exc: BaseException, shown: str
) -> None:
    path = tmp_path / "gw.yaml"
    _write(path, TEXT)

    def explode(*_: object, **__: object) -> None:
        raise exc

    monkeypatch.setattr(process, "load_config_text", explode)
    new, problems = asyncio.run(process.load_for_reload(str(path), env={}))
    assert new is None
    assert problems and any(shown in p for p in problems)


def test_load_for_reload_reads_the_file_as_a_first_load_does(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    _write(path, TEXT)
    new, problems = asyncio.run(process.load_for_reload(str(path), env={}))
    assert problems == [] and new is not None
    assert (new.source, new.base_dir, new.text) == (str(path), tmp_path.resolve(), TEXT)


def test_load_for_reload_refuses_a_file_without_routes(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    _write(path, TEXT.split("routes:")[0])
    new, problems = asyncio.run(process.load_for_reload(str(path), env={}))
    assert new is None and any("no `routes:`" in p for p in problems)
