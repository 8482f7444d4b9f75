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


# An `@` in a query value, written as people write it, and the same URL as libpq needs it (`%40`): libpq reads
# everything up to the first `@` before any `/` as user info, query or not.
AT_IN_QUERY = [
    ("postgresql://127.0.0.1?user=svc@tenant&password=pw", "postgresql://127.0.0.1?user=svc%40tenant&password=pw"),
    ("postgresql://127.0.0.1?user=svc@tenant", "postgresql://127.0.0.1?user=svc%40tenant"),
    ("postgresql://127.0.0.1?password=pw&user=svc@tenant", "postgresql://127.0.0.1?password=pw&user=svc%40tenant"),
    ("postgresql://h:5433?user=svc@tenant&sslmode=require", "postgresql://h:5433?user=svc%40tenant&sslmode=require"),
    ("postgresql://[::1]:5433?user=svc@tenant", "postgresql://[::1]:5433?user=svc%40tenant"),
    # read right before too (a path or user info comes first): they guard the rule that finds the query
    ("postgresql://h/db?user=svc@tenant&password=pw", "postgresql://h/db?user=svc%40tenant&password=pw"),
    ("postgresql:///db?host=/tmp&user=svc@tenant", "postgresql:///db?host=/tmp&user=svc%40tenant"),
    ("postgresql://u:pw@h?application_name=a@b", "postgresql://u:pw@h?application_name=a%40b"),
]


@pytest.mark.parametrize("where", ["none", "first", "last"])
@pytest.mark.parametrize(("url", "meant"), AT_IN_QUERY, ids=[u for u, _ in AT_IN_QUERY])
def test_split_schema_hands_libpq_an_at_sign_in_a_query_value_encoded(url: str, meant: str, where: str) -> None:
    """`postgresql://h?user=svc@tenant&password=...` went to libpq as written: it connected to a host named
    `tenant&password=...` and its error message quoted the password."""
    conninfo, schema = split_schema(with_schema(url, where))
    assert conninfo_to_dict(conninfo) == conninfo_to_dict(meant)
    assert schema == (None if where == "none" else "tenant_a")


@pytest.mark.parametrize("password", ["pa?ss", "p?sslmode=x", "1234?ab=9", "12?x=y"])  # some read like a query
def test_split_schema_finds_the_query_after_a_password_with_a_question_mark(password: str) -> None:
    url = f"postgresql://u:{password}@h/db?sslmode=require&schema=tenant_a"
    conninfo, schema = split_schema(url)
    assert schema == "tenant_a"
    assert conninfo_to_dict(conninfo) == {"user": "u", "password": password, "host": "h", "dbname": "db"} | {
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


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:p@[::1", "'postgresql://u:***@[::1'"),  # a one-letter password: not every `p` is it
        ("postgresql://u:ql@[::1", "'postgresql://u:***@[::1'"),
        ("postgresql://u:s%45CRET@[::1", "'postgresql://u:***@[::1'"),
    ],
    ids=["one-letter", "inside-a-word", "percent-encoded"],
)
def test_a_short_password_is_masked_where_it_stands_not_in_every_word(url: str, shown: str) -> None:
    """The password was replaced wherever its letters appeared: `postgresql://u:p@[::1` gave
    `***ostgresql://u:***@[::1`, and the decoded form of a percent-encoded one was not masked at all."""
    with pytest.raises(StorageError) as caught:
        PostgresStore(url)
    message = str(caught.value)
    assert message.startswith(f"storage URL {shown}: "), message
    assert message.endswith(f'in URI: "{shown[1:-1]}"'), message  # libpq's quote of the URL, masked alike
    assert "sECRET" not in message and "s%45CRET" not in message


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://127.0.0.1:1?user=svc@tenant&password=SECRET&connect_timeout=1",
        "postgresql://u:SECRET@host-SECRET.invalid/db?connect_timeout=1",  # libpq quotes the host it could not find
    ],
    ids=["at-in-query", "quoted-host"],
)
def test_a_connection_error_never_shows_the_password(url: str) -> None:
    """Only the URL check masked libpq's message; a failed connection's went to the log as libpq wrote it."""
    store = PostgresStore(url)
    with pytest.raises(StorageError) as caught:
        asyncio.run(store.ping())
    asyncio.run(store.close())
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
