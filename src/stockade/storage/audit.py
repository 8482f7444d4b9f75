"""What each mutation writes to the admin change log and the change feed, shared by every backend.

Kept in one place so that every backend records the same thing, and so that it is easy to see that no
hash, sealed key or secret ever reaches a log detail.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from stockade.storage.records import AdminToken, ApiKey, Consumer, OAuthClient, SigningKey


@dataclass(frozen=True, slots=True)
class Entry:
    """One mutation: the admin change log row and the change feed row it produces."""

    action: str
    target: str
    detail: dict[str, Any]
    kind: str  # change feed kind
    ref: str  # change feed ref


def consumer(action: str, c: Consumer) -> Entry:
    detail = {"name": c.name, "roles": list(c.roles), "plan": c.plan}
    return Entry(f"consumer.{action}", c.id, detail, "consumer", c.id)


def consumer_deleted(consumer_id: str) -> Entry:
    return Entry("consumer.delete", consumer_id, {}, "consumer", consumer_id)


def api_key_created(k: ApiKey) -> Entry:
    detail = {"consumer_id": k.consumer_id, "env": k.env, "scopes": list(k.scopes), "expires_at": k.expires_at}
    return Entry("api_key.create", k.id, detail, "api_key", k.id)


def api_key_revoked(key_id: str, consumer_id: str) -> Entry:
    return Entry("api_key.revoke", key_id, {"consumer_id": consumer_id}, "api_key", key_id)


def api_key_rotated(old_id: str, new: ApiKey, old_expires_at: float) -> Entry:
    detail = {"new_key_id": new.id, "old_expires_at": old_expires_at, "consumer_id": new.consumer_id}
    return Entry("api_key.rotate", old_id, detail, "api_key", old_id)


def client(action: str, c: OAuthClient) -> Entry:
    detail: dict[str, Any] = {"name": c.name, "auth_method": c.auth_method, "allowed_scopes": list(c.allowed_scopes)}
    if action == "update":
        detail["disabled"] = c.disabled_at is not None
    return Entry(f"client.{action}", c.client_id, detail, "client", c.client_id)


def orphaned(c: OAuthClient, at: float) -> OAuthClient:
    """A client whose consumer was deleted: no owner, and disabled (as of `at` unless it already was)."""
    return dataclasses.replace(c, consumer_id=None, disabled_at=c.disabled_at if c.disabled_at is not None else at)


def client_deleted(client_id: str) -> Entry:
    return Entry("client.delete", client_id, {}, "client", client_id)


def signing_key(action: str, kid: str, **detail: Any) -> Entry:
    return Entry(f"signing_key.{action}", kid, dict(detail), "signing_key", kid)


def signing_key_added(k: SigningKey) -> Entry:
    return signing_key("add", k.kid, alg=k.alg, state=k.state)


def signing_key_resealed(kid: str, old: bytes, new: bytes) -> Entry:
    """The private key sealed anew under another KEK (a KEK rotation): the KEK ids, never the envelopes."""
    from stockade.security.crypto import kek_id

    return signing_key("reseal", kid, from_kek=kek_id(old), to_kek=kek_id(new))


def token_revoked(jti: str, expires_at: float) -> Entry:
    return Entry("token.revoke", jti, {"expires_at": expires_at}, "revoked_token", jti)


def admin_token_created(t: AdminToken) -> Entry:
    return Entry("admin_token.create", t.id, {"name": t.name, "role": t.role}, "admin_token", t.id)


def admin_token_revoked(token_id: str) -> Entry:
    return Entry("admin_token.revoke", token_id, {}, "admin_token", token_id)


def lockout_cleared(subject: str | None, cleared: int) -> Entry:
    """A person lifted brute-force lockouts (they live in the limits backend; the record lives here)."""
    target = "*" if subject is None else subject
    return Entry("lockout.clear", target, {"cleared": cleared}, "lockout", target)
