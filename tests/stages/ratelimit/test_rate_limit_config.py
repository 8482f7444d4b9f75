"""rate_limit configuration: every bad input is a config error naming file, route, stage and field; a
memory limiter under several workers is refused by the loader, `config check` and `serve`."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from stockade.cli import cli
from stockade.config.loader import load_config_text
from stockade.errors import ConfigError

BASE = """
routes:
  - id: items
    match: {{path: /items}}
    upstream: http://127.0.0.1:9
    stages:
      - use: anonymous
      - use: {stage}
        config:
{config}
"""


def load(config: str, stage: str = "rate_limit", *, env: dict[str, str] | None = None, head: str = "") -> None:
    text = head + BASE.format(stage=stage, config="\n".join("          " + line for line in config.splitlines()))
    load_config_text(text, source="gw.yaml", env=env or {})


@pytest.mark.parametrize(
    ("config", "where", "message"),
    [
        ("limits: [{rate: 5/fortnight, key: ip}]", "field 'config.limits[0].rate'", "is not 'N/second"),
        ("limits: [{rate: 0/minute, key: ip}]", "field 'config.limits[0].rate'", "between 1 and"),
        ("limits: [{rate: 5/minute, key: ip, burst: 0}]", "field 'config.limits[0].burst'", "greater than or equal"),
        ("limits: [{rate: 5/minute}]", "field 'config.limits[0].key'", "field required"),
        ("limits: [{rate: 5/minute, key: cookie}]", "field 'config.limits[0].key'", "unknown key 'cookie'"),
        ("limits: [{rate: 5/minute, key: 'header:bad header'}]", "config.limits[0].key", "unknown key"),
        ("limits: [{rate: 5/minute, key: [ip, ip]}]", "config.limits[0].key", "listed twice"),
        ("limits: [{rate: 5/minute, quota: 9/day, key: ip}]", "config.limits[0]", "exactly one of"),
        ("limits: [{key: ip}]", "config.limits[0]", "exactly one of"),
        ("limits: [{quota: 9/day, key: ip, burst: 3}]", "config.limits[0]", "`burst` applies only to a `rate`"),
        ("limits: [{rate: 5/minute, key: ip, timezone: UTC}]", "config.limits[0]", "`timezone` applies only"),
        ("limits: [{quota: 9/day, key: ip, timezone: Moon/Base}]", "limits[0].timezone", "unknown time zone"),
        ("limits: [{quota: 9/week, key: ip}]", "config.limits[0].quota", "'N/day' or 'N/month'"),
        ("limits: [{concurrency: 0, key: ip}]", "config.limits[0].concurrency", "greater than or equal"),
        ("limits: [{concurrency: 2, key: ip, cost: 2}]", "config.limits[0]", "does not apply to a concurrency"),
        ("limits: [{rate: 5/minute, key: ip, algorithm: sliding_window, burst: 9}]", "limits[0]", "only to the gcra"),
        ("limits: [{rate: 5/minute, key: ip, cost: {FETCH: 1}}]", "config.limits[0].cost", "not an HTTP method"),
        ("limits: [{rate: 5/minute, key: ip, cost: 6}]", "field 'config'", "exceeds its capacity of 5"),
        ("limits: [{rate: 5/minute, key: ip}]\ncost: {POST: 9}", "field 'config'", "a cost of 9 exceeds"),
        ("limits: [{rate: 5/minute, key: ip}, {rate: 5/minute, key: ip}]", "field 'config'", "must be unique"),
        ("limits: []", "config.limits", "at least 1 item"),
        ("limits: [{rate: 5/minute, key: ip}]\nplans: {gold: []}", "config.plans.gold", "at least 1 item"),
        ("limits: [{rate: 5/minute, key: ip}]\nplans: {'bad plan': [{rate: 1/second, key: ip}]}", "plans", "pattern"),
        ("limits: [{rate: 5/minute, key: ip, nme: x}]", "config.limits[0].nme", "unknown field"),
        ("limits: [{rate: 5/minute, key: ip}]\nipv6_prefix: 8", "config.ipv6_prefix", "greater than or equal"),
    ],
    ids=[
        "unit",
        "zero",
        "burst0",
        "no-key",
        "bad-key",
        "bad-header",
        "dup-part",
        "two-kinds",
        "no-kind",
        "burst-quota",
        "tz-rate",
        "bad-tz",
        "week",
        "conc0",
        "conc-cost",
        "window-burst",
        "bad-method",
        "cost-capacity",
        "stage-cost",
        "dup-names",
        "empty",
        "empty-plan",
        "plan-name",
        "typo",
        "v6-prefix",
    ],
)
def test_bad_limit_config_names_route_stage_and_field(config: str, where: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(config)
    text = str(err.value)
    assert "gw.yaml:" in text and "route 'items' (routes[0]) > stage 'rate_limit' (stages[1])" in text
    assert where in text and message in text


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("limits: [{rate: 5/minute, key: consumer}]", "key consumer is known only after authentication"),
        ("limits: [{rate: 5/minute, key: [ip, 'claim:tenant']}]", "claim:tenant is known only after"),
        ("limits: [{rate: 5/minute, key: ip}]\nplans: {gold: [{rate: 9/minute, key: ip}]}", "`plans` need a principal"),
    ],
    ids=["consumer", "claim", "plans"],
)
def test_pre_auth_limiter_refuses_principal_keys(config: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(config, "pre_auth_rate_limit")


@pytest.mark.parametrize(
    ("stage", "allowed"), [("rate_limit", True), ("pre_auth_rate_limit", False), ("brute_force", False)]
)
def test_fail_open_only_for_rate_limit_phase(stage: str, allowed: bool) -> None:
    config = "limits: [{rate: 5/minute, key: ip}]" if stage != "brute_force" else "per_ip: null"
    text = BASE.format(stage=stage + "\n        fail_open: true", config="          " + config)
    if allowed:
        load_config_text(text, env={})
    else:
        with pytest.raises(ConfigError, match="fail_open is allowed only for rate-limit and detect stages"):
            load_config_text(text, env={})


@pytest.mark.parametrize("stage", ["rate_limit", "pre_auth_rate_limit", "brute_force"])
@pytest.mark.parametrize("how", ["file", "env"])
def test_memory_limiter_with_several_workers_is_refused(stage: str, how: str) -> None:
    config = "limits: [{rate: 5/minute, key: ip}]" if stage != "brute_force" else "per_ip: {}"
    head = "workers: 2\n" if how == "file" else ""
    env = {"STOCKADE_WORKERS": "2"} if how == "env" else {}
    with pytest.raises(ConfigError) as err:
        load(config, stage, env=env, head=head)
    assert "silently split 2 ways" in str(err.value) and f"stage '{stage}'" in str(err.value)


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "redis+cluster://10.0.0.1:7000,10.0.0.2:7000", "rediss+cluster://h:7000/0"]
)
def test_redis_limiter_with_several_workers_is_accepted(url: str) -> None:
    load("limits: [{rate: 5/minute, key: ip}]", head=f"workers: 4\nlimits_storage: '{url}'\n")


def test_unknown_limits_storage_scheme_is_refused() -> None:
    with pytest.raises(ConfigError, match="unsupported scheme 'memcached'"):
        load("limits: [{rate: 5/minute, key: ip}]", head="limits_storage: memcached://x\n")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1:6379/0?pool=3", r"unknown option\(s\) pool"),
        ("redis://127.0.0.1:6379/zero", "must be a database number"),
        ("redis://127.0.0.1:6379/0?prefix=a{b}", "must not contain braces"),
        ("redis://127.0.0.1:6379/0?timeout=0", "between 0 and 60"),
        ("redis://127.0.0.1:99999/0", "bad port"),
        ("redis://:S3CRETPW@127.0.0.1:6379/zero", "must be a database number"),
        ("reddis://:S3CRETPW@127.0.0.1:6379/0", "unsupported scheme"),
        ("redis+cluster://:S3CRETPW@10.0.0.1:7000,10.0.0.2:7000/2", "Redis Cluster has only database 0"),
        ("redis+cluster://:S3CRETPW@10.0.0.1:7000,:7001", "empty seed node"),
        ("redis://:S3CRETPW@10.0.0.1:7000,10.0.0.2:7000/0", r"for Redis Cluster use redis\+cluster://"),
    ],
    ids=[
        "option",
        "db",
        "braces",
        "timeout",
        "port",
        "db-with-password",
        "scheme-with-password",
        "cluster-db",
        "cluster-seed",
        "seeds-without-cluster",
    ],
)
def test_bad_redis_url_is_a_config_error(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load("limits: [{rate: 5/minute, key: ip}]", head=f"limits_storage: '{url}'\n")
    assert "stage 'rate_limit'" in str(info.value) and "limits_storage" in str(info.value)  # where to look
    assert "S3CRETPW" not in str(info.value)  # the password never appears in a message


def _write(tmp_path: Path, head: str) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(head + BASE.format(stage="rate_limit", config="          limits: [{rate: 5/minute, key: ip}]"))
    return path


def test_config_check_refuses_memory_with_workers(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["config", "check", str(_write(tmp_path, "workers: 3\n"))])
    assert result.exit_code == 2
    assert "limits_storage is memory:// but the gateway runs 3 workers" in result.output


def test_serve_refuses_memory_with_workers_before_starting(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["serve", "--workers", "2", "--config", str(_write(tmp_path, ""))])
    assert result.exit_code == 2
    assert "a limit would be silently split 2 ways" in result.output
