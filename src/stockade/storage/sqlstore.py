"""The Store over SQL, shared by sqlite and postgresql: one statement set, run by a `SqlEngine`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from stockade.storage import audit
from stockade.storage.base import ConflictError, Store
from stockade.storage.records import (
    ApiKey,
    Consumer,
    OAuthClient,
)
from stockade.storage.sql import Row, SqlEngine, Tx, dumps, must, record
from stockade.storage.sqlauth import SqlAuthMixin

_CONSUMER = "id, name, created_at, roles, plan, metadata"
_KEY = "id, consumer_id, key_hash, env, created_at, scopes, expires_at, revoked_at, last_used_at, rotated_to, name"
_CLIENT = (
    "client_id, name, auth_method, created_at, allowed_scopes, secret_hash, jwks, tls_subject, consumer_id, "
    "disabled_at, metadata"
)


def _consumer(r: Row) -> Consumer:
    return Consumer(r[0], r[1], r[2], tuple(orjson.loads(r[3])), r[4], orjson.loads(r[5]))


def _key(r: Row) -> ApiKey:
    return ApiKey(r[0], r[1], r[2], r[3], r[4], tuple(orjson.loads(r[5])), r[6], r[7], r[8], r[9], r[10])


def _client(r: Row) -> OAuthClient:
    jwks = orjson.loads(r[6]) if r[6] is not None else None
    return OAuthClient(
        r[0], r[1], r[2], r[3], tuple(orjson.loads(r[4])), r[5], jwks, r[7], r[8], r[9], orjson.loads(r[10])
    )


class SqlStore(SqlAuthMixin):
    """Every capability of `Store` in portable SQL."""

    shared_across_processes = True

    def __init__(self, engine: SqlEngine) -> None:
        self.engine = engine
        self.url = engine.url

    # -- consumers ---------------------------------------------------------------------------------------------

    async def create_consumer(self, consumer: Consumer, *, actor: str, at: float) -> None:
        def run(tx: Tx) -> None:
            if tx.one("SELECT 1 FROM consumers WHERE id = ? OR name = ?", (consumer.id, consumer.name)):
                raise ConflictError(f"consumer {consumer.name!r} already exists")
            c = consumer
            tx.execute(
                f"INSERT INTO consumers ({_CONSUMER}) VALUES (?, ?, ?, ?, ?, ?)",
                (c.id, c.name, c.created_at, dumps(list(c.roles)), c.plan, dumps(dict(c.metadata))),
            )
            record(tx, audit.consumer("create", c), actor, at)

        await self.engine.write(run)

    async def get_consumer(self, id_or_name: str) -> Consumer:
        sql = f"SELECT {_CONSUMER} FROM consumers WHERE id = ? OR name = ? ORDER BY id = ? DESC"
        row = await self.engine.read(lambda tx: tx.one(sql, (id_or_name, id_or_name, id_or_name)))
        return _consumer(must(row, f"consumer {id_or_name!r}"))

    async def list_consumers(self) -> list[Consumer]:
        rows = await self.engine.read(lambda tx: tx.all(f"SELECT {_CONSUMER} FROM consumers ORDER BY created_at, id"))
        return [_consumer(r) for r in rows]

    async def update_consumer(self, consumer: Consumer, *, actor: str, at: float) -> None:
        def run(tx: Tx) -> None:
            c = consumer
            must(tx.one("SELECT 1 FROM consumers WHERE id = ?", (c.id,)), f"consumer {c.id!r}")
            if tx.one("SELECT 1 FROM consumers WHERE name = ? AND id <> ?", (c.name, c.id)):
                raise ConflictError(f"consumer {c.name!r} already exists")
            tx.execute(
                "UPDATE consumers SET name = ?, roles = ?, plan = ?, metadata = ? WHERE id = ?",
                (c.name, dumps(list(c.roles)), c.plan, dumps(dict(c.metadata)), c.id),
            )
            record(tx, audit.consumer("update", c), actor, at)

        await self.engine.write(run)

    async def delete_consumer(self, consumer_id: str, *, actor: str, at: float) -> None:
        def run(tx: Tx) -> None:
            must(tx.one("SELECT 1 FROM consumers WHERE id = ?", (consumer_id,)), f"consumer {consumer_id!r}")
            tx.execute("DELETE FROM api_keys WHERE consumer_id = ?", (consumer_id,))
            sql = f"SELECT {_CLIENT} FROM oauth_clients WHERE consumer_id = ?"
            owned = [audit.orphaned(_client(r), at) for r in tx.all(sql, (consumer_id,))]
            for c in owned:  # its OAuth clients go with its keys: disabled, so their tokens stop verifying too
                tx.execute(
                    "UPDATE oauth_clients SET consumer_id = NULL, disabled_at = ? WHERE client_id = ?",
                    (c.disabled_at, c.client_id),
                )
            tx.execute("DELETE FROM consumers WHERE id = ?", (consumer_id,))
            record(tx, audit.consumer_deleted(consumer_id), actor, at)
            for c in owned:
                record(tx, audit.client("update", c), actor, at)

        await self.engine.write(run)

    # -- API keys ----------------------------------------------------------------------------------------------

    @staticmethod
    def _insert_key(tx: Tx, k: ApiKey) -> None:
        must(tx.one("SELECT 1 FROM consumers WHERE id = ?", (k.consumer_id,)), f"consumer {k.consumer_id!r}")
        if tx.one("SELECT 1 FROM api_keys WHERE id = ? OR key_hash = ?", (k.id, k.key_hash)):
            raise ConflictError(f"API key {k.id!r} already exists")
        tx.execute(
            f"INSERT INTO api_keys ({_KEY}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                k.id,
                k.consumer_id,
                k.key_hash,
                k.env,
                k.created_at,
                dumps(list(k.scopes)),
                k.expires_at,
                k.revoked_at,
                k.last_used_at,
                k.rotated_to,
                k.name,
            ),
        )

    async def create_api_key(self, key: ApiKey, *, actor: str, at: float) -> None:
        def run(tx: Tx) -> None:
            self._insert_key(tx, key)
            record(tx, audit.api_key_created(key), actor, at)

        await self.engine.write(run)

    async def get_api_key(self, key_id: str) -> ApiKey:
        row = await self.engine.read(lambda tx: tx.one(f"SELECT {_KEY} FROM api_keys WHERE id = ?", (key_id,)))
        return _key(must(row, f"API key {key_id!r}"))

    async def find_api_key(self, key_hash: str) -> ApiKey | None:
        row = await self.engine.read(lambda tx: tx.one(f"SELECT {_KEY} FROM api_keys WHERE key_hash = ?", (key_hash,)))
        return _key(row) if row is not None else None

    async def list_api_keys(self, consumer_id: str | None = None) -> list[ApiKey]:
        params: tuple[str, ...] = ()
        if consumer_id is None:
            sql = f"SELECT {_KEY} FROM api_keys ORDER BY created_at, id"
        else:
            sql, params = f"SELECT {_KEY} FROM api_keys WHERE consumer_id = ? ORDER BY created_at, id", (consumer_id,)
        return [_key(r) for r in await self.engine.read(lambda tx: tx.all(sql, params))]

    async def revoke_api_key(self, key_id: str, *, actor: str, at: float) -> ApiKey:
        def run(tx: Tx) -> ApiKey:
            must(tx.one("SELECT 1 FROM api_keys WHERE id = ?", (key_id,)), f"API key {key_id!r}")
            changed = tx.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (at, key_id))
            key = _key(must(tx.one(f"SELECT {_KEY} FROM api_keys WHERE id = ?", (key_id,)), key_id))
            if changed:  # revoked already (by an earlier call, or one racing this): nothing changed, nothing logged
                record(tx, audit.api_key_revoked(key_id, key.consumer_id), actor, at)
            return key

        return await self.engine.write(run)

    async def rotate_api_key(self, old_id: str, new: ApiKey, *, old_expires_at: float, actor: str, at: float) -> None:
        def run(tx: Tx) -> None:
            # The key must still be active and unrotated *in this transaction*: checked only before it, two
            # concurrent rotations forked the key, and a revoke in between gave a revoked key an active successor.
            row = tx.one(
                "UPDATE api_keys SET rotated_to = ?,"
                " expires_at = CASE WHEN expires_at IS NULL OR expires_at > ? THEN ? ELSE expires_at END"
                " WHERE id = ? AND revoked_at IS NULL AND rotated_to IS NULL AND (expires_at IS NULL OR expires_at > ?)"
                " RETURNING expires_at",
                (new.id, old_expires_at, old_expires_at, old_id, at),
            )
            if row is None:
                must(tx.one("SELECT 1 FROM api_keys WHERE id = ?", (old_id,)), f"API key {old_id!r}")
                raise ConflictError(f"API key {old_id!r} is no longer active, or was rotated already")
            expires = float(row[0])
            self._insert_key(tx, new)
            record(tx, audit.api_key_created(new), actor, at)
            record(tx, audit.api_key_rotated(old_id, new, expires), actor, at)

        await self.engine.write(run)

    async def touch_api_keys(self, last_used: Mapping[str, float]) -> None:
        if not last_used:
            return
        items = sorted(last_used.items())

        def run(tx: Tx) -> None:
            for key_id, when in items:
                tx.execute(
                    "UPDATE api_keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
                    (when, key_id, when),
                )

        await self.engine.write(run)

    # -- OAuth clients -----------------------------------------------------------------------------------------

    @staticmethod
    def _client_values(c: OAuthClient) -> tuple[Any, ...]:
        jwks = dumps(dict(c.jwks)) if c.jwks is not None else None
        return (
            c.name,
            c.auth_method,
            c.created_at,
            dumps(list(c.allowed_scopes)),
            c.secret_hash,
            jwks,
            c.tls_subject,
            c.consumer_id,
            c.disabled_at,
            dumps(dict(c.metadata)),
        )

    async def create_client(self, client: OAuthClient, *, actor: str, at: float) -> None:
        def run(tx: Tx) -> None:
            if tx.one("SELECT 1 FROM oauth_clients WHERE client_id = ?", (client.client_id,)):
                raise ConflictError(f"client {client.client_id!r} already exists")
            tx.execute(
                f"INSERT INTO oauth_clients ({_CLIENT}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (client.client_id, *self._client_values(client)),
            )
            record(tx, audit.client("create", client), actor, at)

        await self.engine.write(run)

    async def get_client(self, client_id: str) -> OAuthClient:
        sql = f"SELECT {_CLIENT} FROM oauth_clients WHERE client_id = ?"
        row = await self.engine.read(lambda tx: tx.one(sql, (client_id,)))
        return _client(must(row, f"client {client_id!r}"))

    async def list_clients(self) -> list[OAuthClient]:
        sql = f"SELECT {_CLIENT} FROM oauth_clients ORDER BY created_at, client_id"
        return [_client(r) for r in await self.engine.read(lambda tx: tx.all(sql))]

    async def update_client(self, client: OAuthClient, *, actor: str, at: float) -> None:
        def run(tx: Tx) -> None:
            must(tx.one("SELECT 1 FROM oauth_clients WHERE client_id = ?", (client.client_id,)), "client")
            tx.execute(
                "UPDATE oauth_clients SET name = ?, auth_method = ?, created_at = ?, allowed_scopes = ?, "
                "secret_hash = ?, jwks = ?, tls_subject = ?, consumer_id = ?, disabled_at = ?, metadata = ? "
                "WHERE client_id = ?",
                (*self._client_values(client), client.client_id),
            )
            record(tx, audit.client("update", client), actor, at)

        await self.engine.write(run)

    async def delete_client(self, client_id: str, *, actor: str, at: float) -> None:
        def run(tx: Tx) -> None:
            must(tx.one("SELECT 1 FROM oauth_clients WHERE client_id = ?", (client_id,)), f"client {client_id!r}")
            tx.execute("DELETE FROM oauth_clients WHERE client_id = ?", (client_id,))
            record(tx, audit.client_deleted(client_id), actor, at)

        await self.engine.write(run)

    async def ping(self) -> None:
        await self.engine.read(lambda tx: tx.one("SELECT 1"))

    async def aclose(self) -> None:  # Services.close() calls this at shutdown
        await self.close()

    async def close(self) -> None:
        self.engine.close()


_: type[Store] = SqlStore
