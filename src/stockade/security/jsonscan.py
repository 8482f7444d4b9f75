"""A single-pass JSON structure scanner: depth, keys, array and string limits and duplicate keys, checked on
the raw bytes before anything is materialised (a 10 MB `[{},{},...]` never becomes millions of dicts)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

# One token per object member with a simple value, one per array element, one per bracket. Possessive
# quantifiers: a string is scanned once, never re-tried, so the scan is linear in the body size.
_TOKEN = re.compile(
    rb'"((?:[^"\\]++|\\.)*+)"(?:\s*+(:)\s*+(?:"((?:[^"\\]++|\\.)*+)"|[-+.0-9A-Za-z]++)?)?'
    rb"|[\[{]|[\]}]|[-+.0-9A-Za-z]++"
)
PARSED_KEY = "json.document"  # ctx.state: (body bytes, document) once a stage has parsed the body
_OPEN_OBJECT, _OPEN_ARRAY, _CLOSE_OBJECT, _CLOSE_ARRAY, _QUOTE = 0x7B, 0x5B, 0x7D, 0x5D, 0x22


@dataclass(frozen=True, slots=True)
class Limits:
    """None means unlimited. Lengths count characters of the decoded string."""

    max_depth: int | None = None
    max_keys: int | None = None
    max_array: int | None = None
    max_string: int | None = None
    duplicate_keys: bool = False  # allow duplicate keys (JSON parsers disagree on which one wins)


class Violation(Exception):
    """The first limit the document breaks. `rule` is stable (too_deep, too_many_keys, array_too_long,
    string_too_long, duplicate_key, malformed); `pointer` locates it as far as the scanner knows."""

    def __init__(self, rule: str, pointer: str) -> None:
        super().__init__(rule)
        self.rule = rule
        self.pointer = pointer


def parse(body: bytes, limits: Limits) -> Any:
    """The document, if it keeps every limit; else Violation. Duplicate keys are refused unless allowed.

    Counting bytes (C speed) bounds every limit from above: with no more commas than allowed keys and array
    elements, no more brackets than the allowed depth and no more bytes than the longest allowed string, no
    limit can be broken and the (then provably small) document is parsed directly. Otherwise the exact
    scanner runs first, so an oversized document is refused before anything of it is built.
    """
    if not _bounded(body, limits):
        scan(body, limits)
        if not limits.duplicate_keys:
            return _decode(body, orjson_ok=True)
    try:
        return _decode(body, orjson_ok=limits.duplicate_keys)
    except Violation as exc:
        if exc.rule == "duplicate_key":
            scan(body, limits)  # to name where (the fast decoder does not know)
        raise


def _bounded(body: bytes, limits: Limits) -> bool:
    if limits.max_string is not None and len(body) > limits.max_string:
        return False
    if limits.max_depth is not None and body.count(b"{") + body.count(b"[") > limits.max_depth:
        return False
    members = body.count(b",") + 1
    return (limits.max_keys is None or members <= limits.max_keys) and (
        limits.max_array is None or members <= limits.max_array
    )


class _Duplicate(Exception):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Duplicate
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(name)  # NaN and Infinity are not JSON


_STRICT = json.JSONDecoder(object_pairs_hook=_unique, parse_constant=_no_constants)


def _decode(body: bytes, *, orjson_ok: bool) -> Any:
    """Parse JSON text (UTF-8). `orjson_ok` when duplicate keys need not be detected (already scanned)."""
    if orjson_ok:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise Violation("malformed", "") from None
    try:
        return _STRICT.decode(body.decode("utf-8"))
    except _Duplicate:
        raise Violation("duplicate_key", "") from None
    except (ValueError, RecursionError):  # JSONDecodeError, bad UTF-8, NaN, over-long integers
        raise Violation("malformed", "") from None


def _text(raw: bytes) -> str:
    """A string token's decoded value (escapes resolved), for duplicate detection and exact lengths."""
    if b"\\" not in raw:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Violation("malformed", "") from None
    try:
        value = orjson.loads(b'"' + raw + b'"')
    except orjson.JSONDecodeError:
        raise Violation("malformed", "") from None
    return str(value)


def _string_ok(raw: bytes, limit: int | None) -> bool:
    return limit is None or len(raw) <= limit or len(_text(raw)) <= limit


def scan(body: bytes, limits: Limits) -> None:
    """Raise Violation at the first broken limit. Syntax is not fully checked here: parse afterwards."""
    max_depth = limits.max_depth
    max_keys = limits.max_keys
    max_array = limits.max_array
    max_string = limits.max_string
    check_dupes = not limits.duplicate_keys
    # One frame per open container: a set of keys for an object, a one-item list (the count) for an array.
    frames: list[set[str] | list[int]] = []
    path: list[str] = []
    for m in _TOKEN.finditer(body):
        c = body[m.start()]
        if c == _QUOTE:
            top = frames[-1] if frames else None
            if m.group(2) is not None:  # a key
                if not isinstance(top, set):
                    raise Violation("malformed", _pointer(path[:-1]))
                raw = m.group(1)
                if not _string_ok(raw, max_string):
                    raise Violation("string_too_long", _pointer(path[:-1]))
                key = _text(raw)
                if check_dupes and key in top:
                    raise Violation("duplicate_key", _pointer([*path[:-1], key]))
                top.add(key)
                if max_keys is not None and len(top) > max_keys:
                    raise Violation("too_many_keys", _pointer(path[:-1]))
                path[-1] = key
                value = m.group(3)
                if value is not None and not _string_ok(value, max_string):
                    raise Violation("string_too_long", _pointer(path))
                continue
            _element(top, max_array, path)
            if not _string_ok(m.group(1), max_string):
                raise Violation("string_too_long", _pointer(path))
        elif c == _OPEN_OBJECT or c == _OPEN_ARRAY:
            _element(frames[-1] if frames else None, max_array, path)
            frames.append(set() if c == _OPEN_OBJECT else [0])
            path.append("")
            if max_depth is not None and len(frames) > max_depth:
                raise Violation("too_deep", _pointer(path[:-1]))
        elif c == _CLOSE_OBJECT or c == _CLOSE_ARRAY:
            if not frames or isinstance(frames[-1], set) != (c == _CLOSE_OBJECT):
                raise Violation("malformed", _pointer(path))
            frames.pop()
            path.pop()
        else:
            _element(frames[-1] if frames else None, max_array, path)
    if frames:
        raise Violation("malformed", _pointer(path))


def _element(top: set[str] | list[int] | None, max_array: int | None, path: list[str]) -> None:
    """Count one element of the enclosing array (values inside objects are counted with their key)."""
    if isinstance(top, list):
        n = top[0]
        if max_array is not None and n >= max_array:
            raise Violation("array_too_long", _pointer(path[:-1]))
        path[-1] = str(n)
        top[0] = n + 1


def _pointer(path: list[str]) -> str:
    out = "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in path)
    return out if len(out) <= 256 else out[:256] + "..."
