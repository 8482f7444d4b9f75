"""What the identity command groups share: opening the store and secrets from the config, durations, errors."""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import click

from stockade.cli.common import load_or_exit, resolve_config_path
from stockade.clock import SYSTEM_CLOCK
from stockade.errors import StorageError
from stockade.identity.service import IdentityService, InvalidInput
from stockade.security.crypto import CryptoError
from stockade.security.secrets import Secrets, SecretsError, load_secrets, verify_with_store
from stockade.storage import storage_from_url
from stockade.storage.base import ConflictError, NotFoundError, Store

T = TypeVar("T")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str | None, option: str) -> float | None:
    """`90`, `90s`, `15m`, `12h`, `30d`, `2w` -> seconds."""
    if value is None:
        return None
    m = _DURATION.fullmatch(value.strip())
    if m is None:
        raise click.BadParameter(f"{value!r} is not a duration like 3600, 15m, 12h or 30d", param_hint=option)
    return float(m.group(1)) * _UNITS[m.group(2)]


def cli_actor() -> str:
    """`cli:user@host` for the admin change log: the user from the password database, not from $LOGNAME/$USER
    (which anyone sets: `LOGNAME="admin-token:adm_x (ops)"` forged another actor, a newline in it a log line)."""
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    actor = f"cli:{user}@{socket.gethostname()}"
    return "".join(c if c.isprintable() else "?" for c in actor)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def open_store(ctx: click.Context, config_path: str | None, *, generate: bool = True) -> tuple[Store, Secrets]:
    """The configured store (not connected yet) and secrets; a config, storage URL or secrets problem exits 2.
    `generate=False`: missing secret files are an error, never made (re-sealing under a KEK made up on the spot
    would lose the keys)."""
    loaded = load_or_exit(resolve_config_path(ctx, config_path))
    config = loaded.config.secrets if generate else loaded.config.secrets.model_copy(update={"generate": False})
    try:
        secrets = load_secrets(config, loaded.base_dir)
        store = storage_from_url(loaded.config.storage, base_dir=loaded.base_dir)
    except (SecretsError, StorageError) as exc:
        fail(str(exc), 2)
    return store, secrets


def run_on_store(store: Store, secrets: Secrets, work: Callable[[], Awaitable[T]]) -> T:
    """Check the secrets against the store, run `work`, close the store. Errors become messages and the exit codes
    `stockade --help` lists: 1 refused, 2 secrets that do not match the store, 3 the store failed."""

    async def go() -> T:
        try:
            await verify_with_store(secrets, store, SYSTEM_CLOCK.time())
            return await work()
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except SecretsError as exc:
        fail(str(exc), 2)
    except (NotFoundError, ConflictError, InvalidInput) as exc:
        fail(str(exc))
    except (StorageError, CryptoError) as exc:
        fail(f"storage: {exc}", 3)


def with_store(
    ctx: click.Context,
    config_path: str | None,
    work: Callable[[Store, Secrets], Awaitable[T]],
    *,
    generate: bool = True,
) -> T:
    """Open the configured store and secrets, run `work` with both, close the store (see `open_store`)."""
    store, secrets = open_store(ctx, config_path, generate=generate)
    return run_on_store(store, secrets, lambda: work(store, secrets))


def with_service(ctx: click.Context, config_path: str | None, work: Callable[[IdentityService], Awaitable[T]]) -> T:
    """Open the configured store and secrets, run `work` with the identity service over them, close the store."""
    store, secrets = open_store(ctx, config_path)
    service = IdentityService(store, secrets.pepper, SYSTEM_CLOCK, cli_actor())
    return run_on_store(store, secrets, lambda: work(service))


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    import datetime

    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
