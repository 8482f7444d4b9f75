"""One compiled operation: its parameters, request bodies and response schemas, validators built at load."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from stockade.openapi.loader import Documents, Located
from stockade.openapi.media import essence, is_json, media_kind
from stockade.openapi.params import DEFAULT_STYLE, STYLES, HeaderSpellings, Param, folded_names, query_names
from stockade.openapi.shapes import ANY, Shape, shape_of

if TYPE_CHECKING:
    import jsonschema_rs

    from stockade.openapi.schema import SchemaSet, Variant

_IGNORED_HEADERS = frozenset({"accept", "content-type", "authorization"})  # OpenAPI: described elsewhere
# Response keys whose schema applies to JSON: springdoc declares every response under `*/*`.
_JSON_WILDCARDS = frozenset({"*/*", "application/*"})


@dataclass(frozen=True, slots=True)
class Compiled:
    """A validator and the exact schema it was compiled from (error paths are resolved against it)."""

    validator: jsonschema_rs.Validator
    schema: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BodyRule:
    media: str  # the declared media-type key
    kind: str  # json | form | multipart | text | opaque, or auto (a wildcard key: decided by the request's type)
    shape: Shape
    check: Compiled  # parameters and body together, one validator call per request

    def reads(self, media: str) -> bool:
        """Whether a body of this media type can be held to the rule: a wildcard key with a schema cannot pass
        bytes the gateway cannot read (`application/x-json` under `*/*`) unvalidated to an upstream that may
        parse them as JSON."""
        return self.kind != "auto" or media_kind(media) != "opaque"


@dataclass(frozen=True, slots=True)
class ResponseRule:
    closed: Compiled  # fails on undeclared and writeOnly properties too: the fast path for a clean response
    open: Compiled  # annotations tell the filter which properties the schema declared
    pointer: str
    structured: bool = True  # the schema may hold properties (not a lone string/number/boolean): a body of it
    # in a media type the gateway cannot read may carry what the filter would remove


class Unchecked(Enum):
    """A response no schema checks; the value completes the decision log's `media type X ...`."""

    FORWARD = "is forwarded"  # its status declares no schema, or its media type is declared without one
    UNDECLARED = "is not declared"  # its status declares schemas, none for this media type (or none at all)
    UNREADABLE = "cannot be checked"  # declared by a wildcard with a schema, but not JSON
    PAGE = "is a page"  # only `default` covers its 3xx-5xx status: checked if it is JSON whatever its label


@dataclass(slots=True)
class Operation:
    method: str
    template: str
    pointer: str
    operation_id: str
    deprecated: bool
    params: dict[str, tuple[Param, ...]]  # by location: path, query, header, cookie
    check: Compiled  # parameters only (no body, or a body without a schema)
    query_names: frozenset[str] = frozenset()  # query keys declared parameters own: no bracket aliases of them
    query_folded: dict[str, str] = field(default_factory=dict)  # params.folded_names(query_names): no case variants
    cookie_names: frozenset[str] = frozenset()
    header_spellings: HeaderSpellings | None = None  # with header parameters
    bodies: dict[str, BodyRule] = field(default_factory=dict)
    declares_body: bool = False
    body_required: bool = False
    # by status key, then media-type key; None: declared, but no schema the gateway can check it against.
    # Only statuses that declare a schema have a table.
    responses: dict[str, dict[str, ResponseRule | None]] = field(default_factory=dict)

    def response_rule(self, status: int, media: str) -> ResponseRule | Unchecked:
        """The rule a response of this status and media type (essence, '' if none) is checked against."""
        table = self.responses.get(str(status)) or self.responses.get(f"{status // 100}XX")
        if table is not None:
            return _media_rule(table, media)
        table = self.responses.get("default")
        if table is None:
            return Unchecked.FORWARD
        rule = _media_rule(table, media)
        # `default` describes the API's own errors too: a framework's HTML or plain-text page for a 3xx-5xx (a
        # 302's "Redirecting", a 401 from middleware) is not refused for its media type; the stage still checks
        # it if it is JSON under another label (Express's res.send(JSON.stringify(user)) is text/html).
        if status >= 300 and isinstance(rule, Unchecked) and rule is not Unchecked.FORWARD and not is_json(media):
            return Unchecked.PAGE
        return rule

    def json_rule(self, status: int) -> ResponseRule | None:
        """The JSON rule `default` (or the status) declares, for a page that turned out to be JSON."""
        rule = self.response_rule(status, "application/json")
        return rule if isinstance(rule, ResponseRule) else None


