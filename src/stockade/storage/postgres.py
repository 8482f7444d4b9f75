"""`postgresql://...`: the store for several nodes (psycopg 3; an optional `?schema=NAME` isolates a tenant/test)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pgerrors

from stockade.errors import StorageError
from stockade.storage import mask_url
from stockade.storage.sql import Connection, Dialect, SqlEngine, broken, conflict, missing
from stockade.storage.sqlstore import SqlStore

THREADS = 4  # concurrent queries per process (each thread has its own connection)
CONNECT_TIMEOUT = 5
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_LOCK_ID = 0x5374_6B64  # pg_advisory_xact_lock key: one migrator at a time


def _classify(exc: BaseException) -> StorageError | None:
    if isinstance(exc, pgerrors.UniqueViolation):
        return conflict(f"postgresql: {exc.diag.message_primary or exc}")
    if isinstance(exc, pgerrors.ForeignKeyViolation):
        return missing(f"postgresql: {exc.diag.message_primary or exc}")
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return broken(f"postgresql: {str(exc).strip() or type(exc).__name__}")
    if isinstance(exc, psycopg.Error):
        return StorageError(f"postgresql: {str(exc).strip() or type(exc).__name__}")
    return None


DIALECT = Dialect("postgresql", "%s", None, f"SELECT pg_advisory_xact_lock({_LOCK_ID})", _classify)


def split_schema(url: str) -> tuple[str, str | None]:
    """The libpq URL without our `schema` parameter, and the schema (validated)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    if schema is not None and not _SCHEMA.fullmatch(schema):
        raise StorageError(f"schema {schema!r} must match {_SCHEMA.pattern}")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    scheme = "postgresql" if parts.scheme == "postgres" else parts.scheme
    return urlunsplit((scheme, parts.netloc, parts.path, rest, parts.fragment)), schema


class PostgresStore(SqlStore):
    @classmethod
    def from_url(cls, url: str, base_dir: Path) -> PostgresStore:
        return cls(url)

    def __init__(self, url: str) -> None:
        conninfo, schema = split_schema(url)
        self.schema = schema

        def connect() -> Connection:
            conn = psycopg.connect(conninfo, autocommit=False, connect_timeout=CONNECT_TIMEOUT)
            if schema is not None:
                try:
                    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                    conn.commit()
                except (pgerrors.UniqueViolation, pgerrors.DuplicateSchema):
                    conn.rollback()  # another process created it at the same moment
                conn.execute(f'SET search_path TO "{schema}"')
                conn.commit()
            return conn

        super().__init__(SqlEngine(mask_url(url), connect, DIALECT, threads=THREADS))

    async def drop_schema(self) -> None:
        """Drop this store's schema and everything in it (tests clean up with it)."""
        if self.schema is None:
            raise StorageError("no schema in the URL: refusing to drop anything")
        schema = self.schema
        await self.engine.write(lambda tx: tx.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
