"""The SQL engine shared by the sqlite and postgresql backends: driver threads, transactions, migrations and
the wrapping of driver exceptions into StorageError.

Blocking DB-API drivers run on the store's own threads (one connection per thread), so store calls never
block an event loop and are not tied to one: the gateway loop, the admin app and the CLI share one store.
SQL is written once with `?` placeholders; the dialect rewrites them for its driver.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import orjson

from stockade.errors import StorageError
from stockade.storage.base import ConflictError, NotFoundError

if TYPE_CHECKING:
    from stockade.storage import audit

log = logging.getLogger("stockade.storage")

T = TypeVar("T")
Row = Sequence[Any]
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, "0001_identity.sql"),
    (2, "0002_single_use.sql"),
    (3, "0003_secret_checks.sql"),
)


class Cursor(Protocol):
    def execute(self, sql: Any, params: Any = ..., /) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> Any: ...

    rowcount: int


class Connection(Protocol):
    def cursor(self) -> Any: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Dialect:
    name: str
    placeholder: str  # "?" or "%s"
    begin_write: str | None  # statement that starts a write transaction (None: the driver begins implicitly)
    migration_lock: str | None  # statement that serialises concurrent migrators inside the transaction
    classify: Callable[[BaseException], StorageError | None]  # driver exception -> wrapped, or None if not ours


class Tx:
    """One transaction on one connection; `?` placeholders."""

    __slots__ = ("_cur", "_dialect")

    def __init__(self, cursor: Cursor, dialect: Dialect) -> None:
        self._cur = cursor
        self._dialect = dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the rows it changed (an UPDATE whose WHERE no longer matches changed none)."""
        if _has_nul(params):
            raise StorageError("a value holds a NUL character")  # inputs are checked before they are stored
        if self._dialect.placeholder != "?":
            sql = sql.replace("?", self._dialect.placeholder)
        self._cur.execute(sql, tuple(params))
        return int(self._cur.rowcount)

    # A lookup by a value with NUL finds nothing, on every backend: PostgreSQL cannot even hold NUL in text (it
    # would raise), and nothing stored holds one. So a client_id of "cl\x00x" is "not found", not an error.

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        if _has_nul(params):
            return []
        self.execute(sql, params)
        return list(self._cur.fetchall())

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        if _has_nul(params):
            return None
        self.execute(sql, params)
        row: Row | None = self._cur.fetchone()
        return row


def _has_nul(params: Sequence[Any]) -> bool:
    return any(type(p) is str and "\x00" in p for p in params)


class SqlEngine:
    """Runs functions of a `Tx` on the store's threads, in transactions, and migrates the schema on first use."""

    def __init__(self, url: str, connect: Callable[[], Connection], dialect: Dialect, *, threads: int = 1) -> None:
        self.url = url
        self._connect = connect
        self.dialect = dialect
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"stockade-{dialect.name}")
        self._local = threading.local()
        self._connections: list[Connection] = []
        self._migrated = False
        self._lock = threading.Lock()

    async def read(self, fn: Callable[[Tx], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, fn, False)

    async def write(self, fn: Callable[[Tx], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, fn, True)

    def _connection(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        if not self._migrated:
            with self._lock:
                if not self._migrated:
                    self._migrate(conn)
                    self._migrated = True
        return conn

    def _call(self, fn: Callable[[Tx], T], write: bool) -> T:
        try:
            conn = self._connection()
            return self._transaction(conn, fn, write)
        except StorageError:
            raise
        except Exception as exc:
            wrapped = self.dialect.classify(exc)
            if wrapped is None:
                raise
            if isinstance(wrapped, _Broken):
                self._discard_connection()
            raise wrapped from exc

    def _discard_connection(self) -> None:
        """Close this thread's broken connection (the next call opens a new one); dropped unclosed, each one
        leaked its file descriptors for the life of the process."""
        conn: Connection | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is None:
            return
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
        try:
            conn.close()
        except Exception:  # already gone; closing is only to free what it holds
            log.debug("closing a broken connection failed", exc_info=True)

    def _transaction(self, conn: Connection, fn: Callable[[Tx], T], write: bool) -> T:
        cur = conn.cursor()
        try:
            if write and self.dialect.begin_write:
                cur.execute(self.dialect.begin_write)
            result = fn(Tx(cur, self.dialect))
            conn.commit()
            return result
        except BaseException:
            try:
                conn.rollback()
            except Exception:  # the connection is gone; the original error says why
                log.debug("rollback failed", exc_info=True)
            raise

    def _migrate(self, conn: Connection) -> None:
        def apply(tx: Tx) -> None:
            if self.dialect.migration_lock:
                tx.execute(self.dialect.migration_lock)
            tx.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
            )
            done = {int(r[0]) for r in tx.all("SELECT version FROM schema_version")}
            for version, name in MIGRATIONS:
                if version in done:
                    continue
                text = resources.files("stockade.storage.migrations").joinpath(name).read_text(encoding="utf-8")
                for statement in split_statements(text):
                    tx.execute(statement)
                tx.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                log.info("storage migrated", extra={"store": self.url, "schema_version": version})
            newest = max(v for v, _ in MIGRATIONS)
            if done and max(done) > newest:
                raise StorageError(f"the database schema (v{max(done)}) is newer than this Stockade (v{newest})")

        self._transaction(conn, apply, True)

    def close(self) -> None:
        def close_all() -> None:
            with self._lock:
                for conn in self._connections:
                    try:
                        conn.close()
                    except Exception:
                        log.debug("close failed", exc_info=True)
                self._connections.clear()

        self._executor.submit(close_all).result()
        self._executor.shutdown(wait=True)


class _Broken(StorageError):
    """The connection failed (not the statement): the thread reconnects on its next call."""


def broken(message: str) -> StorageError:
    return _Broken(message)


def conflict(message: str) -> StorageError:
    return ConflictError(message)


def missing(message: str) -> StorageError:
    return NotFoundError(message)


def split_statements(text: str) -> list[str]:
    """Statements of a migration file (no semicolons inside literals there; `--` comments dropped)."""
    lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def record(tx: Tx, entry: audit.Entry, actor: str, at: float) -> None:
    """Append to the admin change log and the change feed, in the caller's transaction."""
    row = tx.one("UPDATE change_seq SET value = value + 1 WHERE id = 1 RETURNING value")
    assert row is not None  # noqa: S101 - the migration inserts the row
    seq = int(row[0])
    tx.execute(
        "INSERT INTO admin_changes (seq, at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?, ?)",
        (seq, at, actor, entry.action, entry.target, dumps(entry.detail)),
    )
    tx.execute("INSERT INTO change_feed (seq, kind, ref, at) VALUES (?, ?, ?, ?)", (seq, entry.kind, entry.ref, at))


def must(row: Row | None, what: str) -> Row:
    if row is None:
        raise NotFoundError(f"no {what}")
    return row
