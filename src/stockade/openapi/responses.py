"""Response protection: check an upstream JSON body against its declared schema and strip what it does not
declare (undeclared and `writeOnly` properties), so excessive data exposure stops at the gateway."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stockade.openapi.errors import Problem, problems
from stockade.openapi.request import DUPLICATES_ONLY
from stockade.security.jsonscan import Violation, parse

if TYPE_CHECKING:
    from stockade.openapi.operations import ResponseRule

_RULES = {"malformed": "json"}  # the parser's rule names as a request's 400 reports them
_DECLARING = frozenset({"properties", "patternProperties", "additionalProperties", "unevaluatedProperties"})


@dataclass(slots=True)
class Checked:
    """`problems` found; `fatal` if the body cannot be repaired (not JSON, encoded, or schema-invalid);
    `body` is the filtered document when properties were removed."""

    problems: list[Problem] = field(default_factory=list)
    fatal: bool = False
    body: bytes | None = None


CLEAN = Checked()


def check_response(rule: ResponseRule, raw: bytes, encoding: str | None) -> Checked:
    """The response's problems, and its filtered body where stripping repairs it (`fatal` where nothing can)."""
    try:
        return _check(rule, raw, encoding)
    except (ValueError, RecursionError):  # a validator's or a codec's recursion limit: hundreds of levels deep
        return Checked([{"pointer": "/body", "rule": "too_deep"}], fatal=True)


def _check(rule: ResponseRule, raw: bytes, encoding: str | None) -> Checked:
    if encoding and encoding.strip().lower() != "identity":
        return Checked([{"pointer": "/body", "rule": "contentEncoding"}], fatal=True)
    try:
        # The requests' parser: integers stay exact for re-encoding, and a repeated key is refused - the check
        # would see one copy while the raw bytes, with the other, go out (or a client reads the first).
        doc = parse(raw, DUPLICATES_ONLY)
    except Violation as exc:
        return Checked([{"pointer": "/body" + exc.pointer, "rule": _RULES.get(exc.rule, exc.rule)}], fatal=True)
    closed = rule.closed
    envelope = {"body": doc}
    if closed.validator.is_valid(envelope):
        return CLEAN
    evaluation = rule.open.validator.evaluate(doc)
    if not evaluation.valid:
        return Checked(problems(closed.validator.iter_errors(envelope), closed.schema), fatal=True)
    annotations = evaluation.annotations()
    removed = strip(doc, annotations)
    if not removed:
        return Checked(removed)
    # Re-encoded from the exact parse: orjson would turn integers beyond 64 bits into floats, which the client
    # must not receive in place of the upstream's numbers.
    return Checked(removed, body=json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode())


def strip(doc: Any, annotations: list[Any]) -> list[Problem]:
    """Remove, in place, every property no schema declared at its location and every `writeOnly` one.

    An object whose schema lists no properties at all (a free-form map) is left as it is; so are properties
    an explicit `additionalProperties` admits. Annotations come only from subschemas that passed, so with
    `oneOf` only the matching branch declares anything.
    """
    declared: dict[str, set[str]] = {}
    write_only: set[str] = set()
    for entry in annotations:
        keyword = entry["schemaLocation"].rsplit("/", 1)[-1]
        value = entry["annotations"]
        if keyword in _DECLARING and isinstance(value, list):
            declared.setdefault(entry["instanceLocation"], set()).update(value)
        elif isinstance(value, dict) and value.get("writeOnly") is True:
            write_only.add(entry["instanceLocation"])
    removed: list[Problem] = []
    _walk(doc, "", declared, write_only, removed)
    return removed


def _walk(node: Any, at: str, declared: dict[str, set[str]], write_only: set[str], removed: list[Problem]) -> None:
    if isinstance(node, dict):
        keys = declared.get(at)
        for key in list(node):
            child = at + "/" + key.replace("~", "~0").replace("/", "~1")
            if child in write_only:
                del node[key]
                removed.append({"pointer": "/body" + child, "rule": "writeOnly"})
            elif keys is not None and key not in keys:
                del node[key]
                removed.append({"pointer": "/body" + child, "rule": "undeclared"})
            else:
                _walk(node[key], child, declared, write_only, removed)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _walk(item, f"{at}/{i}", declared, write_only, removed)
