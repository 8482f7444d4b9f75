"""A test authenticator: `x-user` / `x-password` headers, a plan and a tenant claim; wrong password -> 401.

It behaves as the real authenticators are specified to: it records the hashed presented identity under
AUTH_IDENTITY before it verifies the secret, and skips when no credential of its kind is present.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar

from stockade.pipeline.context import AUTH_IDENTITY, RequestContext
from stockade.pipeline.phase import Phase
from stockade.pipeline.principal import Principal
from stockade.pipeline.stage import Stage, StageConfig, StageEnv
from stockade.pipeline.verdict import Continue, Deny, Skip

REGISTRY_ENTRY = ("test_auth", "tests.stages.ratelimit.fakeauth:HeaderAuthenticator")


class HeaderAuthConfig(StageConfig):
    password: str = "right"


class HeaderAuthenticator:
    id: ClassVar[str] = "test_auth"
    phase: ClassVar[Phase] = Phase.AUTHENTICATE
    Config: ClassVar[type[StageConfig]] = HeaderAuthConfig
    challenge = 'Test realm="stockade"'

    def __init__(self, config: HeaderAuthConfig, env: StageEnv) -> None:
        self._password = config.password

    async def check(self, ctx: RequestContext) -> Continue | Skip | Deny:
        user = ctx.headers.get("x-user")
        if user is None:
            return Skip("no x-user")
        ctx.state[AUTH_IDENTITY] = hashlib.sha256(user.encode()).hexdigest()[:24]
        if ctx.headers.get("x-password") != self._password:
            return Deny(401, "auth.invalid_credentials")
        principal = Principal(
            id=f"user:{user}",
            kind="test",
            consumer_id=ctx.headers.get("x-consumer") or user,
            plan=ctx.headers.get("x-plan"),
            credential_id=ctx.headers.get("x-key-id"),
            claims={"tenant": ctx.headers.get("x-tenant")} if ctx.headers.get("x-tenant") else {},
        )
        return Continue(principal=principal)


_: type[Stage] = HeaderAuthenticator
