"""`stockade lockouts list|clear`: brute-force lockouts in the shared limits backend (`limits_storage`)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit

import click

from stockade.cli.common import config_option, load_or_exit, resolve_config_path
from stockade.cli.identity_common import cli_actor
from stockade.clock import SYSTEM_CLOCK
from stockade.config.loader import LoadedConfig
from stockade.errors import StorageError
from stockade.ratelimit.backend import REDIS_SCHEMES, LimiterBackend, LimiterUnavailableError
from stockade.ratelimit.keys import IpGrouper
from stockade.security.netaddr import parse_ip
from stockade.storage import audit, storage_from_url

T = TypeVar("T")


def _run(loaded: LoadedConfig, op: Callable[[LimiterBackend, LoadedConfig], Awaitable[T]]) -> T:
    url = loaded.config.limits_storage
    if urlsplit(url).scheme not in REDIS_SCHEMES:
        click.echo(
            f"limits_storage is {url}: lockouts live inside the running gateway process. "
            "Use its admin API instead (GET /lockouts, POST /lockouts/clear).",
            err=True,
        )
        sys.exit(1)
    from stockade.ratelimit.redis import RedisBackend

    async def go() -> T:
        backend = RedisBackend(url, SYSTEM_CLOCK)
        try:
            return await op(backend, loaded)
        finally:
            await backend.aclose()

    try:
        return asyncio.run(go())
    except LimiterUnavailableError as exc:
        click.echo(f"limits backend unavailable: {exc}", err=True)
        sys.exit(3)  # as a store outage in the other groups: a script must tell it from "no such lockout" (1)
    except StorageError as exc:
        click.echo(f"lockout lifted, but the admin change log could not record it: {exc}", err=True)
        sys.exit(3)


def _username_subject(loaded: LoadedConfig, username: str) -> str:
    """`user:<keyed hash>`, with the pepper the gateway uses (read, never generated: a new one matches nothing)."""
    from stockade.security.keys import username_key
    from stockade.security.secrets import SecretsError, load_pepper
    from stockade.stages.ratelimit.brute_force import hash_username

    try:
        pepper = load_pepper(loaded.config.secrets, loaded.base_dir)
    except SecretsError as exc:
        why = "--username needs the gateway's pepper (usernames are counted keyed with it)"
        click.echo(f"error: {exc}: {why}", err=True)
        sys.exit(2)
    return f"user:{hash_username(username_key(pepper), username)}"


@click.group("lockouts")
def lockouts_group() -> None:
    """List and lift brute-force lockouts (subjects are `ip:<address>`, `id:<hash>` or `user:<hash>`; the hashes
    are keyed with the pepper)."""


@lockouts_group.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def list_cmd(ctx: click.Context, config_path: str | None, as_json: bool) -> None:
    """Subjects backing off or locked out right now."""
    from stockade.admin.lockouts import lockout_json

    items = _run(load_or_exit(resolve_config_path(ctx, config_path)), lambda b, _: b.lockouts())
    now = SYSTEM_CLOCK.time()
    rows = [lockout_json(lk, now) for lk in items]
    if as_json:
        click.echo(json.dumps({"lockouts": rows}, indent=2))
        return
    if not rows:
        click.echo("no lockouts")
        return
    width = max(len(r["subject"]) for r in rows)
    click.echo(f"{'SUBJECT':<{width}}  {'STATE':<11}  FAILURES  SECONDS LEFT")
    for r in rows:
        click.echo(f"{r['subject']:<{width}}  {r['state']:<11}  {r['failures']:>8}  {r['seconds_left']:>12}")


@lockouts_group.command("clear")
@config_option
@click.argument("subject", required=False)
@click.option("--ip", help="Lift the lockout of this client address (IPv6: its /64, the default grouping).")
@click.option("--username", help="Lift the lockout of this login-route username (needs the gateway's pepper).")
@click.option("--all", "everything", is_flag=True, help="Lift every lockout.")
@click.pass_context
def clear_cmd(
    ctx: click.Context,
    config_path: str | None,
    subject: str | None,
    ip: str | None,
    username: str | None,
    everything: bool,
) -> None:
    """Lift the lockout of SUBJECT (as `lockouts list` shows it), of --ip, of --username, or --all.

    --username reads the gateway's pepper (STOCKADE_PEPPER, else `secrets.pepper_file` or .stockade/pepper next
    to the config) and never generates one.
    """
    chosen = [x for x in (subject, ip, username) if x] + (["all"] if everything else [])
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of SUBJECT, --ip, --username or --all")
    loaded = load_or_exit(resolve_config_path(ctx, config_path))
    if ip is not None:
        addr = parse_ip(ip)
        if addr is None:
            raise click.BadParameter(f"{ip!r} is not an IP address", param_hint="--ip")
        subject = f"ip:{IpGrouper(64)(str(addr))}"
    elif username is not None:
        subject = _username_subject(loaded, username)
    target = None if everything else subject

    async def clear(backend: LimiterBackend, loaded: LoadedConfig) -> int:
        cleared = await backend.clear(target)
        if cleared:  # the admin change log lives in the store, the lockouts in the limits backend
            store = storage_from_url(loaded.config.storage, base_dir=loaded.base_dir)
            try:
                entry = audit.lockout_cleared(target, cleared)
                await store.record_admin_action(entry, actor=cli_actor(), at=SYSTEM_CLOCK.time())
            finally:
                await store.close()
        return cleared

    cleared = _run(loaded, clear)
    if target is not None and not cleared:
        hint = " (is this the gateway's pepper? usernames are counted keyed with it)" if username else ""
        click.echo(f"{target}: no lockout{hint}", err=True)
        sys.exit(1)
    click.echo(f"cleared {cleared} lockout{'s' if cleared != 1 else ''}")
