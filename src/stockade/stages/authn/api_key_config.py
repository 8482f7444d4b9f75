"""The `api_key` stage's configuration, apart from the stage: the stage is compiled (it answers every request of a
key-protected route), and a pydantic model must never be (DEVELOPERS.md, "The compiled data plane")."""

from __future__ import annotations

from pydantic import Field, field_validator

from stockade.pipeline.stage import StageConfig
from stockade.security import keys


class ApiKeyConfig(StageConfig):
    header: str = Field(default="X-API-Key", pattern=r"^[A-Za-z0-9-]{1,64}$")
    authorization: bool = True  # also accept `Authorization: ApiKey <key>`
    query_param: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # off unless named
    env: str | None = None  # accept only keys of this environment (stk_<env>_...)
    realm: str = Field(default="stockade", pattern=r"^[\x20-\x21\x23-\x5b\x5d-\x7e]{1,64}$")

    @field_validator("env")
    @classmethod
    def _env(cls, v: str | None) -> str | None:
        if v is not None:
            keys.check_env(v)
            if v in keys.RESERVED_ENVS:
                raise ValueError(f"{v!r} is reserved (admin tokens / client secrets are not API keys)")
        return v
