"""`stockade consumers|keys|admin` through click's runner against a real sqlite store."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from stockade.cli import cli
from stockade.security import keys

CONFIG = """
storage: sqlite:///state/stockade.db
routes:
  - id: books
    match: {path: /books}
    upstream: http://127.0.0.1:9
    stages:
      - use: api_key
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "stockade.yaml"
    path.write_text(CONFIG)
    return path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def last_line(result: Result) -> str:
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("position", ["before", "after"])
def test_keys_create_prints_the_key_last_and_creates_the_consumer(config: Path, position: str) -> None:
    args = ["keys", "create", "--consumer", "alice", "--scopes", "a,b"]
    result = invoke("--config", str(config), *args) if position == "before" else invoke(*args, "--config", str(config))
    assert result.exit_code == 0, result.stderr
    key = last_line(result)
    assert keys.parse(key, env="live")
    assert "created consumer alice" in result.stderr and "shown only once" in result.stderr
    listed = invoke("keys", "list", "--config", str(config))
    assert "scopes=a,b" in listed.stdout and key not in listed.stdout and key[9:30] not in listed.stdout
    assert (config.parent / "state" / "stockade.db").exists()  # relative to the config file


def test_keys_revoke_by_key_and_by_id(config: Path) -> None:
    k1 = last_line(invoke("--config", str(config), "keys", "create", "--consumer", "alice"))
    k2 = last_line(invoke("--config", str(config), "keys", "create", "--consumer", "alice"))
    result = invoke("--config", str(config), "keys", "revoke", k1)
    assert result.exit_code == 0 and result.stdout.startswith("revoked API key key_")
    key_id = [line.split()[0] for line in invoke("--config", str(config), "keys", "list").stdout.splitlines()]
    active = [i for i in key_id if i not in result.stdout]
    assert len(active) == 1
    assert invoke("--config", str(config), "keys", "revoke", active[0]).exit_code == 0
    statuses = invoke("--config", str(config), "keys", "list", "--json").stdout
    assert statuses.count('"status":"revoked"') == 2 and k2 not in statuses


def test_revoking_a_revoked_key_says_so_and_keeps_the_first_revocation(config: Path) -> None:
    key = last_line(invoke("--config", str(config), "keys", "create", "--consumer", "alice"))
    first = invoke("--config", str(config), "keys", "revoke", key)
    assert first.exit_code == 0 and first.stdout.startswith("revoked API key key_")
    again = invoke("--config", str(config), "keys", "revoke", key)
    assert again.exit_code == 0, again.stderr  # idempotent: the key is revoked, as asked
    key_id = first.stdout.split()[3]
    assert again.stdout.startswith(f"API key {key_id} was already revoked at "), again.stdout
    assert key not in again.stdout
    third = invoke("--config", str(config), "keys", "revoke", key_id)  # by id, the same
    assert third.stdout.startswith(f"API key {key_id} was already revoked at "), third.stdout
    changes = invoke("--config", str(config), "admin", "changes", "--json").stdout.splitlines()
    revokes = [c for c in map(orjson.loads, changes) if c["action"] == "api_key.revoke"]
    assert [c["target"] for c in revokes] == [key_id]  # one revocation, one entry: the others changed nothing


@pytest.mark.parametrize(
    ("given", "revoked"),
    [
        (" {key}", True),  # pasted with the space before it: the gateway accepts it so, so revoke must find it
        ("{key} ", True),
        ("\t{key}\n", True),
        ('"{key}"', False),  # not a key the gateway accepts: not found, and never repeated back
        ("{key}x", False),
        ("X-API-Key: {key}", False),
    ],
    ids=["leading-space", "trailing-space", "tab-newline", "quoted", "extra-char", "header-line"],
)
def test_keys_revoke_takes_a_key_with_whitespace_and_never_echoes_one(config: Path, given: str, revoked: bool) -> None:
    """`keys revoke " KEY"` looked the key up as an id: "no API key ' stk_live_...'", the whole key on stderr, and
    the key left valid."""
    key = last_line(invoke("--config", str(config), "keys", "create", "--consumer", "alice"))
    result = invoke("--config", str(config), "keys", "revoke", given.format(key=key))
    assert key not in result.stderr and key[9:20] not in result.stderr
    statuses = invoke("--config", str(config), "keys", "list", "--json").stdout
    if revoked:
        assert result.exit_code == 0 and '"status":"revoked"' in statuses
    else:
        assert result.exit_code == 1 and "no API key" in result.stderr and '"status":"active"' in statuses


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["keys", "revoke", "key_doesnotexist00"], 1, "no API key"),
        (["keys", "revoke", keys.generate("live")], 1, "no API key matches the key given"),
        (["keys", "create", "--consumer", "bad name!"], 1, "name must be"),
        (["keys", "create", "--consumer", "alice", "--ttl", "soon"], 2, "not a duration"),
        (["keys", "create", "--consumer", "alice", "--env", "admin"], 1, "reserved"),
        (["consumers", "delete", "nobody"], 1, "no consumer"),
        (["admin", "token", "create", "--role", "root"], 2, "root"),
    ],
    ids=[
        "revoke-unknown-id",
        "revoke-unknown-key",
        "bad-consumer-name",
        "bad-ttl",
        "reserved-env",
        "delete-unknown",
        "bad-role",
    ],
)
def test_identity_cli_errors(config: Path, args: list[str], code: int, message: str) -> None:
    result = invoke("--config", str(config), *args)
    assert result.exit_code == code
    assert message in result.stderr


