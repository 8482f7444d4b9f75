"""`stockade consumers create|list|delete`: the callers that own API keys."""

from __future__ import annotations

import click
import orjson

from stockade.cli.common import config_option
from stockade.cli.identity_common import when, with_service
from stockade.identity.service import IdentityService
from stockade.storage.records import Consumer


def _metadata(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--meta")
        out[key] = value
    return out


@click.group("consumers")
def consumers_group() -> None:
    """Create, list and delete consumers (who API keys belong to)."""


@consumers_group.command("create")
@config_option
@click.argument("name")
@click.option("--role", "roles", multiple=True, help="A role (repeatable).")
@click.option("--plan", default=None, help="The consumer's plan (rate limits and quotas per plan).")
@click.option("--meta", "meta", multiple=True, help="Metadata key=value (repeatable).")
@click.pass_context
def create(
    ctx: click.Context,
    config_path: str | None,
    name: str,
    roles: tuple[str, ...],
    plan: str | None,
    meta: tuple[str, ...],
) -> None:
    """Create a consumer NAME."""
    metadata = _metadata(meta)

    async def work(s: IdentityService) -> Consumer:
        return await s.create_consumer(name, roles=roles, plan=plan, metadata=metadata)

    consumer = with_service(ctx, config_path, work)
    click.echo(f"created consumer {consumer.name} ({consumer.id})")


@consumers_group.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def list_(ctx: click.Context, config_path: str | None, as_json: bool) -> None:
    """List consumers."""

    async def work(s: IdentityService) -> list[Consumer]:
        return await s.store.list_consumers()

    for c in with_service(ctx, config_path, work):
        if as_json:
            doc = {"id": c.id, "name": c.name, "roles": list(c.roles), "plan": c.plan, "metadata": dict(c.metadata)}
            click.echo(orjson.dumps({**doc, "created_at": when(c.created_at)}).decode())
        else:
            click.echo(
                f"{c.id}  {c.name}  roles={','.join(c.roles) or '-'}  plan={c.plan or '-'}  {when(c.created_at)}"
            )


@consumers_group.command("delete")
@config_option
@click.argument("name_or_id")
@click.pass_context
def delete(ctx: click.Context, config_path: str | None, name_or_id: str) -> None:
    """Delete a consumer and every API key it owns (effective on every worker within a second)."""

    async def work(s: IdentityService) -> Consumer:
        return await s.delete_consumer(name_or_id)

    consumer = with_service(ctx, config_path, work)
    click.echo(f"deleted consumer {consumer.name} ({consumer.id}) and its API keys")
