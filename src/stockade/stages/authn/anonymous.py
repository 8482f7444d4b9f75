"""`anonymous`: the explicit opt-in to unauthenticated access on a route."""

from __future__ import annotations

from typing import Annotated, ClassVar, Final

from pydantic import Field

from stockade.pipeline.context import RequestContext
from stockade.pipeline.phase import Phase
from stockade.pipeline.principal import Principal
from stockade.pipeline.stage import Stage, StageConfig, StageEnv
from stockade.pipeline.verdict import Continue


class AnonymousConfig(StageConfig):
    # Annotated, not `= Field(default=...)`: this module is compiled, and mypyc checks a str field's default is a str
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:@-]{1,64}$")] = "anonymous"


class AnonymousAuthenticator:
    """Accepts every request as the anonymous principal. Must be the last authenticator on a route."""

    id: ClassVar[str] = "anonymous"
    phase: ClassVar[Phase] = Phase.AUTHENTICATE
    Config: ClassVar[type[StageConfig]] = AnonymousConfig

    def __init__(self, config: AnonymousConfig, env: StageEnv) -> None:
        self._verdict = Continue(principal=Principal(id=config.id, kind="anonymous", anonymous=True))

    def check(self, ctx: RequestContext) -> Continue:
        return self._verdict


_: Final[type[Stage]] = AnonymousAuthenticator
