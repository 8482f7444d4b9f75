"""`stockade clients create|list|revoke`: OAuth2 clients of the gateway's token endpoint."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from stockade.cli.common import config_option
from stockade.cli.identity_common import cli_actor, open_store, run_on_store
from stockade.clock import SYSTEM_CLOCK
from stockade.oauth2.clients import SUPPORTED_METHODS, new_client


@click.group("clients")
def clients_group() -> None:
    """OAuth2 clients of the gateway's token endpoint (`oauth2_server:`)."""


@clients_group.command("create")
@config_option
@click.option("--name", required=True, help="A label for the client (shown in lists and logs).")
@click.option(
    "--scopes", default="", help="Comma-separated scopes the client may request, e.g. books:read,books:write."
)
@click.option(
    "--auth-method",
    type=click.Choice(SUPPORTED_METHODS),
    default="client_secret_basic",
    show_default=True,
    help="How the client authenticates (a secret client may use basic or post).",
)
@click.option(
    "--jwks", "jwks_file", type=click.Path(dir_okay=False, exists=True), help="Public JWK Set (private_key_jwt)."
)
@click.option("--consumer", default=None, help="Consumer (id or name) that owns the client.")
@click.pass_context
def create(
    ctx: click.Context,
    config_path: str | None,
    name: str,
    scopes: str,
    auth_method: str,
    jwks_file: str | None,
    consumer: str | None,
) -> None:
    """Register a client. Prints `client_id:` and (for secret methods) `client_secret:` - shown once."""
    jwks: dict[str, Any] | None = None
    if jwks_file is not None:
        try:
            jwks = json.loads(Path(jwks_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise click.BadParameter(f"cannot read a JWK Set: {exc}", param_hint="--jwks") from None
    store, secrets = open_store(ctx, config_path)
    try:
        client, secret = new_client(
            name=name,
            scopes=[s.strip() for s in scopes.split(",") if s.strip()],
            auth_method=auth_method,
            pepper=secrets.pepper,
            now=SYSTEM_CLOCK.time(),
            jwks=jwks,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    async def register() -> None:
        owned = client
        if consumer is not None:  # an id or a name, as everywhere else in the CLI
            owned = dataclasses.replace(client, consumer_id=(await store.get_consumer(consumer)).id)
        await store.create_client(owned, actor=cli_actor(), at=SYSTEM_CLOCK.time())

    run_on_store(store, secrets, register)  # checks the pepper first: a secret hashed with another is useless
    click.echo(f"client_id: {client.client_id}")
    if secret is not None:
        click.echo(f"client_secret: {secret}")
        click.echo("The secret is shown only now; the gateway keeps only a keyed hash of it.", err=True)


@clients_group.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per client.")
@click.pass_context
def list_clients(ctx: click.Context, config_path: str | None, as_json: bool) -> None:
    """List clients (never their secrets)."""
    store, secrets = open_store(ctx, config_path)
    clients = run_on_store(store, secrets, store.list_clients)
    for c in clients:
        status = "revoked" if c.disabled_at is not None else "active"
        if as_json:
            doc: dict[str, Any] = {
                "client_id": c.client_id,
                "name": c.name,
                "auth_method": c.auth_method,
                "status": status,
            }
            doc |= {"scopes": list(c.allowed_scopes), "created_at": c.created_at, "disabled_at": c.disabled_at}
            doc["consumer_id"] = c.consumer_id
            click.echo(json.dumps(doc))
        else:
            created = datetime.fromtimestamp(c.created_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            click.echo(
                f"{c.client_id}  {status:7}  {c.auth_method:19}  {created}  {c.name}  [{' '.join(c.allowed_scopes)}]"
            )
    if not clients and not as_json:
        click.echo("no clients", err=True)


@clients_group.command("revoke")
@config_option
@click.argument("client_id")
@click.pass_context
def revoke(ctx: click.Context, config_path: str | None, client_id: str) -> None:
    """Disable a client: no new tokens, and tokens already issued to it stop working within a second."""
    from stockade.oauth2.clients import disable_client

    store, secrets = open_store(ctx, config_path)
    run_on_store(store, secrets, lambda: disable_client(store, client_id, actor=cli_actor(), at=SYSTEM_CLOCK.time()))
    click.echo(f"revoked {client_id}")
