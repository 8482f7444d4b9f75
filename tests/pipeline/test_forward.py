"""The header edits every front applies to an allowed request before the application sees it."""

from __future__ import annotations

import pytest

from stockade.pipeline.forward import added_headers, forwarded_headers, is_identity_header, replaced_headers
from stockade.pipeline.principal import Principal
from stockade.pipeline.runner import Pipeline
from stockade.testing import make_context

PIPELINE = Pipeline("r", [], body_limit=100)


@pytest.mark.parametrize(
    ("name", "identity"),
    [
        (b"x-stockade-principal", True),
        (b"x-stockade-", True),
        (b"x-stockadex", False),
        (b"x-request-id", False),
        (b"stockade-principal", False),
    ],
)
def test_is_identity_header(name: bytes, identity: bool) -> None:
    assert is_identity_header(name) is identity


@pytest.mark.parametrize(
    "claim",
    [
        pytest.param(("X-Stockade-Principal", "root"), id="principal"),
        pytest.param(("x-stockade-roles", "admin"), id="roles"),
        pytest.param(("X-STOCKADE-CONSUMER", "other"), id="upper-case"),
        pytest.param(("x-stockade-made-up", "1"), id="unknown-name"),
    ],
)
def test_client_identity_claims_replaced_by_the_gateways(claim: tuple[str, str]) -> None:
    ctx = make_context(headers=[claim, ("accept", "*/*")])
    ctx.principal = Principal(id="u-1", kind="api_key", scopes=frozenset({"b", "a"}), consumer_id="c-9")
    out = forwarded_headers(ctx.headers.raw, PIPELINE, ctx, trusted=False)
    assert out == [
        (b"accept", b"*/*"),
        (b"x-request-id", b"test-request"),
        (b"x-stockade-principal", b"u-1"),
        (b"x-stockade-auth", b"api_key"),
        (b"x-stockade-consumer", b"c-9"),
        (b"x-stockade-scopes", b"a b"),
    ]


def test_stage_edits_applied_and_client_request_id_replaced() -> None:
    ctx = make_context(
        headers=[("X-Request-Id", "client"), ("Cookie", "s=1"), ("X-Tenant", "evil"), ("Accept", "a"), ("accept", "b")]
    )
    ctx.request_id = "gw-id"
    ctx.remove_headers = frozenset({"cookie"})
    ctx.set_headers = {"x-tenant": "t-1"}
    out = forwarded_headers(ctx.headers.raw, PIPELINE, ctx, trusted=False)
    assert out == [(b"accept", b"a"), (b"accept", b"b"), (b"x-request-id", b"gw-id"), (b"x-tenant", b"t-1")]
    assert replaced_headers(ctx) == {"cookie", "x-tenant"}


def test_nothing_added_without_principal_or_edits() -> None:
    ctx = make_context(headers=[("accept", "a")])
    assert replaced_headers(ctx) is None
    assert added_headers(PIPELINE, ctx) == []
