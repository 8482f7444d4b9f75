"""Admin API authentication: bearer admin tokens (keyed hashes in the store) and per-endpoint minimum roles.

`/metrics`, `/healthz` and `/readyz` stay open (the listener is loopback by default); everything else needs
`Authorization: Bearer <admin token>`. A missing or bad token is 401; a role below the endpoint's is 403.
The authenticated actor (`admin-token:<id> (<name>)`) is put in `scope["state"]["admin_actor"]` so every
change the endpoints make is recorded with who made it.
"""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING, Any

import orjson
from starlette.middleware import Middleware
from starlette.routing import compile_path

from stockade.admin.app import ROLE_RANK, AdminEndpoint, AdminState, refuse
from stockade.errors import StorageError
from stockade.security import keys
from stockade.security.secrets import shared_secrets
from stockade.storage import shared_store

if TYPE_CHECKING:
    from re import Pattern

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from stockade.pipeline.stage import Services
    from stockade.storage.records import AdminToken

log = logging.getLogger("stockade.admin")

OPEN_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})
CHALLENGE = 'Bearer realm="stockade-admin"'


async def authenticate(services: Services, token: str) -> AdminToken | None:
    """The usable admin token `token` is, or None (unknown, malformed, revoked and expired alike)."""
    try:
        keys.parse(token, env="admin")
    except keys.KeyFormatError:
        return None
    token_hash = keys.hash_secret(shared_secrets(services).pepper, token)
    found = await shared_store(services).find_admin_token(token_hash)
    if found is None or not hmac.compare_digest(found.token_hash, token_hash):
        return None
    return found if found.usable(services.clock.time()) else None


class AdminAuth:
    """Pure ASGI middleware (no body buffering, no framework state)."""

    def __init__(self, app: ASGIApp, state: AdminState, endpoints: list[AdminEndpoint]) -> None:
        self.app = app
        self.state = state
        self.routes: list[tuple[Pattern[str], frozenset[str], int]] = [
            (compile_path(e.path)[0], frozenset(e.methods), ROLE_RANK[e.role]) for e in endpoints
        ]

    def _required(self, path: str, method: str | None) -> int:
        """The minimum role rank: the strictest matching endpoint (unmatched paths fall through to a 404). HEAD
        is GET (Starlette serves it with the GET handler), and any other method a path does not declare needs
        the strictest role of that path: a method the table does not name must never lower the bar. A WebSocket
        (`method` None) has no entry in the table: the path's strictest role, and admin where no endpoint is."""
        if method == "HEAD":
            method = "GET"
        ranks = [rank for rx, methods, rank in self.routes if rx.match(path) and method in methods]
        if not ranks:
            ranks = [rank for rx, _, rank in self.routes if rx.match(path)]
        if not ranks:
            return ROLE_RANK["viewer" if method is not None else "admin"]
        return max(ranks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = [v for k, v in scope["headers"] if k == b"authorization"]
        token = None
        if len(headers) == 1:
            scheme, _, value = headers[0].decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and value.strip().startswith(keys.PREFIX + "_admin_"):
                token = value.strip()
        if token is None:
            await refuse(scope, send, 401, "admin.unauthenticated", {"www-authenticate": CHALLENGE})
            return
        try:
            found = await authenticate(self.state.services, token)
        except StorageError as exc:
            log.error("admin token lookup failed: %s", exc)
            await refuse(scope, send, 503, "admin.unavailable")
            return
        if found is None:
            log.warning("admin API: invalid, revoked or expired token", extra={"path": scope["path"]})
            await refuse(scope, send, 401, "admin.unauthenticated", {"www-authenticate": CHALLENGE})
            return
        if ROLE_RANK[found.role] < self._required(scope["path"], scope.get("method") if kind == "http" else None):
            log.warning("admin API: role too low", extra={"token": found.id, "role": found.role, "path": scope["path"]})
            await refuse(scope, send, 403, "admin.forbidden")
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        state["admin_actor"] = f"admin-token:{found.id} ({found.name})"
        state["admin_role"] = found.role
        if kind == "websocket":  # no request body: the messages are the app's to receive
            await self.app(scope, receive, send)
            return
        body = await _bounded_body(receive, MAX_BODY)  # however it is framed (Content-Length or chunked)
        if body is None:
            await refuse(scope, send, 413, "admin.body_too_large")
            return
        await self.app(scope, _replay(body, receive), send)


MAX_BODY = 64 * 1024  # admin request bodies are small JSON documents


async def _bounded_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it exceeds `limit` (the rest is never read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client went away: the handler sees an empty body and its disconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def middleware(state: AdminState, endpoints: list[AdminEndpoint]) -> Middleware:
    return Middleware(AdminAuth, state=state, endpoints=endpoints)


def json_body(raw: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object (empty means {}). Raises ValueError with a safe message."""
    if not raw.strip():
        return {}
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError("the body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("the body must be a JSON object")
    return doc
