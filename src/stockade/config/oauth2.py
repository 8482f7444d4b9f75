"""The `oauth2_server:` section: the gateway's own token endpoint, expanded at load into its four routes."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from stockade.scalars import no_bool_for_number

SigningAlg = Literal["ES256", "ES384", "EdDSA", "RS256", "PS256"]

# route id -> (path, methods, handler)
OAUTH2_ROUTES: dict[str, tuple[str, list[str], str]] = {
    "oauth2.token": ("/oauth2/token", ["POST"], "oauth2_token"),
    "oauth2.revoke": ("/oauth2/revoke", ["POST"], "oauth2_revoke"),
    "oauth2.jwks": ("/.well-known/jwks.json", ["GET", "HEAD"], "oauth2_jwks"),
    "oauth2.metadata": ("/.well-known/oauth-authorization-server", ["GET", "HEAD"], "oauth2_metadata"),
}


class OAuth2Server(BaseModel):
    """Issues RFC 9068 access tokens to machine clients (client_credentials) and publishes its keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, v: Any, info: ValidationInfo) -> Any:
        return no_bool_for_number(cls, v, info)

    issuer: str  # `iss` of issued tokens; endpoint URLs in the metadata are built on it
    audiences: Annotated[tuple[str, ...], Field(min_length=1)]  # `aud` of issued tokens
    token_ttl: Annotated[int, Field(ge=60, le=86400)] = 600
    algorithm: SigningAlg = "ES256"
    rotate_every: Annotated[int, Field(ge=3600, le=366 * 86400)] = 30 * 86400  # a signing key's active life
    publish_ahead: Annotated[int, Field(ge=60, le=30 * 86400)] = 3600  # the next key is in the JWKS this long first
    assertion_max_lifetime: Annotated[int, Field(ge=30, le=3600)] = 300  # private_key_jwt `exp - now` at most
    bind_certificates: bool = True  # a client that presents a TLS certificate gets a cnf-bound token (RFC 8705)
    jwks_max_age: Annotated[int, Field(ge=0, le=86400)] = 300  # Cache-Control on /.well-known/jwks.json

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("issuer must be an http(s) URL without query or fragment (RFC 8414)")
        if parts.scheme == "http" and not _loopback(parts.hostname):
            raise ValueError("issuer must use https (plain http only for a loopback host)")
        return v.rstrip("/")


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def expand_oauth2_routes(data: Any) -> Any:
    """Add the token, revocation, JWKS and metadata routes for an `oauth2_server:` section (raw config level,
    before validation). They authenticate clients in the handler, so global authn/authz stages skip them."""
    if not isinstance(data, dict) or not isinstance(data.get("oauth2_server"), dict):
        return data
    routes = data.get("routes")
    routes = list(routes) if isinstance(routes, list) else []
    taken = {r.get("id") for r in routes if isinstance(r, dict)}
    for route_id, (path, methods, handler) in OAUTH2_ROUTES.items():
        if route_id in taken:
            continue  # an explicit route with this id overrides the generated one
        routes.append(
            {
                "id": route_id,
                "match": {"path": path, "methods": methods},
                "handler": {"use": handler},
                "stages": [{"use": "anonymous", "config": {"id": "oauth2-client"}}],
                "own_auth": True,
            }
        )
    return {**data, "routes": routes}
