"""Building the instance one request is validated as: `{"path", "query", "header", "cookie", "body"}`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stockade.openapi.errors import Problem, pointer
from stockade.openapi.media import decode_form, decode_multipart, essence, media_kind
from stockade.openapi.params import Malformed, header_value, name_alias, parse_cookies, path_value, query_value
from stockade.security.jsonscan import PARSED_KEY, Limits, Violation, parse

if TYPE_CHECKING:
    from stockade.openapi.operations import BodyRule, Operation
    from stockade.pipeline.context import RequestContext

DUPLICATES_ONLY = Limits()  # the openapi stage refuses duplicate keys; size limits belong to json_limits


def parameters(
    op: Operation, ctx: RequestContext, path_values: dict[str, str], strict: bool, undeclared: list[Problem]
) -> dict[str, Any]:
    """Deserialise every declared parameter (raises Malformed). Undeclared query keys go to `undeclared`
    when `strict`."""
    out: dict[str, Any] = {}
    params = op.params
    declared = params.get("path")
    if declared:
        out["path"] = {p.name: path_value(p, path_values[p.name]) for p in declared if p.name in path_values}
    declared = params.get("query")
    if declared or (strict and ctx.query):
        query = ctx.query_params
        used: set[str] = set()
        values: dict[str, Any] = {}
        for p in declared or ():
            present, value = query_value(p, query, used)
            if present:
                values[p.name] = value
        if declared:
            alias = name_alias(query, op.query_names, used, op.query_folded)
            if alias is not None:  # refused whatever `strict` says: the upstream may read it as the parameter
                raise Malformed(pointer(["query", alias]), "alias")
            out["query"] = values
        if strict:
            undeclared.extend(
                {"pointer": pointer(["query", k]), "rule": "additionalProperties"} for k in query if k not in used
            )
    declared = params.get("header")
    if declared:
        headers = ctx.headers
        spellings = op.header_spellings
        alias = spellings.alias(headers.raw) if spellings is not None else None
        if alias is not None:
            raise Malformed(pointer(["header", alias]), "alias")
        values = {}
        for p in declared:
            raw = headers.get_all(p.name)
            if raw:
                values[p.name] = header_value(p, raw)
        out["header"] = values
    declared = params.get("cookie")
    if declared:
        jar = parse_cookies(ctx.headers.get_all("cookie"), op.cookie_names)
        values = {}
        for p in declared:
            cookie = jar.get(p.name)
            if cookie is not None:
                if len(cookie) != 1:
                    raise Malformed(p.pointer, "duplicate")
                values[p.name] = header_value(p, cookie)
        out["cookie"] = values
    return out


def body_value(
    rule: BodyRule, body: bytes, content_type: str, ctx: RequestContext, max_parsed: int | None = None
) -> tuple[bool, Any]:
    """(has a value to validate, value). Raises Malformed for a body that does not parse as its media type,
    PartsTooLarge for a multipart body whose parsed (non-file) parts hold more than `max_parsed` bytes."""
    kind = rule.kind
    if kind == "auto":
        kind = media_kind(essence(content_type))
    if kind == "json":
        cached = ctx.state.get(PARSED_KEY)
        if cached is not None and cached[0] is body:  # json_limits already parsed exactly these bytes
            return True, cached[1]
        try:
            return True, parse(body, DUPLICATES_ONLY)
        except Violation as exc:
            raise Malformed("/body" + exc.pointer, "json" if exc.rule == "malformed" else exc.rule) from None
    if kind == "form":
        return True, decode_form(body, rule.shape)
    if kind == "multipart":
        return True, decode_multipart(body, content_type, rule.shape, max_parsed)
    if kind == "text":
        try:
            return True, body.decode("utf-8")
        except UnicodeDecodeError:
            raise Malformed("/body", "encoding") from None
    return False, None


def has_body(ctx: RequestContext) -> bool:
    """Whether the request may carry a body (so a bodiless HTTP/1 request never waits on a read). HTTP/1 says so
    in its framing headers; HTTP/2 and 3 (the ASGI front behind hypercorn, granian, daphne) carry a body in
    DATA frames without either header, so there the body is read and its emptiness decides."""
    if ctx.http_version not in ("1.1", "1.0"):
        return True
    headers = ctx.headers
    if "transfer-encoding" in headers:
        return True
    length = headers.get("content-length")
    return length is not None and length.strip() not in ("", "0")
