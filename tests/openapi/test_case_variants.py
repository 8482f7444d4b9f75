"""The names a schema declares for its instance, and the check built from them (the placement is test_schema's)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import jsonschema_rs
import pytest

from stockade.openapi.case_variants import DeclaredNames, name_check
from stockade.openapi.loader import Documents

SCHEMAS = """\
Base: {properties: {Id: {}, isAdmin: {}}}
Extended: {allOf: [{$ref: '#/Base'}, {properties: {id: {}}}]}
Sibling: {$ref: '#/Base', properties: {id: {}}}
Diamond: {allOf: [{$ref: '#/Extended'}, {$ref: '#/Base'}, {allOf: [{$ref: '#/Base'}]}]}
Conditional:
  properties: {a: {}}
  anyOf: [{properties: {b: {}}}]
  oneOf: [{properties: {c: {}}}]
  not: {properties: {d: {}}}
  if: {properties: {e: {}}}
  then: {properties: {f: {}}}
  dependentSchemas: {a: {properties: {g: {}}}}
Ping: {allOf: [{$ref: '#/Pong'}], properties: {ping: {}}}
Pong: {allOf: [{$ref: '#/Ping'}], properties: {pong: {}}}
"""


@pytest.mark.parametrize(
    ("legacy", "names"),
    [
        (False, {"Base": {"Id", "isAdmin"}, "Extended": {"id", "Id", "isAdmin"}, "Sibling": {"id", "Id", "isAdmin"}}),
        (True, {"Sibling": {"Id", "isAdmin"}}),  # OpenAPI 3.0 ignores a $ref's siblings
        (False, {"Diamond": {"id", "Id", "isAdmin"}, "Conditional": {"a"}}),
        (False, {"Ping": {"ping", "pong"}, "Pong": {"pong", "ping"}}),  # a cycle, each end asked after the other
    ],
    ids=["allof-and-ref", "legacy-ref-siblings", "diamond-and-conditionals", "cycle"],
)
def test_declared_names_are_the_objects_whole(tmp_path: Path, legacy: bool, names: dict[str, set[str]]) -> None:
    (tmp_path / "s.yaml").write_text(textwrap.dedent(SCHEMAS))
    root = Documents().root(tmp_path / "s.yaml")
    declared = DeclaredNames(Documents(), legacy=legacy)
    assert {name: set(declared(root.child(name))) for name in names} == names


@pytest.mark.parametrize(
    ("names", "around", "key", "valid"),
    [
        (["isAdmin"], [], "isAdmin", True),
        (["isAdmin"], [], "IsAdmin", False),
        (["status"], [], "\u017ftatus", False),  # long s: simple case folding, as Go's EqualFold
        (["isAdmin"], [], "other", True),
        (["isAdmin"], ["IsAdmin"], "IsAdmin", True),  # declared around the schema
        (["isAdmin"], ["IsAdmin"], "ISADMIN", False),
        (["a.b"], [], "A.B", False),
        (["a.b"], [], "AxB", True),  # punctuation is literal, never a metacharacter
        # factored on common prefixes, the pattern still matches each name whole and nothing else
        (["baseId", "baseName", "id"], [], "BASENAME", False),
        (["baseId", "baseName", "id"], [], "BASE", True),
        (["baseId", "baseName", "id"], [], "BaseIdName", True),
        (["ab", "a", "abc", "b"], [], "AB", False),
        (["ab", "a", "abc", "b"], [], "A", False),
        (["ab", "a", "abc", "b"], [], "ABCD", True),
        (["ab", "a", "abc", "b"], [], "AC", True),
        (["a.b", "a"], [], "A", False),
        (["a.b", "a"], [], "A.", True),
        (["ab", "Ab"], [], "AB", False),  # two spellings of one name branch apart
    ],
)
def test_name_check_refuses_undeclared_case_variants(
    names: list[str], around: list[str], key: str, valid: bool
) -> None:
    check = name_check(names, around)
    assert check is not None
    assert jsonschema_rs.validator_for({"propertyNames": check}).is_valid({key: 1}) is valid


def test_name_check_without_letters_is_none() -> None:
    assert name_check(["1", "_"], ["a"]) is None


def test_name_check_keeps_only_similar_names_around() -> None:
    check = name_check(["id"], ["ID", "name", "Name"])
    assert check is not None
    assert check["anyOf"][0] == {"enum": ["id", "ID"]}
