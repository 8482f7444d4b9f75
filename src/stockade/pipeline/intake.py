"""From a parsed request head to a routed RequestContext: the checks every front makes, in one order, one set of codes.

The proxy, the ASGI middleware and the decision endpoint read requests off different wires; once they hold the
method, target, headers and peer, everything up to the pipeline is decided here, so the same request gets the
same answer (status, reason, stage) whichever front it came through.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from stockade.pipeline.context import RequestContext
from stockade.pipeline.routing import NoRoute
from stockade.pipeline.runner import Pipeline
from stockade.pipeline.verdict import Deny
from stockade.security.forwarded import client_ip
from stockade.security.paths import BadPathError, normalize_target

if TYPE_CHECKING:
    from stockade.clock import Clock
    from stockade.pipeline.route import CompiledRoute, Runtime
    from stockade.security.netaddr import NetSet

# Labels separated by single dots, one trailing dot allowed: `.admin.example.com` or `a..b` would otherwise
# miss a host route written for the same name and reach another.
_HOST: Final = re.compile(rb"^(?:\[([0-9A-Fa-f:.]+)\]|((?:[A-Za-z0-9_-]+\.)*[A-Za-z0-9_-]+\.?|))(?::([0-9]{1,5}))?$")
_REQUEST_ID: Final = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
_HOST_CACHE_MAX: Final = 4096
_host_cache: Final[dict[bytes, str | None]] = {}


class _LastHost:
    """The Host value parsed last and its answer: a gateway's requests mostly name one host, and comparing the
    bytes costs a fraction of hashing them for the cache. One pair, stored at once: gateways in other threads of
    the process (tests, an application's own loops) share it, and must never see one's value with another's host."""

    __slots__ = ("pair",)

    def __init__(self) -> None:
        self.pair: tuple[bytes, str | None] = (b"\0", None)  # no Host value has NUL (llhttp refuses it)


_last_host: Final = _LastHost()


def parse_host(value: bytes) -> str | None:
    """The host name (lower-case, no port, no trailing dot) from a Host header, or None if malformed."""
    last = _last_host.pair
    if value == last[0]:
        return last[1]
    hit = _host_cache.get(value, False)
    if hit is not False:
        host: str | None = hit  # type: ignore[assignment]
    else:
        m = _HOST.match(value)
        host = None if m is None else (m.group(1) or m.group(2) or b"").decode("ascii").lower().rstrip(".")
        if len(_host_cache) > _HOST_CACHE_MAX:
            _host_cache.clear()
        _host_cache[value] = host
    _last_host.pair = (value, host)
    return host


def valid_request_id(value: bytes) -> bool:
    """A client's X-Request-Id is kept only if it is short and plain, so it can go into logs and headers as is."""
    return _REQUEST_ID.match(value) is not None


# The methods most requests use, as constant objects: the bytes a parser gives (each request's a new object, which
# every set or dict lookup would hash again; a constant keeps its hash) and the text the context holds (no decode per
# request, and the same object each time, which the decision log and the metrics compare by pointer first).
COMMON_METHODS: Final[tuple[tuple[bytes, str], ...]] = (
    (b"GET", "GET"),
    (b"POST", "POST"),
    (b"PUT", "PUT"),
    (b"DELETE", "DELETE"),
    (b"PATCH", "PATCH"),
    (b"HEAD", "HEAD"),
    (b"OPTIONS", "OPTIONS"),
)


def common_method(method: bytes) -> bytes:
    """`method`, as the constant object of COMMON_METHODS when it is one of them."""
    for raw, _ in COMMON_METHODS:
        if method == raw:
            return raw
    return method


def method_name(method: bytes) -> str:
    """The request method as text: the constant of COMMON_METHODS when it is one of them."""
    for raw, name in COMMON_METHODS:
        if method == raw:
            return name
    return method.decode("ascii", "replace")


class RequestIds:
    """Ids for requests that did not bring a valid one: a random per-process prefix of 8 hex digits, then a counter.

    Letters and digits only (as nginx's `$request_id`): the decision log takes such an id as it is, where one with
    other characters costs it a check for what would need escaping."""

    __slots__ = ("_last", "_prefix")

    def __init__(self) -> None:
        self._last = 0  # a native int when compiled: cheaper than next() on an itertools counter
        self._prefix = secrets.token_hex(4)

    def make(self) -> str:
        """The next id. (A method, not __call__: compiled code calls a method natively, an instance generically.)"""
        self._last += 1
        return f"{self._prefix}{self._last}"  # compiled: one native build (a str concatenation costs twice that)


def request_context(
    method: bytes,
    target: bytes,
    version: str,
    headers: list[tuple[bytes, bytes]],
    host_value: bytes | None,
    host_count: int,
    expect: bytes | None,
    request_id: bytes | None,
    forwarded_for: Sequence[bytes],
    peer_ip: str,
    trusted_proxies: NetSet,
    scheme: str,
    clock: Clock,
    started: float,
    new_id: RequestIds,
    peer_cert: dict[str, Any] | None = None,
    peer_cert_der: bytes | None = None,
) -> RequestContext | Deny:
    """Check the head and build the context, or say why not (a Deny with `detail`, for stage "http").

    Arguments may be passed positionally (the proxy does, on its hot path). `host_value` is the first Host header
    value and `host_count` how many there were (a front keeps no list of them: there is one), `expect` the Expect
    value, `request_id` the first X-Request-Id value and
    `forwarded_for` the X-Forwarded-For values (read only when the peer is a trusted proxy). A Deny here comes
    before any context exists: the front logs it against `bare_context(...)`.
    """
    if method == b"CONNECT":
        return Deny(405, "http.method_not_allowed", detail="CONNECT")
    if host_count > 1:
        return Deny(400, "http.bad_host", detail="more than one Host header")
    if host_value is not None:
        host = parse_host(host_value)
        if host is None:
            return Deny(400, "http.bad_host", detail="malformed Host header")
    elif version == "1.1":
        return Deny(400, "http.bad_host", detail="HTTP/1.1 request without Host")
    else:
        host = ""
    try:
        path, canonical, query = normalize_target(target)
    except BadPathError as exc:
        return Deny(400, exc.reason, detail=str(exc))
    if expect is not None and expect.lower() != b"100-continue":
        return Deny(417, "http.expectation_failed", detail="unsupported Expect")
    if forwarded_for and trusted_proxies and peer_ip in trusted_proxies:
        cip = client_ip(peer_ip, [v.decode("latin-1") for v in forwarded_for], trusted_proxies)
    else:
        cip = peer_ip
    rid = request_id.decode("ascii") if request_id is not None and valid_request_id(request_id) else new_id.make()
    # Positional: this runs for every request (keyword arguments cost more to bind).
    return RequestContext(
        rid,
        method_name(method),
        path,
        canonical,
        query,
        headers,
        cip,
        peer_ip,
        host,
        scheme,
        clock,
        version,
        started,
        peer_cert,
        peer_cert_der,
    )


def bare_context(
    *,
    method: bytes,
    version: str,
    headers: list[tuple[bytes, bytes]],
    peer_ip: str,
    scheme: str,
    clock: Clock,
    started: float,
    new_id: RequestIds,
) -> RequestContext:
    """A context for a request rejected before one could be built, so it is logged the same way as the rest.

    The client's request id is not trusted here (the head was not accepted), so a fresh one is made.
    """
    return RequestContext(
        request_id=new_id.make(),
        method=method_name(method),
        path="",
        raw_path="",
        query="",
        headers=headers,
        client_ip=peer_ip,
        peer_ip=peer_ip,
        host="",
        scheme=scheme,
        clock=clock,
        http_version=version,
        started=started,
    )


def route_request(runtime: Runtime, ctx: RequestContext) -> CompiledRoute | Deny:
    """Match the route (setting `ctx.route_id` and `ctx.path_params`), or deny: unknown routes fail closed.

    A denial is recorded on `ctx` (stage "router"); a 405 carries the `Allow` header.
    """
    if ";" in ctx.path and not runtime.path_parameters:
        return Pipeline.deny(ctx, "http", Deny(400, "http.bad_path", detail="';' in path (limits.path_parameters)"))
    match = runtime.router.match(ctx.host, ctx.path, ctx.method)
    if isinstance(match, NoRoute):  # (narrows `match` for the unpacking below: native, not by iteration)
        if match.status == 405:
            return Pipeline.deny(
                ctx, "router", Deny(405, "route.method_not_allowed", headers={"allow": ", ".join(match.allow)})
            )
        return Pipeline.deny(ctx, "router", Deny(404, "route.not_found"))
    route_id, params = match
    ctx.route_id = route_id
    if params:
        ctx.path_params = dict(params)  # the router caches its matches: stages get their own copy
    return runtime.routes[route_id]


def body_too_large(pipeline: Pipeline, ctx: RequestContext) -> Deny:
    """Record and return the 413 for a body over the route's limit (declared up front or found while streaming)."""
    stage = pipeline.body_limit_stage or "limits"
    return Pipeline.deny(
        ctx, stage, Deny(413, "request.body_too_large", detail=f"body exceeds {pipeline.body_limit} bytes")
    )
