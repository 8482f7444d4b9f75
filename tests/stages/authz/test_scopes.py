"""`scopes`: require-all, any-of and roles, 403 with an RFC 6750 insufficient_scope challenge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from stockade.clock import FakeClock
from stockade.pipeline.principal import ANONYMOUS, Principal
from stockade.pipeline.stage import Services, StageEnv
from stockade.pipeline.verdict import CONTINUE, Deny
from stockade.stages.authz.scopes import ScopesAuthorizer, ScopesConfig
from stockade.testing import make_context, run_stage


def decide(config: dict[str, Any], principal: Principal | None) -> object:
    stage = ScopesAuthorizer(ScopesConfig.model_validate(config), StageEnv("r", Path("."), Services(clock=FakeClock())))
    ctx = make_context()
    ctx.principal = principal
    return run_stage(stage, ctx)


def who(scopes: str = "", roles: str = "") -> Principal:
    return Principal(id="p", kind="jwt", scopes=frozenset(scopes.split()), roles=frozenset(roles.split()))


@pytest.mark.parametrize(
    ("config", "principal", "allowed"),
    [
        ({"require": ["a", "b"]}, who("a b c"), True),
        ({"require": ["a", "b"]}, who("a"), False),
        ({"any": ["a", "b"]}, who("b"), True),
        ({"any": ["a", "b"]}, who("c"), False),
        ({"require": ["a"], "any": ["x", "y"]}, who("a y"), True),
        ({"require": ["a"], "any": ["x", "y"]}, who("a"), False),
        ({"roles": ["admin", "ops"]}, who(roles="ops"), True),
        ({"roles": ["admin"]}, who("admin"), False),
        ({"all_roles": ["a", "b"]}, who(roles="a"), False),
        ({"require": ["a"]}, ANONYMOUS, False),
        ({"require": ["a"]}, None, False),
    ],
    ids=[
        "all-held",
        "one-missing",
        "any-one",
        "any-none",
        "require-and-any",
        "require-not-any",
        "role",
        "scope-is-not-role",
        "all-roles-missing",
        "anonymous",
        "no-principal",
    ],
)
def test_scopes_decisions(config: dict[str, Any], principal: Principal | None, allowed: bool) -> None:
    verdict = decide(config, principal)
    if allowed:
        assert verdict is CONTINUE
    else:
        assert isinstance(verdict, Deny) and (verdict.status, verdict.reason) == (403, "auth.insufficient_scope")
        assert verdict.headers is not None
        assert verdict.headers["www-authenticate"].startswith('Bearer realm="stockade", error="insufficient_scope"')


@pytest.mark.parametrize(
    ("kind", "challenge"),
    [
        ("jwt", 'Bearer realm="stockade", error="insufficient_scope", scope="books:write"'),
        ("introspection", 'Bearer realm="stockade", error="insufficient_scope", scope="books:write"'),
        ("api_key", 'ApiKey realm="stockade", error="insufficient_scope", scope="books:write"'),
        ("mtls", None),
    ],
)
def test_scopes_challenge_uses_the_callers_scheme(kind: str, challenge: str | None) -> None:
    principal = Principal(id="p", kind=kind, scopes=frozenset({"books:read"}))
    verdict = decide({"require": ["books:write"]}, principal)
    assert isinstance(verdict, Deny) and verdict.status == 403
    assert (verdict.headers or {}).get("www-authenticate") == challenge


def test_scopes_challenge_names_the_scopes() -> None:
    verdict = decide({"require": ["books:read"], "any": ["x"]}, who())
    assert isinstance(verdict, Deny) and verdict.headers is not None
    assert verdict.headers["www-authenticate"].endswith('scope="books:read x"')
    assert verdict.detail == "missing scope(s) ['books:read']"


@pytest.mark.parametrize(
    "config", [{}, {"require": ["has space"]}, {"any": ['q"uote']}], ids=["empty", "space", "quote"]
)
def test_scopes_config_rejects(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ScopesConfig.model_validate(config)
