"""`stockade secrets reseal`: re-seal the store's envelopes under the active KEK (a KEK rotation's middle step);
`stockade secrets forget-kek`: give up the envelopes of a KEK that is lost for good."""

from __future__ import annotations

import click

from stockade.cli.common import config_option, load_or_exit, resolve_config_path
from stockade.cli.identity_common import cli_actor, fail, with_store
from stockade.clock import SYSTEM_CLOCK
from stockade.security.envelopes import ResealReport, forget_kek, live_envelopes, reseal
from stockade.security.jose import MAX_LEEWAY
from stockade.security.secrets import Secrets
from stockade.storage.base import Store


@click.group("secrets")
def secrets_group() -> None:
    """The pepper and the key-encryption keys (KEKs) that seal fields at rest."""


@secrets_group.command("reseal")
@config_option
@click.pass_context
def reseal_cmd(ctx: click.Context, config_path: str | None) -> None:
    """Re-seal every envelope in the store under the active KEK (the first one loaded).

    \b
    Rotating KEKs:
    1. every node runs with the new KEK first, the old one after it (k2:...,k1:...)
    2. stockade secrets reseal  (idempotent; each re-seal is in the admin change log)
    3. once it says the old KEK id is not in use, drop it and restart every node

    Exits 2, writing nothing, if an envelope is sealed under a KEK id that is not loaded (or no KEK file exists:
    none is generated); 1 if envelopes under another KEK remain (their records kept changing: run it again).
    """

    async def work(store: Store, secrets: Secrets) -> tuple[ResealReport, tuple[str, ...]]:
        return await reseal(store, secrets.keyring, actor=cli_actor(), clock=SYSTEM_CLOCK), secrets.keyring.ids

    report, loaded = with_store(ctx, config_path, work, generate=False)
    active = report.active
    for kind in sorted(report.resealed.keys() | report.current.keys()) or ["signing_key"]:
        click.echo(
            f"{kind}: {report.resealed[kind]} re-sealed under KEK {active!r}, {report.current[kind]} already were"
        )
    in_use = ", ".join(f"{kek} ({n})" for kek, n in sorted(report.in_use.items())) or "none"
    click.echo(f"KEK ids in use: {in_use}")
    idle = [kek for kek in loaded if kek not in report.in_use and kek != active]
    if idle:
        click.echo(f"loaded but sealing nothing: {', '.join(idle)} (drop from every node's keyring, then restart)")
    if set(report.in_use) - {active}:
        fail("envelopes under another KEK remain (their records kept changing): run `stockade secrets reseal` again")


@secrets_group.command("forget-kek")
@click.argument("kek")
@click.option(
    "--yes", is_flag=True, help="Retire the keys sealed under KEK (without it: list them and change nothing)."
)
@config_option
@click.pass_context
def forget_kek_cmd(ctx: click.Context, kek: str, yes: bool, config_path: str | None) -> None:
    """Give up what is sealed under KEK, a key-encryption key that is lost for good.

    Start-up refuses while a live envelope is sealed under a KEK that is not loaded. When that KEK cannot be
    found again, this retires each signing key sealed under it: it signs nothing more, tokens it signed verify
    until they expire, and the next rotation check makes a new key. Each change is in the admin change log.
    Exits 2 if KEK is loaded (re-seal it instead), 1 if nothing is sealed under it or --yes is missing.
    """
    loaded = load_or_exit(resolve_config_path(ctx, config_path))
    server = loaded.config.oauth2_server
    ttl = server.token_ttl if server is not None else 0

    async def work(store: Store, secrets: Secrets) -> list[str]:
        if kek in secrets.keyring.ids:
            fail(f"KEK {kek!r} is loaded: run `stockade secrets reseal`, then drop it", 2)
        sealed = [f"{i.kind} {i.ref}" for i in await live_envelopes(store, SYSTEM_CLOCK.time()) if i.kek == kek]
        if sealed and yes:
            keep_until = SYSTEM_CLOCK.time() + ttl + MAX_LEEWAY
            done = await forget_kek(
                store, secrets.keyring, kek, keep_until=keep_until, actor=cli_actor(), clock=SYSTEM_CLOCK
            )
            return [f"{kind}: {n} retired" for kind, n in sorted(done.items())]
        return sealed

    lines = with_store(ctx, config_path, work, generate=False)
    if not lines:
        fail(f"nothing is sealed under KEK {kek!r}")
    if not yes:
        fail(f"sealed under KEK {kek!r}: {', '.join(lines)}; pass --yes to retire them")
    for line in lines:
        click.echo(line)
