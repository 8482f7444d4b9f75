"""The Authorization header as the bearer-token authenticators read it: one value, or their Skip/Deny."""

from __future__ import annotations

from stockade.pipeline.context import RequestContext
from stockade.pipeline.headers import DuplicateHeaderError
from stockade.pipeline.verdict import Deny, Skip

NO_CREDENTIAL = Skip("no Authorization header")
DUPLICATE = Deny(400, "http.duplicate_header", detail="Authorization header repeated")


def bearer_credential(ctx: RequestContext) -> str | None:
    """`credential` (pipeline/stage.py CredentialSource) of the bearer-token authenticators: "authorization" when
    that header carries a Bearer credential (even repeated: either copy would be forwarded unverified)."""
    value = ctx.headers.get("authorization")
    return "authorization" if value is not None and value.partition(" ")[0].lower() == "bearer" else None


def authorization(ctx: RequestContext) -> str | Skip | Deny:
    """The single Authorization value; Skip when there is none, Deny (400) when it repeats (never guess which)."""
    try:
        value = ctx.headers.get_single("authorization")
    except DuplicateHeaderError:
        return DUPLICATE
    if value is None:
        return NO_CREDENTIAL
    return value
