"""Consumer, API-key and admin-token operations, shared by the CLI and the admin API (one set of rules).

Issuing returns the secret exactly once (`Issued.secret`); only its keyed hash reaches the store. Every
operation is recorded in the admin change log under the service's `actor`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stockade.security import keys
from stockade.storage.base import NotFoundError
from stockade.storage.records import ADMIN_ROLES, AdminToken, ApiKey, Consumer

if TYPE_CHECKING:
    from stockade.clock import Clock
    from stockade.storage.base import Store

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")  # RFC 6749 scope-token
MAX_SCOPES = 64
MAX_TTL = 10 * 365 * 86400.0
MAX_OVERLAP = 30 * 86400.0


class InvalidInput(ValueError):
    """A request to the service is invalid; the message names the field and is safe to show."""


@dataclass(frozen=True)
class Issued:
    """A newly issued key or token: `secret` is shown once, then forgotten."""

    record: ApiKey | AdminToken
    secret: str

    def __repr__(self) -> str:  # never print the secret by accident
        return f"Issued({self.record.id})"


def check_name(value: str, field: str = "name") -> str:
    if not NAME.fullmatch(value):
        raise InvalidInput(f"{field} must be 1-64 characters of letters, digits and _.@- (got {value!r})")
    return value


def check_scopes(scopes: Sequence[str], field: str = "scopes") -> tuple[str, ...]:
    out = tuple(dict.fromkeys(s.strip() for s in scopes if s.strip()))
    bad = [s for s in out if not SCOPE.fullmatch(s)]
    if bad:
        raise InvalidInput(f"{field}: invalid entries {bad!r} (no spaces, quotes or backslashes)")
    if len(out) > MAX_SCOPES:
        raise InvalidInput(f"{field}: at most {MAX_SCOPES} entries")
    return out


def _check_seconds(value: float | None, field: str, limit: float) -> float | None:
    if value is not None and not 0 < value <= limit:
        raise InvalidInput(f"{field} must be between 0 and {int(limit)} seconds")
    return value


def check_key_options(
    *, scopes: Sequence[str], ttl: float | None, env: str, name: str | None
) -> tuple[tuple[str, ...], float | None, str, str | None]:
    """A new key's options, checked (InvalidInput) and normalised, before anything is written: the CLI creates a
    missing consumer only once the key it is for would be accepted."""
    try:
        keys.check_env(env)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    if env in keys.RESERVED_ENVS:
        raise InvalidInput(f"env {env!r} is reserved")
    if name is not None:
        check_name(name)
    return check_scopes(scopes), _check_seconds(ttl, "ttl", MAX_TTL), env, name


class IdentityService:
    def __init__(self, store: Store, pepper: bytes, clock: Clock, actor: str) -> None:
        self.store = store
        self.clock = clock
        self.actor = actor
        self._pepper = pepper

    # -- consumers ---------------------------------------------------------------------------------------------

    async def create_consumer(
        self,
        name: str,
        *,
        roles: Sequence[str] = (),
        plan: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Consumer:
        if plan is not None:
            check_name(plan, "plan")
        consumer = Consumer(
            id=keys.new_id("con"),
            name=check_name(name),
            created_at=self.clock.time(),
            roles=check_scopes(roles, "roles"),
            plan=plan,
            metadata=dict(metadata or {}),
        )
        await self.store.create_consumer(consumer, actor=self.actor, at=consumer.created_at)
        return consumer

    async def delete_consumer(self, id_or_name: str) -> Consumer:
        consumer = await self.store.get_consumer(id_or_name)
        await self.store.delete_consumer(consumer.id, actor=self.actor, at=self.clock.time())
        return consumer

    # -- API keys ----------------------------------------------------------------------------------------------

    async def create_key(
        self,
        consumer: str,
        *,
        scopes: Sequence[str] = (),
        ttl: float | None = None,
        env: str = "live",
        name: str | None = None,
    ) -> Issued:
        checked = check_key_options(scopes=scopes, ttl=ttl, env=env, name=name)
        owner = await self.store.get_consumer(consumer)
        record, secret = self._new_key(owner.id, *checked)
        await self.store.create_api_key(record, actor=self.actor, at=record.created_at)
        return Issued(record, secret)

    def _new_key(
        self, consumer_id: str, scopes: tuple[str, ...], ttl: float | None, env: str, name: str | None
    ) -> tuple[ApiKey, str]:
        now = self.clock.time()
        secret = keys.generate(env)
        record = ApiKey(
            id=keys.new_id("key"),
            consumer_id=consumer_id,
            key_hash=keys.hash_secret(self._pepper, secret),
            env=env,
            created_at=now,
            scopes=scopes,
            expires_at=now + ttl if ttl is not None else None,
            name=name,
        )
        return record, secret

    async def find_key(self, key_or_id: str) -> ApiKey:
        """A key by its id (`key_...`) or by the key itself (hashed for the lookup), surrounding whitespace ignored
        as the gateway ignores it. What was given is repeated in an error only if it has the shape of an id: a
        key pasted with something around it is still a secret."""
        ref = key_or_id.strip()
        if ref.startswith(keys.PREFIX + "_"):
            found = await self.store.find_api_key(keys.hash_secret(self._pepper, ref))
            if found is None:
                raise NotFoundError("no API key matches the key given")
            return found
        try:
            return await self.store.get_api_key(ref)
        except NotFoundError:
            raise NotFoundError(f"no API key {keys.shown_id(ref)}") from None

    async def list_keys(self, consumer: str | None = None) -> list[ApiKey]:
        consumer_id = (await self.store.get_consumer(consumer)).id if consumer else None
        return await self.store.list_api_keys(consumer_id)

    async def revoke_key(self, key_or_id: str) -> tuple[ApiKey, bool]:
        """The key, revoked, and whether this call revoked it. An already revoked key is returned as it is, the
        first revocation's time standing: nothing changed, so nothing is written to the admin change log."""
        key = await self.find_key(key_or_id)
        if key.revoked_at is not None:
            return key, False
        now = self.clock.time()
        key = await self.store.revoke_api_key(key.id, actor=self.actor, at=now)
        return key, key.revoked_at == now  # another call may have revoked it in between (the store logs that one)

    async def rotate_key(self, key_or_id: str, *, overlap: float = 86400.0) -> Issued:
        """A new key with the old one's consumer, scopes and env; the old one stays valid for `overlap` seconds."""
        if not 0 <= overlap <= MAX_OVERLAP:
            raise InvalidInput(f"overlap must be between 0 and {int(MAX_OVERLAP)} seconds")
        old = await self.find_key(key_or_id)
        now = self.clock.time()
        if old.status(now) != "active":
            raise InvalidInput(f"API key {old.id} is {old.status(now)}; only an active key can be rotated")
        if old.rotated_to is not None:
            # Still valid for its overlap, but it has a successor: a second one would fork the chain (and the
            # old expires_at, shortened to the overlap, no longer says how long a key of this line may live).
            raise InvalidInput(f"API key {old.id} was already rotated to {old.rotated_to}; rotate that key instead")
        ttl = old.expires_at - old.created_at if old.expires_at is not None else None
        record, secret = self._new_key(old.consumer_id, old.scopes, ttl, old.env, old.name)
        await self.store.rotate_api_key(old.id, record, old_expires_at=now + overlap, actor=self.actor, at=now)
        return Issued(record, secret)

    # -- admin tokens ------------------------------------------------------------------------------------------

    async def create_admin_token(self, name: str, role: str, *, ttl: float | None = None) -> Issued:
        if role not in ADMIN_ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ADMIN_ROLES)}")
        _check_seconds(ttl, "ttl", MAX_TTL)
        now = self.clock.time()
        secret = keys.generate("admin")
        token = AdminToken(
            id=keys.new_id("adm"),
            name=check_name(name),
            role=role,  # checked against ADMIN_ROLES above
            token_hash=keys.hash_secret(self._pepper, secret),
            created_at=now,
            expires_at=now + ttl if ttl is not None else None,
        )
        await self.store.create_admin_token(token, actor=self.actor, at=now)
        return Issued(token, secret)

    async def revoke_admin_token(self, token_id: str) -> None:
        await self.store.revoke_admin_token(token_id, actor=self.actor, at=self.clock.time())
