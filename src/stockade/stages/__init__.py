"""Built-in stages, registered explicitly by import string and imported only when a config uses them."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from stockade.registry import load_registered

if TYPE_CHECKING:
    from stockade.pipeline.stage import Stage

BUILTIN_STAGES: dict[str, str] = {
    "anonymous": "stockade.stages.authn.anonymous:AnonymousAuthenticator",
    "api_key": "stockade.stages.authn.api_key:ApiKeyAuthenticator",
    "brute_force": "stockade.stages.ratelimit.brute_force:BruteForce",
    "ip_filter": "stockade.stages.preauth.ip_filter:IpFilter",
    "json_limits": "stockade.stages.validate.json_limits:JsonLimits",
    "jwt": "stockade.stages.authn.jwt:JwtAuthenticator",
    "mtls": "stockade.stages.authn.mtls:MtlsAuthenticator",
    "oauth2_introspection": "stockade.stages.authn.introspection:IntrospectionAuthenticator",
    "openapi": "stockade.stages.validate.openapi:OpenApiStage",
    "pre_auth_rate_limit": "stockade.stages.ratelimit.rate_limit:PreAuthRateLimit",
    "rate_limit": "stockade.stages.ratelimit.rate_limit:RateLimit",
    "request_size": "stockade.stages.validate.request_size:RequestSize",
    "scopes": "stockade.stages.authz.scopes:ScopesAuthorizer",
    "security_headers": "stockade.stages.response.security_headers:SecurityHeaders",
}


class UnknownStageError(LookupError):
    """No stage is registered under that `use:` name."""


def load_stage_class(name: str) -> type[Stage]:
    """Import the stage class registered as `name` (only now, so optional dependencies load on demand)."""
    return cast("type[Stage]", load_registered(BUILTIN_STAGES, name, UnknownStageError))