def _media_rule(table: dict[str, ResponseRule | None], media: str) -> ResponseRule | Unchecked:
    # A status that declares a schema declares what its body may be: anything else (XML the client asked for
    # with `Accept`, JSON labelled text/json, no Content-Type) would leave unchecked, so it is refused.
    if media in table:
        key = media
    elif is_json(media) and "application/json" in table:
        key = "application/json"
    elif (wildcard := media.partition("/")[0] + "/*") in table:
        key = wildcard
    elif "*/*" in table:
        key = "*/*"
    else:
        return Unchecked.UNDECLARED
    rule = table[key]
    if rule is None:
        return Unchecked.FORWARD
    if is_json(media):
        return rule
    # A schema the gateway cannot hold this body to: refused if it could carry properties (springdoc's
    # `*/*: {schema: {type: string}}` for a String controller answered as text/plain carries none).
    return Unchecked.UNREADABLE if rule.structured else Unchecked.FORWARD


def build_operation(
    docs: Documents, schemas: SchemaSet, item: Located, method: str, template: str, *, strict: bool, responses: bool
) -> Operation:
    at = item.child(method)
    op = at.node
    if not isinstance(op, dict):
        raise at.error("an operation must be an object")
    variant: Variant = "request_strict" if strict else "request"
    params, props = _parameters(docs, schemas, item, at, variant)
    base = _envelope(props, params)
    operation = Operation(
        method=method,
        template=template,
        pointer=at.pointer,
        operation_id=str(op.get("operationId") or f"{method.upper()} {template}"),
        deprecated=op.get("deprecated") is True,
        params=params,
        check=_compile(schemas, base, variant, at),
        query_names=(names := query_names(params.get("query", ()))),
        query_folded=folded_names(names),
        cookie_names=frozenset(p.name for p in params.get("cookie", ())),
        header_spellings=HeaderSpellings.of(params["header"]) if "header" in params else None,
    )
    if "requestBody" in op:
        body = docs.deref(at.child("requestBody"))
        if not isinstance(body.node, dict) or not isinstance(body.node.get("content"), dict):
            raise body.error("requestBody needs a content map")
        operation.declares_body = True
        operation.body_required = body.node.get("required") is True
        for media in body.node["content"]:
            # Keyed by essence: `application/json; charset=UTF-8` must match a JSON request, or a `*/*` beside it
            # would take the body unread.
            key = _media_key(body, media)
            if key in operation.bodies:
                raise body.error(f"media type {key!r} is declared twice", "content", media)
            operation.bodies[key] = _body_rule(docs, schemas, body, media, base, variant, at)
    if responses:
        _responses(docs, schemas, at, operation)
    return operation


def _parameters(
    docs: Documents, schemas: SchemaSet, item: Located, at: Located, variant: Variant
) -> tuple[dict[str, tuple[Param, ...]], dict[str, tuple[dict[str, Any], list[str]]]]:
    found: dict[tuple[str, str], Located] = {}
    for owner in (item, at):  # operation-level parameters override path-level ones of the same name and place
        raw = owner.node.get("parameters", [])
        if not isinstance(raw, list):
            raise owner.error("parameters must be a list", "parameters")
        for i in range(len(raw)):
            p = docs.deref(owner.child("parameters", i))
            if not isinstance(p.node, dict) or not isinstance(p.node.get("name"), str):
                raise p.error("a parameter needs a name")
            found[(p.node["name"], str(p.node.get("in")))] = p
    params: dict[str, list[Param]] = {"path": [], "query": [], "header": [], "cookie": []}
    props: dict[str, tuple[dict[str, Any], list[str]]] = {k: ({}, []) for k in params}
    for (name, location), p in found.items():
        if location not in STYLES:
            raise p.error(f"parameter location must be path, query, header or cookie, not {location!r}", "in")
        if location == "header" and name.lower() in _IGNORED_HEADERS:
            continue
        style = p.node.get("style", DEFAULT_STYLE[location])
        if style not in STYLES[location]:
            raise p.error(f"style {style!r} is not allowed for {location} parameters", "style")
        schema_at, json = _param_schema(p)
        key = name.lower() if location == "header" else name
        shape = shape_of(schema_at, docs) if schema_at is not None else ANY
        params[location].append(Param(key, location, style, bool(p.node.get("explode", style == "form")), shape, json))
        converted = schemas.convert(schema_at, variant, close=False) if schema_at is not None else {}
        props[location][0][key] = converted
        if p.node.get("required") is True or location == "path":
            props[location][1].append(key)
    return {k: tuple(v) for k, v in params.items() if v}, props


