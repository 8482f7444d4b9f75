"""Per-request CPU, medians and ratios to nginx (bench/report.py), on hand-made runs."""

from __future__ import annotations

from typing import Any

import pytest
from bench.report import budgets, derive, goal, notes, stats, summarise, table


def raw(requests: int, proxy: float | None, rps: float, errors: int = 0, kernel: float | None = None) -> dict[str, Any]:
    cpu = {"upstream": 1.0, "loadgen": 0.5} | ({"proxy": proxy} if proxy is not None else {})
    out = {
        "requests": requests,
        "seconds": 2.0,
        "rps": rps,
        "p50_us": 500.0,
        "p99_us": 900.0,
        "errors": {"status": errors, "socket": 0},
        "cpu_seconds": cpu,
    }
    if kernel is not None:  # results written before the split was recorded have no such field
        out["kernel_cpu_seconds"] = {"proxy": kernel, "upstream": 0.4}
    return out


def run(profile: str, rnd: int, requests: int, proxy: float | None, rps: float, errors: int = 0) -> dict[str, Any]:
    return derive(raw(requests, proxy, rps, errors)) | {"profile": profile, "connections": 50, "round": rnd}


def test_derive_cpu_per_request_and_core_use() -> None:
    got = derive(raw(100_000, 1.9, 50_000.0))
    assert got["proxy_cpu_us_per_req"] == pytest.approx(19.0)
    assert got["upstream_cpu_us_per_req"] == pytest.approx(10.0)
    assert got["proxy_cores"] == pytest.approx(0.95)
    assert got["load_cores"] == pytest.approx(0.75)
    assert got["valid"] is True


@pytest.mark.parametrize(
    ("requests", "errors", "valid"),
    [(100, 0, True), (100, 1, False), (0, 0, False)],
    ids=["clean", "non-2xx", "nothing-completed"],
)
def test_derive_a_run_with_errors_or_no_requests_is_invalid(requests: int, errors: int, valid: bool) -> None:
    assert derive(raw(requests, 1.0, 1.0, errors))["valid"] is valid


def test_derive_direct_has_no_proxy_figures() -> None:
    got = derive(raw(100, None, 50.0))
    assert got["proxy_cpu_us_per_req"] is None
    assert got["proxy_cores"] is None


@pytest.mark.parametrize(
    ("values", "want"),
    [
        ([3.0, 1.0, 2.0], {"median": 2.0, "min": 1.0, "max": 3.0, "spread_pct": 100.0}),
        ([4.0, None], {"median": 4.0, "min": 4.0, "max": 4.0, "spread_pct": 0.0}),
        ([None], None),
    ],
    ids=["three", "skips-missing", "nothing"],
)
def test_stats_median_and_spread(values: list[float | None], want: dict[str, float] | None) -> None:
    assert stats(values) == want


def test_summarise_ratios_are_paired_by_round_and_skip_invalid_runs() -> None:
    runs = [
        run("nginx", 0, 100_000, 2.0, 50_000.0),
        run("nginx", 1, 100_000, 2.0, 40_000.0),  # a noisy neighbour slowed round 1 for both
        run("nginx", 2, 100_000, 2.0, 50_000.0),
        run("stockade", 0, 100_000, 3.0, 45_000.0),
        run("stockade", 1, 100_000, 3.0, 36_000.0),
        run("stockade", 2, 100_000, 3.0, 10.0, errors=5),  # excluded: it answered errors
    ]
    rows = {r["profile"]: r for r in summarise(runs, ["nginx", "stockade"], [50])}
    st = rows["stockade"]
    assert (st["runs"], st["valid_runs"]) == (3, 2)
    assert st["vs_nginx"]["rps_ratio"] == {"median": 0.9, "min": 0.9, "max": 0.9, "spread_pct": 0.0}
    assert st["vs_nginx"]["cpu_ratio"]["median"] == pytest.approx(1.5)
    assert rows["nginx"]["vs_nginx"]["rps_ratio"]["median"] == 1.0
    printed = table(list(rows.values()))
    assert "stockade (ERR)" in printed
    assert "0.90 (0.90-0.90)" in printed


def test_summarise_without_nginx_has_no_ratios() -> None:
    (row,) = summarise([run("stockade", 0, 100, 1.0, 50.0)], ["stockade"], [50])
    assert row["vs_nginx"] == {"rps_ratio": None, "cpu_ratio": None}


def test_notes_state_the_goal_and_flag_rows_where_no_side_was_saturated() -> None:
    runs = [
        run("nginx", 0, 100_000, 1.9, 50_000.0),  # proxy core 95%: nginx was the bottleneck, not noisy
        run("stockade-bare", 0, 100_000, 1.2, 30_000.0),  # proxy 60%, load 75%: something else ran
    ]
    rows = summarise(runs, ["nginx", "stockade-bare"], [50])
    lines = notes(rows, {"start": [0.5, 0.4, 0.3], "end": [2.0, 1.0, 0.5]})
    assert lines[0] == "goal: stockade-bare req/s >= 0.85x nginx at 50 connections: measured 0.60x, NOT met"
    assert [line.split(":")[1].strip() for line in lines if line.startswith("noisy")] == ["stockade-bare (c=50)"]
    assert lines[-1] == "load average (1/5/15 min): start 0.50 0.40 0.30, end 2.00 1.00 0.50"
    assert goal(rows) == {
        "profile": "stockade-bare",
        "connections": 50,
        "min_rps_ratio": 0.85,
        "measured": 0.6,
        "met": False,
    }


