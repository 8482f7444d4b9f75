"""Store fixtures: every backend the contract suite runs against (PostgreSQL mandatory when CI=true)."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from stockade.storage.base import Store
from stockade.storage.memory import MemoryStore
from stockade.storage.sqlite import SqliteStore

POSTGRES_URL_ENV = "STOCKADE_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
BACKENDS = ["memory", "sqlite", "postgres"]


def postgres_url() -> str:
    return os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL)


def require_postgres() -> str:
    """The test PostgreSQL URL; fails under CI=true when unreachable, else skips with the reason."""
    import psycopg

    url = postgres_url()
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error as exc:
        reason = f"PostgreSQL at {url} unreachable ({str(exc).strip()[:120]}); set {POSTGRES_URL_ENV} to use another"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires PostgreSQL: {reason}")
        pytest.skip(reason)
    return url


def postgres_store_url() -> str:
    """A URL with a fresh schema, so runs (and parallel engineers) never see each other's rows."""
    base = require_postgres()
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}schema=stockade_test_{secrets.token_hex(6)}"


def make_store(kind: str, tmp_path: Path) -> Store:
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SqliteStore(tmp_path / "stockade.db")
    from stockade.storage.postgres import PostgresStore

    return PostgresStore(postgres_store_url())


def dispose(store: Store) -> None:
    async def run() -> None:
        drop = getattr(store, "drop_schema", None)
        if drop is not None:
            await drop()
        await store.close()

    asyncio.run(run())


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = make_store(request.param, tmp_path)
    try:
        yield s
    finally:
        dispose(s)
