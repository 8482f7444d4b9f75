"""`stockade config check|schema` and the global --config option."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from stockade.cli import cli
from tests.config.test_loader import GOOD


def test_check_valid_exits_zero(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD)
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "OK (1 routes" in result.output


def test_check_invalid_exits_nonzero_naming_route_and_field(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD.replace("max_bytes: 1024", "max_bytes: -3"))
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert "route 'items'" in result.output
    assert "field 'config.max_bytes'" in result.output
    assert f"{path}:10" in result.output
    assert "Traceback" not in result.output


def test_check_uses_global_config_option(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD)
    result = CliRunner().invoke(cli, ["--config", str(path), "config", "check"])
    assert result.exit_code == 0, result.output


def test_check_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["config", "check", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2
    assert "cannot read config" in result.output


def test_schema_is_json_schema_with_every_stage() -> None:
    result = CliRunner().invoke(cli, ["config", "schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema["$schema"].startswith("https://json-schema.org/")
    uses = {v["properties"]["use"]["const"] for v in schema["$defs"]["StageEntry"]["oneOf"]}
    assert {"anonymous", "ip_filter", "request_size", "security_headers"} <= uses
    assert schema["properties"]["listen"]


def test_help_lists_commands() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "serve" in result.output and "config" in result.output
