"""`static`: a fixed reply from the gateway (health probes, maintenance notices, placeholders)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from stockade.handlers.base import Handler, LocalResponse
from stockade.pipeline.context import RequestContext
from stockade.pipeline.stage import StageConfig, StageEnv


class StaticConfig(StageConfig):
    status: int = Field(default=200, ge=200, le=599)
    content_type: str = "application/json"
    body: str = "{}"
    headers: dict[str, str] = Field(default_factory=dict)


class StaticHandler:
    id: ClassVar[str] = "static"
    Config: ClassVar[type[StageConfig]] = StaticConfig

    def __init__(self, config: StaticConfig, env: StageEnv) -> None:
        headers = [("content-type", config.content_type)]
        headers += [(k.lower(), v) for k, v in config.headers.items()]
        self._response = LocalResponse(config.status, headers, config.body.encode("utf-8"))

    async def handle(self, ctx: RequestContext) -> LocalResponse:
        return LocalResponse(self._response.status, list(self._response.headers), self._response.body)


_: type[Handler] = StaticHandler
