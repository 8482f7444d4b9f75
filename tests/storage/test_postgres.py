"""The PostgreSQL store's URL handling: our `schema` parameter is taken out and everything else reaches libpq as
libpq itself reads it; messages never show a password."""

from __future__ import annotations

import asyncio
import secrets
from urllib.parse import quote

import pytest
from psycopg.conninfo import conninfo_to_dict

from stockade.errors import StorageError
from stockade.storage.postgres import PostgresStore, split_schema
from tests.storage.conftest import dispose, require_postgres

URL_SHAPES = [
    "postgresql://u@h/db",
    "postgresql:///db",  # no host: libpq's default (the Unix socket)
    "postgresql:///db?host=/var/run/postgresql",  # a socket directory in host=
    "postgresql:///db?host=127.0.0.1&user=postgres",
    "postgresql://%2Fvar%2Frun%2Fpostgresql/db",  # a socket directory as the (percent-encoded) host
    "postgresql://u@/db?host=/tmp",  # user@ and an empty host
    "postgresql://u:pw@h:5433/db",
    "postgresql://[::1]:5433/db",
    "postgresql://u@[2001:db8::1]/db?sslmode=require",
    "postgresql://h1:5432,h2:5433/db?target_session_attrs=read-write",
    "postgresql://u:p%40ss%2Fw%3Fd%20x@h/db",  # percent-encoded password
    "postgresql://u:pa#ss@h/db",  # libpq takes `#` unencoded in a password
    "postgresql://u@h/db?options=-c%20statement_timeout%3D5000",  # %20 must not become `+`
    "postgresql://u@h/db?application_name=a+b",  # a `+` is a `+` to libpq
    "postgres://u@h/db",
    "postgresql://",
]


def with_schema(url: str, where: str) -> str:
    if where == "none":
        return url
    base, sep, query = url.partition("?")
    params = query.split("&") if sep else []
    params = ["schema=tenant_a", *params] if where == "first" else [*params, "schema=tenant_a"]
    return f"{base}?{'&'.join(params)}"


@pytest.mark.parametrize("where", ["none", "first", "last"])
@pytest.mark.parametrize("url", URL_SHAPES)
def test_split_schema_leaves_the_url_as_libpq_reads_it(url: str, where: str) -> None:
    """`postgresql:///db?host=...` came out as `postgresql:/db?...` (urlunsplit drops an empty authority), which
    libpq refuses; re-encoding the query also turned `%20` into `+`, which libpq does not decode."""
    conninfo, schema = split_schema(with_schema(url, where))
    assert conninfo_to_dict(conninfo) == conninfo_to_dict(url)
    assert schema == (None if where == "none" else "tenant_a")


def test_split_schema_finds_the_query_after_a_password_with_a_question_mark() -> None:
    url = "postgresql://u:pa?ss@h/db?sslmode=require&schema=tenant_a"
    conninfo, schema = split_schema(url)
    assert schema == "tenant_a"
    assert conninfo_to_dict(conninfo) == {"user": "u", "password": "pa?ss", "host": "h", "dbname": "db"} | {
        "sslmode": "require"
    }


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://u@h/db?schema=Bad-Name", "must match"),
        ("postgresql://u@h/db?schema=a&schema=b", "more than once"),
        ("postgresql://u:SECRET%zz@h/db", "invalid percent-encoded token"),
        ("postgresql://u@h/db?password=SECRET%zz", "invalid percent-encoded token"),
        ("postgresql://u:SECRET@h/db?nonsense=1", "invalid URI query parameter"),
    ],
    ids=["bad-schema", "two-schemas", "bad-password-encoding", "bad-password-param", "unknown-parameter"],
)
def test_a_url_libpq_refuses_is_a_storage_error_without_the_password(url: str, message: str) -> None:
    """libpq's own message quotes the token it could not read, which may be the password."""
    with pytest.raises(StorageError, match=message) as caught:
        PostgresStore(url)
    assert "SECRET" not in str(caught.value)


def test_a_host_less_url_connects() -> None:
    """The shape the docs of libpq give for a socket directory or a host in the query, on the real server."""
    parts = conninfo_to_dict(require_postgres())
    query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in parts.items() if k != "dbname")
    store = PostgresStore(f"postgresql:///{parts['dbname']}?{query}&schema=stockade_test_{secrets.token_hex(6)}")
    try:
        asyncio.run(store.ping())
    finally:
        dispose(store)
