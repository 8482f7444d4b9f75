"""Resolving a request head's Host and target to a route, cached by their exact bytes per runtime."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, NamedTuple

from stockade.pipeline.routing import NoRoute
from stockade.security.paths import BadPathError, normalize_target

if TYPE_CHECKING:
    from stockade.runtime import Runtime

_HOST = re.compile(rb"^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9._-]*))(?::([0-9]{1,5}))?$")
_CACHE_MAX = 8192


class TargetError(Exception):
    """The head cannot be routed; carries the client-facing status and reason, and a detail for the log."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


class Resolved(NamedTuple):
    method: str
    host: str
    path: str  # decoded and normalised (what routing and stages see)
    canonical: str  # what goes upstream
    query: str
    match: tuple[str, dict[str, str]] | NoRoute


def parse_host(value: bytes) -> str | None:
    """The host name (lower-case, no port, no trailing dot) from a Host header, or None if malformed."""
    m = _HOST.match(value)
    if m is None:
        return None
    return (m.group(1) or m.group(2) or b"").decode("ascii").lower().rstrip(".")


def resolve(rt: Runtime, host_raw: bytes | None, url: bytes, method: bytes) -> Resolved:
    """Normalise and route one request; the result is cached on the runtime by the exact input bytes, so a
    reload (a new runtime) starts a new cache. Failures are not cached. Raises TargetError."""
    key = (host_raw, url, method)
    cache = rt.target_cache
    hit: Resolved | None = cache.get(key)
    if hit is not None:
        return hit
    if host_raw is None:
        host = ""
    else:
        parsed = parse_host(host_raw)
        if parsed is None:
            raise TargetError(400, "http.bad_host", "malformed Host header")
        host = parsed
    try:
        path, canonical, query = normalize_target(url)
    except BadPathError as exc:
        raise TargetError(400, exc.reason, str(exc)) from None
    method_str = method.decode("ascii")
    resolved = Resolved(method_str, host, path, canonical, query, rt.router.match(host, path, method_str))
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = resolved
    return resolved
