"""`security_headers`: hardening headers on upstream responses (OWASP REST security cheat sheet)."""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import Field, field_validator

from stockade.pipeline.context import RequestContext
from stockade.pipeline.phase import Phase
from stockade.pipeline.response import Response, has_raw_header
from stockade.pipeline.stage import Stage, StageConfig, StageEnv
from stockade.pipeline.verdict import CONTINUE, Continue

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a header field name (RFC 9110 token)


class SecurityHeadersConfig(StageConfig):
    remove: tuple[str, ...] = ("server", "x-powered-by", "x-aspnet-version", "x-aspnetmvc-version")

    @field_validator("remove")
    @classmethod
    def _names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"{name!r} is not a header field name")
        return names

    nosniff: bool = True
    hsts: bool = True  # sent only on TLS connections
    hsts_max_age: int = Field(default=31_536_000, ge=0)
    hsts_include_subdomains: bool = False
    hsts_preload: bool = False
    cache_control: str | None = "no-store"  # null opts the route out (the upstream's header passes)
    frame_options: str | None = "DENY"  # set only if the upstream did not
    content_security_policy: str | None = "frame-ancestors 'none'"  # set only if the upstream did not


class SecurityHeaders:
    """Removes fingerprinting headers and adds nosniff, HSTS (on TLS), Cache-Control and anti-framing."""

    id: ClassVar[str] = "security_headers"
    phase: ClassVar[Phase] = Phase.ACT
    Config: ClassVar[type[StageConfig]] = SecurityHeadersConfig
    checks_requests: ClassVar[bool] = False  # a response hook only: the runner does not call `check`

    def __init__(self, config: SecurityHeadersConfig, env: StageEnv) -> None:
        self._remove = tuple(h.lower() for h in config.remove)
        # The edits are fixed per route: work them out once.
        always = []
        if config.nosniff:
            always.append(("x-content-type-options", "nosniff"))
        if config.cache_control is not None:
            always.append(("cache-control", config.cache_control))
        self._always = tuple(always)
        absent = []
        if config.frame_options is not None:
            absent.append(("x-frame-options", config.frame_options))
        if config.content_security_policy is not None:
            absent.append(("content-security-policy", config.content_security_policy))
        self._if_absent = tuple(absent)
        hsts = f"max-age={config.hsts_max_age}"
        if config.hsts_include_subdomains:
            hsts += "; includeSubDomains"
        if config.hsts_preload:
            hsts += "; preload"
        self._hsts = hsts if config.hsts else None
        # on_response decides from the scheme and from which `_if_absent` headers the upstream sent, nothing else:
        # its edits for each combination are worked out once, by running it, and reused.
        self._probe = tuple(name for name, _ in self._if_absent)
        self._plans: dict[tuple[bool, ...], tuple[frozenset[str], tuple[tuple[str, str], ...]]] = {}

    def check(self, ctx: RequestContext) -> Continue:
        return CONTINUE

    def head_edits(self, ctx: RequestContext, raw_head: bytes) -> tuple[frozenset[str], tuple[tuple[str, str], ...]]:
        """The edits on_response makes to a response with this raw head (the proxy's fast path)."""
        key = (ctx.scheme == "https", *[has_raw_header(raw_head, name) for name in self._probe])
        plan = self._plans.get(key)
        if plan is None:
            response = Response(200, raw_head=raw_head)
            self.on_response(ctx, response)
            plan = self._plans[key] = (frozenset(response.removed), tuple(response.added))
        return plan

    def on_response(self, ctx: RequestContext, response: Response) -> None:
        response.remove_headers(self._remove)
        for name, value in self._always:
            response.set_header(name, value)
        if self._hsts and ctx.scheme == "https":
            response.set_header("strict-transport-security", self._hsts)
        for name, value in self._if_absent:
            if response.get(name) is None:
                response.set_header(name, value)


_: type[Stage] = SecurityHeaders
