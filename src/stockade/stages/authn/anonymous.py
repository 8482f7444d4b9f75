"""`anonymous`: the explicit opt-in to unauthenticated access on a route. Compiled (stockade.native.COMPILED): its
configuration lives in anonymous_config.py, as a pydantic model must not be compiled."""

from __future__ import annotations

from typing import ClassVar, Final

from stockade.pipeline.context import RequestContext
from stockade.pipeline.phase import Phase
from stockade.pipeline.principal import Principal
from stockade.pipeline.stage import Stage, StageConfig, StageEnv
from stockade.pipeline.verdict import Continue
from stockade.stages.authn.anonymous_config import AnonymousConfig


class AnonymousAuthenticator:
    """Accepts every request as the anonymous principal. Must be the last authenticator on a route."""

    id: ClassVar[str] = "anonymous"
    phase: ClassVar[Phase] = Phase.AUTHENTICATE
    Config: ClassVar[type[StageConfig]] = AnonymousConfig

    def __init__(self, config: AnonymousConfig, env: StageEnv) -> None:
        self._verdict: Continue = Continue(principal=Principal(id=config.id, kind="anonymous", anonymous=True))

    def check(self, ctx: RequestContext) -> Continue:
        return self._verdict


_: Final[type[Stage]] = AnonymousAuthenticator  # checked against the protocol by mypy
