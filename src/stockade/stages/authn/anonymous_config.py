"""The `anonymous` stage's configuration, apart from the stage: the stage is compiled (it answers every request of
an open route), and a pydantic model must never be (DEVELOPERS.md, "The compiled data plane")."""

from __future__ import annotations

from pydantic import Field

from stockade.pipeline.stage import StageConfig


class AnonymousConfig(StageConfig):
    id: str = Field(default="anonymous", pattern=r"^[A-Za-z0-9_.:@-]{1,64}$")
