"""Admin API for OAuth2 clients: list (viewer), create (operator; the secret is in the response, once), revoke."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from stockade.admin.app import AdminEndpoint, AdminState
from stockade.admin.auth import json_body
from stockade.errors import StorageError
from stockade.storage.base import NotFoundError
from stockade.storage.records import OAuthClient


def _public(c: OAuthClient) -> dict[str, Any]:
    return {
        "client_id": c.client_id,
        "name": c.name,
        "auth_method": c.auth_method,
        "scopes": list(c.allowed_scopes),
        "created_at": c.created_at,
        "disabled_at": c.disabled_at,
        "consumer_id": c.consumer_id,
    }


def _unavailable() -> JSONResponse:
    return JSONResponse({"error": "the store is unavailable"}, status_code=503)


def _actor(request: Request) -> str:
    return str(getattr(request.state, "admin_actor", "admin-api"))


def endpoints(state: AdminState) -> list[AdminEndpoint]:
    from stockade.oauth2.clients import SUPPORTED_METHODS, disable_client, new_client
    from stockade.security.secrets import shared_secrets
    from stockade.storage import shared_store

    services = state.services

    async def list_clients(request: Request) -> Response:
        try:
            clients = await shared_store(services).list_clients()
        except StorageError:
            return _unavailable()
        return JSONResponse({"clients": [_public(c) for c in clients]})

    async def create_client(request: Request) -> Response:
        try:
            doc = json_body(await request.body())  # as every admin endpoint: orjson (no NaN, depth-bounded)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if not isinstance(doc.get("name"), str):
            return JSONResponse({"error": "name is required"}, status_code=400)
        scopes = doc.get("scopes", [])
        method = doc.get("auth_method", "client_secret_basic")
        if (
            not isinstance(scopes, list)
            or not all(isinstance(s, str) for s in scopes)
            or method not in SUPPORTED_METHODS
        ):
            return JSONResponse({"error": "scopes must be a list of strings; auth_method a supported one"}, 400)
        if not isinstance(doc.get("consumer_id", ""), str) or not isinstance(doc.get("jwks", {}), dict):
            return JSONResponse({"error": "consumer_id must be a string and jwks a JWK Set object"}, 400)
        now = services.clock.time()
        try:
            client, secret = new_client(
                name=doc["name"],
                scopes=scopes,
                auth_method=method,
                pepper=shared_secrets(services).pepper,
                now=now,
                jwks=doc.get("jwks"),
                consumer_id=doc.get("consumer_id"),
            )
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        try:
            await shared_store(services).create_client(client, actor=_actor(request), at=now)
        except NotFoundError:
            return JSONResponse({"error": "consumer_id names no consumer"}, status_code=400)
        except StorageError:
            return _unavailable()
        body = _public(client) | ({"client_secret": secret} if secret else {})
        return JSONResponse(body, status_code=201, headers={"cache-control": "no-store"})

    async def revoke_client(request: Request) -> Response:
        client_id = request.path_params["client_id"]
        try:
            client = await disable_client(
                shared_store(services), client_id, actor=_actor(request), at=services.clock.time()
            )
        except NotFoundError:
            return JSONResponse({"error": "no such client"}, status_code=404)
        except StorageError:
            return _unavailable()
        return JSONResponse(_public(client))

    return [
        AdminEndpoint("/clients", list_clients, ("GET",), "viewer"),
        AdminEndpoint("/clients", create_client, ("POST",), "operator"),
        AdminEndpoint("/clients/{client_id}/revoke", revoke_client, ("POST",), "operator"),
    ]
