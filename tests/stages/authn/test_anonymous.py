"""anonymous: the explicit opt-in to unauthenticated access."""

from __future__ import annotations

from stockade.pipeline.verdict import Continue
from stockade.stages.authn.anonymous import AnonymousAuthenticator
from stockade.stages.authn.anonymous_config import AnonymousConfig
from stockade.testing import make_context, run_stage


def test_anonymous_sets_an_anonymous_principal() -> None:
    stage = AnonymousAuthenticator(AnonymousConfig(id="guest"), None)  # type: ignore[arg-type]
    verdict = run_stage(stage, make_context())
    assert isinstance(verdict, Continue)
    assert verdict.principal is not None
    assert (verdict.principal.id, verdict.principal.anonymous, verdict.principal.kind) == ("guest", True, "anonymous")
