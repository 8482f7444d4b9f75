"""`stockade lockouts list|clear` against Redis and Redis Cluster, and its refusal for a memory backend."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from stockade.cli import cli
from stockade.clock import SYSTEM_CLOCK
from stockade.config.loader import load_config
from stockade.ratelimit.backend import LockoutRule
from stockade.security.keys import username_key
from stockade.stages.ratelimit.brute_force import hash_username
from stockade.storage import storage_from_url
from stockade.storage.records import AdminChange
from tests.ratelimit.clusterutil import fresh_cluster_url
from tests.ratelimit.redisutil import fresh_redis_url

LOCK = LockoutRule(free_failures=0, lockout_after=1, backoff_base=1, backoff_max=1, lockout_seconds=600, window=600)


PEPPER = b"\x05" * 32


def write_config(tmp_path: Path, storage: str, secrets: str = "{pepper_file: pepper}") -> Path:
    (tmp_path / "pepper").write_text(base64.b64encode(PEPPER).decode())
    path = tmp_path / "stockade.yaml"
    path.write_text(f'limits_storage: "{storage}"\nsecrets: {secrets}\nroutes: []\n')
    return path


def lock(url: str, *subjects: str) -> None:
    from stockade.ratelimit.redis import RedisBackend

    async def go() -> None:
        backend = RedisBackend(url, SYSTEM_CLOCK)
        await backend.failed([(s, LOCK) for s in subjects])
        await backend.aclose()

    asyncio.run(go())


@pytest.mark.redis
@pytest.mark.parametrize("redis", [fresh_redis_url, fresh_cluster_url], ids=["standalone", "cluster"])
def test_list_and_clear_lockouts(tmp_path: Path, redis: Callable[[], str]) -> None:
    url = redis()
    config = str(write_config(tmp_path, url))
    user = f"user:{hash_username(username_key(PEPPER), 'alice@example.com')}"  # as the gateway counts it
    lock(url, "ip:203.0.113.5", user, "ip:2001:db8:1:2::/64", "id:abc")
    runner = CliRunner()
    listed = runner.invoke(cli, ["lockouts", "list", "--config", config])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0].split() == ["SUBJECT", "STATE", "FAILURES", "SECONDS", "LEFT"]
    assert {line.split()[0] for line in lines[1:]} == {"ip:203.0.113.5", user, "ip:2001:db8:1:2::/64", "id:abc"}
    assert all("locked_out" in line for line in lines[1:])
    assert (
        runner.invoke(cli, ["--config", config, "lockouts", "clear", "--username", "Alice@Example.com"]).exit_code == 0
    )
    assert runner.invoke(cli, ["lockouts", "clear", "--ip", "2001:db8:1:2::99", "--config", config]).exit_code == 0
    assert runner.invoke(cli, ["lockouts", "clear", "id:abc", "--config", config]).output == "cleared 1 lockout\n"
    missing = runner.invoke(cli, ["lockouts", "clear", "id:abc", "--config", config])
    assert missing.exit_code == 1 and "no lockout" in missing.output
    as_json = runner.invoke(cli, ["lockouts", "list", "--json", "--config", config])
    assert '"subject": "ip:203.0.113.5"' in as_json.output and user not in as_json.output
    assert runner.invoke(cli, ["lockouts", "clear", "--all", "--config", config]).output == "cleared 1 lockout\n"
    assert runner.invoke(cli, ["lockouts", "list", "--config", config]).output == "no lockouts\n"
    assert [(c.action, c.target, c.actor.startswith("cli:"), dict(c.detail)) for c in admin_log(config)] == [
        ("lockout.clear", "*", True, {"cleared": 1}),
        ("lockout.clear", "id:abc", True, {"cleared": 1}),
        ("lockout.clear", "ip:2001:db8:1:2::/64", True, {"cleared": 1}),
        ("lockout.clear", user, True, {"cleared": 1}),
    ]  # newest first; the clear that found nothing is not there


def admin_log(config: str) -> list[AdminChange]:
    loaded = load_config(Path(config), env={})
    store = storage_from_url(loaded.config.storage, base_dir=loaded.base_dir)

    async def go() -> list[AdminChange]:
        try:
            return await store.list_admin_changes()
        finally:
            await store.close()

    return asyncio.run(go())


@pytest.mark.parametrize(
    "args",
    [["lockouts", "clear"], ["lockouts", "clear", "ip:1", "--all"], ["lockouts", "clear", "--ip", "nonsense"]],
    ids=["nothing", "two", "bad-ip"],
)
def test_clear_usage_errors(tmp_path: Path, args: list[str]) -> None:
    result = CliRunner().invoke(cli, [*args, "--config", str(write_config(tmp_path, "redis://127.0.0.1:1/0"))])
    assert result.exit_code == 2


def test_memory_backend_points_to_the_admin_api(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["lockouts", "list", "--config", str(write_config(tmp_path, "memory://"))])
    assert result.exit_code == 1 and "GET /lockouts" in result.output


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
def test_unreachable_redis_is_reported(tmp_path: Path, scheme: str) -> None:
    from tests.ratelimit.redisutil import closed_port_url

    config = str(write_config(tmp_path, closed_port_url().replace("redis", scheme, 1)))
    result = CliRunner().invoke(cli, ["lockouts", "list", "--config", config])
    assert result.exit_code == 3 and "limits backend unavailable" in result.output


def test_clear_by_username_needs_the_gateways_pepper_and_makes_none(tmp_path: Path) -> None:
    """The subject is keyed with the pepper: a CLI that generated one would compute a subject nothing has."""
    config = str(write_config(tmp_path, "redis://127.0.0.1:1/0", secrets="{}"))
    result = CliRunner().invoke(cli, ["lockouts", "clear", "--username", "alice", "--config", config])
    assert result.exit_code == 2 and "pepper does not exist" in result.output and "gateway's pepper" in result.output
    assert not (tmp_path / ".stockade").exists()
