"""Validator errors as the client sees them: JSON pointers and rule names, never the submitted values."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import jsonschema_rs

from stockade.openapi.schema import RULE

MAX_ERRORS = 20
MAX_POINTER = 256
Problem = dict[str, str]
_FALSE_KEYWORDS = frozenset({"additionalProperties", "unevaluatedProperties", "items", "unevaluatedItems"})


def pointer(path: Sequence[str | int]) -> str:
    out = "".join("/" + str(t).replace("~", "~0").replace("/", "~1") for t in path)
    return out if len(out) <= MAX_POINTER else out[:MAX_POINTER] + "..."


def _marker(schema: Any, schema_path: Sequence[str | int]) -> str | None:
    """The `x-rule` on the schema node holding the failed keyword (readOnly, writeOnly, discriminator)."""
    node = schema
    for token in schema_path[:-1]:
        try:
            node = node[token]
        except (KeyError, IndexError, TypeError):
            return None
    rule = node.get(RULE) if isinstance(node, dict) else None
    return rule if isinstance(rule, str) else None


def problems(errors: Iterable[jsonschema_rs.ValidationError], schema: Any) -> list[Problem]:
    """One `{"pointer", "rule"}` per failing location (at most MAX_ERRORS); `schema` is the compiled root."""
    out: list[Problem] = []
    for err in errors:
        kind = err.kind
        name = kind.name
        base = pointer(err.instance_path)
        if isinstance(kind, jsonschema_rs.ValidationErrorKind.Required):
            out.append({"pointer": pointer([*err.instance_path, kind.property]), "rule": "required"})
        elif isinstance(
            kind,
            jsonschema_rs.ValidationErrorKind.AdditionalProperties
            | jsonschema_rs.ValidationErrorKind.UnevaluatedProperties,
        ):
            out.extend({"pointer": pointer([*err.instance_path, k]), "rule": name} for k in kind.unexpected)
        elif isinstance(kind, jsonschema_rs.ValidationErrorKind.PropertyNames):  # names the key, not the object
            at = pointer([*err.instance_path, str(kind.error.instance)])
            out.append({"pointer": at, "rule": _marker(schema, err.schema_path) or name})
        elif name == "falseSchema":  # `additionalProperties: false` without `properties` compiles to this
            last = err.schema_path[-1] if err.schema_path else ""
            out.append({"pointer": base, "rule": last if last in _FALSE_KEYWORDS else "false"})
        else:
            out.append({"pointer": base, "rule": _marker(schema, err.schema_path) or name})
        if len(out) >= MAX_ERRORS:
            return out[:MAX_ERRORS]
    return out


def summary(found: Sequence[Problem]) -> str:
    """For the decision log: which rules failed where (pointers name fields, never values)."""
    head = ", ".join(f"{p['rule']} at {p['pointer'] or '/'}" for p in found[:3])
    return head + (f" (+{len(found) - 3} more)" if len(found) > 3 else "")
