"""The store interfaces, split by capability: what each feature may ask of a storage backend.

Every method is async and loop-agnostic (backends run blocking drivers on their own threads), so the same
store serves the gateway loop, the admin API and the CLI (`asyncio.run`). Backend exceptions are wrapped
into `StorageError` at this boundary; `NotFoundError` and `ConflictError` are the two a caller handles.

Every mutation takes `actor` (who) and `at` (when, from the injected clock) and, in the same transaction,
appends an `AdminChange` (the admin change log) and a `Change` (the feed workers poll to drop cache
entries). The store never reads the clock and never sees a secret in the clear.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from stockade.errors import StorageError
from stockade.storage.records import (
    AdminChange,
    AdminToken,
    ApiKey,
    ChangeBatch,
    Consumer,
    OAuthClient,
    RevokedToken,
    SigningKey,
)

if TYPE_CHECKING:
    from stockade.storage import audit

__all__ = [
    "AdminTokenStore",
    "ApiKeyStore",
    "AuditLogStore",
    "ChangeFeed",
    "ClientStore",
    "ConflictError",
    "ConsumerStore",
    "NotFoundError",
    "RevocationStore",
    "SecretCheckStore",
    "SigningKeyStore",
    "StorageError",
    "Store",
]


class NotFoundError(StorageError):
    """The record asked for does not exist."""

    code = "storage.not_found"


class ConflictError(StorageError):
    """A unique field (consumer name, key hash, client id, kid, ...) is already taken."""

    code = "storage.conflict"


class ConsumerStore(Protocol):
    async def create_consumer(self, consumer: Consumer, *, actor: str, at: float) -> None: ...
    async def get_consumer(self, id_or_name: str) -> Consumer: ...  # NotFoundError
    async def list_consumers(self) -> list[Consumer]: ...
    async def update_consumer(self, consumer: Consumer, *, actor: str, at: float) -> None: ...  # by id
    async def delete_consumer(self, consumer_id: str, *, actor: str, at: float) -> None: ...  # and its keys


class ApiKeyStore(Protocol):
    async def create_api_key(self, key: ApiKey, *, actor: str, at: float) -> None: ...
    async def get_api_key(self, key_id: str) -> ApiKey: ...  # NotFoundError
    async def find_api_key(self, key_hash: str) -> ApiKey | None: ...
    async def list_api_keys(self, consumer_id: str | None = None) -> list[ApiKey]: ...
    async def revoke_api_key(self, key_id: str, *, actor: str, at: float) -> ApiKey: ...
    async def rotate_api_key(self, old_id: str, new: ApiKey, *, old_expires_at: float, actor: str, at: float) -> None:
        """Atomically store `new` and end the old key's life at `old_expires_at` (the overlap window)."""
        ...

    async def touch_api_keys(self, last_used: Mapping[str, float]) -> None:
        """Batch-write last-used times (key id -> time). Not an admin change; never on the request path."""
        ...


class ClientStore(Protocol):
    async def create_client(self, client: OAuthClient, *, actor: str, at: float) -> None: ...
    async def get_client(self, client_id: str) -> OAuthClient: ...  # NotFoundError
    async def list_clients(self) -> list[OAuthClient]: ...
    async def update_client(self, client: OAuthClient, *, actor: str, at: float) -> None: ...  # by client_id
    async def delete_client(self, client_id: str, *, actor: str, at: float) -> None: ...


class SigningKeyStore(Protocol):
    async def add_signing_key(self, key: SigningKey, *, actor: str, at: float) -> None: ...
    async def list_signing_keys(self) -> list[SigningKey]: ...  # every state, oldest first
    async def activate_signing_key(self, kid: str, *, retire_not_after: float, actor: str, at: float) -> None:
        """Atomically make `kid` the one active key; the previous active key becomes retired until
        `retire_not_after` (it stays in the JWKS so tokens it signed still verify)."""
        ...

    async def retire_signing_key(self, kid: str, *, not_after: float, actor: str, at: float) -> None: ...
    async def delete_signing_key(self, kid: str, *, actor: str, at: float) -> None: ...
    async def reseal_signing_key(self, kid: str, private_key: bytes, *, expected: bytes, actor: str, at: float) -> bool:
        """Replace `kid`'s sealed private key by `private_key` (the same key sealed under another KEK) if it still
        is `expected`; False if the key is gone or was changed since it was read."""
        ...


class RevocationStore(Protocol):
    async def revoke_token(self, jti: str, *, expires_at: float, actor: str, at: float) -> bool:
        """Record a revoked jti; False if it was already revoked."""
        ...

    async def is_token_revoked(self, jti: str) -> bool: ...
    async def list_revoked_tokens(self, now: float) -> list[RevokedToken]: ...  # not yet expired
    async def purge_revoked_tokens(self, before: float) -> int: ...  # drop entries that expired before

    async def use_once(self, key: str, *, expires_at: float, now: float) -> bool:
        """Record a single-use value (a client assertion's jti) until `expires_at`; False if it was already used
        and has not expired. Atomic across every process sharing the store, so a replay fails on any worker."""
        ...


class AdminTokenStore(Protocol):
    async def create_admin_token(self, token: AdminToken, *, actor: str, at: float) -> None: ...
    async def find_admin_token(self, token_hash: str) -> AdminToken | None: ...
    async def list_admin_tokens(self) -> list[AdminToken]: ...
    async def revoke_admin_token(self, token_id: str, *, actor: str, at: float) -> None: ...


class SecretCheckStore(Protocol):
    url: str

    async def record_secret_checks(self, checks: Mapping[str, str], *, at: float) -> list[str]:
        """Record each check not seen before; return the names whose recorded value differs (other material)."""
        ...


class AuditLogStore(Protocol):
    async def record_admin_action(self, entry: audit.Entry, *, actor: str, at: float) -> None:
        """Log an admin action on state kept outside the store (lifting a lockout in the limits backend)."""
        ...

    async def list_admin_changes(self, *, limit: int = 100, before_seq: int | None = None) -> list[AdminChange]:
        """Newest first."""
        ...


class ChangeFeed(Protocol):
    async def current_change_seq(self) -> int: ...
    async def changes_since(self, seq: int, *, limit: int = 1000) -> ChangeBatch: ...
    async def prune_changes(self, before: float) -> int: ...


@runtime_checkable
class Store(
    ConsumerStore,
    ApiKeyStore,
    ClientStore,
    SigningKeyStore,
    RevocationStore,
    SecretCheckStore,
    AdminTokenStore,
    AuditLogStore,
    ChangeFeed,
    Protocol,
):
    """A backend with every identity capability (memory, sqlite and postgresql all provide them)."""

    url: str  # as configured, with any password masked
    shared_across_processes: bool  # False for memory://: workers and the CLI would each see their own

    async def ping(self) -> None: ...  # raises StorageError when the backend is unreachable
    async def close(self) -> None: ...
