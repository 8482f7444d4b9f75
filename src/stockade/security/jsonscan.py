"""A single-pass JSON structure scanner: depth, keys, array and string limits and duplicate keys, checked on
the raw bytes before anything is materialised (a 10 MB `[{},{},...]` never becomes millions of dicts)."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from typing import Any

import orjson

# One token per object member with a simple value, one per array element, one per bracket. Possessive
# quantifiers: a string is scanned once, never re-tried, so the scan is linear in the body size.
_TOKEN = re.compile(
    rb'"((?:[^"\\]++|\\.)*+)"(?:\s*+(:)\s*+(?:"((?:[^"\\]++|\\.)*+)"|[-+.0-9A-Za-z]++)?)?'
    rb"|(\{)|(\[)|(\})|(\])|[-+.0-9A-Za-z]++"
)
PARSED_KEY = "json.document"  # ctx.state: (body bytes, document) once a stage has parsed the body


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

    Counting bytes (C speed) bounds the size limits from above: with no more commas than allowed keys and
    array elements and no more bytes than the longest allowed string, none of them can be broken, so the
    document is small and is parsed directly; its depth is then measured on the (few) containers, unless
    there are fewer brackets than the allowed depth anyway. Otherwise the exact scanner runs first, so an
    oversized document is refused before anything of it is built.
    """
    containers = _bounded(body, limits)
    if containers >= 0:
        try:
            document = _decode(body, orjson_ok=limits.duplicate_keys)
        except Violation as exc:
            if exc.rule == "duplicate_key":
                scan(body, limits)  # to name where (the fast decoder does not know)
            raise
        except RecursionError:
            pass  # nested deeper than the C decoder recurses: the scanner decides
        else:
            if limits.max_depth is not None and containers > limits.max_depth and _depth(document) > limits.max_depth:
                scan(body, limits)  # to name where
                raise Violation("too_deep", "")
            return document
    scan(body, limits)
    try:
        return _decode(body, orjson_ok=True)
    except RecursionError:  # within every configured limit, yet deeper than the 1024 levels orjson parses
        raise Violation("too_deep", "") from None


def _bounded(body: bytes, limits: Limits) -> int:
    """-1 if byte counts cannot rule out a broken size limit (the scanner must run first), else the number
    of brackets: an upper bound on the containers, and so on the depth."""
    if limits.max_string is not None and len(body) > limits.max_string:
        return -1
    members = body.count(b",") + 1
    if (limits.max_keys is not None and members > limits.max_keys) or (
        limits.max_array is not None and members > limits.max_array
    ):
        return -1
    return body.count(b"{") + body.count(b"[")


def _depth(document: Any) -> int:
    """Nesting depth of a parsed document (containers only are visited)."""
    deepest = 0
    stack = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return deepest


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
        except orjson.JSONDecodeError as exc:
            if "depth limit" in str(exc):  # orjson stops at 1024 levels: deeper than any limit allows
                raise RecursionError from None
            raise Violation("malformed", "") from None
    try:
        return _STRICT.decode(body.decode("utf-8"))
    except _Duplicate:
        raise Violation("duplicate_key", "") from None
    except ValueError:  # JSONDecodeError, bad UTF-8, NaN, over-long integers
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


def _too_long(raw: bytes, limit: int) -> bool:
    return len(raw) > limit and len(_text(raw)) > limit  # bytes >= characters: decode only when it matters


def _key(raw: bytes) -> bytes:
    """A key in comparable form: the raw bytes, or re-encoded when escapes could spell the same key."""
    return _text(raw).encode("utf-8", "surrogatepass") if b"\\" in raw else raw


def scan(body: bytes, limits: Limits) -> None:
    """Raise Violation at the first broken limit. Syntax is not fully checked here: parse afterwards."""
    unlimited = sys.maxsize
    max_depth = limits.max_depth or unlimited
    max_keys = limits.max_keys or unlimited
    max_array = limits.max_array or unlimited
    max_string = limits.max_string or unlimited
    check_dupes = not limits.duplicate_keys
    # One frame per open container: the set of its keys (an object) or a one-item list, its count (an array).
    # `last` holds each object's current key, so a violation's pointer can be rebuilt; nothing else is kept.
    frames: list[Any] = []
    last: list[bytes] = []
    for m in _TOKEN.finditer(body):
        kind = m.lastindex
        if kind is None:  # a scalar
            if frames and type(top := frames[-1]) is list:
                if top[0] >= max_array:
                    raise Violation("array_too_long", _pointer(frames, last, 1))
                top[0] += 1
        elif kind <= 3:  # a string; with group 2 (the colon) a key, with group 3 its string value
            raw = m.group(1)
            top = frames[-1] if frames else None
            if kind == 1:
                if type(top) is list:
                    if top[0] >= max_array:
                        raise Violation("array_too_long", _pointer(frames, last, 1))
                    top[0] += 1
                if _too_long(raw, max_string):
                    raise Violation("string_too_long", _pointer(frames, last))
                continue
            if type(top) is not set:
                raise Violation("malformed", _pointer(frames, last))
            if _too_long(raw, max_string):
                raise Violation("string_too_long", _pointer(frames, last, 1))
            key = _key(raw) if check_dupes else raw
            if key in top and check_dupes:
                last[-1] = key
                raise Violation("duplicate_key", _pointer(frames, last))
            top.add(key)
            last[-1] = key
            if len(top) > max_keys:
                raise Violation("too_many_keys", _pointer(frames, last, 1))
            if kind == 3 and _too_long(m.group(3), max_string):
                raise Violation("string_too_long", _pointer(frames, last))
        elif kind <= 5:  # { or [
            if frames and type(top := frames[-1]) is list:
                if top[0] >= max_array:
                    raise Violation("array_too_long", _pointer(frames, last, 1))
                top[0] += 1
            if len(frames) >= max_depth:
                raise Violation("too_deep", _pointer(frames, last))
            frames.append(set() if kind == 4 else [0])
            last.append(b"")
        else:  # } or ]
            if not frames or (type(frames[-1]) is set) != (kind == 6):
                raise Violation("malformed", _pointer(frames, last))
            frames.pop()
            last.pop()
    if frames:
        raise Violation("malformed", _pointer(frames, last))


def _pointer(frames: list[Any], last: list[bytes], container: int = 0) -> str:
    """The JSON pointer of the current position; `container=1`: of the innermost container instead."""
    parts = [
        str(frame[0] - 1) if type(frame) is list else key.decode("utf-8", "replace")
        for frame, key in zip(frames, last, strict=True)
    ]
    if container:
        parts.pop()
    out = "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)
    return out if len(out) <= 256 else out[:256] + "..."
