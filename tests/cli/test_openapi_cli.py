"""`stockade openapi routes SPEC`: a routes config that the loader accepts as it is."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from stockade.cli import cli
from stockade.config.loader import load_config_text

SPECS = Path(__file__).resolve().parents[1] / "openapi" / "specs"


def test_routes_are_generated_one_per_path_and_pass_config_check() -> None:
    result = CliRunner().invoke(cli, ["openapi", "routes", str(SPECS / "shop.yaml"), "--spec-path", "shop.yaml"])
    assert result.exit_code == 0, result.output
    loaded = load_config_text(result.output, base_dir=SPECS, env={})
    assert loaded.config.limits.path_parameters is True  # the spec has matrix-style path parameters
    routes = {r.id: r for r in loaded.config.routes}
    assert len(routes) == 8
    assert routes["inventory.sku"].match.path == "/api/*/inventory/{sku}"  # servers /api/v1 and /api/v2
    assert routes["inventory.sku"].match.methods == ["PATCH"]
    assert routes["reports.name.format"].match.path == "/api/*/reports/*"  # `{name}.{format}`: no gateway syntax
    assert [s.use for s in routes["orders"].stages] == ["anonymous", "openapi"]
    assert routes["orders"].stages[1].config == {"spec": "shop.yaml"}
    assert str(routes["orders"].upstream and routes["orders"].upstream.url) == "http://127.0.0.1:9000"


def test_routes_keep_every_method_of_a_path() -> None:
    result = CliRunner().invoke(cli, ["openapi", "routes", str(SPECS / "petstore.yaml")])
    doc = yaml.safe_load(result.output)
    by_path = {r["match"]["path"]: r["match"]["methods"] for r in doc["routes"]}
    assert by_path["/v1/pets/{petId}"] == ["GET", "PUT", "DELETE"]


def test_broken_spec_exits_2_naming_file_and_pointer(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("openapi: 3.1.0\npaths: {/a: {get: {parameters: [{$ref: '#/nope'}]}}}\n")
    result = CliRunner().invoke(cli, ["openapi", "routes", str(spec)])
    assert result.exit_code == 2
    assert f"{spec.resolve()}#/paths/~1a/get/parameters/0/$ref" in result.output


def test_serve_reports_a_broken_spec_as_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "openapi: 3.1.0\ninfo: {title: t, version: '1'}\npaths: {}\n"
        "components: {schemas: {Sku: {type: string, pattern: '(?<=a)b'}}}\n"
    )
    config = tmp_path / "stockade.yaml"
    config.write_text(
        "routes:\n  - id: api\n    match: {path: /**}\n    upstream: http://127.0.0.1:9\n"
        "    stages: [{use: anonymous}, {use: openapi, config: {spec: bad.yaml}}]\n"
    )
    result = CliRunner().invoke(cli, ["serve", "--config", str(config)])
    assert result.exit_code == 2
    assert "stage 'openapi'" in result.output
    assert f"{(tmp_path / 'bad.yaml').resolve()}#/components/schemas/Sku/pattern" in result.output
    assert "Traceback" not in result.output


def test_config_check_reports_a_broken_spec(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "openapi: 3.1.0\ninfo: {title: t, version: '1'}\npaths: {/a: {get: {parameters: 1}}}\n"
    )
    config = tmp_path / "stockade.yaml"
    config.write_text(
        "routes:\n  - id: api\n    match: {path: /**}\n    upstream: http://127.0.0.1:9\n"
        "    stages: [{use: anonymous}, {use: openapi, config: {spec: bad.yaml}}]\n"
    )
    result = CliRunner().invoke(cli, ["config", "check", str(config)])
    assert result.exit_code == 2
    assert f"{(tmp_path / 'bad.yaml').resolve()}#/paths/~1a/get/parameters: parameters must be a list" in result.output
