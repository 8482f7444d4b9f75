"""Who is making a request, as established by an authenticator."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final


def _no_claims() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated (or explicitly anonymous) caller. Never holds the credential itself."""

    id: str
    kind: str  # which authenticator established it: anonymous, api_key, jwt, mtls, introspection, ...
    anonymous: bool = False
    scopes: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    consumer_id: str | None = None
    plan: str | None = None  # the consumer's plan: rate limits and quotas can be overridden per plan
    credential_id: str | None = None  # key id / token jti / certificate fingerprint: an identifier, not a secret
    # Who vouches for `id` when several could (a JWT's `iss`, an introspection answer's): `alice` of one issuer is
    # not `alice` of another, in the identity headers and in `principal` rate-limit keys.
    issuer: str | None = None
    claims: Mapping[str, Any] = field(default_factory=_no_claims)


ANONYMOUS: Final = Principal(id="anonymous", kind="anonymous", anonymous=True)
