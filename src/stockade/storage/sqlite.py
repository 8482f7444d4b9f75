"""`sqlite:///PATH`: the embedded default store (one file, WAL, shared by workers and the CLI)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from stockade.errors import StorageError
from stockade.storage.sql import Connection, Dialect, SqlEngine, broken, conflict, missing
from stockade.storage.sqlstore import SqlStore

BUSY_TIMEOUT_MS = 5000  # concurrent writers (workers, the CLI) wait for the lock instead of failing
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)  # primary result codes (extended ones carry them in the low byte)


def _classify(exc: BaseException) -> StorageError | None:
    if isinstance(exc, sqlite3.IntegrityError):
        text = str(exc)
        if "FOREIGN KEY" in text:
            return missing(f"sqlite: {text}")
        return conflict(f"sqlite: {text}")
    if isinstance(exc, sqlite3.OperationalError) and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _BUSY:
        return StorageError(f"sqlite: {exc}")  # another writer held the lock past the busy timeout: not broken
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError):
        return broken(f"sqlite: {exc}")
    if isinstance(exc, sqlite3.Error | OSError):
        return StorageError(f"sqlite: {exc}")
    return None


DIALECT = Dialect("sqlite", "?", "BEGIN IMMEDIATE", None, _classify)


def path_from_url(url: str, base_dir: Path) -> Path:
    """`sqlite:///rel/x.db` is relative to base_dir, `sqlite:////abs/x.db` absolute (the SQLAlchemy convention)."""
    raw = url[len("sqlite:///") :].split("?", 1)[0]
    if not raw:
        raise StorageError("sqlite URL has no path: use sqlite:///stockade.db")
    path = Path(raw)
    return path if path.is_absolute() else base_dir / path


class SqliteStore(SqlStore):
    @classmethod
    def from_url(cls, url: str, base_dir: Path) -> SqliteStore:
        return cls(path_from_url(url, base_dir), url)

    def __init__(self, path: Path, url: str | None = None) -> None:
        self.path = path

        def connect() -> Connection:
            try:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                if not path.exists():  # hashes only, but still nobody else's business
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            except OSError as exc:
                raise StorageError(f"sqlite: cannot create {path}: {exc.strerror or exc}") from None
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            return conn

        super().__init__(SqlEngine(url or f"sqlite:///{path}", connect, DIALECT, threads=1))
