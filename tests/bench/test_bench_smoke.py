"""`bench/run.py --quick --builtin` end to end: every profile measured, figures present. No performance checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bench.profiles import PROFILES

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "result.json"
    done = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--builtin", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(out.read_text())
    doc["stdout"] = done.stdout
    return doc


def expected_profiles() -> list[str]:
    have_nginx = shutil.which("nginx") is not None
    return [p.name for p in PROFILES if p.kind != "nginx" or have_nginx]


def test_smoke_builtin_tools_are_used(result: dict[str, Any]) -> None:
    assert result["settings"]["tools"] == {"upstream": "builtin", "load": "builtin"}


def test_smoke_every_profile_has_positive_throughput_and_cpu(result: dict[str, Any]) -> None:
    rows = {row["profile"]: row for row in result["summary"]}
    assert sorted(rows) == sorted(expected_profiles())
    for name, row in rows.items():
        assert row["valid_runs"] == row["runs"] == 1, name
        assert row["rps"]["median"] > 0, name
        assert row["p50_us"]["median"] > 0, name
        assert row["p99_us"]["median"] >= row["p50_us"]["median"], name
        assert row["upstream_cpu_us_per_req"]["median"] > 0, name
        if name == "direct":
            assert row["proxy_cpu_us_per_req"] is None
        else:
            assert row["proxy_cpu_us_per_req"]["median"] > 0, name
            assert row["proxy_rss_bytes"]["median"] > 0, name
        assert name in result["stdout"]


def test_smoke_runs_are_error_free_and_recorded_raw(result: dict[str, Any]) -> None:
    assert {r["profile"] for r in result["runs"]} == set(expected_profiles())
    for run in result["runs"]:
        assert run["errors"] == {"status": 0, "socket": 0}, run["profile"]
        assert run["requests"] > 0
        assert run["cpu_seconds"]["loadgen"] > 0
        for side in run["cpu_seconds"].keys() - {"loadgen"}:  # the kernel part of what the processes used
            assert 0 <= run["kernel_cpu_seconds"][side] <= run["cpu_seconds"][side], (run["profile"], side)


def test_smoke_ratios_are_relative_to_nginx(result: dict[str, Any]) -> None:
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed: no reference, no ratios")
    rows = {row["profile"]: row for row in result["summary"]}
    assert rows["nginx"]["vs_nginx"]["rps_ratio"]["median"] == 1.0
    assert rows["stockade-bare"]["vs_nginx"]["cpu_ratio"]["median"] > 0


def test_smoke_decision_log_is_written_only_where_the_profile_says(result: dict[str, Any]) -> None:
    runs = {r["profile"]: r for r in result["runs"]}
    assert runs["stockade-bare"]["decision_log_bytes"] > 0
    assert "decision_log_bytes" not in runs["stockade-bare-nolog"]
    assert "decisions: 'off'" in result["profiles"]["stockade-bare-nolog"]["config"]


def test_smoke_proxies_are_pinned_apart_from_the_load(result: dict[str, Any]) -> None:
    pinning = result["settings"]["pinning"]
    if len(os.sched_getaffinity(0)) < 2:
        assert pinning == {"proxy": [], "load": []}
        return
    assert pinning["proxy"] and pinning["load"] and not set(pinning["proxy"]) & set(pinning["load"])
    for name in expected_profiles():
        for cpus in result["profiles"][name].get("affinity", {}).values():
            assert cpus == pinning["proxy"], name