def cpu_runs(profile: str, per_round_us: list[float], errors_in: int | None = None) -> list[dict[str, Any]]:
    """Runs of 100 000 requests whose proxy used `per_round_us` µs per request, round by round."""
    return [
        run(profile, rnd, 100_000, us / 10, 30_000.0, errors=5 if rnd == errors_in else 0)
        for rnd, us in enumerate(per_round_us)
    ]


def test_budgets_are_paired_by_round_and_judged_on_the_median() -> None:
    runs = (
        cpu_runs("python-floor", [12.0, 13.0, 12.0])
        + cpu_runs("stockade-bare", [26.0, 30.0, 26.0, 26.0])  # round 1 was slowed for every profile
        + cpu_runs("api-key", [30.0, 34.5, 31.0])  # +4, +4.5, +5
        + cpu_runs("jwt-cached", [32.0, 36.0, 32.0, 20.0], errors_in=3)  # +6 each; round 3 answered errors
    )
    got = {b["profile"] + "/" + b["over"]: b for b in budgets(runs)}
    key = got["api-key/stockade-bare"]
    assert key["extra_us"]["median"] == pytest.approx(4.5)
    assert (key["extra_us"]["min"], key["extra_us"]["max"]) == (pytest.approx(4.0), pytest.approx(5.0))
    assert key["met"] is True
    jwt = got["jwt-cached/stockade-bare"]
    assert jwt["extra_us"]["median"] == pytest.approx(6.0)
    assert jwt["extra_us"]["min"] == pytest.approx(6.0)  # the run with errors is left out
    assert jwt["met"] is False
    floor = got["stockade-bare/python-floor"]
    assert floor["extra_us"]["median"] == pytest.approx(14.0)
    assert floor["met"] is None  # a cost to report, not a budget
    lines = notes([], {"start": [0.0] * 3}, list(got.values()))
    assert lines[:3] == [
        "budget: api-key adds 4.5 µs CPU/req over stockade-bare at 50 connections (paired by round: 4.0 to 5.0); "
        "limit 5 µs: met",
        "budget: jwt-cached adds 6.0 µs CPU/req over stockade-bare at 50 connections (paired by round: 6.0 to 6.0); "
        "limit 5 µs: NOT met",
        "cost: stockade-bare adds 14.0 µs CPU/req over python-floor at 50 connections (paired by round: 14.0 to 17.0)",
    ]


def test_budgets_leave_out_a_profile_whose_base_was_not_measured() -> None:
    assert budgets(cpu_runs("api-key", [30.0])) == []
    assert [b["profile"] for b in budgets(cpu_runs("api-key", [30.0]) + cpu_runs("stockade-bare", [26.0]))] == [
        "api-key"
    ]


def test_the_kernels_share_of_the_proxy_cpu_and_of_a_budgets_extra() -> None:
    """Where a path's extra CPU goes: its own code, or the kernel (the same syscalls, dearer for a slower proxy)."""
    assert derive(raw(100_000, 1.9, 50_000.0, kernel=1.2))["proxy_kernel_us_per_req"] == pytest.approx(12.0)
    assert derive(raw(100_000, 1.9, 50_000.0))["proxy_kernel_us_per_req"] is None

    def runs(profile: str, per_round: list[tuple[float, float]]) -> list[dict[str, Any]]:
        return [
            derive(raw(100_000, total / 10, 30_000.0, kernel=kernel / 10))
            | {"profile": profile, "connections": 50, "round": rnd}
            for rnd, (total, kernel) in enumerate(per_round)
        ]

    measured = runs("python-floor", [(10.0, 7.5), (10.2, 7.5)]) + runs("stockade-bare", [(12.6, 8.2), (12.4, 8.4)])
    [cost] = budgets(measured)
    assert cost["extra_us"]["median"] == pytest.approx(2.4)
    assert cost["kernel_extra_us"]["median"] == pytest.approx(0.8)
    assert notes([], {"start": [0.0] * 3}, [cost])[0] == (
        "cost: stockade-bare adds 2.4 µs CPU/req over python-floor at 50 connections (paired by round: 2.2 to 2.6; "
        "of it in the kernel 0.8)"
    )
    rows = summarise(measured, ["python-floor", "stockade-bare"], [50])
    assert [r["proxy_kernel_us_per_req"]["median"] for r in rows] == [pytest.approx(7.5), pytest.approx(8.3)]
    header, floor, bare = (line.split() for line in table(rows).splitlines())
    assert "kernel" in header
    assert (floor[0], floor[6], floor[7]) == ("python-floor", "10.1", "7.5")  # proxy µs/req, then its kernel part
    assert (bare[0], bare[6], bare[7]) == ("stockade-bare", "12.5", "8.3")
