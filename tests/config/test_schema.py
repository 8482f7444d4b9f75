"""The exported JSON Schema accepts what the loader accepts (documented configs, short forms) and rejects what it
can express of what the loader rejects (unknown keys, stages and handlers, bad stage options)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from pydantic import create_model

from stockade.cli import cli
from stockade.config.loader import load_config_text
from stockade.config.schema import config_schema, schema_for
from stockade.errors import ConfigError
from stockade.pipeline.phase import Phase
from stockade.pipeline.stage import Stage, StageConfig
from stockade.pipeline.verdict import Continue

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = config_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def schema_errors(doc: Any, validator: jsonschema.protocols.Validator = VALIDATOR) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def loader_problems(text: str) -> list[str]:
    try:
        load_config_text(text, env={}, require_upstreams=False)
    except ConfigError as exc:
        return exc.problems
    return []


def documented_configs() -> Iterator[Any]:
    """Every YAML block of the README and docs (a list of stage entries becomes a global `stages:`), and every
    config under examples/ (OpenAPI documents there are specs, not configs)."""
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = md.read_text(encoding="utf-8")
        for m in re.finditer(r"^```yaml\n(.*?)^```", text, re.S | re.M):
            block = m.group(1)
            if isinstance(yaml.safe_load(block), list):
                block = "stages:\n" + "".join(f"  {line}\n" for line in block.splitlines())
            line = text.count("\n", 0, m.start()) + 1
            yield pytest.param(block, id=f"{md.relative_to(ROOT)}:{line}")
    for path in sorted((ROOT / "examples").rglob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        if "openapi" not in yaml.safe_load(text):
            yield pytest.param(text, id=str(path.relative_to(ROOT)))


def test_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_schema_every_ref_resolves_from_the_root() -> None:
    """Stage schemas used to keep their own `$defs` while their refs pointed at the root's (PointerToNowhere)."""

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for item in node:
                yield from refs(item)

    found = set(refs(SCHEMA))
    assert "#/$defs/IssuerConfig" in found
    for ref in found:
        assert ref.startswith("#/$defs/"), ref
        assert ref.removeprefix("#/$defs/") in SCHEMA["$defs"], ref
    assert not [name for name, schema in SCHEMA["$defs"].items() if "$defs" in schema]  # nothing nested is left


def test_schema_every_model_is_closed() -> None:
    """extra="forbid" everywhere: an unknown key is an error in the editor as at load."""
    assert SCHEMA["additionalProperties"] is False
    assert [name for name, d in SCHEMA["$defs"].items() if d.get("additionalProperties") is not False] == []


LOADABLE = [p for p in documented_configs() if not loader_problems(p.values[0])]  # fragments are refused by both


def test_schema_documented_configs_are_mostly_whole_ones() -> None:
    """The corpus must not go quiet: fragments (a stage shown without its listener, a route without its
    authenticator) are left out, whole configs are checked."""
    assert len(LOADABLE) >= 10, [p.id for p in LOADABLE]


@pytest.mark.parametrize("text", [p.values[0] for p in LOADABLE], ids=[str(p.id) for p in LOADABLE])
def test_schema_documented_config_the_loader_accepts_is_accepted(text: str) -> None:
    assert schema_errors(yaml.safe_load(text)) == []


def test_schema_readme_example_is_among_the_documented_configs() -> None:
    """The corpus above must not go quiet: the README's config is a full one."""
    readme = [p.values[0] for p in documented_configs() if str(p.id).startswith("README.md:")]
    assert readme and loader_problems(readme[0]) == [] and schema_errors(yaml.safe_load(readme[0])) == []


def test_schema_routes_generated_from_a_spec_are_accepted() -> None:
    result = CliRunner().invoke(cli, ["openapi", "routes", str(ROOT / "examples" / "demo" / "openapi.yaml")])
    assert result.exit_code == 0, result.output
    assert loader_problems(result.output) == []
    assert schema_errors(yaml.safe_load(result.output)) == []


ROUTE = (
    "routes:\n  - id: r\n    match: {path: /x}\n    upstream: http://127.0.0.1:9000\n    stages: [{use: anonymous}]\n"
)

