"""`scopes`: require OAuth2 scopes (all of `require`, one of `any`) and/or roles of the authenticated principal."""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import Field, model_validator

from stockade.pipeline.context import RequestContext
from stockade.pipeline.phase import Phase
from stockade.pipeline.stage import Stage, StageConfig, StageEnv
from stockade.pipeline.verdict import CONTINUE, Continue, Deny

_SCOPE_SYNTAX = r"^[\x21\x23-\x5b\x5d-\x7e]{1,128}$"  # RFC 6749 scope-token: no space, quote or backslash


class ScopesConfig(StageConfig):
    require: tuple[str, ...] = ()  # every one of these scopes
    any: tuple[str, ...] = ()  # at least one of these scopes
    roles: tuple[str, ...] = ()  # at least one of these roles
    all_roles: tuple[str, ...] = ()  # every one of these roles
    realm: str = Field(default="stockade", pattern=r'^[^"\\\x00-\x1f]{1,64}$')

    @model_validator(mode="after")
    def _something(self) -> ScopesConfig:
        if not (self.require or self.any or self.roles or self.all_roles):
            raise ValueError("give at least one of require, any, roles, all_roles")
        bad = [s for s in (*self.require, *self.any) if not re.match(_SCOPE_SYNTAX, s)]
        if bad:
            raise ValueError(f"invalid scope token(s) {bad}")
        return self


class ScopesAuthorizer:
    """403 with an RFC 6750 `insufficient_scope` challenge unless the principal holds what the route needs."""

    id: ClassVar[str] = "scopes"
    phase: ClassVar[Phase] = Phase.AUTHORIZE
    Config: ClassVar[type[StageConfig]] = ScopesConfig

    def __init__(self, config: ScopesConfig, env: StageEnv) -> None:
        self._require = frozenset(config.require)
        self._any = frozenset(config.any)
        self._roles = frozenset(config.roles)
        self._all_roles = frozenset(config.all_roles)
        needed = " ".join(dict.fromkeys((*config.require, *config.any)))
        params = f'realm="{config.realm}", error="insufficient_scope"' + (f', scope="{needed}"' if needed else "")
        # The challenge names the scheme the caller used (RFC 6750 for bearer tokens; the same parameters for an
        # API key); a client certificate has no HTTP scheme to challenge.
        self._bearer = {"www-authenticate": f"Bearer {params}"}
        self._by_kind: dict[str, dict[str, str] | None] = {"api_key": {"www-authenticate": f"ApiKey {params}"}}
        self._by_kind["mtls"] = None

    def check(self, ctx: RequestContext) -> Continue | Deny:
        p = ctx.principal
        if p is None or p.anonymous:
            return self._deny("anonymous principal", "")
        scopes = p.scopes
        if not self._require <= scopes:
            return self._deny(f"missing scope(s) {sorted(self._require - scopes)}", p.kind)
        if self._any and self._any.isdisjoint(scopes):
            return self._deny(f"none of the scopes {sorted(self._any)}", p.kind)
        if self._roles and self._roles.isdisjoint(p.roles):
            return self._deny(f"none of the roles {sorted(self._roles)}", p.kind)
        if not self._all_roles <= p.roles:
            return self._deny(f"missing role(s) {sorted(self._all_roles - p.roles)}", p.kind)
        return CONTINUE

    def _deny(self, why: str, kind: str) -> Deny:
        headers = self._by_kind.get(kind, self._bearer)
        return Deny(403, "auth.insufficient_scope", headers=headers, detail=why)


_: type[Stage] = ScopesAuthorizer
