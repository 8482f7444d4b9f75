"""`stockade admin token create|list|revoke` and `stockade admin changes`: admin API access and its audit trail."""

from __future__ import annotations

import click
import orjson

from stockade.cli.common import config_option
from stockade.cli.identity_common import parse_duration, when, with_service
from stockade.identity.service import IdentityService, Issued
from stockade.storage.records import ADMIN_ROLES, AdminChange, AdminToken


@click.group("admin")
def admin_group() -> None:
    """Admin API tokens and the admin change log."""


@admin_group.group("token")
def token_group() -> None:
    """Bearer tokens for the admin API (stored as keyed hashes, shown once)."""


@token_group.command("create")
@config_option
@click.option("--role", type=click.Choice(ADMIN_ROLES), required=True, help="viewer < operator < admin.")
@click.option("--name", default=None, help="Who or what the token is for (recorded with every change it makes).")
@click.option("--ttl", default=None, help="Lifetime (3600, 12h, 30d); default: no expiry.")
@click.pass_context
def create(ctx: click.Context, config_path: str | None, role: str, name: str | None, ttl: str | None) -> None:
    """Create an admin token. The token is the last line of stdout, printed once."""
    seconds = parse_duration(ttl, "--ttl")

    async def work(s: IdentityService) -> Issued:
        return await s.create_admin_token(name or role, role, ttl=seconds)

    issued = with_service(ctx, config_path, work)
    click.echo(f"created admin token {issued.record.id} (role {role}); shown only once:", err=True)
    click.echo(issued.secret)


@token_group.command("list")
@config_option
@click.pass_context
def list_(ctx: click.Context, config_path: str | None) -> None:
    """List admin tokens (never the tokens themselves)."""

    async def work(s: IdentityService) -> tuple[list[AdminToken], float]:
        return await s.store.list_admin_tokens(), s.clock.time()

    tokens, now = with_service(ctx, config_path, work)
    for t in tokens:
        state = "revoked" if t.revoked_at else "active" if t.usable(now) else "expired"
        click.echo(
            f"{t.id}  {t.name}  role={t.role}  {state}  created={when(t.created_at)}  expires={when(t.expires_at)}"
        )


@token_group.command("revoke")
@config_option
@click.argument("token_id")
@click.pass_context
def revoke(ctx: click.Context, config_path: str | None, token_id: str) -> None:
    """Revoke an admin token by id."""

    async def work(s: IdentityService) -> None:
        await s.revoke_admin_token(token_id)

    with_service(ctx, config_path, work)
    click.echo(f"revoked admin token {token_id}")


@admin_group.command("changes")
@config_option
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def changes(ctx: click.Context, config_path: str | None, limit: int, as_json: bool) -> None:
    """The admin change log, newest first: who changed what, when."""

    async def work(s: IdentityService) -> list[AdminChange]:
        return await s.store.list_admin_changes(limit=limit)

    for c in with_service(ctx, config_path, work):
        if as_json:
            doc = {"seq": c.seq, "at": when(c.at), "actor": c.actor, "action": c.action, "target": c.target}
            click.echo(orjson.dumps({**doc, "detail": dict(c.detail)}).decode())
        else:
            click.echo(f"{c.seq:>6}  {when(c.at)}  {c.actor}  {c.action}  {c.target}")
