"""Helpers shared by the command modules: finding the config file and reporting config errors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from stockade.config.loader import LoadedConfig, load_config
from stockade.errors import ConfigError

if TYPE_CHECKING:
    from stockade.pipeline.route import Runtime

CONFIG_OPTION_HELP = (
    "Config file (default: $STOCKADE_CONFIG, else ./stockade.yaml). Commands that read it also take it after the "
    "subcommand."
)
DEFAULT_CONFIG = "stockade.yaml"


def config_option(fn: click.decorators.FC) -> click.decorators.FC:
    """`--config` accepted after the subcommand too (`stockade keys create --config x.yaml`)."""
    return click.option(
        "--config", "config_path", type=click.Path(dir_okay=False), default=None, help=CONFIG_OPTION_HELP
    )(fn)


def resolve_config_path(ctx: click.Context, local: str | None) -> str:
    if local:
        return local
    root = ctx.find_root().obj or {}
    return root.get("config") or DEFAULT_CONFIG


def load_or_exit(
    path: str,
    env: dict[str, str] | None = None,
    *,
    require_upstreams: bool = True,
    require_routes: bool = False,
    all_shadows: bool = False,
) -> LoadedConfig:
    if not Path(path).exists():  # not "configuration invalid": there is none, and the user needs to say where
        click.echo(f"no config file {path!r}: give one with --config FILE (or $STOCKADE_CONFIG)", err=True)
        sys.exit(2)
    try:
        return load_config(
            path, env=env, require_upstreams=require_upstreams, require_routes=require_routes, all_shadows=all_shadows
        )
    except ConfigError as exc:
        report_config_error(exc)
        sys.exit(2)


def build_or_exit(loaded: LoadedConfig) -> Runtime:
    """Compile the runtime in dry-run mode (no store, no secret files) so file-level problems are reported too."""
    from stockade.clock import SYSTEM_CLOCK
    from stockade.pipeline.stage import Services
    from stockade.runtime import build_runtime

    try:
        return build_runtime(loaded, Services(clock=SYSTEM_CLOCK, workers=loaded.config.workers, dry_run=True))
    except ConfigError as exc:
        report_config_error(exc)
        sys.exit(2)


def report_config_error(exc: ConfigError) -> None:
    click.echo(f"configuration invalid ({len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''}):", err=True)
    for problem in exc.problems:
        click.echo(f"  {problem}", err=True)
