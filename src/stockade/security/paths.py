"""Request-target normalisation: the path routing sees is exactly the path the upstream receives."""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import quote

from stockade.security.readings import QUERY_SEPARATOR, param_name, php_name

# RFC 3986 pchar without '%': unreserved, sub-delims, ':' and '@'. '/' separates segments.
_SEGMENT_SAFE: Final = "-._~!$&'()*+,;=:@"
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
# Decoded bytes that must never appear in a path: they mean something else to someone downstream.
_FORBIDDEN_DECODED: Final = frozenset(range(0x20)) | {0x7F, ord("/"), ord("\\")}
_RAW_CONTROL: Final = re.compile(rb"[\x00-\x20\x7f]")


class BadPathError(ValueError):
    """The request target cannot be routed safely. `reason` is the client-facing code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


_CACHE_MAX: Final = 8192
_cache: Final[dict[bytes, tuple[str, str, str]]] = {}


def normalize_target(target: bytes) -> tuple[str, str, str]:
    """Split and normalise an origin-form request target.

    Returns `(path, canonical, query)`: `path` is percent-decoded with dot-segments resolved and repeated
    slashes merged; `canonical` is `path` re-encoded, which is what goes upstream; `query` is raw.
    Encoded '/', '\\', NUL and control characters, '..' above the root, and '..;' segments are rejected:
    they are how a path that a gateway reads one way reaches an application that reads it another. A `_method`
    query parameter is removed (see `without_method_param`). Results are cached by the exact target bytes
    (failures are not).
    """
    hit = _cache.get(target)
    if hit is not None:
        return hit
    result = _normalize(target)
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[target] = result
    return result


def _normalize(target: bytes) -> tuple[str, str, str]:
    if not target.startswith(b"/"):
        raise BadPathError("http.bad_target", "request target is not in origin form")
    if b"#" in target:
        raise BadPathError("http.bad_target", "fragment in request target")
    raw_path, sep, raw_query = target.partition(b"?")
    query = without_method_param(raw_query.decode("latin-1")) if sep else ""
    if _RAW_CONTROL.search(raw_path) is not None:  # llhttp refuses these; a lenient ASGI server may not
        raise BadPathError("http.bad_path", "control character or space in path")
    if (
        raw_path.isascii()
        and b"%" not in raw_path
        and b"/." not in raw_path
        and b"//" not in raw_path
        and b"\\" not in raw_path
    ):
        path = raw_path.decode("latin-1")
        return path, path, query
    return _normalize_slow(raw_path, query)


_QUERY_SEPARATOR: Final = re.compile(f"({QUERY_SEPARATOR.pattern})")  # the same split, keeping the separators


def without_method_param(query: str) -> str:
    """`query` without its `_method` parameters, the others byte for byte.

    Express's `methodOverride('_method')` runs `POST /items/1?_method=DELETE` as a DELETE, and Symfony and Laravel
    (with their override on) take `_method` from the query of a POST too. Routes and policies are chosen by the
    request's own method, so, like the override headers (pipeline/forward.py), the parameter never reaches the
    application: a DELETE that a route refuses must not pass as the POST another route allows. A name counts
    as `_method` the way those frameworks read it (percent-decoded, then `readings.php_name`: `_method%00` is
    `_method` to PHP), in any case. Parameters are split at `&` and at `;`
    (older Rack). A `_method` field in a form body stays (the gateway does not rewrite bodies); an openapi stage
    whose schema admits no undeclared properties refuses it.
    """
    if "method" not in query.lower() and "%" not in query:  # nearly every query: one scan, nothing parsed
        return query
    parts = _QUERY_SEPARATOR.split(query)  # parameter, separator, parameter, ...
    out: list[str] = []
    for i in range(0, len(parts), 2):
        if _names_method(parts[i]):
            continue
        if out:
            out.append(parts[i - 1])
        out.append(parts[i])
    return "".join(out)


def _names_method(param: str) -> bool:
    return php_name(param_name(param)) == "_method"


def _normalize_slow(raw_path: bytes, query: str) -> tuple[str, str, str]:
    if b"\\" in raw_path:
        raise BadPathError("http.bad_path", "backslash in path")
    decoded = _percent_decode(raw_path)
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise BadPathError("http.bad_path", "path is not valid UTF-8 after percent-decoding") from None
    segments = text.split("/")[1:]
    out: list[str] = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "" and not last:
            continue  # merge repeated slashes
        if seg == ".":
            if last:
                out.append("")
            continue
        if seg == "..":
            if not out or out == [""]:
                raise BadPathError("http.bad_path", "path climbs above the root")
            out.pop()
            if last:
                out.append("")
            continue
        if seg.startswith(("..;", ".;")):
            raise BadPathError("http.bad_path", "dot-segment with parameters")
        out.append(seg)
    path = "/" + "/".join(out)
    canonical = "/" + "/".join(quote(seg, safe=_SEGMENT_SAFE) for seg in out)
    return path, canonical, query


def _percent_decode(raw: bytes) -> bytes:
    if b"%" not in raw:
        return raw
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        c = raw[i]
        if c == 0x25:  # '%'
            if i + 2 >= n or raw[i + 1] not in _HEX or raw[i + 2] not in _HEX:
                raise BadPathError("http.bad_path", "invalid percent-encoding")
            b = int(raw[i + 1 : i + 3], 16)
            if b in _FORBIDDEN_DECODED:
                raise BadPathError("http.bad_path", f"encoded byte 0x{b:02x} in path")
            out.append(b)
            i += 3
        else:
            out.append(c)
            i += 1
    return bytes(out)
