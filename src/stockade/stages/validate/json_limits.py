"""`json_limits`: structural limits on JSON request bodies (depth, keys, array and string length, duplicate
keys), checked on the raw bytes before the document is built; usable without a spec."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from stockade.openapi.media import essence, is_json
from stockade.openapi.request import has_body
from stockade.pipeline.context import RequestContext
from stockade.pipeline.headers import DuplicateHeaderError
from stockade.pipeline.phase import Phase
from stockade.pipeline.stage import Stage, StageConfig, StageEnv
from stockade.pipeline.verdict import CONTINUE, Continue, Deny
from stockade.security.jsonscan import PARSED_KEY, Limits, Violation, parse

# Size-like limits are 413 (the content is more than this API processes); ambiguity and bad syntax are 400.
STATUS = {
    "too_large": 413,
    "too_deep": 413,
    "too_many_keys": 413,
    "array_too_long": 413,
    "string_too_long": 413,
    "duplicate_key": 400,
    "malformed": 400,
}


class JsonLimitsConfig(StageConfig):
    max_depth: int = Field(default=32, ge=1, le=1000)
    max_keys: int = Field(default=1000, ge=1)  # members of one object
    max_array: int = Field(default=10_000, ge=1)  # elements of one array
    max_string: int = Field(default=1_000_000, ge=1)  # characters of one string (keys included)
    # The largest JSON body checked (413 json.too_large beyond it). Checking a document within the other limits
    # costs the worker about 0.2 s of CPU per MiB of hostile shape (millions of tiny values), so a 10 MiB body
    # would hold it 2 s. Other bodies on the route keep the route's own limit.
    max_bytes: int = Field(default=1024 * 1024, ge=1, le=64 * 1024 * 1024)
    allow_duplicate_keys: bool = False


class JsonLimits:
    """Applies to bodies whose Content-Type is JSON (`application/json`, `application/*+json`); others pass.
    The parsed document is kept in `ctx.state` so the `openapi` stage does not parse it again."""

    id: ClassVar[str] = "json_limits"
    phase: ClassVar[Phase] = Phase.VALIDATE
    Config: ClassVar[type[StageConfig]] = JsonLimitsConfig

    def __init__(self, config: JsonLimitsConfig, env: StageEnv) -> None:
        self.max_bytes = config.max_bytes
        self.limits = Limits(
            max_depth=config.max_depth,
            max_keys=config.max_keys,
            max_array=config.max_array,
            max_string=config.max_string,
            duplicate_keys=config.allow_duplicate_keys,
        )

    async def check(self, ctx: RequestContext) -> Continue | Deny:
        try:
            content_type = ctx.headers.get_single("content-type")
        except DuplicateHeaderError:  # which one an upstream reads is its own choice: never guess
            return Deny(400, "http.duplicate_header", detail="more than one Content-Type")
        if not has_body(ctx) or not is_json(essence(content_type)):
            return CONTINUE
        body = await ctx.read_body()
        if not body:
            return CONTINUE
        if len(body) > self.max_bytes:
            detail = f"JSON body of {len(body)} bytes, over max_bytes ({self.max_bytes})"
            return Deny(413, "json.too_large", detail=detail)
        try:
            document = parse(body, self.limits)
        except Violation as exc:
            where = "/body" + exc.pointer
            return Deny(
                STATUS[exc.rule],
                f"json.{exc.rule}",
                detail=f"{exc.rule} at {where}",
                extra={"errors": [{"pointer": where, "rule": exc.rule}]},
            )
        if not self.limits.duplicate_keys:
            # Shared with the openapi stage only when repeated keys were refused: a document parsed with them
            # allowed keeps the last value, and openapi must refuse what an upstream may read the first of.
            ctx.state[PARSED_KEY] = (body, document)
        return CONTINUE


_: type[Stage] = JsonLimits
