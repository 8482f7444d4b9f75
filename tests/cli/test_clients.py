"""`stockade clients create|list|revoke` against a SQLite store named by the config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from stockade.cli import cli


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "stockade.yaml"
    path.write_text("storage: sqlite:///data/clients.db\n")
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_clients_create_list_revoke(config: Path) -> None:
    code, out, err = run("--config", str(config), "clients", "create", "--name", "ci", "--scopes", "a, b,a")
    assert code == 0, out + err
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert set(lines) == {"client_id", "client_secret"}
    assert lines["client_id"].startswith("cl_") and lines["client_secret"].startswith("stk_secret_")
    assert "shown only now" in err
    code, out, _ = run("clients", "list", "--json", "--config", str(config))
    docs = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(docs) == 1
    assert docs[0]["scopes"] == ["a", "b"] and docs[0]["status"] == "active"
    assert lines["client_secret"] not in out
    assert (config.parent / "data" / "clients.db").exists()  # relative to the config file, not the cwd
    code, out, _ = run("clients", "revoke", lines["client_id"], "--config", str(config))
    assert code == 0 and "revoked" in out
    _, out, _ = run("clients", "list", "--config", str(config))
    assert "revoked" in out and lines["client_id"] in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create", "--name", "x", "--scopes", 'a"b'], "invalid scope"),
        (["create", "--name", "x", "--auth-method", "private_key_jwt"], "needs the client's public JWK Set"),
        (["create", "--name", "x", "--auth-method", "none"], "Invalid value"),
        (["revoke", "cl_missing"], "error:"),
    ],
    ids=["bad-scope", "jwt-without-jwks", "bad-method", "revoke-unknown"],
)
def test_clients_errors(config: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["--config", str(config), "clients", *args])
    assert result.exit_code != 0
    assert message in result.output + result.stderr


def test_clients_create_names_its_consumer_by_id_or_name(config: Path) -> None:
    """--consumer alice (a name) ended in a raw 'sqlite: FOREIGN KEY constraint failed'."""
    code, out, err = run("--config", str(config), "consumers", "create", "alice")
    assert code == 0, out + err
    code, out, err = run(
        "--config", str(config), "clients", "create", "--name", "c", "--scopes", "a", "--consumer", "alice"
    )
    assert code == 0, out + err
    code, out, _ = run("clients", "list", "--json", "--config", str(config))
    assert json.loads(out.splitlines()[0])["consumer_id"].startswith("con_")
    code, _, err = run(
        "--config", str(config), "clients", "create", "--name", "d", "--scopes", "a", "--consumer", "bob"
    )
    assert code == 1 and "no consumer 'bob'" in err and "FOREIGN KEY" not in err