def _param_schema(p: Located) -> tuple[Located | None, bool]:
    if "schema" in p.node:
        return p.child("schema"), False
    content = p.node.get("content")
    if isinstance(content, dict) and len(content) == 1:
        media = next(iter(content))
        entry = p.child("content", media)
        return (entry.child("schema") if isinstance(entry.node, dict) and "schema" in entry.node else None), is_json(
            media.lower()
        )
    if content is not None:
        raise p.error("a parameter's content map must hold exactly one media type", "content")
    return None, False


def _envelope(props: dict[str, tuple[dict[str, Any], list[str]]], params: dict[str, Any]) -> dict[str, Any]:
    """The instance the validator sees: {"path": {...}, "query": {...}, "header": ..., "cookie": ..., "body": ...}."""
    out: dict[str, Any] = {}
    for location, (properties, required) in props.items():
        if location in params:
            schema: dict[str, Any] = {"type": "object", "properties": properties}
            if required:
                schema["required"] = required
            out[location] = schema
    return {"type": "object", "properties": out}


def _body_rule(
    docs: Documents, schemas: SchemaSet, body: Located, media: str, base: dict[str, Any], variant: Variant, at: Located
) -> BodyRule:
    entry = body.child("content", media)
    key = essence(media)
    kind = "auto" if "*" in key else media_kind(key)
    has_schema = isinstance(entry.node, dict) and "schema" in entry.node
    if not has_schema or kind == "opaque":  # no schema, or bytes the gateway cannot read: presence only
        return BodyRule(key, "opaque", ANY, _compile(schemas, base, variant, at))
    schema_at = entry.child("schema")
    root = {**base, "properties": {**base["properties"], "body": schemas.convert(schema_at, variant)}}
    if body.node.get("required") is True:
        root["required"] = ["body"]
    return BodyRule(key, kind, shape_of(schema_at, docs), _compile(schemas, root, variant, entry))


def _responses(docs: Documents, schemas: SchemaSet, at: Located, operation: Operation) -> None:
    table = at.node.get("responses")
    if table is None:
        return
    if not isinstance(table, dict):
        raise at.error("responses must be an object", "responses")
    for code in table:
        resp = docs.deref(at.child("responses", code))
        content = resp.node.get("content") if isinstance(resp.node, dict) else None
        if not isinstance(content, dict):
            continue
        rules: dict[str, ResponseRule | None] = {}
        schemas_declared = False
        for media in content:
            entry = resp.child("content", media)
            key = _media_key(resp, media)
            if key in rules:
                raise resp.error(f"media type {key!r} is declared twice", "content", media)
            has_schema = isinstance(entry.node, dict) and "schema" in entry.node
            schemas_declared |= has_schema
            checkable = has_schema and (is_json(key) or key in _JSON_WILDCARDS)
            rules[key] = _response_rule(schemas, entry.child("schema")) if checkable else None
        if schemas_declared:
            key = str(code).upper() if str(code).upper().endswith("XX") else str(code)
            operation.responses[key] = rules


def _media_key(at: Located, media: object) -> str:
    """A content map's key as the essence a Content-Type is compared by (`application/json;charset=UTF-8`)."""
    key = essence(media) if isinstance(media, str) else ""
    if "/" not in key:
        raise at.error(f"{media!r} is not a media type", "content")
    return key


def _response_rule(schemas: SchemaSet, s: Located) -> ResponseRule:
    closed = {"type": "object", "properties": {"body": schemas.convert(s, "response_closed")}}
    opened = schemas.convert(s, "response_open", close=False)
    return ResponseRule(
        _compile(schemas, closed, "response_closed", s),
        _compile(schemas, opened, "response_open", s),
        s.pointer,
        structured=not _scalar_schema(s.node),
    )


_SCALAR_TYPES = frozenset({"string", "number", "integer", "boolean", "null"})
_STRUCTURE_KEYWORDS = ("$ref", "properties", "items", "allOf", "anyOf", "oneOf", "additionalProperties", "not")


def _scalar_schema(node: object) -> bool:
    """Whether a schema can only describe a lone scalar (a `$ref` or composition counts as structured)."""
    if not isinstance(node, dict) or any(k in node for k in _STRUCTURE_KEYWORDS):
        return False
    kind = node.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    return bool(kinds) and all(isinstance(k, str) and k in _SCALAR_TYPES for k in kinds)


def _compile(schemas: SchemaSet, root: dict[str, Any], variant: Variant, at: Located) -> Compiled:
    validator, document = schemas.validator(root, variant, at)
    return Compiled(validator, document)