def test_keys_rotate_prints_new_key_and_keeps_old_one_for_the_overlap(config: Path) -> None:
    old = last_line(invoke("--config", str(config), "keys", "create", "--consumer", "alice", "--scopes", "x"))
    result = invoke("--config", str(config), "keys", "rotate", old, "--overlap", "1h")
    assert result.exit_code == 0, result.stderr
    new = last_line(result)
    assert new != old and keys.parse(new)
    listing = invoke("--config", str(config), "keys", "list").stdout
    assert "rotated_to=key_" in listing and listing.count("active") == 2 and listing.count("scopes=x") == 2


def test_consumers_create_list_delete(config: Path) -> None:
    created = invoke(
        "consumers", "create", "bob", "--role", "reader", "--plan", "gold", "--meta", "team=x", "--config", str(config)
    )
    assert created.exit_code == 0, created.stderr
    invoke("--config", str(config), "keys", "create", "--consumer", "bob")
    listed = invoke("--config", str(config), "consumers", "list", "--json").stdout
    assert '"name":"bob"' in listed and '"plan":"gold"' in listed and '"team":"x"' in listed
    assert invoke("--config", str(config), "consumers", "delete", "bob").exit_code == 0
    assert invoke("--config", str(config), "keys", "list").stdout == ""


def test_admin_token_create_and_change_log_names_the_cli_user(config: Path) -> None:
    result = invoke("--config", str(config), "admin", "token", "create", "--role", "operator", "--name", "ci")
    token = last_line(result)
    assert keys.parse(token, env="admin")
    tokens = invoke("--config", str(config), "admin", "token", "list").stdout
    assert "role=operator" in tokens and token not in tokens
    changes = invoke("--config", str(config), "admin", "changes").stdout
    assert "admin_token.create" in changes and "cli:" in changes and token not in changes


def test_admin_token_list_shows_an_expired_token_as_expired(config: Path) -> None:
    """A token past its expiry was listed as `active` (only revocation was looked at)."""
    import asyncio

    from stockade.storage import storage_from_url
    from stockade.storage.records import AdminToken

    invoke("--config", str(config), "admin", "token", "create", "--role", "viewer", "--name", "live")
    store = storage_from_url(f"sqlite:///{config.parent}/state/stockade.db")
    past = AdminToken(
        id="adm_0000000000000001", name="old", role="viewer", token_hash="00" * 32, created_at=1.0, expires_at=2.0
    )
    asyncio.run(store.create_admin_token(past, actor="test", at=1.0))
    listing = invoke("--config", str(config), "admin", "token", "list").stdout.splitlines()
    states = {line.split()[1]: line.split()[3] for line in listing}
    assert states == {"live": "active", "old": "expired"}


@pytest.mark.parametrize("logname", ["admin-token:adm_FAKE (ops-bot)", "x\n7 2026-01-01 admin-token:adm_y (ops)"])
def test_the_cli_actor_comes_from_the_password_database_not_the_environment(
    monkeypatch: pytest.MonkeyPatch, logname: str
) -> None:
    """getpass read $LOGNAME first: anyone could record changes as another actor, or forge log lines."""
    import pwd

    from stockade.cli.identity_common import cli_actor

    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.setenv(name, logname)
    actor = cli_actor()
    assert actor.startswith(f"cli:{pwd.getpwuid(os.getuid()).pw_name}@")
    assert "adm_" not in actor and actor.isprintable()


