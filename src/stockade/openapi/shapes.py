"""What type a string from a query, header, path or form field should become before schema validation."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from stockade.openapi.loader import Documents, Located

_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,30})")
_NUM = re.compile(r"-?(?:0|[1-9][0-9]{0,30})(?:\.[0-9]{1,30})?(?:[eE][+-]?[0-9]{1,4})?")
_SCALARS = frozenset({"string", "integer", "number", "boolean", "null"})


@dataclass(frozen=True, slots=True)
class Shape:
    """`kind` is string, integer, number, boolean, array, object or any; `items`/`props` describe children."""

    kind: str = "any"
    items: Shape | None = None
    props: dict[str, Shape] = field(default_factory=dict)
    binary: bool = False  # `format: binary`: a file upload, validated for presence only


ANY = Shape()


def shape_of(at: Located, docs: Documents, depth: int = 0) -> Shape:
    """Derive the coercion shape of a spec schema (following `$ref`, merging `allOf`, first of `oneOf`)."""
    node = at.node
    if depth > 8 or not isinstance(node, dict):
        return ANY
    if "$ref" in node:
        return shape_of(docs.resolve(node["$ref"], at), docs, depth + 1)
    kind = node.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind is None:
        if "properties" in node:
            kind = "object"
        elif "items" in node:
            kind = "array"
    if kind == "array":
        items = node.get("items")
        return Shape("array", shape_of(at.child("items"), docs, depth + 1) if isinstance(items, dict) else ANY)
    if kind == "object" or kind is None:
        props: dict[str, Shape] = {}
        raw = node.get("properties")
        if isinstance(raw, dict):
            props = {name: shape_of(at.child("properties", name), docs, depth + 1) for name in raw}
        for key in ("allOf", "oneOf", "anyOf"):
            parts = node.get(key)
            if isinstance(parts, list):
                for i in range(len(parts) if key == "allOf" else min(1, len(parts))):
                    sub = shape_of(at.child(key, i), docs, depth + 1)
                    if kind is None and sub.kind != "object":
                        return sub
                    props = {**sub.props, **props}
        if kind is None and not props:
            return ANY
        return Shape("object", props=props)
    if kind in _SCALARS:
        return Shape(kind, binary=kind == "string" and node.get("format") == "binary")
    return ANY


def coerce(value: str, shape: Shape) -> Any:
    """The typed value for a scalar string, or the string itself when it does not parse (the schema's `type`
    check then reports it, so a bad value is a 422 naming the parameter)."""
    kind = shape.kind
    if kind == "integer":
        return int(value) if _INT.fullmatch(value) else value
    if kind == "number":
        if _INT.fullmatch(value):
            return int(value)
        return float(value) if _NUM.fullmatch(value) else value
    if kind == "boolean":
        return True if value == "true" else False if value == "false" else value
    if kind == "null":
        return None if value == "" else value
    return value


def coerce_items(values: list[str], shape: Shape) -> list[Any]:
    item = shape.items or ANY
    return [coerce(v, item) for v in values]


def coerce_pairs(pairs: list[str], shape: Shape) -> dict[str, Any] | None:
    """`k,v,k2,v2` (already split) into an object; None if the count is odd (a syntax error)."""
    if len(pairs) % 2:
        return None
    return {pairs[i]: coerce(pairs[i + 1], shape.props.get(pairs[i], ANY)) for i in range(0, len(pairs), 2)}


def coerce_assignments(items: list[str], shape: Shape) -> dict[str, Any] | None:
    """`k=v` items into an object; None if one lacks '='."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            return None
        out[key] = coerce(value, shape.props.get(key, ANY))
    return out
