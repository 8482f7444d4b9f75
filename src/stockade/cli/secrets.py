"""`stockade secrets reseal`: re-seal the store's envelopes under the active KEK (a KEK rotation's middle step)."""

from __future__ import annotations

import click

from stockade.cli.common import config_option
from stockade.cli.identity_common import cli_actor, fail, with_store
from stockade.clock import SYSTEM_CLOCK
from stockade.security.envelopes import ResealReport, reseal
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
