"""`stockade serve`: run the gateway."""

from __future__ import annotations

import os
import sys

import click

from stockade.cli.common import config_option, load_or_exit, report_config_error, resolve_config_path
from stockade.config.loader import LoadedConfig
from stockade.errors import ConfigError, ListenError


@click.command()
@config_option
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=None,
    help="Worker processes sharing the port (SO_REUSEPORT); overrides `workers:` in the config.",
)
@click.option("--worker-fd", type=int, default=None, hidden=True)
@click.option("--worker-index", type=int, default=0, hidden=True)
@click.pass_context
def serve(
    ctx: click.Context, config_path: str | None, workers: int | None, worker_fd: int | None, worker_index: int
) -> None:
    """Run the gateway: the data plane on `listen`, the admin API (/metrics, /healthz, /readyz) on `admin`.

    SIGHUP reloads the config atomically: a file that fails any check (with --workers: that any worker
    refuses) changes nothing and is logged. The file is read once it has stopped changing; one still being
    written after a few seconds is refused, so replace it atomically (write a temporary file, then rename it
    into place); a config given as a pipe (/dev/stdin) serves, but cannot be reloaded. SIGTERM or Ctrl-C
    drains in-flight requests (up to limits.drain_timeout), then exits; a second one cuts the drain short. An
    address that cannot be listened on (admin.port, listen.port) exits 2.
    """

    from stockade.observability.logs import setup_logging

    path = resolve_config_path(ctx, config_path)
    env = dict(os.environ)
    if workers is not None:
        # The same environment goes to every later load (SIGHUP reloads): with the file's own `workers` they
        # would see another worker count and refuse every reload as "changing workers".
        env["STOCKADE_WORKERS"] = str(workers)
    try:
        if worker_fd is not None:
            # A worker runs the text its supervisor validated (and last reloaded), not the file as it is now: an
            # edited but not reloaded file must not reach a worker that restarts after a crash.
            from stockade.proxy.workers import config_from_supervisor

            loaded = config_from_supervisor(worker_fd, env)
        else:
            loaded = load_or_exit(path, env, require_routes=True)
        setup_logging(loaded.config.log.level)
        _run(path, loaded, loaded.config.workers, worker_fd, worker_index, env)
    except ConfigError as exc:  # a file the runtime loads (a TLS key, a spec) is unusable: report, do not trace
        report_config_error(exc)
        sys.exit(2)
    except ListenError as exc:  # a port in use, an address not on this host: the config cannot run here
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def _run(
    path: str, loaded: LoadedConfig, n: int, worker_fd: int | None, worker_index: int, env: dict[str, str]
) -> None:
    import uvloop

    if worker_fd is not None:
        from stockade.proxy.workers import serve_worker

        uvloop.run(serve_worker(path, loaded, worker_fd, worker_index, n, env))
    elif n > 1:
        from stockade.proxy.workers import supervise

        uvloop.run(supervise(path, loaded, n, env))
    else:
        from stockade.proxy.process import serve_single

        uvloop.run(serve_single(path, loaded, env))
