"""The Authorization header as the bearer-token authenticators read it: one value, or their Skip/Deny."""

from __future__ import annotations

from stockade.pipeline.context import RequestContext
from stockade.pipeline.headers import DuplicateHeaderError
from stockade.pipeline.verdict import Deny, Skip

NO_CREDENTIAL = Skip("no Authorization header")
DUPLICATE = Deny(400, "http.duplicate_header", detail="Authorization header repeated")


def bearer_token(value: str) -> str | None:
    """The token of a Bearer credential, else None. The scheme ends at any whitespace, not only the one space
    RFC 9110 allows: frameworks split the header on whitespace (DRF's `header.split()`), so `Bearer<TAB>token`
    read here as another scheme would have reached them unverified, on a route where `anonymous` then won."""
    parts = value.split(None, 1)
    if len(parts) == 2 and parts[0].lower() == "bearer":
        return parts[1].strip()
    return None


def bearer_credential(ctx: RequestContext) -> str | None:
    """`credential` (pipeline/stage.py CredentialSource) of the bearer-token authenticators: "authorization" when
    that header carries a Bearer credential (even repeated: either copy would be forwarded unverified), else
    "query:access_token" for an RFC 6750 query token: where an earlier authenticator wins, either is a second
    credential the upstream might act on, and the runner refuses the request."""
    value = ctx.headers.get("authorization")
    if value is not None:
        head = value.split(None, 1)
        if head and head[0].lower() == "bearer":
            return "authorization"
    if ctx.query and "access_token" in ctx.query and "access_token" in ctx.query_params:
        return "query:access_token"
    return None


QUERY_TOKEN = Deny(
    400, "auth.unsupported_credential", detail="access_token in the query: send it in the Authorization header"
)


def query_token(ctx: RequestContext) -> Deny | None:
    """A bearer token in the query (RFC 6750 §2.3), which the bearer authenticators do not read: refused, never
    passed on unverified to an upstream that does (on a route where `anonymous` follows, it would be)."""
    if "access_token" in ctx.query and "access_token" in ctx.query_params:
        return QUERY_TOKEN
    return None


def authorization(ctx: RequestContext) -> str | Skip | Deny:
    """The single Authorization value; Skip when there is none, Deny (400) when it repeats (never guess which)."""
    try:
        value = ctx.headers.get_single("authorization")
    except DuplicateHeaderError:
        return DUPLICATE
    if value is None:
        return NO_CREDENTIAL
    return value
