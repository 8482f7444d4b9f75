"""Admin API for consumers, API keys, admin tokens and the change log (the CLI's operations, over HTTP).

Roles: viewer reads; operator manages consumers and keys; admin manages admin tokens. Issued keys and
tokens appear once, in the 201 response; lists never contain them.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from stockade.admin.app import AdminEndpoint, AdminState
from stockade.admin.auth import json_body
from stockade.errors import StorageError
from stockade.identity.service import IdentityService, InvalidInput, Issued
from stockade.pipeline.render import PROBLEM_TYPE, problem_body
from stockade.security.secrets import shared_secrets
from stockade.storage import shared_store
from stockade.storage.base import ConflictError, NotFoundError
from stockade.storage.records import AdminChange, AdminToken, ApiKey, Consumer

Handler = Callable[[Request], Awaitable[Response]]


def _problem(status: int, reason: str, message: str | None = None) -> Response:
    extra = {"detail": message} if message else None
    return Response(problem_body(status, reason, "admin", extra), status, media_type=PROBLEM_TYPE)


def _errors(fn: Callable[[Request, IdentityService], Awaitable[Response]]) -> Handler:
    """Map service errors to precise statuses (messages are ours and name the field, never a secret)."""

    @functools.wraps(fn)
    async def run(request: Request) -> Response:
        services = request.app.state.admin.services
        actor = request.scope.get("state", {}).get("admin_actor", "admin-token:unknown")
        try:
            service = IdentityService(shared_store(services), shared_secrets(services).pepper, services.clock, actor)
            return await fn(request, service)
        except (InvalidInput, ValueError) as exc:
            return _problem(400, "admin.invalid", str(exc))
        except NotFoundError as exc:
            return _problem(404, "admin.not_found", str(exc))
        except ConflictError as exc:
            return _problem(409, "admin.conflict", str(exc))
        except StorageError:
            return _problem(503, "admin.unavailable")

    return run


def consumer_doc(c: Consumer) -> dict[str, Any]:
    return {"id": c.id, "name": c.name, "roles": list(c.roles), "plan": c.plan, "metadata": dict(c.metadata)} | {
        "created_at": c.created_at
    }


def key_doc(k: ApiKey, now: float) -> dict[str, Any]:
    return {
        "id": k.id,
        "consumer_id": k.consumer_id,
        "env": k.env,
        "status": k.status(now),
        "scopes": list(k.scopes),
        "name": k.name,
        "created_at": k.created_at,
        "expires_at": k.expires_at,
        "revoked_at": k.revoked_at,
        "last_used_at": k.last_used_at,
        "rotated_to": k.rotated_to,
    }


def token_doc(t: AdminToken) -> dict[str, Any]:
    return {"id": t.id, "name": t.name, "role": t.role, "created_at": t.created_at, "expires_at": t.expires_at} | {
        "revoked_at": t.revoked_at
    }


def change_doc(c: AdminChange) -> dict[str, Any]:
    return {"seq": c.seq, "at": c.at, "actor": c.actor, "action": c.action, "target": c.target, "detail": c.detail}


def _issued(issued: Issued, doc: dict[str, Any], field: str) -> Response:
    return JSONResponse({**doc, field: issued.secret}, 201, headers={"cache-control": "no-store"})


def _list(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [s for s in value.replace(" ", ",").split(",") if s]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"{field} must be a list of strings")
    return value


def _opt_number(doc: dict[str, Any], field: str) -> float | None:
    value = doc.get(field)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise InvalidInput(f"{field} must be a number of seconds")
    return float(value) if value is not None else None


def _opt_str(doc: dict[str, Any], field: str) -> str | None:
    value = doc.get(field)
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string")
    return value


# -- consumers ---------------------------------------------------------------------------------------------------


@_errors
async def list_consumers(request: Request, s: IdentityService) -> Response:
    return JSONResponse({"consumers": [consumer_doc(c) for c in await s.store.list_consumers()]})


@_errors
async def create_consumer(request: Request, s: IdentityService) -> Response:
    doc = json_body(await request.body())
    name = _opt_str(doc, "name")
    metadata = doc.get("metadata") or {}
    if name is None or not isinstance(metadata, dict):
        raise InvalidInput("`name` (string) is required; `metadata` must be an object")
    created = await s.create_consumer(
        name, roles=_list(doc.get("roles"), "roles"), plan=_opt_str(doc, "plan"), metadata=metadata
    )
    return JSONResponse(consumer_doc(created), 201)


@_errors
async def get_consumer(request: Request, s: IdentityService) -> Response:
    return JSONResponse(consumer_doc(await s.store.get_consumer(request.path_params["ref"])))


@_errors
async def delete_consumer(request: Request, s: IdentityService) -> Response:
    await s.delete_consumer(request.path_params["ref"])
    return Response(status_code=204)


# -- API keys ----------------------------------------------------------------------------------------------------


@_errors
async def list_keys(request: Request, s: IdentityService) -> Response:
    now = s.clock.time()
    found = await s.list_keys(request.query_params.get("consumer"))
    return JSONResponse({"keys": [key_doc(k, now) for k in found]})


@_errors
async def create_key(request: Request, s: IdentityService) -> Response:
    doc = json_body(await request.body())
    consumer = _opt_str(doc, "consumer")
    if consumer is None:
        raise InvalidInput("`consumer` (name or id) is required")
    issued = await s.create_key(
        consumer,
        scopes=_list(doc.get("scopes"), "scopes"),
        ttl=_opt_number(doc, "ttl"),
        env=_opt_str(doc, "env") or "live",
        name=_opt_str(doc, "name"),
    )
    assert isinstance(issued.record, ApiKey)  # noqa: S101 - narrowing
    return _issued(issued, key_doc(issued.record, s.clock.time()), "key")


@_errors
async def get_key(request: Request, s: IdentityService) -> Response:
    return JSONResponse(key_doc(await s.store.get_api_key(request.path_params["key_id"]), s.clock.time()))


@_errors
async def revoke_key(request: Request, s: IdentityService) -> Response:
    ref = request.path_params.get("key_id")
    if ref is None:  # POST /keys/revoke {"key": "stk_..."} or {"id": "key_..."}: the key stays out of URLs and logs
        doc = json_body(await request.body())
        ref = _opt_str(doc, "key") or _opt_str(doc, "id")
        if ref is None:
            raise InvalidInput("give `key` (the key itself) or `id`")
    key, _ = await s.revoke_key(ref)  # an already revoked key answers as it is (200), nothing written
    return JSONResponse(key_doc(key, s.clock.time()))


@_errors
async def rotate_key(request: Request, s: IdentityService) -> Response:
    doc = json_body(await request.body())
    overlap = _opt_number(doc, "overlap")
    issued = await s.rotate_key(request.path_params["key_id"], overlap=86400.0 if overlap is None else overlap)
    assert isinstance(issued.record, ApiKey)  # noqa: S101 - narrowing
    return _issued(issued, key_doc(issued.record, s.clock.time()), "key")


# -- admin tokens and the change log -----------------------------------------------------------------------------


@_errors
async def list_tokens(request: Request, s: IdentityService) -> Response:
    return JSONResponse({"tokens": [token_doc(t) for t in await s.store.list_admin_tokens()]})


@_errors
async def create_token(request: Request, s: IdentityService) -> Response:
    doc = json_body(await request.body())
    role, name = _opt_str(doc, "role"), _opt_str(doc, "name")
    if role is None:
        raise InvalidInput("`role` is required (viewer, operator or admin)")
    issued = await s.create_admin_token(name or role, role, ttl=_opt_number(doc, "ttl"))
    assert isinstance(issued.record, AdminToken)  # noqa: S101 - narrowing
    return _issued(issued, token_doc(issued.record), "token")


@_errors
async def revoke_token(request: Request, s: IdentityService) -> Response:
    await s.revoke_admin_token(request.path_params["token_id"])
    return Response(status_code=204)


@_errors
async def list_changes(request: Request, s: IdentityService) -> Response:
    try:
        limit = min(max(int(request.query_params.get("limit", "100")), 1), 1000)
        before = request.query_params.get("before")
        before_seq = int(before) if before is not None else None
    except ValueError:
        raise InvalidInput("`limit` and `before` must be integers") from None
    if before_seq is not None and not 0 <= before_seq < 2**63:
        raise InvalidInput("`before` must be a change number")
    changes = await s.store.list_admin_changes(limit=limit, before_seq=before_seq)
    return JSONResponse({"changes": [change_doc(c) for c in changes]})


def endpoints(state: AdminState) -> list[AdminEndpoint]:
    return [
        AdminEndpoint("/consumers", list_consumers, ("GET",), "viewer"),
        AdminEndpoint("/consumers", create_consumer, ("POST",), "operator"),
        AdminEndpoint("/consumers/{ref}", get_consumer, ("GET",), "viewer"),
        AdminEndpoint("/consumers/{ref}", delete_consumer, ("DELETE",), "operator"),
        AdminEndpoint("/keys", list_keys, ("GET",), "viewer"),
        AdminEndpoint("/keys", create_key, ("POST",), "operator"),
        AdminEndpoint("/keys/revoke", revoke_key, ("POST",), "operator"),
        AdminEndpoint("/keys/{key_id}", get_key, ("GET",), "viewer"),
        AdminEndpoint("/keys/{key_id}/revoke", revoke_key, ("POST",), "operator"),
        AdminEndpoint("/keys/{key_id}/rotate", rotate_key, ("POST",), "operator"),
        AdminEndpoint("/admin/tokens", list_tokens, ("GET",), "admin"),
        AdminEndpoint("/admin/tokens", create_token, ("POST",), "admin"),
        AdminEndpoint("/admin/tokens/{token_id}/revoke", revoke_token, ("POST",), "admin"),
        AdminEndpoint("/admin/changes", list_changes, ("GET",), "viewer"),
    ]
