"""Media types: matching a request's Content-Type to a declared one, and decoding form and multipart bodies."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from stockade.openapi.params import Malformed, name_alias
from stockade.openapi.shapes import ANY, Shape, coerce
from stockade.security import jsonscan

MAX_FORM_FIELDS = 1000
MAX_PARTS = 256


def essence(content_type: str | None) -> str:
    """`Application/JSON; charset=utf-8` -> `application/json` ('' if absent)."""
    if not content_type:
        return ""
    return content_type.partition(";")[0].strip().lower()


def is_json(media: str) -> bool:
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def media_kind(media: str) -> str:
    """How a body of this (concrete) media type is read for validation."""
    if is_json(media):
        return "json"
    if media == "application/x-www-form-urlencoded":
        return "form"
    if media == "multipart/form-data":
        return "multipart"
    return "text" if media.startswith("text/") else "opaque"


def pick(declared: dict[str, Any], media: str) -> str | None:
    """The declared media-type key that serves `media`: exact, then `type/*`, then `*/*`."""
    if not media or "/" not in media:
        return None
    if media in declared:
        return media
    wildcard = media.split("/", 1)[0] + "/*"
    if wildcard in declared:
        return wildcard
    return "*/*" if "*/*" in declared else None


def decode_form(body: bytes, shape: Shape) -> dict[str, Any]:
    """application/x-www-form-urlencoded into an object, typed by the schema (arrays from repeated keys)."""
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise Malformed("/body", "form") from None
    grouped: dict[str, list[str]] = {}
    for key, value in pairs:
        grouped.setdefault(key, []).append(value)
    return _typed(grouped, shape)


_PART_LIMITS = jsonscan.Limits()  # a JSON part: bounded in size by `max_parsed` below


class PartsTooLarge(ValueError):
    """The parts of a multipart body that are parsed and validated (all but files) exceed their limit."""


def decode_multipart(body: bytes, content_type: str, shape: Shape, max_parsed: int | None = None) -> dict[str, Any]:
    """multipart/form-data into an object: text parts typed by the schema, JSON parts parsed, files as
    placeholders (a `format: binary` property is validated for presence, never buffered twice). The parts
    that are parsed may hold `max_parsed` bytes together (PartsTooLarge): files only the body's limit."""
    if content_type.lower().count("boundary") != 1:
        # `boundary=AAA; boundary=BBB` or `xboundary=AAA; boundary=BBB`: python-multipart takes BBB, PHP the first
        # `boundary` it finds (AAA), and one body then holds two different sets of fields.
        raise Malformed("/body", "multipart")
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise Malformed("/body", "multipart")
    parts: list[tuple[dict[bytes, bytes], list[bytes]]] = []
    state: dict[str, Any] = {"field": b"", "value": b"", "ended": False}

    def on_part_begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise MultipartParseError("too many parts")
        parts.append(({}, []))

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        headers = parts[-1][0]
        name = state["field"].lower()
        if name in headers:  # parsers disagree on which copy counts (Go takes the first, others the last)
            raise MultipartParseError("a part header repeated")
        headers[name] = state["value"]
        state["field"] = state["value"] = b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1][1].append(data[start:end])

    def on_end() -> None:
        state["ended"] = True

    callbacks: Any = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
        "on_end": on_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks, max_header_count=8, max_header_size=2048)
        parser.write(body)
        parser.finalize()
    except (MultipartParseError, ValueError):
        raise Malformed("/body", "multipart") from None
    if not state["ended"]:
        raise Malformed("/body", "multipart")
    grouped: dict[str, list[Any]] = {}
    parsed = 0
    for headers, chunks in parts:
        coding = headers.get(b"content-transfer-encoding", b"binary").strip().lower()
        if coding not in (b"binary", b"8bit", b"7bit"):  # quoted-printable, base64: decoded by some parsers only
            raise Malformed("/body", "multipart")
        _, disp = parse_options_header(headers.get(b"content-disposition"))
        name = disp.get(b"name")
        if name is None:
            raise Malformed("/body", "multipart")
        key = name.decode("utf-8", "replace")
        prop = shape.props.get(key, ANY)
        data = b"".join(chunks)
        if prop.binary or b"filename" in disp:
            value: Any = "" if prop.binary else data.decode("utf-8", "replace")
        elif max_parsed is not None and (parsed := parsed + len(data)) > max_parsed:
            raise PartsTooLarge(parsed)
        elif essence(headers.get(b"content-type", b"").decode("latin-1")) == "application/json":
            try:
                value = jsonscan.parse(data, _PART_LIMITS)  # repeated keys refused, as in a JSON body
            except jsonscan.Violation as exc:
                raise Malformed(f"/body/{key}", "json" if exc.rule == "malformed" else exc.rule) from None
        else:
            try:
                value = data.decode("utf-8")
            except UnicodeDecodeError:
                raise Malformed(f"/body/{key}", "multipart") from None
        grouped.setdefault(key, []).append(value)
    return _typed(grouped, shape)


def _typed(grouped: dict[str, list[Any]], shape: Shape) -> dict[str, Any]:
    alias = name_alias(grouped, shape.props, shape.props)
    if alias is not None:  # `role[]=admin` is `role` to PHP, Rails and Express, whatever `strict` says
        raise Malformed(f"/body/{alias.replace('~', '~0').replace('/', '~1')}", "alias")
    out: dict[str, Any] = {}
    for key, values in grouped.items():
        prop = shape.props.get(key, ANY)
        if prop.kind == "array":
            item = prop.items or ANY
            out[key] = [coerce(v, item) if isinstance(v, str) else v for v in values]
        elif len(values) != 1:
            raise Malformed(f"/body/{key.replace('~', '~0').replace('/', '~1')}", "duplicate")
        else:
            v = values[0]
            out[key] = coerce(v, prop) if isinstance(v, str) and prop.kind != "object" else v
    return out
