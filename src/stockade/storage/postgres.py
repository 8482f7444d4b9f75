"""`postgresql://...`: the store for several nodes (psycopg 3; an optional `?schema=NAME` isolates a tenant/test)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import psycopg
from psycopg import errors as pgerrors
from psycopg.conninfo import conninfo_to_dict

from stockade.errors import StorageError
from stockade.storage import mask_url, userinfo_at
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
    """The libpq URI without our `schema` parameter, and the schema (validated).

    Only that parameter is cut out, and an `@` in the query encoded; the rest goes to libpq byte for byte. Taking the
    URL apart and putting it back together with urllib lost an empty host (`postgresql:///db?host=/run/postgresql`
    became `postgresql:/db?...`), turned `%20` into `+` (libpq decodes only `%`), and read a `#` in a password as
    the start of a fragment. libpq itself reads everything up to the first `@` before any `/` as user info, even in
    the query: `postgresql://h?user=svc@tenant&password=...` went to a host named after the rest of the URL - and
    the error message quoted the password.
    """
    _, sep, rest = url.partition("://")
    if not sep:
        raise StorageError(f"storage URL {mask_url(url)!r} is not a postgresql:// URI")
    _, query_at = userinfo_at(rest)
    base, params = (rest, []) if query_at < 0 else (rest[:query_at], rest[query_at + 1 :].split("&"))
    found = [unquote(p.partition("=")[2]) for p in params if unquote(p.partition("=")[0]) == "schema"]
    kept = [p.replace("@", "%40") for p in params if unquote(p.partition("=")[0]) != "schema"]
    if len(found) > 1:
        raise StorageError("the schema parameter is given more than once")
    schema = found[0] if found else None
    if schema is not None and not _SCHEMA.fullmatch(schema):
        raise StorageError(f"schema {schema!r} must match {_SCHEMA.pattern}")
    return "postgresql://" + base + ("?" + "&".join(kept) if kept else ""), schema


def check_conninfo(url: str, conninfo: str) -> None:
    """Let libpq read the URI now (it does not connect), so a malformed one is an error at start-up. libpq quotes
    the token it could not read, which may be the password: any password in the URL is masked in the message."""
    try:
        conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        raise StorageError(f"storage URL {mask_url(url)!r}: {masked(str(exc).strip(), url)}") from None


def masked(message: str, url: str) -> str:
    """libpq's message with every string of `url` that may be a password replaced (it may quote a token it could not
    read, or a host or user name it took from the wrong part of the URL)."""
    message = message.replace(url, mask_url(url))  # libpq quoting the whole URL
    for secret in _passwords(url):
        # Where it stands as a token, not inside a word: a short password ("p") is in most words of the message.
        # In the URL a password is bounded by `:`/`=` and `@`/`&`, so a token libpq quotes from it is bounded too.
        message = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", message)
    return message


def _passwords(url: str) -> list[str]:
    """Every string of `url` that may be a password, as written (for masking; longest first)."""
    found = re.findall(r"(?i)[?&](?:ssl)?password=([^&]*)", url)
    rest = url.partition("://")[2]
    userinfo, at, _ = rest.rpartition("@")  # as mask_url does: the widest reading of where user info may end
    if at and ":" in userinfo:
        found.append(userinfo.partition(":")[2])
    found += [decoded for s in found if (decoded := unquote(s)) != s]  # as libpq decodes it
    return sorted((s for s in found if s), key=len, reverse=True)


class PostgresStore(SqlStore):
    @classmethod
    def from_url(cls, url: str, base_dir: Path) -> PostgresStore:
        return cls(url)

    def __init__(self, url: str) -> None:
        conninfo, schema = split_schema(url)
        check_conninfo(url, conninfo)
        self.schema = schema

        def connect() -> Connection:
            try:
                conn = psycopg.connect(conninfo, autocommit=False, connect_timeout=CONNECT_TIMEOUT)
            except psycopg.Error as exc:  # its message may name what libpq took for a host or user: the password
                raise type(exc)(masked(str(exc), url)) from None
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
