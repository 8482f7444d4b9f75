"""Schema conversion: OpenAPI 3.0 specifics, readOnly/writeOnly per direction, formats, linear-time patterns."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from stockade.openapi import schema
from stockade.openapi.errors import problems
from stockade.openapi.spec import Options, Spec


def _body_check(tmp_path: Path, version: str, body_schema: str, **options: Any) -> Any:
    text = f"""\
    openapi: {version}
    info: {{title: t, version: '1'}}
    paths:
      /x:
        post:
          requestBody:
            content:
              application/json:
                schema: {body_schema}
    """
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(text))
    op, _ = Spec(path, Options(**options)).match("/x", "POST")  # type: ignore[misc]
    return op.bodies["application/json"].check


def _rules(check: Any, body: Any) -> list[str]:
    return [p["rule"] for p in problems(check.validator.iter_errors({"body": body}), check.schema)]


@pytest.mark.parametrize(
    ("version", "body_schema", "body", "rules"),
    [
        ("3.0.3", "{type: string, nullable: true}", None, []),
        ("3.0.3", "{type: string}", None, ["type"]),
        ("3.0.3", "{type: string, enum: [a, b], nullable: true}", None, []),
        ("3.0.3", "{allOf: [{type: integer}], nullable: true}", None, []),
        ("3.0.3", "{type: number, minimum: 5, exclusiveMinimum: true}", 5, ["exclusiveMinimum"]),
        ("3.0.3", "{type: number, minimum: 5, exclusiveMinimum: false}", 5, []),
        ("3.0.3", "{type: number, maximum: 5, exclusiveMaximum: true}", 5, ["exclusiveMaximum"]),
        ("3.1.0", "{type: number, exclusiveMinimum: 5}", 5, ["exclusiveMinimum"]),
        ("3.1.0", "{type: [string, 'null']}", None, []),
        ("3.0.3", "{type: integer, format: int32}", 2**31, ["maximum"]),
        ("3.0.3", "{type: integer, format: int64}", -(2**63), []),
        ("3.0.3", "{type: string, format: byte}", "aGVsbG8=", []),
        ("3.0.3", "{type: string, format: byte}", "not base64!", ["format"]),
        ("3.1.0", "{type: string, format: uuid}", "9b2f3c1e-8d4a-4b6e-9f0a-1c2d3e4f5a6b", []),
        ("3.1.0", "{type: string, format: date-time}", "2024-05-01 12:00", ["format"]),
        ("3.1.0", "{type: string, format: email}", "no-at-sign", ["format"]),
        ("3.1.0", "{type: string, format: ipv4}", "300.1.1.1", ["format"]),
        ("3.1.0", "{type: string, format: unknown-thing}", "anything", []),
        ("3.1.0", "{type: string, enum: [2024-01-01]}", "2024-01-01", []),  # YAML dates stay strings
        ("3.1.0", "{type: object, properties: {id: {type: integer, readOnly: true}}}", {"id": 1}, ["readOnly"]),
        (
            "3.1.0",
            "{type: object, required: [id, n], properties: {id: {readOnly: true}, n: {type: string}}}",
            {"n": "x"},
            [],
        ),  # a required readOnly property is required in responses only
        ("3.1.0", "{type: object, properties: {pw: {type: string, writeOnly: true}}}", {"pw": "x"}, []),
        # readOnly however the property schema is composed (mass assignment): every allOf branch's
        # annotations apply; in anyOf/oneOf a branch that says readOnly is enough to refuse it
        ("3.1.0", "{properties: {id: {allOf: [{type: integer}, {readOnly: true}]}}}", {"id": 1}, ["readOnly"]),
        ("3.1.0", "{properties: {id: {allOf: [{readOnly: true}, {description: x}]}}}", {"id": 1}, ["readOnly"]),
        (
            "3.1.0",
            "{properties: {id: {anyOf: [{type: integer, readOnly: true}, {type: 'null'}]}}}",
            {"id": 1},
            ["readOnly"],
        ),
        (
            "3.1.0",
            "{properties: {id: {oneOf: [{type: integer, readOnly: true}, {type: string}]}}}",
            {"id": 1},
            ["readOnly"],
        ),
        ("3.1.0", "{additionalProperties: {type: string, readOnly: true}}", {"role": "admin"}, ["readOnly"]),
        ("3.1.0", "{patternProperties: {'^x-': {readOnly: true}}}", {"x-role": "admin"}, ["readOnly"]),
        ("3.1.0", "{patternProperties: {'^x-': {readOnly: true}}}", {"name": "ok"}, []),
    ],
)
def test_conversion(tmp_path: Path, version: str, body_schema: str, body: Any, rules: list[str]) -> None:
    assert _rules(_body_check(tmp_path, version, body_schema), body) == rules


def test_openapi_30_ref_siblings_are_ignored(tmp_path: Path) -> None:
    text = """\
    openapi: 3.0.3
    info: {title: t, version: '1'}
    paths:
      /x:
        post:
          requestBody:
            content:
              application/json:
                schema: {$ref: '#/components/schemas/S', maxLength: 1}
    components:
      schemas:
        S: {type: string}
    """
    (tmp_path / "s.yaml").write_text(textwrap.dedent(text))
    op, _ = Spec(tmp_path / "s.yaml", Options()).match("/x", "POST")  # type: ignore[misc]
    check = op.bodies["application/json"].check
    assert check.validator.is_valid({"body": "long string"})


def test_recursive_schemas_compile(tmp_path: Path) -> None:
    text = """\
    openapi: 3.1.0
    info: {title: t, version: '1'}
    paths:
      /x:
        post:
          requestBody:
            content:
              application/json:
                schema: {$ref: '#/components/schemas/Node'}
    components:
      schemas:
        Node:
          type: object
          properties:
            name: {type: string}
            children: {type: array, items: {$ref: '#/components/schemas/Node'}}
    """
    (tmp_path / "s.yaml").write_text(textwrap.dedent(text))
    op, _ = Spec(tmp_path / "s.yaml", Options(strict=True)).match("/x", "POST")  # type: ignore[misc]
    check = op.bodies["application/json"].check
    assert check.validator.is_valid({"body": {"name": "a", "children": [{"name": "b", "children": []}]}})
    assert _rules(check, {"children": [{"children": [{"x": 1}]}]}) == ["unevaluatedProperties"]


def test_spec_patterns_run_on_a_linear_time_engine(tmp_path: Path) -> None:
    """No backtracking engine is in play: the compiled validators use the finite-automaton `regex` engine
    (what refuses lookaround), and every spec pattern was accepted by RE2 at load."""
    assert isinstance(schema.PATTERN_OPTIONS, jsonschema_rs.RegexOptions)
    # The backtracking engine (fancy-regex, jsonschema-rs's default) would take a lookahead; ours refuses it.
    jsonschema_rs.validator_for({"pattern": "^(?=a)"}, pattern_options=jsonschema_rs.FancyRegexOptions())
    with pytest.raises(jsonschema_rs.ValidationError):
        jsonschema_rs.validator_for({"pattern": "^(?=a)"}, pattern_options=schema.PATTERN_OPTIONS)
    check = _body_check(tmp_path, "3.1.0", "{type: string, pattern: '^(a+)+$'}")
    hostile = "a" * 100_000 + "!"  # exponential for a backtracking engine, one linear pass for an automaton
    assert _rules(check, hostile) == ["pattern"]
    assert check.validator.is_valid({"body": "a" * 100_000})
