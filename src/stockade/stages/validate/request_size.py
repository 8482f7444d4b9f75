"""`request_size`: a per-route request body limit (413), checked on headers and enforced while streaming."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from stockade.pipeline.context import RequestContext
from stockade.pipeline.phase import Phase
from stockade.pipeline.stage import Stage, StageConfig, StageEnv
from stockade.pipeline.verdict import CONTINUE, Continue, Deny


class RequestSizeConfig(StageConfig):
    max_bytes: int = Field(ge=0)


class RequestSize:
    """Denies a declared Content-Length above `max_bytes` at once; `max_body_bytes` tells the fronts to cut
    off a chunked body that grows past it (before it is forwarded when it fits the buffer)."""

    id: ClassVar[str] = "request_size"
    phase: ClassVar[Phase] = Phase.VALIDATE
    Config: ClassVar[type[StageConfig]] = RequestSizeConfig

    def __init__(self, config: RequestSizeConfig, env: StageEnv) -> None:
        self.max_body_bytes = config.max_bytes

    def check(self, ctx: RequestContext) -> Continue | Deny:
        declared = ctx.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return Deny(400, "http.bad_request", detail="invalid Content-Length")
            if size > self.max_body_bytes:
                return Deny(413, "request.body_too_large", detail=f"{size} > {self.max_body_bytes} bytes")
        return CONTINUE


_: type[Stage] = RequestSize
