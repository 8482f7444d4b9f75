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


# A body up to this size is parsed first and its limits checked on the document (fewer steps than scanning
# the bytes); a larger one that byte counts cannot clear is scanned first, so it is refused before it is built.
MATERIALISE_MAX = 64 * 1024
# Levels of nesting the decoder parses, whatever the limits and however deep the caller's stack (max_depth
# allows at most 1000; orjson stops at 1024 too). Each level takes a few hundred bytes of C stack.
MAX_NESTING = 1024


def parse(body: bytes, limits: Limits) -> Any:
    """The document, if it keeps every limit; else Violation. Duplicate keys are refused unless allowed.

    Counting bytes (C speed) bounds the size limits from above: with no more commas than allowed keys and
    array elements and no more bytes than the longest allowed string, none of them can be broken. Such a
    document, or any small one, is parsed by the C decoder first (which refuses a repeated key) and checked on
    the result: its containers are measured when the counts could not clear them or there are more brackets
    than the allowed depth. A large document that byte counts cannot clear is scanned first (nothing of a
    hostile one is built), and so is any that must be measured while repeated keys are allowed (the decoded
    document keeps only the last value of a key; an earlier one must keep the limits too). A limit broken is
    named by the scanner (rule and pointer of the first one in document order); bad syntax is `malformed`,
    named by the scanner first only when byte counts could not clear the size limits.
    """
    containers = _bounded(body, limits)
    sizes = containers < 0
    measure = sizes or (limits.max_depth is not None and containers > limits.max_depth)
    if measure and (len(body) > MATERIALISE_MAX or limits.duplicate_keys):
        scan(body, limits)
        return _decoded(body, _DECODER)
    try:
        document = _decoded(body, _DECODER if limits.duplicate_keys else _STRICT)
    except Violation as exc:
        if sizes or exc.rule != "malformed":
            scan(body, limits)  # to name where (or a size limit broken before the bad syntax)
        raise
    if measure:
        rule = _measure(document, limits, sizes)
        if rule is not None:
            scan(body, limits)  # to name the first broken limit in document order, and where
            raise Violation(rule, "")
    return document


def _bounded(body: bytes, limits: Limits) -> int:
    """-1 if byte counts cannot rule out a broken size limit (the document must be measured), else the number
    of brackets: an upper bound on the containers, and so on the depth."""
    if limits.max_string is not None and len(body) > limits.max_string:
        return -1
    members = body.count(b",") + 1
    if (limits.max_keys is not None and members > limits.max_keys) or (
        limits.max_array is not None and members > limits.max_array
    ):
        return -1
    return body.count(b"{") + body.count(b"[")


def _maxima(limits: Limits) -> tuple[int, int, int, int]:
    """max_depth, max_keys, max_array and max_string, each as a number (sys.maxsize where unlimited)."""
    unlimited = sys.maxsize
    return (
        limits.max_depth or unlimited,
        limits.max_keys or unlimited,
        limits.max_array or unlimited,
        limits.max_string or unlimited,
    )


def _measure(document: Any, limits: Limits, sizes: bool) -> str | None:
    """The first limit the parsed document breaks, or None. Only depth is checked unless `sizes` (byte counts
    could not rule the size limits out)."""
    max_depth, max_keys, max_array, max_string = _maxima(limits)
    kind = type(document)
    if kind is not dict and kind is not list:
        return "string_too_long" if sizes and kind is str and len(document) > max_string else None
    stack = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return "too_deep"
        children: Any
        if type(node) is dict:
            if sizes:
                if len(node) > max_keys:
                    return "too_many_keys"
                for key in node:
                    if len(key) > max_string:
                        return "string_too_long"
            children = node.values()
        else:
            if sizes and len(node) > max_array:
                return "array_too_long"
            children = node
        for child in children:
            kind = type(child)
            if kind is dict or kind is list:
                stack.append((child, depth + 1))
            elif sizes and kind is str and len(child) > max_string:
                return "string_too_long"
    return None


def _no_constants(name: str) -> Any:
    raise ValueError(name)  # NaN and Infinity are not JSON


class _Duplicate(ValueError):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Duplicate
    return out


_DECODER = json.JSONDecoder(parse_constant=_no_constants)
_STRICT = json.JSONDecoder(object_pairs_hook=_unique, parse_constant=_no_constants)  # refuses repeated keys


def _utf8(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise Violation("malformed", "") from None


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _decoded(body: bytes, decoder: json.JSONDecoder) -> Any:
    """Parse JSON with the C decoder: integers stay exact (a float would change what a schema sees). Violation
    `malformed` for what is not JSON, including an unpaired surrogate escape (parsers disagree on what it means),
    `duplicate_key` from the strict decoder, `too_deep` for nesting beyond what it parses."""
    text = _utf8(body)
    try:
        try:
            document = decoder.decode(text)
        except RecursionError:  # deeper than the recursion limit allows from here: once more, with room
            limit = sys.getrecursionlimit()
            room = _stack_depth() + MAX_NESTING + 8  # + the hook's frame and the decoder's own calls
            if room <= limit:
                raise
            sys.setrecursionlimit(room)
            try:
                document = decoder.decode(text)
            finally:
                sys.setrecursionlimit(limit)
    except RecursionError:
        raise Violation("too_deep", "") from None
    except _Duplicate:
        raise Violation("duplicate_key", "") from None
    except ValueError:  # JSONDecodeError, NaN, over-long integers
        raise Violation("malformed", "") from None
    if has_unpaired_surrogate(body):
        raise Violation("malformed", "")
    return document


def _stack_depth() -> int:
    frame: Any = sys._getframe()
    depth = 0
    while frame is not None:
        depth += 1
        frame = frame.f_back
    return depth


def has_unpaired_surrogate(body: bytes) -> bool:
    """Whether a JSON text's string escapes half a surrogate pair (`"\\ud800"`): the stdlib decoder keeps it, as a
    str that cannot be encoded, and parsers disagree on what it means. Cheap unless the text escapes a surrogate."""
    return _SURROGATE_ESCAPE.search(body) is not None and _unpaired_surrogate(body)


def _unpaired_surrogate(body: bytes) -> bool:
    """Whether a string escapes half a surrogate pair (orjson refuses those; the stdlib decoder keeps them)."""
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return "surrogate" in str(exc)
    return False


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
    max_depth, max_keys, max_array, max_string = _maxima(limits)
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
