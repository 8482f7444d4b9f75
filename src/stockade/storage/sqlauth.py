"""SQL for signing keys, revoked tokens, admin tokens, the admin change log and the change feed."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import TYPE_CHECKING

import orjson

from stockade.storage import audit
from stockade.storage.base import ConflictError
from stockade.storage.records import (
    AdminChange,
    AdminToken,
    Change,
    ChangeBatch,
    RevokedToken,
    SigningKey,
    feed_batch,
)
from stockade.storage.sql import Row, Tx, dumps, must, record

if TYPE_CHECKING:
    from stockade.storage.sql import SqlEngine

_SIGNING = "kid, alg, public_jwk, private_key, state, created_at, activated_at, not_after"
_ADMIN = "id, name, role, token_hash, created_at, expires_at, revoked_at"


def _signing(r: Row) -> SigningKey:
    return SigningKey(r[0], r[1], orjson.loads(r[2]), base64.b64decode(r[3]), r[4], r[5], r[6], r[7])


def _admin(r: Row) -> AdminToken:
    return AdminToken(r[0], r[1], r[2], r[3], r[4], r[5], r[6])


class SqlAuthMixin:
    """Half of SqlStore (split for size): needs `self.engine`."""

    engine: SqlEngine

    # -- signing keys ------------------------------------------------------------------------------------------

    async def add_signing_key(self, key: SigningKey, *, actor: str, at: float) -> None:
        def run(tx: Tx) -> None:
            if tx.one("SELECT 1 FROM signing_keys WHERE kid = ?", (key.kid,)):
                raise ConflictError(f"signing key {key.kid!r} already exists")
            if key.state == "active" and tx.one("SELECT 1 FROM signing_keys WHERE state = 'active'"):
                raise ConflictError("another signing key is already active; add as 'next' and activate it")
            k = key
            tx.execute(
                f"INSERT INTO signing_keys ({_SIGNING}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    k.kid,
                    k.alg,
                    dumps(dict(k.public_jwk)),
                    base64.b64encode(k.private_key).decode(),
                    k.state,
                    k.created_at,
                    k.activated_at,
                    k.not_after,
                ),
            )
            record(tx, audit.signing_key_added(k), actor, at)

        await self.engine.write(run)

    async def list_signing_keys(self) -> list[SigningKey]:
        sql = f"SELECT {_SIGNING} FROM signing_keys ORDER BY created_at, kid"
        return [_signing(r) for r in await self.engine.read(lambda tx: tx.all(sql))]

    async def activate_signing_key(self, kid: str, *, retire_not_after: float, actor: str, at: float) -> None:
        def run(tx: Tx) -> None:
            must(tx.one("SELECT 1 FROM signing_keys WHERE kid = ?", (kid,)), f"signing key {kid!r}")
            for (other,) in tx.all("SELECT kid FROM signing_keys WHERE state = 'active' AND kid <> ?", (kid,)):
                tx.execute(
                    "UPDATE signing_keys SET state = 'retired', not_after = ? WHERE kid = ?", (retire_not_after, other)
                )
                record(tx, audit.signing_key("retire", other, not_after=retire_not_after), actor, at)
            tx.execute(
                "UPDATE signing_keys SET state = 'active', activated_at = ?, not_after = NULL WHERE kid = ?", (at, kid)
            )
            record(tx, audit.signing_key("activate", kid), actor, at)

        await self.engine.write(run)

    async def retire_signing_key(self, kid: str, *, not_after: float, actor: str, at: float) -> None:
        def run(tx: Tx) -> None:
            must(tx.one("SELECT 1 FROM signing_keys WHERE kid = ?", (kid,)), f"signing key {kid!r}")
            tx.execute("UPDATE signing_keys SET state = 'retired', not_after = ? WHERE kid = ?", (not_after, kid))
            record(tx, audit.signing_key("retire", kid, not_after=not_after), actor, at)

        await self.engine.write(run)

    async def delete_signing_key(self, kid: str, *, actor: str, at: float) -> None:
        def run(tx: Tx) -> None:
            must(tx.one("SELECT 1 FROM signing_keys WHERE kid = ?", (kid,)), f"signing key {kid!r}")
            tx.execute("DELETE FROM signing_keys WHERE kid = ?", (kid,))
            record(tx, audit.signing_key("delete", kid), actor, at)

        await self.engine.write(run)

    async def reseal_signing_key(self, kid: str, private_key: bytes, *, expected: bytes, actor: str, at: float) -> bool:
        def run(tx: Tx) -> bool:
            # One conditional UPDATE: a concurrent reseal of the same row makes this one match nothing (PostgreSQL
            # re-checks the WHERE once the other commits), never write over what the other wrote.
            row = tx.one(
                "UPDATE signing_keys SET private_key = ? WHERE kid = ? AND private_key = ? RETURNING kid",
                (base64.b64encode(private_key).decode(), kid, base64.b64encode(expected).decode()),
            )
            if row is None:
                return False
            record(tx, audit.signing_key_resealed(kid, expected, private_key), actor, at)
            return True

        return await self.engine.write(run)

    # -- revoked tokens ----------------------------------------------------------------------------------------

    async def revoke_token(self, jti: str, *, expires_at: float, actor: str, at: float) -> bool:
        def run(tx: Tx) -> bool:
            if tx.one("SELECT 1 FROM revoked_tokens WHERE jti = ?", (jti,)):
                return False
            tx.execute(
                "INSERT INTO revoked_tokens (jti, expires_at, revoked_at) VALUES (?, ?, ?)", (jti, expires_at, at)
            )
            record(tx, audit.token_revoked(jti, expires_at), actor, at)
            return True

        return await self.engine.write(run)

    async def is_token_revoked(self, jti: str) -> bool:
        row = await self.engine.read(lambda tx: tx.one("SELECT 1 FROM revoked_tokens WHERE jti = ?", (jti,)))
        return row is not None

    async def list_revoked_tokens(self, now: float) -> list[RevokedToken]:
        sql = "SELECT jti, expires_at, revoked_at FROM revoked_tokens WHERE expires_at > ? ORDER BY jti"
        return [RevokedToken(r[0], r[1], r[2]) for r in await self.engine.read(lambda tx: tx.all(sql, (now,)))]

    async def purge_revoked_tokens(self, before: float) -> int:
        def run(tx: Tx) -> int:
            row = tx.one("SELECT COUNT(*) FROM revoked_tokens WHERE expires_at < ?", (before,))
            tx.execute("DELETE FROM revoked_tokens WHERE expires_at < ?", (before,))
            return int(row[0]) if row else 0

        return await self.engine.write(run)

    async def use_once(self, key: str, *, expires_at: float, now: float) -> bool:
        def run(tx: Tx) -> bool:
            tx.execute("DELETE FROM used_once WHERE expires_at < ?", (now,))
            if tx.one("SELECT 1 FROM used_once WHERE key = ?", (key,)):
                return False
            tx.execute("INSERT INTO used_once (key, expires_at) VALUES (?, ?)", (key, expires_at))
            return True

        try:
            return await self.engine.write(run)
        except ConflictError:
            return False  # another process inserted it between our SELECT and INSERT (PostgreSQL, concurrent)

    # -- admin tokens and the change log -----------------------------------------------------------------------

    async def create_admin_token(self, token: AdminToken, *, actor: str, at: float) -> None:
        def run(tx: Tx) -> None:
            t = token
            if tx.one("SELECT 1 FROM admin_tokens WHERE id = ? OR token_hash = ?", (t.id, t.token_hash)):
                raise ConflictError(f"admin token {t.id!r} already exists")
            tx.execute(
                f"INSERT INTO admin_tokens ({_ADMIN}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (t.id, t.name, t.role, t.token_hash, t.created_at, t.expires_at, t.revoked_at),
            )
            record(tx, audit.admin_token_created(t), actor, at)

        await self.engine.write(run)

    async def find_admin_token(self, token_hash: str) -> AdminToken | None:
        sql = f"SELECT {_ADMIN} FROM admin_tokens WHERE token_hash = ?"
        row = await self.engine.read(lambda tx: tx.one(sql, (token_hash,)))
        return _admin(row) if row is not None else None

    async def list_admin_tokens(self) -> list[AdminToken]:
        sql = f"SELECT {_ADMIN} FROM admin_tokens ORDER BY created_at, id"
        return [_admin(r) for r in await self.engine.read(lambda tx: tx.all(sql))]

    async def revoke_admin_token(self, token_id: str, *, actor: str, at: float) -> None:
        def run(tx: Tx) -> None:
            must(tx.one("SELECT 1 FROM admin_tokens WHERE id = ?", (token_id,)), f"admin token {token_id!r}")
            tx.execute("UPDATE admin_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (at, token_id))
            record(tx, audit.admin_token_revoked(token_id), actor, at)

        await self.engine.write(run)

    async def record_secret_checks(self, checks: Mapping[str, str], *, at: float) -> list[str]:
        items = sorted(checks.items())

        def run(tx: Tx) -> list[str]:
            differ: list[str] = []
            for name, value in items:
                row = tx.one("SELECT value FROM secret_checks WHERE name = ?", (name,))
                if row is None:
                    sql = "INSERT INTO secret_checks (name, value, created_at) VALUES (?, ?, ?)"
                    tx.execute(sql, (name, value, at))
                elif row[0] != value:
                    differ.append(name)
            return differ

        return await self.engine.write(run)

    async def record_admin_action(self, entry: audit.Entry, *, actor: str, at: float) -> None:
        await self.engine.write(lambda tx: record(tx, entry, actor, at))

    async def list_admin_changes(self, *, limit: int = 100, before_seq: int | None = None) -> list[AdminChange]:
        cols = "seq, at, actor, action, target, detail"
        params: tuple[int, ...]
        if before_seq is None:
            sql, params = f"SELECT {cols} FROM admin_changes ORDER BY seq DESC LIMIT ?", (limit,)
        else:
            sql, params = (
                f"SELECT {cols} FROM admin_changes WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                (before_seq, limit),
            )
        rows = await self.engine.read(lambda tx: tx.all(sql, params))
        return [AdminChange(int(r[0]), r[1], r[2], r[3], r[4], orjson.loads(r[5])) for r in rows]

    async def current_change_seq(self) -> int:
        row = await self.engine.read(lambda tx: tx.one("SELECT value FROM change_seq WHERE id = 1"))
        return int(row[0]) if row else 0

    async def changes_since(self, seq: int, *, limit: int = 1000) -> ChangeBatch:
        def run(tx: Tx) -> ChangeBatch:
            # Rows first, marks second (each statement sees its own snapshot): a prune between the two then shows
            # as truncation instead of silently skipping the rows it deleted.
            rows = tx.all("SELECT seq, kind, ref FROM change_feed WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
            marks = must(tx.one("SELECT value, pruned_to FROM change_seq WHERE id = 1"), "change_seq")
            return feed_batch(seq, tuple(Change(int(r[0]), r[1], r[2]) for r in rows), int(marks[0]), int(marks[1]))

        return await self.engine.read(run)

    async def prune_changes(self, before: float) -> int:
        def run(tx: Tx) -> int:
            row = tx.one("SELECT COUNT(*), MAX(seq) FROM change_feed WHERE at < ?", (before,))
            if not row or not row[0]:
                return 0
            tx.execute("UPDATE change_seq SET pruned_to = ? WHERE id = 1 AND pruned_to < ?", (row[1], row[1]))
            tx.execute("DELETE FROM change_feed WHERE at < ?", (before,))
            return int(row[0])

        return await self.engine.write(run)
