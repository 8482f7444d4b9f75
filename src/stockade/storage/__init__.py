"""Storage chosen by URL (`memory://`, `sqlite:///PATH`, `postgresql://...`) and the process-wide shared store."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from stockade.errors import StorageError
from stockade.storage.base import ConflictError, NotFoundError, Store

if TYPE_CHECKING:
    from stockade.pipeline.stage import Services

__all__ = [
    "STORAGE_BACKENDS",
    "ConflictError",
    "NotFoundError",
    "Store",
    "mask_url",
    "shared_store",
    "storage_from_url",
    "userinfo_at",
]

# Explicit registry: a backend's driver is imported only when a URL names it.
STORAGE_BACKENDS: dict[str, str] = {
    "memory": "stockade.storage.memory:MemoryStore",
    "sqlite": "stockade.storage.sqlite:SqliteStore",
    "postgresql": "stockade.storage.postgres:PostgresStore",
    "postgres": "stockade.storage.postgres:PostgresStore",
}
SHARED_KEY = "store"


class _FromUrl(Protocol):
    @classmethod
    def from_url(cls, url: str, base_dir: Path) -> Store: ...


def scheme_of(url: str) -> str:
    return url.partition(":")[0].lower()


def mask_url(url: str) -> str:
    """The URL with any password replaced, for logs and messages: the one in the user info (`userinfo_at`) and a
    `password=` query parameter (libpq's documented alternative)."""
    head, sep, rest = url.partition("://")
    if not sep:
        return url
    cut, _ = userinfo_at(rest)
    if cut >= 0:
        user, colon, _ = rest[:cut].partition(":")
        if colon:
            rest = f"{user}:***{rest[cut:]}"
    return head + sep + _PASSWORD_PARAM.sub(r"\1***", rest)


def userinfo_at(rest: str) -> tuple[int, int]:
    """Where, in the part of a URL after `://`, the user info ends (its `@`) and the query starts (its `?`); -1 for
    none. libpq takes `#`, `/`, `?` and `@` unencoded in a password where urlsplit would not, so the user info ends
    at the last `@` before the first `?` that follows an `@` - unless what comes before that `@` reads as a query
    (`?name=`) and it cannot be user info: a path came first (`h/db?user=a@b`), what follows the `@` is no host
    (`h?user=a@b&password=...`), or `name` is a libpq parameter and no password comes before the `?` (`h?user=a@b`,
    `h:5432?user=a@b`). Then the `@` belongs to a query value (and the query starts at that `?`). Any other shape
    is read as libpq reads it (`svc:1234?ab=9@h` is user `svc` with password `1234?ab=9`: `ab` is no parameter)."""
    query_at = rest.find("?", rest.find("@") + 1)
    cut = rest.rfind("@", 0, query_at if query_at >= 0 else len(rest))
    if cut >= 0 and (named := _QUERY_NAME.search(rest, 0, cut)) is not None:
        before = rest[: named.start()]
        after = re.split(r"[/?]", rest[cut + 1 :], maxsplit=1)[0]
        bare = re.sub(r"\[[^\]]*\]", "", before)  # an IPv6 literal's colons are no password separator
        no_password = ":" not in bare or bare.rpartition(":")[2].isdigit()
        if "/" in before or re.search("[&=]", after) or (named.group()[1:-1] in _LIBPQ_PARAMS and no_password):
            cut = rest.rfind("@", 0, named.start())
    return cut, rest.find("?", cut + 1)


_PASSWORD_PARAM = re.compile(r"(?i)([?&](?:password|sslpassword)=)[^&]*")
_QUERY_NAME = re.compile(r"\?[A-Za-z_][A-Za-z0-9_]*=")
# The names libpq reads in a URL's query (libpq 17, PQconndefaults), and the store's own `schema`.
_LIBPQ_PARAMS = frozenset(
    """application_name channel_binding client_encoding connect_timeout dbname fallback_application_name
    gssdelegation gssencmode gsslib host hostaddr keepalives keepalives_count keepalives_idle keepalives_interval
    krbsrvname load_balance_hosts max_protocol_version min_protocol_version oauth_client_id oauth_client_secret
    oauth_issuer oauth_scope options passfile password port replication require_auth requirepeer scram_client_key
    scram_server_key service ssl_max_protocol_version ssl_min_protocol_version sslcert sslcertmode sslcompression
    sslcrl sslcrldir sslkey sslkeylogfile sslmode sslnegotiation sslpassword sslrootcert sslsni target_session_attrs
    tcp_user_timeout user schema""".split()
)


def check_url(url: str) -> str | None:
    """A problem with a storage URL (for config validation), or None. Does not connect."""
    scheme = scheme_of(url)
    if scheme not in STORAGE_BACKENDS:
        known = ", ".join(f"{s}://" for s in STORAGE_BACKENDS)
        return f"unsupported storage URL {mask_url(url)!r}; use one of {known}"
    if scheme == "sqlite" and not url.lower().startswith("sqlite:///"):
        return "sqlite URLs look like sqlite:///relative/path.db or sqlite:////absolute/path.db"
    if scheme in ("postgresql", "postgres"):
        return _libpq_problem(url)
    return None


def _libpq_problem(url: str) -> str | None:
    """What libpq would refuse in the URL, read as the store will hand it over (without connecting)."""
    try:
        from stockade.storage.postgres import check_conninfo, split_schema
    except ImportError:  # no driver: making the store says so
        return None
    try:
        check_conninfo(url, split_schema(url)[0])
    except StorageError as exc:
        return str(exc)
    return None


def storage_from_url(url: str, *, base_dir: Path | None = None) -> Store:
    """A store for `url` (not yet connected: backends connect and migrate on first use).

    Relative sqlite paths resolve against `base_dir` (the config file's directory), else the working directory.
    """
    problem = check_url(url)
    if problem is not None:
        raise StorageError(problem)
    module_name, _, attr = STORAGE_BACKENDS[scheme_of(url)].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise StorageError(f"the {scheme_of(url)} backend needs a driver that is not installed: {exc}") from None
    cls = cast(_FromUrl, getattr(module, attr))
    return cls.from_url(url, base_dir or Path.cwd())


def shared_store(services: Services) -> Store:
    """The process's store (`services.shared["store"]`), created on first use from `services.config.storage`."""
    services.need("store")
    store = services.shared.get(SHARED_KEY)
    if store is None:
        if services.config is None:
            raise StorageError("no configuration: the store URL is unknown")
        url = "memory://" if services.dry_run else services.config.storage  # a check creates no database
        store = storage_from_url(url, base_dir=services.base_dir)
        services.shared[SHARED_KEY] = store
    return cast(Store, store)
