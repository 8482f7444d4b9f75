"""ASGI types, reading a scope as a request head, and writing the scope the application receives."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from stockade.pipeline.forward import forwarded_headers
from stockade.pipeline.headers import parse_content_length
from stockade.pipeline.runner import header_safe
from stockade.security.netaddr import NetSet, canonical_ip

if TYPE_CHECKING:
    from stockade.pipeline.context import RequestContext
    from stockade.pipeline.runner import Pipeline

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]

INVALID_LENGTH = -1
# Response extensions that bypass `http.response.body`: hidden from the app when a hook must see the body.
_BODY_BYPASS_EXTENSIONS = ("http.response.pathsend", "http.response.zerocopy")


class HeadFields:
    """The request headers the intake checks look at, found in one pass over the scope's header list."""

    __slots__ = ("content_length", "expect", "forwarded_for", "hosts", "request_id")

    def __init__(self, headers: RawHeaders) -> None:
        self.hosts: list[bytes] = []
        self.expect: bytes | None = None
        self.request_id: bytes | None = None
        self.forwarded_for: list[bytes] = []
        self.content_length: int | None = None
        for name, value in headers:
            lname = name.lower()
            if lname == b"host":
                self.hosts.append(value)
            elif lname == b"x-forwarded-for":
                self.forwarded_for.append(value)
            elif lname == b"x-request-id":
                if self.request_id is None:
                    self.request_id = value
            elif lname == b"expect":
                self.expect = value
            elif lname == b"content-length":
                # The server framed the body by it; two different values would be ambiguous, so refuse them.
                parsed = parse_content_length(value)
                length = INVALID_LENGTH if parsed is None else parsed
                if self.content_length is not None and self.content_length != length:
                    length = INVALID_LENGTH
                self.content_length = length


def scope_headers(scope: Scope) -> RawHeaders:
    """A snapshot of the request headers, taken at intake: what the pipeline judges and the app receives.

    Always a copy: uvicorn's httptools parser appends chunked trailer fields to the scope's own list while the
    body is read, after the pipeline judged the head, so the server's list would hand the app headers (an
    `X-API-Key`, an `X-Role`) that no stage saw. Each pair is made a `(bytes, bytes)` tuple: ASGI allows any
    iterable of byte strings (`[name, value]` lists, `bytearray`), and the compiled pipeline takes exactly what its
    annotations say.
    """
    return [(bytes(name), bytes(value)) for name, value in scope.get("headers") or ()]


def request_target(scope: Scope) -> bytes:
    """The request target as the client sent it (path still percent-encoded, then `?query`).

    `raw_path` is optional in ASGI; without it the decoded `path` is re-encoded, which loses nothing the
    normaliser would have accepted (an encoded '/' is refused either way).
    """
    raw = scope.get("raw_path")
    if not raw:
        raw = quote(scope["path"], safe="/:@!$&'()*+,;=-._~").encode("ascii")
    query = scope.get("query_string", b"")
    return raw + b"?" + query if query else bytes(raw)


def peer_address(scope: Scope) -> str:
    """The address of whoever opened the connection; '' if the server does not say."""
    client = scope.get("client")
    if not client:
        return ""
    return canonical_ip(str(client[0]))


def http_scheme(scope: Scope) -> str:
    """`https` for TLS connections (`https` and `wss`), else `http`: what stages compare `ctx.scheme` against."""
    return "https" if scope.get("scheme") in ("https", "wss") else "http"


def to_raw_headers(headers: list[tuple[str, str]], kept: frozenset[tuple[str, str]] = frozenset()) -> RawHeaders:
    """Encode headers; values the gateway set are made header-safe, those in `kept` (the app's own, untouched,
    decoded from latin-1) go back byte for byte, as they do when no hook edits the head."""
    return [(n.encode("latin-1"), (v if (n, v) in kept else header_safe(v)).encode("latin-1")) for n, v in headers]


def from_raw_headers(headers: RawHeaders) -> list[tuple[str, str]]:
    return [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in headers]


def app_scope(
    scope: Scope,
    ctx: RequestContext,
    pipeline: Pipeline,
    trusted_proxies: NetSet,
    *,
    mount: tuple[str, str] = ("", ""),
    hide_body_bypass: bool = False,
    by_host: bool = True,
) -> Scope:
    """A copy of the scope for the application: the path the pipeline judged, and the gateway's header edits.

    The app routes by `path`, so it must see the normalised path the routes matched, never the client's raw one
    (`/public/..%2e/admin` must not reach a handler the gateway did not check), behind the `mount` point the
    routes did not see if the server sent it in `path`; `root_path` is the server's, less a trailing `/`. Forwarding
    headers (X-Forwarded-*, Forwarded, X-Real-IP) reach it only from a trusted proxy, as on the proxy front.
    """
    out = dict(scope)
    out["path"] = mount[0] + ctx.path
    out["raw_path"] = (mount[1] + ctx.raw_path).encode("latin-1")
    out["query_string"] = ctx.query.encode("latin-1")  # a stage may have removed a credential from it
    trusted = bool(trusted_proxies) and ctx.peer_ip in trusted_proxies
    out["headers"] = forwarded_headers(ctx.header_pairs, pipeline, ctx, trusted=trusted, by_host=by_host)
    if hide_body_bypass:
        extensions = scope.get("extensions")
        if extensions and any(e in extensions for e in _BODY_BYPASS_EXTENSIONS):
            out["extensions"] = {k: v for k, v in extensions.items() if k not in _BODY_BYPASS_EXTENSIONS}
    return out
