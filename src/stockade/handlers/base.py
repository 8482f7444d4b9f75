"""The Handler extension point and the response it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    from stockade.pipeline.context import RequestContext
    from stockade.pipeline.stage import StageConfig


@dataclass(slots=True)
class LocalResponse:
    """A response produced by the gateway itself. Headers are lower-case names; framing is added by the front."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


class Handler(Protocol):
    """Answers a request in place of an upstream. Built as `Handler(config, env)` like a stage. A class attribute
    `max_body_bytes` lowers the route's body limit (413 beyond it), as it does on a stage."""

    id: ClassVar[str]
    Config: ClassVar[type[StageConfig]]

    async def handle(self, ctx: RequestContext) -> LocalResponse: ...
