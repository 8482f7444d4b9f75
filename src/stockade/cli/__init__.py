"""The `stockade` command. Each command group lives in its own module; only the CLI calls sys.exit."""

from __future__ import annotations

import os

import click

from stockade import __version__
from stockade.cli.admin import admin_group
from stockade.cli.clients import clients_group
from stockade.cli.common import CONFIG_OPTION_HELP
from stockade.cli.config_cmd import config_group
from stockade.cli.consumers import consumers_group
from stockade.cli.keys import keys_group
from stockade.cli.lockouts import lockouts_group
from stockade.cli.openapi import openapi_group
from stockade.cli.secrets import secrets_group
from stockade.cli.serve import serve
from stockade.config.service_links import is_service_link


class _Root(click.Group):
    """The top group: refuses option variables earlier versions read (see `_former_option_variables`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        asks_help = any(arg in ("-h", "--help") for arg in args)
        if not asks_help and (former := _former_option_variables(self, args)):
            shown = "; ".join(f"{name} (pass {option})" for name, option in former)
            raise click.UsageError(
                f"no longer read from the environment: {shown}. Only STOCKADE_CONFIG and the "
                "STOCKADE_<SECTION>__<FIELD> config overrides are; unset the variable or pass the option.",
                ctx,
            )
        return super().parse_args(ctx, args)


def _former_option_variables(root: click.Group, args: list[str]) -> list[tuple[str, str]]:
    """Set STOCKADE_<GROUP>_<COMMAND>_<OPTION> variables for the command `args` name, with the option each stood
    for. Earlier versions read every option from such a variable (click's auto_envvar_prefix); ignoring one
    silently would turn `STOCKADE_KEYS_CREATE_TTL=1h` into a key that never expires, or
    `STOCKADE_SERVE_WORKERS=4` into one process."""
    command: click.Command = root
    prefix = "STOCKADE"
    chain = [(command, prefix)]
    for arg in args:
        if isinstance(command, click.Group) and arg in command.commands:
            command = command.commands[arg]
            prefix = f"{prefix}_{arg.upper().replace('-', '_')}"
            chain.append((command, prefix))
    found = []
    for cmd, at in chain:
        for param in cmd.params:
            if isinstance(param, click.Option) and param.expose_value and param.name and param.envvar is None:
                name = f"{at}_{param.name.upper()}"
                value = os.environ.get(name)
                # Empty was ignored then too (`Environment=NAME=` in a unit clears it); `..._NAME=/gw/alias` is
                # Docker's link to a container named so, not `--name`.
                if value and not is_service_link(name, value):
                    found.append((name, max(param.opts, key=len)))
    return found


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), envvar="STOCKADE_CONFIG", help=CONFIG_OPTION_HELP
)
@click.version_option(__version__, prog_name="stockade")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Stockade: an API security gateway.

    \b
    stockade serve --config stockade.yaml          run the gateway
    stockade config check stockade.yaml            validate a config file
    stockade config schema > stockade.schema.json  JSON Schema for editors
    stockade lockouts list                         brute-force lockouts (Redis limits_storage)
    stockade keys create --consumer alice          API key (printed once; stored hashed)
    stockade clients create --name ci --scopes a,b OAuth2 client for the token endpoint
    stockade openapi routes openapi.yaml           routes config generated from a spec

    \b
    Exit codes:
      0  done
      1  refused: nothing found, already exists, invalid input
      2  usage or configuration: a bad option, an invalid config or storage URL,
         an address `serve` cannot listen on, secrets that are missing or do not
         match the store (or the limits backend)
      3  the store (for lockouts: the limits backend) could not be reached or failed
    """
    ctx.ensure_object(dict)
    ctx.obj["config"] = config_path


cli.add_command(serve)
cli.add_command(config_group)
cli.add_command(consumers_group)
cli.add_command(keys_group)
cli.add_command(clients_group)
cli.add_command(admin_group)
cli.add_command(lockouts_group)
cli.add_command(openapi_group)
cli.add_command(secrets_group)


def main() -> None:
    cli(prog_name="stockade")
