"""The security pipeline shared by the proxy, the ASGI middleware and (later) the decision endpoint."""

from stockade.pipeline.context import RequestContext
from stockade.pipeline.phase import Phase
from stockade.pipeline.principal import ANONYMOUS, Principal
from stockade.pipeline.stage import Stage, StageConfig, StageEnv
from stockade.pipeline.verdict import CONTINUE, Continue, Deny, Finding, Skip, Verdict

__all__ = [
    "ANONYMOUS",
    "CONTINUE",
    "Continue",
    "Deny",
    "Finding",
    "Phase",
    "Principal",
    "RequestContext",
    "Skip",
    "Stage",
    "StageConfig",
    "StageEnv",
    "Verdict",
]
