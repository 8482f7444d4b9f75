"""Schema conversion: OpenAPI 3.0 specifics, readOnly/writeOnly per direction, formats, linear-time patterns."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from stockade.openapi import schema
from stockade.openapi.errors import problems
from stockade.openapi.spec import Options, Spec


def _body_check(tmp_path: Path, version: str, body_schema: str, components: str = "", **options: Any) -> Any:
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
    path.write_text(textwrap.dedent(text) + textwrap.dedent(components))
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


CASE_COMPONENTS = """\
components:
  schemas:
    Base: {type: object, properties: {Id: {type: integer}, isAdmin: {type: boolean, readOnly: true}}}
    Extended: {allOf: [{$ref: '#/components/schemas/Base'}, {properties: {id: {type: string}}}]}
    Plain: {type: object, required: [kind], properties: {kind: {type: string}, isAdmin: {const: false}}}
    Admin: {type: object, required: [kind], properties: {kind: {type: string}, IsAdmin: {type: boolean}}}
    Either: {anyOf: [{properties: {id: {type: string}}}]}
"""
_BASE = "{$ref: '#/components/schemas/Base'}"
_EXTENDED = "{$ref: '#/components/schemas/Extended'}"
_ID_PARTS = "{allOf: [{properties: {Id: {type: integer}}}, {properties: {id: {type: string}}}]}"
_BRANCHES = (
    "{anyOf: [{required: [kind], properties: {kind: {const: a}, IsAdmin: {type: boolean}}},"
    " {properties: {kind: {const: b}, isAdmin: {const: false}}}]}"
)
_PICKED = (
    "{oneOf: [{$ref: '#/components/schemas/Plain'}, {$ref: '#/components/schemas/Admin'}],"
    " discriminator: {propertyName: kind}}"
)
CASE_VARIANT_CASES = {
    # The names of an object are those of all its allOf parts and $ref targets together: a key one part declares
    # is no case variant of a name another part declares
    "allof-parts-declare-Id-and-id": ("3.1.0", _ID_PARTS, {"Id": 1, "id": "a"}, []),
    "allof-part-name-alone": ("3.1.0", _ID_PARTS, {"id": "a"}, []),
    "allof-nested-parts": (
        "3.1.0",
        "{allOf: [{allOf: [{properties: {Id: {type: integer}}}]}, {properties: {id: {type: string}}}]}",
        {"Id": 1, "id": "a"},
        [],
    ),
    "allof-ref-base-and-extension": (
        "3.1.0",
        f"{{allOf: [{_BASE}, {{properties: {{id: {{type: string}}}}}}]}}",
        {"Id": 1, "id": "a"},
        [],
    ),
    "ref-to-composed-schema": ("3.1.0", _EXTENDED, {"Id": 1, "id": "a"}, []),
    "ref-siblings-declare-too": (
        "3.1.0",
        "{$ref: '#/components/schemas/Base', properties: {id: {type: string}}}",
        {"Id": 1, "id": "a"},
        [],
    ),
    "nested-object-composed": ("3.1.0", f"{{properties: {{owner: {_EXTENDED}}}}}", {"owner": {"Id": 1, "id": "a"}}, []),
    "branch-sees-the-enclosing-names": (
        "3.1.0",
        "{properties: {Id: {type: integer}}, anyOf: [{properties: {id: {type: string}}}]}",
        {"Id": 1},
        [],
    ),
    "branch-sees-the-sibling-parts-names": (
        "3.1.0",
        f"{{allOf: [{_BASE}, {{anyOf: [{{properties: {{id: {{type: string}}}}}}, {{required: [x]}}]}}]}}",
        {"Id": 1},
        [],
    ),
    # ... and a variant of any of them that no part declares is still refused
    "allof-third-variant": ("3.1.0", _ID_PARTS, {"ID": 1}, [("/body/ID", "caseVariant")]),
    "allof-third-variant-beside-both": (
        "3.1.0",
        _ID_PARTS,
        {"Id": 1, "id": "a", "ID": 2},
        [("/body/ID", "caseVariant")],
    ),
    "allof-ref-base-variant": (
        "3.1.0",
        f"{{allOf: [{_BASE}, {{properties: {{name: {{type: string}}}}}}]}}",
        {"name": "a", "IsAdmin": True},
        [("/body/IsAdmin", "caseVariant")],
    ),
    "ref-to-composed-schema-variant": ("3.1.0", _EXTENDED, {"ID": 1}, [("/body/ID", "caseVariant")]),
    "nested-object-composed-variant": (
        "3.1.0",
        f"{{properties: {{owner: {_EXTENDED}}}}}",
        {"owner": {"Id": 1, "ISADMIN": True}},
        [("/body/owner/ISADMIN", "caseVariant")],
    ),
    "base-alone-keeps-its-own-names": ("3.1.0", _BASE, {"Id": 1, "id": "a"}, [("/body/id", "caseVariant")]),
    "variant-a-pattern-admits": (
        "3.1.0",
        "{properties: {isAdmin: {const: false}}, patternProperties: {'^[A-Z]': {}}}",
        {"IsAdmin": True},
        [("/body/IsAdmin", "caseVariant")],
    ),  # the backend binds it to isAdmin all the same
    "ref-siblings-ignored-in-3.0": (
        "3.0.3",
        "{$ref: '#/components/schemas/Base', properties: {id: {type: string}}}",
        {"Id": 1, "id": "a"},
        [("/body/id", "caseVariant")],
    ),
    # A branch that may not apply declares nothing for the object: its names count only where it validates
    "anyof-branch-taken-declares": ("3.1.0", _BRANCHES, {"kind": "a", "IsAdmin": True}, []),
    "anyof-branch-not-taken-does-not-declare": (
        "3.1.0",
        _BRANCHES,
        {"kind": "b", "IsAdmin": True},
        [("/body", "anyOf")],
    ),
    "discriminated-branch-not-taken-does-not-declare": (
        "3.1.0",
        _PICKED,
        {"kind": "Plain", "IsAdmin": True},
        [("/body/IsAdmin", "caseVariant")],
    ),
    "discriminated-branch-taken-declares": ("3.1.0", _PICKED, {"kind": "Admin", "IsAdmin": True}, []),
    "then-applies-its-names": (
        "3.1.0",
        "{if: {properties: {kind: {const: admin}}}, then: {properties: {isAdmin: {type: boolean}}}}",
        {"kind": "admin", "IsAdmin": True},
        [("/body/IsAdmin", "caseVariant")],
    ),
    # Not exact, refusing rather than admitting: a branch name that is a variant of a name declared outside the
    # branch is refused even where the branch applies (the object's check cannot tell which branch did), and a
    # branch in a shared definition does not know the names declared beside the `$ref` to it
    "branch-variant-of-an-outside-name": (
        "3.1.0",
        "{properties: {isAdmin: {const: false}}, anyOf: [{properties: {IsAdmin: {type: boolean}}}]}",
        {"isAdmin": False, "IsAdmin": True},
        [("/body/IsAdmin", "caseVariant")],
    ),
    "branch-behind-a-ref-misses-the-names-beside-it": (
        "3.1.0",
        "{allOf: [{properties: {Id: {type: integer}}}, {$ref: '#/components/schemas/Either'}]}",
        {"Id": 1},
        [("/body", "anyOf")],
    ),
    # A check inside `not` could only make it pass: {"role": "admin", "ROLE": "x"} would escape the `not`
    "not-declares-nothing": (
        "3.1.0",
        "{not: {required: [role], properties: {role: {const: admin}}}}",
        {"role": "admin", "ROLE": "x"},
        [("/body", "not")],
    ),
}


@pytest.mark.parametrize(
    ("version", "body_schema", "body", "expected"), CASE_VARIANT_CASES.values(), ids=CASE_VARIANT_CASES.keys()
)
def test_case_variants_of_the_objects_declared_names_refused(
    tmp_path: Path, version: str, body_schema: str, body: Any, expected: list[tuple[str, str]]
) -> None:
    check = _body_check(tmp_path, version, body_schema, CASE_COMPONENTS)
    found = problems(check.validator.iter_errors({"body": body}), check.schema)
    assert [(p["pointer"], p["rule"]) for p in found] == expected


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


@pytest.mark.parametrize("version", ["3.0.3", "3.1.0"])
def test_case_variant_rule_of_a_referenced_object_compiled_once_however_often_used(
    tmp_path: Path, version: str
) -> None:
    """Each `$ref` use site points at one shared "Base as an instance" definition: the rule is in the compiled
    document once, not once per use (a wide type referenced often would multiply load time and memory)."""
    uses = ", ".join(f"p{i}: {{$ref: '#/components/schemas/Base'}}" for i in range(12))
    body = f"{{properties: {{{uses}, items: {{type: array, items: {{$ref: '#/components/schemas/Base'}}}}}}}}"
    components = """\
    components:
      schemas:
        Base: {properties: {isAdmin: {type: boolean}, role: {type: string}}}
    """
    check = _body_check(tmp_path, version, body, components)
    compiled = json.dumps(check.schema)
    assert compiled.count('"caseVariant"') == 2  # the body's own rule, and Base's
    assert compiled.count("isAdmin") == 3  # Base's property, and its rule's enum and pattern
    assert _rules(check, {"p3": {"IsAdmin": True}, "items": [{"ROLE": "x"}]}) == ["caseVariant", "caseVariant"]
    assert check.validator.is_valid({"body": {"p3": {"isAdmin": True}, "items": [{"role": "x"}]}})
