"""`anonymous`: the explicit opt-in to unauthenticated access on a route."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from stockade.pipeline.context import RequestContext
from stockade.pipeline.phase import Phase
from stockade.pipeline.principal import Principal
from stockade.pipeline.stage import Stage, StageConfig, StageEnv
from stockade.pipeline.verdict import Continue


class AnonymousConfig(StageConfig):
    id: str = Field(default="anonymous", pattern=r"^[A-Za-z0-9_.:@-]{1,64}$")


class AnonymousAuthenticator:
    """Accepts every request as the anonymous principal. Must be the last authenticator on a route."""

    id: ClassVar[str] = "anonymous"
    phase: ClassVar[Phase] = Phase.AUTHENTICATE
    Config: ClassVar[type[StageConfig]] = AnonymousConfig

    def __init__(self, config: AnonymousConfig, env: StageEnv) -> None:
        self._verdict = Continue(principal=Principal(id=config.id, kind="anonymous", anonymous=True))

    def check(self, ctx: RequestContext) -> Continue:
        return self._verdict


_: type[Stage] = AnonymousAuthenticator
