"""The CLI's exit codes mean the same in every command group (the table in `stockade --help` and the README)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from stockade.cli import cli

DEAD_STORE = "postgresql://nobody:hunter2@127.0.0.1:1/none?connect_timeout=1"  # nothing listens on port 1

STORE_COMMANDS = [
    ["keys", "list"],
    ["keys", "revoke", "key_0000000000000000"],
    ["consumers", "list"],
    ["admin", "token", "list"],
    ["admin", "changes"],
    ["clients", "list"],
    ["clients", "revoke", "cl_0000000000000000"],
    ["clients", "create", "--name", "ci", "--scopes", "a"],
]


@pytest.mark.parametrize("args", STORE_COMMANDS, ids=[" ".join(a[:2]) for a in STORE_COMMANDS])
def test_an_unreachable_store_exits_3_in_every_command_group(tmp_path: Path, args: list[str]) -> None:
    """It was 3 for keys, consumers and admin, and 1 for clients: a script could not tell "the database is down"
    from "no such client" there."""
    config = tmp_path / "stockade.yaml"
    config.write_text(f"storage: {DEAD_STORE}\n")
    result = CliRunner().invoke(cli, ["--config", str(config), *args])
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith("error: storage:") and "hunter2" not in result.stderr


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["keys", "revoke", "key_0000000000000000"], 1),
        (["clients", "revoke", "cl_0000000000000000"], 1),
        (["consumers", "delete", "nobody"], 1),
        (["keys", "list", "--consumer", "nobody"], 1),
    ],
    ids=["keys", "clients", "consumers", "keys-list"],
)
def test_something_not_found_exits_1_in_every_command_group(tmp_path: Path, args: list[str], code: int) -> None:
    config = tmp_path / "stockade.yaml"
    config.write_text("storage: sqlite:///s.db\n")
    result = CliRunner().invoke(cli, ["--config", str(config), *args])
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("error: ")


@pytest.mark.parametrize("group", ["keys", "clients"])
def test_a_storage_url_that_cannot_be_used_exits_2(tmp_path: Path, group: str) -> None:
    config = tmp_path / "stockade.yaml"
    config.write_text("storage: postgresql://u:hunter2@h/db?schema=Bad-Name\n")
    result = CliRunner().invoke(cli, ["--config", str(config), group, "list"])
    assert result.exit_code == 2, result.output
    assert "hunter2" not in result.stderr


def test_the_exit_codes_are_in_the_help() -> None:
    text = CliRunner().invoke(cli, ["--help"]).output
    assert "Exit codes" in text and "3  the store" in text


SERVED = """
listen: {{host: 127.0.0.1, port: 30417}}
admin: {{host: 127.0.0.1, port: 30418}}
{head}
routes:
  - id: api
    match: {{path: "/api/**"}}
    upstream: http://127.0.0.1:9
    stages:
      - use: api_key
"""
START_UP_PROBLEMS = {
    "secrets-missing": (
        "storage: sqlite:///s.db\nsecrets: {pepper_file: state/pepper, kek_file: state/kek, generate: false}",
        "state/pepper does not exist",
    ),
    "libpq-refuses-the-url": (
        "storage: postgresql://u:hunter2@127.0.0.1:1/db?schema=s7&bogus_param=1",
        'invalid URI query parameter: "bogus_param"',
    ),
}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("problem", START_UP_PROBLEMS)
def test_serve_reports_a_start_up_config_problem_and_exits_2(tmp_path: Path, problem: str, workers: int) -> None:
    """With several workers a missing secret file was a traceback (exit 1), and a storage URL libpq cannot read was
    one with any number: the supervisor loads the secrets and makes the store outside the single process's path."""
    head, message = START_UP_PROBLEMS[problem]
    config = tmp_path / "gw.yaml"
    config.write_text(SERVED.format(head=head))
    result = subprocess.run(
        [sys.executable, "-m", "stockade", "serve", "--config", str(config), "--workers", str(workers)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, "Traceback" in result.stderr) == (2, False), result.stderr
    assert message in result.stderr and "hunter2" not in result.stderr


def test_config_check_reads_the_storage_url_as_libpq_will(tmp_path: Path) -> None:
    """It said OK for a URL serve then could not use."""
    head, message = START_UP_PROBLEMS["libpq-refuses-the-url"]
    config = tmp_path / "gw.yaml"
    config.write_text(SERVED.format(head=head))
    result = CliRunner().invoke(cli, ["config", "check", str(config)])
    assert result.exit_code == 2, result.output
    assert "field 'storage'" in result.stderr and message in result.stderr and "hunter2" not in result.stderr
