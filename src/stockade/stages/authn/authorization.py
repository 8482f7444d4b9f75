"""The Authorization header as the bearer-token authenticators read it: one value, or their Skip/Deny."""

from __future__ import annotations

from stockade.pipeline.context import RequestContext
from stockade.pipeline.headers import DuplicateHeaderError
from stockade.pipeline.verdict import Deny, Skip
from stockade.security.readings import query_names

NO_CREDENTIAL = Skip("no Authorization header")
DUPLICATE = Deny(400, "http.duplicate_header", detail="Authorization header repeated")


def _scheme(value: str) -> tuple[str, str | None]:
    """An Authorization value's scheme (lower-case) and the credential after it, if any. The scheme ends at any
    whitespace, not only the one space RFC 9110 allows: frameworks split the header on whitespace (DRF's
    `header.split()`), so `Bearer<TAB>token` read here as another scheme would have reached them unverified, on a
    route where `anonymous` then won."""
    parts = value.split(None, 1)
    return (parts[0].lower() if parts else ""), (parts[1].strip() if len(parts) == 2 else None)


def bearer_token(value: str) -> str | None:
    """The token of a Bearer credential, else None."""
    scheme, token = _scheme(value)
    return token if scheme == "bearer" else None


def _has_query_token(ctx: RequestContext) -> bool:
    """An RFC 6750 §2.3 bearer token in the query (`access_token`), which the bearer authenticators do not read,
    in any spelling an application reads as that name (`access%5Ftoken`, `;access_token`, PHP's `access.token`:
    readings.query_names)."""
    query = ctx.query
    if not query or ("access" not in query.lower() and "%" not in query):  # nearly every query: one scan
        return False
    return "access_token" in query_names(query)


def bearer_credential(ctx: RequestContext) -> str | None:
    """`credential` (pipeline/stage.py CredentialSource) of the bearer-token authenticators: "authorization" when
    that header carries a Bearer credential (even repeated: either copy would be forwarded unverified), else
    "query:access_token" for a query token: where an earlier authenticator wins, either is a second credential
    the upstream might act on, and the runner refuses the request."""
    value = ctx.headers.get("authorization")
    if value is not None and _scheme(value)[0] == "bearer":
        return "authorization"
    return "query:access_token" if _has_query_token(ctx) else None


QUERY_TOKEN = Deny(
    400, "auth.unsupported_credential", detail="access_token in the query: send it in the Authorization header"
)


def query_token(ctx: RequestContext) -> Deny | None:
    """A query token: refused, never passed on unverified to an upstream that reads it (on a route where
    `anonymous` follows, it would be)."""
    return QUERY_TOKEN if _has_query_token(ctx) else None


def authorization(ctx: RequestContext) -> str | Skip | Deny:
    """The single Authorization value; Skip when there is none, Deny (400) when it repeats (never guess which)."""
    try:
        value = ctx.headers.get_single("authorization")
    except DuplicateHeaderError:
        return DUPLICATE
    if value is None:
        return NO_CREDENTIAL
    return value
