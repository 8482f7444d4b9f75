"""OpenAPI Schema Objects to JSON Schema 2020-12, one `$defs` namespace per variant, and validators built from it.

Variants differ in what they enforce: requests forbid `readOnly` properties (mass assignment) and, in strict
mode, close every object that lists properties (`unevaluatedProperties: false`, which sees through `allOf`,
`oneOf` and `$ref`); `response_closed` forbids `writeOnly` and undeclared properties; `response_open` leaves
them to annotations, from which the response filter learns what to strip.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, Literal

import jsonschema_rs
import re2

from stockade.openapi.case_variants import DeclaredNames, name_check
from stockade.openapi.loader import Documents, Located

Variant = Literal["request", "request_strict", "response_closed", "response_open"]
DIALECT = "https://json-schema.org/draft/2020-12/schema"
RULE = "x-rule"  # marker on a schema node: the rule name reported when a keyword beside it fails
READ_ONLY: dict[str, Any] = {"not": {}, RULE: "readOnly"}
WRITE_ONLY: dict[str, Any] = {"not": {}, RULE: "writeOnly"}

_INT_BOUNDS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_DROP = frozenset(
    {"example", "examples", "xml", "externalDocs", "discriminator", "nullable", "default", "$schema", "$id",
     "$comment", "$anchor", "$defs", "definitions", "title", "description", "deprecated"}
)  # fmt: skip
_VALUE_ONE = ("items", "additionalProperties", "unevaluatedProperties", "additionalItems", "contains",
              "unevaluatedItems")  # fmt: skip
_CLOSING = ("additionalProperties", "unevaluatedProperties")
_SAME_ONE = ("not", "if", "then", "else", "propertyNames")
_SAME_LIST = ("allOf", "anyOf", "oneOf")
_CONDITIONAL = frozenset({"anyOf", "oneOf", "if", "then", "else", "dependentSchemas"})  # may not apply to an instance
_SUBSCHEMAS = (*_SAME_LIST, *_SAME_ONE, "dependentSchemas", "discriminator")  # same-instance subschemas


def _is_base64(value: str) -> bool:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


FORMATS: dict[str, Callable[[str], bool]] = {"byte": _is_base64}
PATTERN_OPTIONS = jsonschema_rs.RegexOptions()  # the `regex` crate: finite automata, never backtracks
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # the reason goes into our config error, not to stderr


def check_pattern(pattern: object, at: Located, *tokens: str | int) -> None:
    """A spec regex must be RE2 syntax (linear-time: no backreferences, no lookaround) or the spec is refused."""
    if not isinstance(pattern, str):
        raise at.error("pattern must be a string", *tokens)
    try:
        re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        why = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise at.error(f"pattern {pattern!r} is not a linear-time (RE2) regular expression: {why}", *tokens) from None


class SchemaSet:
    """Converts the schemas of one spec (and the files it references) lazily, once per variant."""

    def __init__(self, docs: Documents, *, legacy: bool) -> None:
        self.docs = docs
        self.legacy = legacy  # OpenAPI 3.0: nullable, boolean exclusive bounds, $ref siblings ignored
        self.defs: dict[Variant, dict[str, Any]] = {}
        self._names: dict[tuple[Variant, str, str], str] = {}
        self._instances: dict[tuple[Variant, str, str, tuple[str, ...]], str] = {}
        self._rules: dict[tuple[tuple[str, ...], tuple[str, ...]], dict[str, Any] | None] = {}
        self._taken: set[tuple[Variant, str]] = set()
        self._declared = DeclaredNames(docs, legacy=legacy)

    # -- public --------------------------------------------------------------------------------------------

    def convert(self, at: Located, variant: Variant, *, close: bool = True) -> Any:
        """The JSON Schema for the spec schema at `at`, where an instance starts (a body, a parameter, a property
        value, an item): closed there if the variant is; in requests, case variants of its names are refused."""
        out = self._convert(at, variant, close, ())
        if variant.startswith("request"):
            self._refuse_case_variants(at, variant, out, ())
        return out

    def validator(
        self, root: dict[str, Any], variant: Variant, at: Located
    ) -> tuple[jsonschema_rs.Validator, dict[str, Any]]:
        """Compile `root` with the `$defs` it reaches; returns the validator and the document it compiled.
        `at` names the spec location if compilation fails."""
        doc = {"$schema": DIALECT, **root, "$defs": self._reachable(root, variant)}
        try:
            validator = jsonschema_rs.validator_for(
                doc, formats=FORMATS, validate_formats=True, pattern_options=PATTERN_OPTIONS
            )
        except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
            msg = getattr(exc, "message", None) or str(exc).splitlines()[0]
            raise at.error(f"schema cannot be compiled: {msg}") from None
        return validator, doc

    def declares_properties(self, at: Located, depth: int = 0) -> bool:
        """Whether the schema names properties anywhere (a free-form `type: object` does not, and stays open)."""
        node = at.node
        if not isinstance(node, dict) or depth > 32:
            return False
        if "properties" in node or "patternProperties" in node:
            return True
        if "$ref" in node and self.declares_properties(self.docs.resolve(node["$ref"], at), depth + 1):
            return True
        for key in _SAME_LIST:
            items = node.get(key)
            if isinstance(items, list) and any(
                self.declares_properties(at.child(key, i), depth + 1) for i in range(len(items))
            ):
                return True
        return False

    def flag(self, at: Located, name: str, depth: int = 0) -> bool:
        """`readOnly`/`writeOnly` on a property schema, looking through `$ref` and into every branch of `allOf`,
        `anyOf` and `oneOf`. Annotations of any allOf branch apply; for anyOf/oneOf the flag is taken if any
        branch has it (which branch validates is not known here): a secret in one branch is never sent out,
        and a property read-only in one is never accepted in."""
        if depth > 16:
            return False
        node = at.node
        if not isinstance(node, dict):
            return False
        if node.get(name) is True:
            return True
        if "$ref" in node and self.flag(self.docs.resolve(node["$ref"], at), name, depth + 1):
            return True
        for key in ("allOf", "anyOf", "oneOf"):
            items = node.get(key)
            if isinstance(items, list) and any(self.flag(at.child(key, i), name, depth + 1) for i in range(len(items))):
                return True
        return False

    def _hidden(self, at: Located, variant: Variant) -> dict[str, Any] | None:
        """READ_ONLY or WRITE_ONLY if the schema at `at` is a value this direction must not carry, else None."""
        if variant.startswith("request") and self.flag(at, "readOnly"):
            return READ_ONLY
        if variant == "response_closed" and self.flag(at, "writeOnly"):
            return WRITE_ONLY
        return None

    # -- conversion ----------------------------------------------------------------------------------------

    def _convert(self, at: Located, variant: Variant, close: bool, around: tuple[str, ...]) -> Any:
        """`around`: the names enclosing schemas declare for the same instance (see `_refuse_case_variants`)."""
        node = at.node
        if isinstance(node, bool):
            return node
        if not isinstance(node, dict):
            raise at.error("a schema must be an object")
        closing = close and variant in ("request_strict", "response_closed")
        if "$ref" in node:
            target = self.docs.resolve(node["$ref"], at)
            ref: dict[str, Any] = {"$ref": "#/$defs/" + self._define(target, variant)}
            out = ref if self.legacy else {**self._keywords(at, variant, around, skip="$ref"), **ref}
            if closing and _open(node) and self.declares_properties(target):
                out["unevaluatedProperties"] = False
            return out
        out = self._keywords(at, variant, around)
        if closing and _open(node) and self.declares_properties(at):
            out["unevaluatedProperties"] = False
        return out

    def _define(self, target: Located, variant: Variant) -> str:
        key = (variant, str(target.file), target.pointer)
        name = self._names.get(key)
        if name is None:
            name = self._names[key] = self._fresh(variant, _base_name(target))
            defs = self.defs.setdefault(variant, {})
            defs[name] = True  # placeholder: a recursive schema refers to itself while being converted
            defs[name] = self._convert(target, variant, False, ())
        return name

    def _fresh(self, variant: Variant, base: str) -> str:
        name, n = base, 1
        while (variant, name) in self._taken:
            n += 1
            name = f"{base}_{n}"
        self._taken.add((variant, name))
        return name

    def _keywords(self, at: Located, variant: Variant, around: tuple[str, ...], skip: str = "") -> dict[str, Any]:
        node: dict[str, Any] = at.node
        out: dict[str, Any] = {}
        if variant.startswith("request") and any(k in node for k in _SUBSCHEMAS):
            around = tuple(dict.fromkeys((*around, *self._declared(at))))
        for key, value in node.items():
            if key == skip or key in _DROP or (isinstance(key, str) and key.startswith("x-")):
                continue
            if not isinstance(key, str):
                raise at.error(f"schema keyword {key!r} must be a string")
            if key == "$dynamicRef" or key == "$recursiveRef":
                raise at.error(f"{key} is not supported", key)
            if variant == "response_open" and value is False and key in _CLOSING:
                out.setdefault("properties", {})  # the filter strips what is undeclared; the check must not fail
                continue
            if key == "properties":
                out[key] = self._properties(at, variant)
            elif key == "patternProperties":
                if not isinstance(value, dict):
                    raise at.error("patternProperties must be an object", key)
                for pattern in value:
                    check_pattern(pattern, at, key, pattern)
                out[key] = {
                    p: self._hidden(at.child(key, p), variant) or self.convert(at.child(key, p), variant) for p in value
                }
            elif (
                key == "additionalProperties"
                and isinstance(value, dict)
                and (hidden := self._hidden(at.child(key), variant))
            ):
                out[key] = hidden
            elif key in _VALUE_ONE:
                out[key] = self.convert(at.child(key), variant) if isinstance(value, dict | bool) else value
            elif key == "prefixItems":
                out[key] = [self.convert(at.child(key, i), variant) for i in range(len(value))]
            elif key in _SAME_LIST:
                if not isinstance(value, list) or not value:
                    raise at.error(f"{key} must be a non-empty list", key)
                out[key] = [self._part(at.child(key, i), variant, around, key) for i in range(len(value))]
            elif key in _SAME_ONE:
                out[key] = self._part(at.child(key), variant, around, key)
            elif key == "dependentSchemas":
                out[key] = {k: self._part(at.child(key, k), variant, around, key) for k in value}
            elif key == "pattern":
                check_pattern(value, at, key)
                out[key] = value
            elif key == "required":
                out[key] = self._required(at, variant)
            else:
                out[key] = value
        if self.legacy:
            self._legacy(node, out)
        fmt = node.get("format")
        if fmt in _INT_BOUNDS and _has_type(out, "integer"):
            lo, hi = _INT_BOUNDS[fmt]
            out.setdefault("minimum", lo)
            out.setdefault("maximum", hi)
        if "discriminator" in node:
            self._discriminate(at, variant, out, around)
        return out

    def _part(self, at: Located, variant: Variant, around: tuple[str, ...], keyword: str) -> Any:
        """A subschema that applies to the same instance as the one holding it under `keyword`. One that may not
        apply checks its own names for case variants; under `not` a check could only make more instances pass."""
        out = self._convert(at, variant, False, around)
        if keyword in _CONDITIONAL and variant.startswith("request"):
            self._refuse_case_variants(at, variant, out, around)
        return out

    def _properties(self, at: Located, variant: Variant) -> dict[str, Any]:
        props = at.node["properties"]
        if not isinstance(props, dict):
            raise at.error("properties must be an object", "properties")
        out: dict[str, Any] = {}
        for name in props:
            child = at.child("properties", name)
            out[name] = self._hidden(child, variant) or self.convert(child, variant)
        return out

    def _required(self, at: Located, variant: Variant) -> list[str]:
        """`required` minus the properties this direction never carries (readOnly in requests, writeOnly in
        responses), as OpenAPI specifies."""
        required = at.node["required"]
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise at.error("required must be a list of property names", "required")
        props = at.node.get("properties")
        if not isinstance(props, dict):
            return list(required)
        hidden = "readOnly" if variant.startswith("request") else "writeOnly"
        return [r for r in required if r not in props or not self.flag(at.child("properties", r), hidden)]

    def _legacy(self, node: dict[str, Any], out: dict[str, Any]) -> None:
        """OpenAPI 3.0 keywords that JSON Schema 2020-12 spells differently."""
        for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            flag = node.get(key)
            if isinstance(flag, bool):
                out.pop(key, None)
                if flag and bound in out:
                    out[key] = out.pop(bound)
        if node.get("nullable") is True:
            kind = out.get("type")
            if isinstance(kind, str):
                out["type"] = [kind, "null"]
                if isinstance(out.get("enum"), list) and None not in out["enum"]:
                    out["enum"] = [*out["enum"], None]
            elif kind is None:  # `allOf: [$ref], nullable: true`: what spec authors mean is "or null"
                inner = dict(out)
                out.clear()
                out["anyOf"] = [{"type": "null"}, inner]

    def _discriminate(self, at: Located, variant: Variant, out: dict[str, Any], around: tuple[str, ...]) -> None:
        """Use the discriminator to pick the one branch to validate (precise errors, no ambiguous oneOf)."""
        disc = at.node["discriminator"]
        kind = "oneOf" if "oneOf" in out else "anyOf" if "anyOf" in out else None
        if not isinstance(disc, dict) or not isinstance(disc.get("propertyName"), str):
            raise at.error("discriminator needs a propertyName", "discriminator")
        if kind is None:
            return  # allOf-inheritance discriminators validate against the base schema only
        branches = at.node[kind]
        mapping = disc.get("mapping") or {}
        if not isinstance(mapping, dict):
            raise at.error("discriminator mapping must be an object", "discriminator", "mapping")
        targets: dict[str, Located] = {}
        for value, ref in mapping.items():
            targets[str(value)] = self.docs.resolve(ref, at.child("discriminator", "mapping"))
        for i, branch in enumerate(branches):
            if not (isinstance(branch, dict) and "$ref" in branch):
                return  # an inline branch has no name to map to: keep plain oneOf/anyOf semantics
            target = self.docs.resolve(branch["$ref"], at.child(kind, i))
            if not any(t.file == target.file and t.pointer == target.pointer for t in targets.values()):
                targets[target.pointer.rsplit("/", 1)[-1]] = target
        prop = disc["propertyName"]
        cases: list[Any] = [
            {
                "type": "object",
                "required": [prop],
                "properties": {prop: {"type": "string", "enum": sorted(targets), RULE: "discriminator"}},
            }
        ]
        for value, target in sorted(targets.items()):
            branch_ref = {"$ref": "#/$defs/" + self._define(target, variant)}
            if variant.startswith("request"):
                self._refuse_case_variants(target, variant, branch_ref, around, target)
            cases.append({"if": {"properties": {prop: {"const": value}}, "required": [prop]}, "then": branch_ref})
        del out[kind]
        out["allOf"] = [*out.get("allOf", ()), *cases]

    def _refuse_case_variants(
        self, at: Located, variant: Variant, out: Any, around: tuple[str, ...], target: Located | None = None
    ) -> None:
        """Refuse case variants of the names the schema at `at` declares (see `case_variants`).

        Added where an instance starts and on each subschema that may not apply to it (an anyOf/oneOf branch,
        if/then/else, a dependent schema), never on an allOf part or a `$ref` target: those declare names for the
        whole object, and a part alone would refuse the others' names. A branch's names count only where it
        validates, so `IsAdmin` in a branch not taken never admits `IsAdmin` beside an `isAdmin` declared
        elsewhere. A branch accepts the names declared `around` it, but the enclosing check cannot tell which
        branch applies and accepts none of theirs: a branch name that varies an outside one is refused even where
        the branch applies. `around` stops at a `$ref` (a shared definition does not know where it is used), so
        a branch in one refuses more, never less.

        Where `out` refers to a definition that declares all of the instance's names, it refers instead to one
        shared "that definition as an instance" holding the rule: the rule is compiled once, not at each use."""
        names = self._declared(at)
        key = (tuple(names), around)
        if key not in self._rules:  # the same object comes up in every operation that uses it
            check = name_check(names, around)
            self._rules[key] = None if check is None else {**check, RULE: "caseVariant"}
        rule = self._rules[key]
        if rule is None or not isinstance(out, dict):
            return
        if target is None and isinstance(at.node, dict) and "$ref" in at.node:
            target = self.docs.resolve(at.node["$ref"], at)
        if target is not None and out.get("$ref") == "#/$defs/" + self._define(target, variant):
            if self._declared(target) == names:  # no `$ref` sibling declares more (3.1)
                out["$ref"] = "#/$defs/" + self._instance(target, variant, rule)
                return
        if "propertyNames" in out:
            out["allOf"] = [*out.get("allOf", ()), {"propertyNames": rule}]
        else:
            out["propertyNames"] = rule

    def _instance(self, target: Located, variant: Variant, rule: dict[str, Any]) -> str:
        """The name of the definition "`target` as an instance, with `rule`" (made once per target and rule)."""
        key = (variant, str(target.file), target.pointer, tuple(rule["anyOf"][0]["enum"]))
        name = self._instances.get(key)
        if name is None:
            ref = "#/$defs/" + self._define(target, variant)
            name = self._instances[key] = self._fresh(variant, _base_name(target) + ".instance")
            self.defs[variant][name] = {"$ref": ref, "propertyNames": rule}
        return name

    def _reachable(self, root: Any, variant: Variant) -> dict[str, Any]:
        defs = self.defs.get(variant, {})
        found: dict[str, Any] = {}
        stack = [root]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                ref = node.get("$ref")
                if isinstance(ref, str) and ref.startswith("#/$defs/"):
                    name = ref[8:]
                    if name not in found and name in defs:
                        found[name] = defs[name]
                        stack.append(defs[name])
                stack.extend(v for v in node.values() if isinstance(v, dict | list))
            elif isinstance(node, list):
                stack.extend(v for v in node if isinstance(v, dict | list))
        return found


def _base_name(target: Located) -> str:
    base = target.pointer.rsplit("/", 1)[-1] or target.file.stem
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in base) or "schema"


def _open(node: dict[str, Any]) -> bool:
    return "additionalProperties" not in node and "unevaluatedProperties" not in node


def _has_type(schema: dict[str, Any], name: str) -> bool:
    kind = schema.get("type")
    return kind == name or (isinstance(kind, list) and name in kind)