def test_a_cli_with_another_pepper_is_refused_before_it_writes(tmp_path: Path) -> None:
    """Two nodes sharing one store, each with a pepper of its own (generated on first use): keys created on one
    were unknown to the other, and nothing said why."""
    shared = tmp_path / "shared.db"
    configs = []
    for node in ("a", "b"):
        folder = tmp_path / node
        folder.mkdir()
        path = folder / "stockade.yaml"
        path.write_text(f"storage: sqlite:///{shared}\n")
        configs.append(str(path))
    runner = CliRunner()
    first = runner.invoke(cli, ["--config", configs[0], "consumers", "create", "alice"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(cli, ["--config", configs[1], "keys", "create", "--consumer", "alice"])
    assert second.exit_code == 2
    assert "the pepper" in second.output and "STOCKADE_PEPPER" in second.output
    assert "stk_" not in second.output  # no key was issued
    listed = runner.invoke(cli, ["--config", configs[0], "keys", "list"])
    assert listed.exit_code == 0 and "key_" not in listed.output


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STOCKADE_KEYS_CREATE_SCOPES", "admin:all"),
        ("STOCKADE_KEYS_CREATE_ENV", "test"),
        ("STOCKADE_KEYS_CREATE_TTL", "1s"),
        ("STOCKADE_KEYS_CREATE_NAME", "from-env"),
    ],
)
def test_command_options_are_not_read_from_undocumented_variables(config: Path, variable: str, value: str) -> None:
    """click's auto_envvar_prefix made every option a STOCKADE_<GROUP>_<COMMAND>_<OPTION> variable: one left in
    an environment silently gave every key created there `admin:all`. Only the documented variables count - and
    one that earlier versions read is refused rather than ignored (a script relying on `..._TTL=1h` would
    otherwise get a key that never expires)."""
    result = CliRunner(env={variable: value, "STOCKADE_CONFIG": str(config)}).invoke(
        cli, ["keys", "create", "--consumer", "alice"], catch_exceptions=False
    )
    assert result.exit_code == 2 and variable in result.stderr and "no longer read" in result.stderr
    assert "stk_" not in result.output
    listed = invoke("--config", str(config), "keys", "list", "--json").stdout
    assert "key_" not in listed  # nothing was created


@pytest.mark.parametrize(
    ("env", "args", "refused"),
    [
        (
            {"STOCKADE_SERVE_WORKERS": "4"},
            ["serve", "--config", "nowhere.yaml"],
            "STOCKADE_SERVE_WORKERS (pass --workers)",
        ),
        ({"STOCKADE_CONFIG_CHECK_ASGI": "1"}, ["config", "check", "x.yaml"], "STOCKADE_CONFIG_CHECK_ASGI"),
        ({"STOCKADE_SERVE_WORKERS": "4"}, ["serve", "--help"], None),  # help is always there
        ({"STOCKADE_SERVE_WORKERS": ""}, ["serve", "--help"], None),
        ({"STOCKADE_CONSUMERS_LIST_AS_JSON": ""}, ["consumers", "list", "--help"], None),  # cleared: ignored then too
        ({"STOCKADE_KEYS_CREATE_TTL": "1h"}, ["keys", "list", "--help"], None),  # another command's
        ({"STOCKADE_LIMITS__MAX_HEADERS": "50", "STOCKADE_ADMIN__PORT": "9"}, ["serve", "--help"], None),
        ({"STOCKADE_CONFIG": "x.yaml"}, ["keys", "list", "--help"], None),
    ],
    ids=[
        "serve-workers",
        "config-check",
        "help",
        "empty",
        "empty-flag",
        "other-command",
        "config-overrides",
        "documented",
    ],
)
def test_former_option_variables_are_refused_for_their_own_command(
    env: dict[str, str], args: list[str], refused: str | None
) -> None:
    result = CliRunner(env=env).invoke(cli, args)
    if refused is None:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 2 and refused in result.stderr


@pytest.mark.parametrize(
    "option",
    [["--env", "BAD"], ["--env", "admin"], ["--scopes", 'a"b'], ["--name", "bad name!"], ["--ttl", "99999w"]],
    ids=["env-shape", "env-reserved", "scope", "name", "ttl-too-long"],
)
def test_keys_create_checks_the_key_before_it_creates_the_consumer(config: Path, option: list[str]) -> None:
    """`keys create --consumer new --env BAD` created the consumer, then refused the key: half a change."""
    result = invoke("--config", str(config), "keys", "create", "--consumer", "newcomer", *option)
    assert result.exit_code == 1 and "created consumer" not in result.stderr
    assert "newcomer" not in invoke("--config", str(config), "consumers", "list").stdout


def test_a_cleared_former_option_variable_is_no_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """click ignored an empty value too: a unit that clears one (`Environment=STOCKADE_SERVE_WORKERS=`) runs."""
    from stockade.cli import _former_option_variables

    monkeypatch.setenv("STOCKADE_SERVE_WORKERS", "")
    assert _former_option_variables(cli, ["serve", "--config", "x.yaml"]) == []
    monkeypatch.setenv("STOCKADE_SERVE_WORKERS", "2")
    assert _former_option_variables(cli, ["serve", "--config", "x.yaml"]) == [("STOCKADE_SERVE_WORKERS", "--workers")]
