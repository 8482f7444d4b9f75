"""The records the identity store persists: immutable values, timestamps in epoch seconds from the injected clock.

No record ever holds a secret in the clear: API keys, admin tokens and client secrets are stored as keyed
hashes (`stockade.security.keys.hash_secret`), signing private keys as AES-GCM envelopes
(`stockade.security.crypto.Keyring.seal`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

ConsumerId = str
KeyStatus = Literal["active", "expired", "revoked"]
SigningKeyState = Literal["next", "active", "retired"]
AdminRole = Literal["viewer", "operator", "admin"]

SIGNING_KEY_STATES: tuple[SigningKeyState, ...] = ("next", "active", "retired")
ADMIN_ROLES: tuple[AdminRole, ...] = ("viewer", "operator", "admin")
CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "tls_client_auth")

# Kinds of entries on the change feed (`ChangeFeed.changes_since`): what a cache must invalidate.
# "lockout" invalidates nothing (lockouts live in the limits backend); it is on the feed because the admin change
# log and the feed share one sequence.
CHANGE_KINDS = ("consumer", "api_key", "client", "signing_key", "revoked_token", "admin_token", "lockout")


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Consumer:
    """Someone who calls the API: owns API keys (and optionally OAuth clients)."""

    id: str  # "con_..." - stable, public
    name: str  # unique, human-chosen
    created_at: float
    roles: tuple[str, ...] = ()
    plan: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=_empty)  # JSON-serialisable; never secrets


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as stored: its keyed hash and attributes, never the key."""

    id: str  # "key_..." - public identifier, shown in lists and decision logs
    consumer_id: str
    key_hash: str  # hex HMAC-SHA256(pepper, full key); unique
    env: str  # the <env> of stk_<env>_...
    created_at: float
    scopes: tuple[str, ...] = ()
    expires_at: float | None = None  # rotation shortens this to the end of the overlap window
    revoked_at: float | None = None
    last_used_at: float | None = None  # written in batches, never on the request path
    rotated_to: str | None = None  # id of the key that replaced this one
    name: str | None = None  # an operator's label

    def status(self, now: float) -> KeyStatus:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"


@dataclass(frozen=True, slots=True)
class OAuthClient:
    """An OAuth2 client (RFC 6749 / RFC 7523 / RFC 8705) for the token endpoint."""

    client_id: str
    name: str
    auth_method: str  # one of CLIENT_AUTH_METHODS
    created_at: float
    allowed_scopes: tuple[str, ...] = ()
    secret_hash: str | None = None  # hex HMAC-SHA256(pepper, secret) for client_secret_*; else None
    jwks: Mapping[str, Any] | None = None  # registered PUBLIC JWK Set for private_key_jwt
    tls_subject: str | None = None  # tls_client_auth: the expected certificate subject DN
    consumer_id: str | None = None  # optional owner (roles, plan)
    disabled_at: float | None = None
    metadata: Mapping[str, Any] = field(default_factory=_empty)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A token signing key. `private_key` is a crypto.Keyring envelope sealed with aad=kid, never plaintext."""

    kid: str
    alg: str  # RS256 | ES256 | EdDSA | ...
    public_jwk: Mapping[str, Any]  # what the JWKS endpoint publishes
    private_key: bytes  # sealed envelope
    state: SigningKeyState
    created_at: float
    activated_at: float | None = None
    not_after: float | None = None  # retired keys stay in the JWKS until then (tokens they signed still verify)


@dataclass(frozen=True, slots=True)
class RevokedToken:
    """A revoked token id (jti); kept until the token would have expired anyway."""

    jti: str
    expires_at: float
    revoked_at: float


@dataclass(frozen=True, slots=True)
class AdminToken:
    """A bearer token for the admin API, stored as a keyed hash."""

    id: str  # "adm_..." - public, recorded as the actor of changes
    name: str
    role: AdminRole
    token_hash: str
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, slots=True)
class AdminChange:
    """One entry of the admin change log: who changed what, when. `detail` never holds a secret."""

    seq: int
    at: float
    actor: str  # "admin-token:adm_x (name)", "cli:user@host", "system:rotation", ...
    action: str  # "consumer.create", "api_key.revoke", "client.create", "signing_key.activate", ...
    target: str  # the id acted on
    detail: Mapping[str, Any] = field(default_factory=_empty)


@dataclass(frozen=True, slots=True)
class Change:
    """An entry of the change feed: something a cache of kind `kind` keyed by `ref` must drop."""

    seq: int
    kind: str  # one of CHANGE_KINDS
    ref: str  # key id, consumer id, client id, kid, jti, admin token id


@dataclass(frozen=True, slots=True)
class ChangeBatch:
    """Changes after a sequence number. `truncated`: history was pruned past it, so drop every cache."""

    changes: tuple[Change, ...]
    last_seq: int
    truncated: bool = False


def feed_batch(seq: int, changes: tuple[Change, ...], current: int, pruned_to: int) -> ChangeBatch:
    """The batch `changes_since(seq)` answers, given the rows after `seq` and the feed's marks (every backend).

    Truncated when the reader is behind the pruned low mark, or ahead of the store's own sequence: a store that
    went back (restored from a backup, a lagging replica promoted) would otherwise show nothing until its sequence
    passed the reader's again, and every revocation meanwhile would go unseen. Either way the reader clears its
    caches and goes on from where the store is.
    """
    truncated = seq < pruned_to or seq > current
    if changes:
        return ChangeBatch(changes, changes[-1].seq, truncated)
    return ChangeBatch(changes, current if truncated else seq, truncated)
