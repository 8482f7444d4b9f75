"""Parsing wrk's report (bench/load.py): the figures the benchmark is built on must be read exactly."""

from __future__ import annotations

import pytest
from bench.load import parse_wrk

WRK_OK = """Running 10s test @ http://127.0.0.1:8080/api/items/42
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02ms  164.27us   6.25ms   93.07%
    Req/Sec    49.34k     2.37k   53.03k    82.00%
  Latency Distribution
     50%  {p50}
     75%    1.05ms
     90%    1.13ms
     99%  {p99}
  490877 requests in 10.00s, 79.11MB read
{extra}Requests/sec:  49083.61
Transfer/sec:      7.91MB
"""


@pytest.mark.parametrize(
    ("p50", "p99", "want_p50_us", "want_p99_us"),
    [
        ("  1.00ms", "  1.56ms", 1000.0, 1560.0),
        ("876.00us", "999.00us", 876.0, 999.0),
        ("   1.20s", "   2.00s", 1.2e6, 2e6),
        ("   1.00m", "   2.00m", 60e6, 120e6),
    ],
    ids=["ms", "us", "s", "minutes"],
)
def test_parse_wrk_latency_units_become_microseconds(
    p50: str, p99: str, want_p50_us: float, want_p99_us: float
) -> None:
    got = parse_wrk(WRK_OK.format(p50=p50, p99=p99, extra=""))
    assert got["p50_us"] == pytest.approx(want_p50_us)
    assert got["p99_us"] == pytest.approx(want_p99_us)
    assert (got["requests"], got["seconds"], got["rps"]) == (490877, 10.0, 49083.61)
    assert got["errors"] == {"status": 0, "socket": 0}


@pytest.mark.parametrize(
    ("extra", "errors"),
    [
        ("  Non-2xx or 3xx responses: 17\n", {"status": 17, "socket": 0}),
        ("  Socket errors: connect 1, read 2, write 3, timeout 4\n", {"status": 0, "socket": 10}),
        (
            "  Socket errors: connect 0, read 5, write 0, timeout 0\n  Non-2xx or 3xx responses: 9\n",
            {"status": 9, "socket": 5},
        ),
    ],
    ids=["non-2xx", "socket-errors", "both"],
)
def test_parse_wrk_errors_are_counted(extra: str, errors: dict[str, int]) -> None:
    assert parse_wrk(WRK_OK.format(p50="1.00ms", p99="2.00ms", extra=extra))["errors"] == errors


@pytest.mark.parametrize(
    "text",
    [
        "",
        "unable to connect to 127.0.0.1:8080 Connection refused\n",
        WRK_OK.format(p50="1.00ms", p99="2.00ms", extra="").replace("Requests/sec", "Reqs"),
        WRK_OK.format(p50="1.00ms", p99="2.00ms", extra="").replace("     99%", "     98%"),
    ],
    ids=["empty", "connect-refused", "no-rps", "no-p99"],
)
def test_parse_wrk_unexpected_output_is_an_error(text: str) -> None:
    with pytest.raises(ValueError, match="cannot parse wrk output"):
        parse_wrk(text)
