"""`memory://`: the in-process store, for tests and single-process experiments (lost on exit)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from pathlib import Path

from stockade.storage import audit
from stockade.storage.base import ConflictError, NotFoundError, Store
from stockade.storage.records import (
    AdminChange,
    AdminToken,
    ApiKey,
    Change,
    ChangeBatch,
    Consumer,
    OAuthClient,
    RevokedToken,
    SigningKey,
    feed_batch,
)


class MemoryStore:
    """Dicts behind one lock (the store may be used from the gateway's loop and a test thread at once)."""

    shared_across_processes = False

    @classmethod
    def from_url(cls, url: str, base_dir: Path) -> MemoryStore:
        return cls(url)

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._lock = threading.Lock()
        self._consumers: dict[str, Consumer] = {}
        self._keys: dict[str, ApiKey] = {}
        self._clients: dict[str, OAuthClient] = {}
        self._signing: dict[str, SigningKey] = {}
        self._revoked: dict[str, RevokedToken] = {}
        self._used_once: dict[str, float] = {}
        self._admin_tokens: dict[str, AdminToken] = {}
        self._log: list[AdminChange] = []
        self._secret_checks: dict[str, str] = {}
        self._feed: list[tuple[Change, float]] = []
        self._seq = 0
        self._pruned_to = 0  # every change with seq <= this has been pruned

    def _record(self, entry: audit.Entry, actor: str, at: float) -> None:
        self._seq += 1
        self._log.append(AdminChange(self._seq, at, actor, entry.action, entry.target, entry.detail))
        self._feed.append((Change(self._seq, entry.kind, entry.ref), at))

    # -- consumers ---------------------------------------------------------------------------------------------

    async def create_consumer(self, consumer: Consumer, *, actor: str, at: float) -> None:
        with self._lock:
            if consumer.id in self._consumers or any(c.name == consumer.name for c in self._consumers.values()):
                raise ConflictError(f"consumer {consumer.name!r} already exists")
            self._consumers[consumer.id] = consumer
            self._record(audit.consumer("create", consumer), actor, at)

    async def get_consumer(self, id_or_name: str) -> Consumer:
        with self._lock:
            found = self._consumers.get(id_or_name) or next(
                (c for c in self._consumers.values() if c.name == id_or_name), None
            )
        if found is None:
            raise NotFoundError(f"no consumer {id_or_name!r}")
        return found

    async def list_consumers(self) -> list[Consumer]:
        with self._lock:
            return sorted(self._consumers.values(), key=lambda c: (c.created_at, c.id))

    async def update_consumer(self, consumer: Consumer, *, actor: str, at: float) -> None:
        with self._lock:
            if consumer.id not in self._consumers:
                raise NotFoundError(f"no consumer {consumer.id!r}")
            if any(c.name == consumer.name and c.id != consumer.id for c in self._consumers.values()):
                raise ConflictError(f"consumer {consumer.name!r} already exists")
            self._consumers[consumer.id] = consumer
            self._record(audit.consumer("update", consumer), actor, at)

    async def delete_consumer(self, consumer_id: str, *, actor: str, at: float) -> None:
        with self._lock:
            if self._consumers.pop(consumer_id, None) is None:
                raise NotFoundError(f"no consumer {consumer_id!r}")
            self._keys = {k: v for k, v in self._keys.items() if v.consumer_id != consumer_id}
            self._record(audit.consumer_deleted(consumer_id), actor, at)
            for cid, client in list(self._clients.items()):
                if client.consumer_id == consumer_id:  # disabled with its consumer (see SqlStore.delete_consumer)
                    self._clients[cid] = audit.orphaned(client, at)
                    self._record(audit.client("update", self._clients[cid]), actor, at)

    # -- API keys ----------------------------------------------------------------------------------------------

    def _add_key(self, key: ApiKey) -> None:
        if key.consumer_id not in self._consumers:
            raise NotFoundError(f"no consumer {key.consumer_id!r}")
        if key.id in self._keys or any(k.key_hash == key.key_hash for k in self._keys.values()):
            raise ConflictError(f"API key {key.id!r} already exists")
        self._keys[key.id] = key

    async def create_api_key(self, key: ApiKey, *, actor: str, at: float) -> None:
        with self._lock:
            self._add_key(key)
            self._record(audit.api_key_created(key), actor, at)

    async def get_api_key(self, key_id: str) -> ApiKey:
        with self._lock:
            found = self._keys.get(key_id)
        if found is None:
            raise NotFoundError(f"no API key {key_id!r}")
        return found

    async def find_api_key(self, key_hash: str) -> ApiKey | None:
        with self._lock:
            return next((k for k in self._keys.values() if k.key_hash == key_hash), None)

    async def list_api_keys(self, consumer_id: str | None = None) -> list[ApiKey]:
        with self._lock:
            keys = [k for k in self._keys.values() if consumer_id is None or k.consumer_id == consumer_id]
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    async def revoke_api_key(self, key_id: str, *, actor: str, at: float) -> ApiKey:
        with self._lock:
            key = self._keys.get(key_id)
            if key is None:
                raise NotFoundError(f"no API key {key_id!r}")
            if key.revoked_at is None:  # revoked already: nothing changed, nothing logged
                key = dataclasses.replace(key, revoked_at=at)
                self._keys[key_id] = key
                self._record(audit.api_key_revoked(key_id, key.consumer_id), actor, at)
            return key

    async def rotate_api_key(self, old_id: str, new: ApiKey, *, old_expires_at: float, actor: str, at: float) -> None:
        with self._lock:
            old = self._keys.get(old_id)
            if old is None:
                raise NotFoundError(f"no API key {old_id!r}")
            if old.rotated_to is not None or old.status(at) != "active":
                raise ConflictError(f"API key {old_id!r} is no longer active, or was rotated already")
            self._add_key(new)
            expires = old_expires_at if old.expires_at is None else min(old.expires_at, old_expires_at)
            self._keys[old_id] = dataclasses.replace(old, expires_at=expires, rotated_to=new.id)
            self._record(audit.api_key_created(new), actor, at)
            self._record(audit.api_key_rotated(old_id, new, expires), actor, at)

    async def touch_api_keys(self, last_used: Mapping[str, float]) -> None:
        with self._lock:
            for key_id, when in last_used.items():
                key = self._keys.get(key_id)
                if key is not None and (key.last_used_at is None or when > key.last_used_at):
                    self._keys[key_id] = dataclasses.replace(key, last_used_at=when)

    # -- OAuth clients -----------------------------------------------------------------------------------------

    async def create_client(self, client: OAuthClient, *, actor: str, at: float) -> None:
        with self._lock:
            if client.client_id in self._clients:
                raise ConflictError(f"client {client.client_id!r} already exists")
            self._clients[client.client_id] = client
            self._record(audit.client("create", client), actor, at)

    async def get_client(self, client_id: str) -> OAuthClient:
        with self._lock:
            found = self._clients.get(client_id)
        if found is None:
            raise NotFoundError(f"no client {client_id!r}")
        return found

    async def list_clients(self) -> list[OAuthClient]:
        with self._lock:
            return sorted(self._clients.values(), key=lambda c: (c.created_at, c.client_id))

    async def update_client(self, client: OAuthClient, *, actor: str, at: float) -> None:
        with self._lock:
            if client.client_id not in self._clients:
                raise NotFoundError(f"no client {client.client_id!r}")
            self._clients[client.client_id] = client
            self._record(audit.client("update", client), actor, at)

    async def delete_client(self, client_id: str, *, actor: str, at: float) -> None:
        with self._lock:
            if self._clients.pop(client_id, None) is None:
                raise NotFoundError(f"no client {client_id!r}")
            self._record(audit.client_deleted(client_id), actor, at)

    # -- signing keys ------------------------------------------------------------------------------------------

    async def add_signing_key(self, key: SigningKey, *, actor: str, at: float) -> None:
        with self._lock:
            if key.kid in self._signing:
                raise ConflictError(f"signing key {key.kid!r} already exists")
            if key.state == "active" and any(k.state == "active" for k in self._signing.values()):
                raise ConflictError("another signing key is already active; add as 'next' and activate it")
            self._signing[key.kid] = key
            self._record(audit.signing_key_added(key), actor, at)

    async def list_signing_keys(self) -> list[SigningKey]:
        with self._lock:
            return sorted(self._signing.values(), key=lambda k: (k.created_at, k.kid))

    async def activate_signing_key(self, kid: str, *, retire_not_after: float, actor: str, at: float) -> None:
        with self._lock:
            key = self._signing.get(kid)
            if key is None:
                raise NotFoundError(f"no signing key {kid!r}")
            for other in list(self._signing.values()):
                if other.state == "active" and other.kid != kid:
                    self._signing[other.kid] = dataclasses.replace(other, state="retired", not_after=retire_not_after)
                    self._record(audit.signing_key("retire", other.kid, not_after=retire_not_after), actor, at)
            self._signing[kid] = dataclasses.replace(key, state="active", activated_at=at, not_after=None)
            self._record(audit.signing_key("activate", kid), actor, at)

    async def retire_signing_key(self, kid: str, *, not_after: float, actor: str, at: float) -> None:
        with self._lock:
            key = self._signing.get(kid)
            if key is None:
                raise NotFoundError(f"no signing key {kid!r}")
            self._signing[kid] = dataclasses.replace(key, state="retired", not_after=not_after)
            self._record(audit.signing_key("retire", kid, not_after=not_after), actor, at)

    async def delete_signing_key(self, kid: str, *, actor: str, at: float) -> None:
        with self._lock:
            if self._signing.pop(kid, None) is None:
                raise NotFoundError(f"no signing key {kid!r}")
            self._record(audit.signing_key("delete", kid), actor, at)

    async def reseal_signing_key(self, kid: str, private_key: bytes, *, expected: bytes, actor: str, at: float) -> bool:
        with self._lock:
            key = self._signing.get(kid)
            if key is None or key.private_key != expected:
                return False
            self._signing[kid] = dataclasses.replace(key, private_key=private_key)
            self._record(audit.signing_key_resealed(kid, expected, private_key), actor, at)
            return True

    # -- revoked tokens ----------------------------------------------------------------------------------------

    async def revoke_token(self, jti: str, *, expires_at: float, actor: str, at: float) -> bool:
        with self._lock:
            if jti in self._revoked:
                return False
            self._revoked[jti] = RevokedToken(jti, expires_at, at)
            self._record(audit.token_revoked(jti, expires_at), actor, at)
            return True

    async def is_token_revoked(self, jti: str) -> bool:
        with self._lock:
            return jti in self._revoked

    async def list_revoked_tokens(self, now: float) -> list[RevokedToken]:
        with self._lock:
            return sorted((r for r in self._revoked.values() if r.expires_at > now), key=lambda r: r.jti)

    async def purge_revoked_tokens(self, before: float) -> int:
        with self._lock:
            gone = [j for j, r in self._revoked.items() if r.expires_at < before]
            for jti in gone:
                del self._revoked[jti]
            return len(gone)

    async def use_once(self, key: str, *, expires_at: float, now: float) -> bool:
        with self._lock:
            for gone in [k for k, exp in self._used_once.items() if exp < now]:
                del self._used_once[gone]
            if key in self._used_once:
                return False
            self._used_once[key] = expires_at
            return True

    # -- admin tokens and the change log -----------------------------------------------------------------------

    async def create_admin_token(self, token: AdminToken, *, actor: str, at: float) -> None:
        with self._lock:
            if token.id in self._admin_tokens or any(
                t.token_hash == token.token_hash for t in self._admin_tokens.values()
            ):
                raise ConflictError(f"admin token {token.id!r} already exists")
            self._admin_tokens[token.id] = token
            self._record(audit.admin_token_created(token), actor, at)

    async def find_admin_token(self, token_hash: str) -> AdminToken | None:
        with self._lock:
            return next((t for t in self._admin_tokens.values() if t.token_hash == token_hash), None)

    async def list_admin_tokens(self) -> list[AdminToken]:
        with self._lock:
            return sorted(self._admin_tokens.values(), key=lambda t: (t.created_at, t.id))

    async def revoke_admin_token(self, token_id: str, *, actor: str, at: float) -> None:
        with self._lock:
            token = self._admin_tokens.get(token_id)
            if token is None:
                raise NotFoundError(f"no admin token {token_id!r}")
            if token.revoked_at is None:
                self._admin_tokens[token_id] = dataclasses.replace(token, revoked_at=at)
            self._record(audit.admin_token_revoked(token_id), actor, at)

    async def record_secret_checks(self, checks: Mapping[str, str], *, at: float) -> list[str]:
        with self._lock:
            differ = []
            for name, value in sorted(checks.items()):
                known = self._secret_checks.setdefault(name, value)
                if known != value:
                    differ.append(name)
            return differ

    async def record_admin_action(self, entry: audit.Entry, *, actor: str, at: float) -> None:
        with self._lock:
            self._record(entry, actor, at)

    async def list_admin_changes(self, *, limit: int = 100, before_seq: int | None = None) -> list[AdminChange]:
        with self._lock:
            rows = [c for c in self._log if before_seq is None or c.seq < before_seq]
        return rows[::-1][:limit]

    async def current_change_seq(self) -> int:
        with self._lock:
            return self._seq

    async def changes_since(self, seq: int, *, limit: int = 1000) -> ChangeBatch:
        with self._lock:
            changes = tuple(c for c, _ in self._feed if c.seq > seq)[:limit]
            return feed_batch(seq, changes, self._seq, self._pruned_to)

    async def prune_changes(self, before: float) -> int:
        with self._lock:
            keep = [(c, at) for c, at in self._feed if at >= before]
            gone = len(self._feed) - len(keep)
            if gone:
                self._pruned_to = max(c.seq for c, at in self._feed if at < before)
            self._feed = keep
            return gone

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:  # Services.close() calls this at shutdown
        await self.close()

    async def close(self) -> None:
        return None


_: type[Store] = MemoryStore
