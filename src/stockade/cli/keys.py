"""`stockade keys create|list|revoke|rotate`: API keys, shown once and stored only as keyed hashes."""

from __future__ import annotations

import click
import orjson

from stockade.cli.common import config_option
from stockade.cli.identity_common import parse_duration, when, with_service
from stockade.clock import SYSTEM_CLOCK
from stockade.identity.service import IdentityService, Issued, check_key_options
from stockade.storage.base import NotFoundError
from stockade.storage.records import ApiKey


def _scopes(value: str | None) -> list[str]:
    return [s for s in (value or "").replace(" ", ",").split(",") if s]


def _show_issued(issued: Issued, what: str) -> None:
    """Details on stderr; the key alone as the last line of stdout (`KEY=$(stockade keys create ...)`)."""
    key = issued.record
    assert isinstance(key, ApiKey)  # noqa: S101 - narrowing: keys commands issue API keys
    scopes = " ".join(key.scopes) or "(none)"
    click.echo(
        f"{what} API key {key.id} (scopes: {scopes}; expires: {when(key.expires_at) if key.expires_at else 'never'})",
        err=True,
    )
    click.echo("Store the key now: it is shown only once and cannot be recovered.", err=True)
    click.echo(issued.secret)


@click.group("keys")
def keys_group() -> None:
    """Create, list, revoke and rotate API keys."""


@keys_group.command("create")
@config_option
@click.option("--consumer", required=True, help="Consumer name or id (created if no consumer has that name).")
@click.option("--scopes", default=None, help="Comma-separated scopes, e.g. books:read,books:write.")
@click.option("--ttl", default=None, help="Lifetime (3600, 15m, 12h, 30d); default: no expiry.")
@click.option("--env", default="live", show_default=True, help="Environment label in the key (stk_<env>_...).")
@click.option("--name", default=None, help="A label for the key.")
@click.pass_context
def create(
    ctx: click.Context,
    config_path: str | None,
    consumer: str,
    scopes: str | None,
    ttl: str | None,
    env: str,
    name: str | None,
) -> None:
    """Issue an API key for a consumer. The key is the last line of stdout, printed once."""
    seconds = parse_duration(ttl, "--ttl")

    async def work(s: IdentityService) -> Issued:
        check_key_options(scopes=_scopes(scopes), ttl=seconds, env=env, name=name)  # before a consumer is created
        try:
            await s.store.get_consumer(consumer)
        except NotFoundError:
            created = await s.create_consumer(consumer)
            click.echo(f"created consumer {created.name} ({created.id})", err=True)
        return await s.create_key(consumer, scopes=_scopes(scopes), ttl=seconds, env=env, name=name)

    _show_issued(with_service(ctx, config_path, work), "created")


@keys_group.command("list")
@config_option
@click.option("--consumer", default=None, help="Only this consumer's keys.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def list_(ctx: click.Context, config_path: str | None, consumer: str | None, as_json: bool) -> None:
    """List API keys (ids and attributes; never the keys themselves)."""

    async def work(s: IdentityService) -> list[ApiKey]:
        return await s.list_keys(consumer)

    now = SYSTEM_CLOCK.time()
    for k in with_service(ctx, config_path, work):
        doc = {
            "id": k.id,
            "consumer_id": k.consumer_id,
            "env": k.env,
            "status": k.status(now),
            "scopes": list(k.scopes),
            "created": when(k.created_at),
            "expires": when(k.expires_at),
            "last_used": when(k.last_used_at),
            "rotated_to": k.rotated_to,
            "name": k.name,
        }
        if as_json:
            click.echo(orjson.dumps(doc).decode())
        else:
            click.echo(
                f"{k.id}  {k.consumer_id}  {doc['status']}  env={k.env}  scopes={','.join(k.scopes) or '-'}  "
                f"created={doc['created']}  expires={doc['expires']}  last_used={doc['last_used']}"
                + (f"  rotated_to={k.rotated_to}" if k.rotated_to else "")
            )


@keys_group.command("revoke")
@config_option
@click.argument("key_or_id")
@click.pass_context
def revoke(ctx: click.Context, config_path: str | None, key_or_id: str) -> None:
    """Revoke a key, given the key itself or its id. Every worker refuses it within a second."""

    async def work(s: IdentityService) -> tuple[ApiKey, bool]:
        return await s.revoke_key(key_or_id)

    key, revoked = with_service(ctx, config_path, work)
    if revoked or key.revoked_at is None:
        click.echo(f"revoked API key {key.id}")
    else:  # idempotent: the first revocation's time stands
        click.echo(f"API key {key.id} was already revoked at {when(key.revoked_at)}")


@keys_group.command("rotate")
@config_option
@click.argument("key_or_id")
@click.option("--overlap", default="24h", show_default=True, help="How long the old key keeps working.")
@click.pass_context
def rotate(ctx: click.Context, config_path: str | None, key_or_id: str, overlap: str) -> None:
    """Issue a replacement key (same consumer, scopes, env); the old one works until the overlap ends.

    The new key is the last line of stdout, printed once.
    """
    seconds = parse_duration(overlap, "--overlap") or 0.0

    async def work(s: IdentityService) -> Issued:
        return await s.rotate_key(key_or_id, overlap=seconds)

    _show_issued(with_service(ctx, config_path, work), "rotated; new")