SHORT_FORMS = [
    ("upstream-url-string", ROUTE),
    ("upstream-mapping", ROUTE.replace("upstream: http://127.0.0.1:9000", "upstream: {url: https://a.example}")),
    ("host-string", ROUTE.replace("match: {path: /x}", 'match: {path: /x, host: "a.example"}')),
    ("host-list", ROUTE.replace("match: {path: /x}", "match: {path: /x, host: [a.example, '*.b.example']}")),
    ("log-decisions-off", "log: {decisions: off}\n" + ROUTE),  # YAML 1.1 reads `off` as false
    ("log-decisions-quoted-off", "log: {decisions: 'off'}\n" + ROUTE),
    ("log-decisions-path", "log: {decisions: /var/log/stockade.log}\n" + ROUTE),
    ("limit-key-string", "stages: [{use: rate_limit, config: {limits: [{rate: 5/second, key: claim:tenant}]}}]\n"),
    ("limit-key-list", "stages: [{use: rate_limit, config: {limits: [{rate: 5/second, key: [consumer, route]}]}}]\n"),
    ("pre-auth-key-string", "stages: [{use: pre_auth_rate_limit, config: {limits: [{rate: 5/second, key: ip}]}}]\n"),
    (
        "fail-open-rate-limit",
        "stages: [{use: rate_limit, fail_open: true, config: {limits: [{rate: 1/second, key: ip}]}}]\n",
    ),
    (
        "handler",
        "stages: [{use: anonymous}]\nroutes: [{id: h, match: {path: /h}, handler: {use: static, config: {}}}]\n",
    ),
]


@pytest.mark.parametrize(("text"), [pytest.param(t, id=i) for i, t in SHORT_FORMS])
def test_schema_short_form_the_loader_accepts_is_accepted(text: str) -> None:
    assert loader_problems(text) == []
    assert schema_errors(yaml.safe_load(text)) == []


INVALID = [
    ("unknown-top-level-key", "routez: []\n"),
    ("unknown-route-key", ROUTE.replace("    stages:", "    timeout: 5\n    stages:")),
    ("unknown-stage", "stages: [{use: anonymus}]\n"),
    ("unknown-stage-entry-key", "stages: [{use: anonymous, enabled: true}]\n"),
    ("unknown-stage-option", "stages: [{use: request_size, config: {max_bytes: 10, min_bytes: 1}}]\n"),
    ("bad-stage-option-type", "stages: [{use: request_size, config: {max_bytes: lots}}]\n"),
    ("missing-stage-config", "stages: [{use: jwt}]\n"),
    ("nested-stage-option", "stages: [{use: jwt, config: {issuers: [{issuer: https://i.example, jwks: x}]}}]\n"),
    (
        "limit-key-too-long",
        "stages: [{use: rate_limit, config: {limits: [{rate: 1/second, key: [ip, a, b, c, d]}]}}]\n",
    ),
    ("limit-unknown-option", "stages: [{use: rate_limit, config: {limits: [{rate: 1/second, key: ip, per: 2}]}}]\n"),
    ("brute-force-login-option", "stages: [{use: brute_force, config: {login: {username: u}}}]\n"),
    ("fail-open-authenticator", "stages: [{use: anonymous, fail_open: true}]\n"),
    ("log-decisions-true", "log: {decisions: true}\n"),
    ("unknown-handler", "routes: [{id: h, match: {path: /h}, handler: {use: statik}, stages: [{use: anonymous}]}]\n"),
    ("host-number", ROUTE.replace("match: {path: /x}", "match: {path: /x, host: 5}")),
]


@pytest.mark.parametrize(("text"), [pytest.param(t, id=i) for i, t in INVALID])
def test_schema_config_the_loader_rejects_is_rejected(text: str) -> None:
    assert loader_problems(text) != []
    assert schema_errors(yaml.safe_load(text)) != []


def _stage(name: str, **rule: Any) -> type[Stage]:
    """A stage whose config nests a model; two of them have same-named configs and rules of different shapes."""
    rule_model = create_model("Rule", __module__=f"fake.{name}", **rule)
    config = create_model("Config", __base__=StageConfig, __module__=f"fake.{name}", rules=list[rule_model])  # type: ignore[valid-type]

    class Fake:
        id: ClassVar[str] = name
        phase: ClassVar[Phase] = Phase.AUTHENTICATE
        Config: ClassVar[type[StageConfig]] = config

        async def check(self, ctx: Any) -> Continue:
            return Continue()

    return Fake


def test_schema_same_named_nested_models_are_hoisted_apart() -> None:
    schema = schema_for({"one": _stage("one", a=int), "two": _stage("two", b=str)}, {})
    validator = jsonschema.Draft202012Validator(schema)
    assert schema_errors({"stages": [{"use": "one", "config": {"rules": [{"a": 1}]}}]}, validator) == []
    assert schema_errors({"stages": [{"use": "two", "config": {"rules": [{"b": "x"}]}}]}, validator) == []
    assert schema_errors({"stages": [{"use": "one", "config": {"rules": [{"b": "x"}]}}]}, validator) != []
    assert schema_errors({"stages": [{"use": "two", "config": {"rules": [{"a": 1}]}}]}, validator) != []
