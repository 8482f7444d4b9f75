"""`stockade config check|schema`."""

from __future__ import annotations

import json
import sys

import click

from stockade.cli.common import build_or_exit, config_option, load_or_exit, resolve_config_path


@click.group("config")
def config_group() -> None:
    """Validate configuration files and export their JSON Schema."""


@config_group.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@config_option
@click.option(
    "--asgi", is_flag=True, help="Check a config for StockadeMiddleware: routes need no upstream (the app is one)."
)
@click.pass_context
def check(ctx: click.Context, file: str | None, config_path: str | None, asgi: bool) -> None:
    """Validate FILE (default: --config, $STOCKADE_CONFIG, else ./stockade.yaml). Exit 0 if valid (warnings,
    such as an expiring certificate, and the names of the STOCKADE_* overrides applied go to stderr); else exit 2,
    naming the file, line, route id, stage and field."""
    from stockade.security.secrets import PEPPER_USERS, pepper_problem

    path = resolve_config_path(ctx, file or config_path)
    loaded = load_or_exit(path, require_upstreams=not asgi, require_routes=not asgi, all_shadows=True)
    runtime = build_or_exit(loaded)  # also loads every file the runtime needs (TLS keys, specs), without side effects
    warnings = [*loaded.warnings, *runtime.tls.warnings]  # valid, but worth a word (an expiring certificate)
    if users := runtime.services.shared.get(PEPPER_USERS):
        # Serve loads the pepper at start (generating it if allowed); a check reads no secret file, but can tell
        # from names and permissions alone when serve will not find one.
        problem = pepper_problem(loaded.config.secrets, loaded.base_dir)
        if problem is not None:
            warnings.append(f"serve would refuse to start: {', '.join(users)} needs the pepper, and {problem}")
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    if loaded.overrides:  # names only: a value may be a secret (a storage URL's password)
        click.echo(f"environment overrides: {', '.join(loaded.overrides)}", err=True)
    cfg = loaded.config
    stages = sum(len(p) for p in loaded.route_stages.values())
    click.echo(
        f"{path}: OK ({_count(len(cfg.routes), 'route')}, {_count(stages, 'stage placement')}, "
        f"{_count(cfg.workers, 'worker')})"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


@config_group.command("schema")
def schema() -> None:
    """Print the JSON Schema of the config file (for editor completion and validation)."""
    from stockade.config.schema import config_schema

    json.dump(config_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")
