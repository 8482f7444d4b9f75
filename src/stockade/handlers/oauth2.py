"""`oauth2_token`, `oauth2_revoke`, `oauth2_jwks`, `oauth2_metadata`: the gateway's OAuth2 endpoints.

Normally generated from the `oauth2_server:` section; they all delegate to the process's TokenServer.
"""

from __future__ import annotations

from typing import ClassVar

from stockade.handlers.base import Handler, LocalResponse
from stockade.oauth2.server import token_server
from stockade.pipeline.context import RequestContext
from stockade.pipeline.stage import StageConfig, StageEnv


class OAuth2HandlerConfig(StageConfig):
    """No options: everything comes from the top-level `oauth2_server:` section."""


class _OAuth2Handler:
    Config: ClassVar[type[StageConfig]] = OAuth2HandlerConfig
    # Token and revocation requests are a few short form fields (an assertion is at most 8 KiB). Anything larger is
    # refused (413) before it is read: decoding a 10 MiB `%XX` form held the event loop for seconds, unauthenticated.
    max_body_bytes: ClassVar[int] = 16 * 1024

    def __init__(self, config: OAuth2HandlerConfig, env: StageEnv) -> None:
        self.server = token_server(env.services)


class TokenHandler(_OAuth2Handler):
    id: ClassVar[str] = "oauth2_token"

    async def handle(self, ctx: RequestContext) -> LocalResponse:
        return await self.server.token(ctx)


class RevokeHandler(_OAuth2Handler):
    id: ClassVar[str] = "oauth2_revoke"

    async def handle(self, ctx: RequestContext) -> LocalResponse:
        return await self.server.revoke(ctx)


class JwksHandler(_OAuth2Handler):
    id: ClassVar[str] = "oauth2_jwks"

    async def handle(self, ctx: RequestContext) -> LocalResponse:
        return await self.server.jwks(ctx)


class MetadataHandler(_OAuth2Handler):
    id: ClassVar[str] = "oauth2_metadata"

    async def handle(self, ctx: RequestContext) -> LocalResponse:
        return self.server.metadata()


_h: tuple[type[Handler], ...] = (TokenHandler, RevokeHandler, JwksHandler, MetadataHandler)
