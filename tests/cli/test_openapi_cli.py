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
    routes = {r.id: r for r in loaded.config.routes}
    assert len(routes) == 8
    assert routes["inventory.sku"].match.path == "/api/v1/inventory/{sku}"  # the base path every server shares
    assert routes["inventory.sku"].match.methods == ["PATCH"]
    assert routes["reports.name.format"].match.path == "/api/v1/reports/*"  # `{name}.{format}`: no gateway syntax
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
