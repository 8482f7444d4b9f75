"""Built-in handlers: routes answered by the gateway itself (token endpoint, JWKS, static replies).

A handler takes the place of an upstream on a route; the route's pipeline still runs first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from stockade.registry import load_registered

if TYPE_CHECKING:
    from stockade.handlers.base import Handler

BUILTIN_HANDLERS: dict[str, str] = {
    "oauth2_jwks": "stockade.handlers.oauth2:JwksHandler",
    "oauth2_metadata": "stockade.handlers.oauth2:MetadataHandler",
    "oauth2_revoke": "stockade.handlers.oauth2:RevokeHandler",
    "oauth2_token": "stockade.handlers.oauth2:TokenHandler",
    "static": "stockade.handlers.static:StaticHandler",
}


class UnknownHandlerError(LookupError):
    """No handler is registered under that `use:` name."""


def load_handler_class(name: str) -> type[Handler]:
    """Import the handler class registered as `name` (only now, so optional dependencies load on demand)."""
    return cast("type[Handler]", load_registered(BUILTIN_HANDLERS, name, UnknownHandlerError))
