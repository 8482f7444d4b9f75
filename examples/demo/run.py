"""`make demo`: start the demo API and a Stockade gateway in front of it, print what to try, stop both on Ctrl-C.

Before the gateway starts, it makes an API key for the demo consumer with the CLI, as a user would, in the
demo's own store. What the banner suggests trying is data in demo_tour.py, shared with
tests/examples/test_demo.py, which replays every example, so the banner cannot drift from what the demo does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from demo_tour import CLIENT_NAME, CLIENT_SCOPES, CONSUMER, HOST, SCOPES, Ports, banner

from stockade.security.secrets import ensure_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CONFIG = HERE / "stockade.yaml"
CONFIG_UPSTREAM = "http://127.0.0.1:9000"  # the upstream URL written in stockade.yaml
CONFIG_SPEC = "spec: openapi.yaml"  # how stockade.yaml names the contract (relative to itself)
CONFIG_STORAGE = "storage: sqlite:///.stockade/stockade.db"  # how stockade.yaml names the store (next to itself)
CONFIG_ISSUER = "http://127.0.0.1:8080"  # the token issuer written in stockade.yaml: the gateway's own URL
READY_TIMEOUT = 60.0  # seconds; a cold start on a busy 2-core machine takes a few
CLI_TIMEOUT = 60.0  # seconds for one `stockade keys ...` or `stockade clients ...` command
DECISIONS = "decisions.log"
STORE = "stockade.db"
DEFAULT_STATE = HERE / ".stockade"
STOP_TIMEOUT = 10.0  # seconds between TERM and KILL (the gateway drains for at most 5)
KEY_NAME = "make-demo"  # marks the keys run.py makes, so the next start can revoke them


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is not "in use"
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # http_proxy must not catch loopback


def ok(url: str) -> bool:
    try:
        with _NO_PROXY.open(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def spawn(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    # Its own process group: a terminal's Ctrl-C reaches only this script, which then stops the gateway
    # first (it drains in-flight requests) and the API after it.
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, process_group=0)


def stop(proc: subprocess.Popen[bytes], name: str) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        print(f"demo: {name} did not stop within {STOP_TIMEOUT:.0f}s; killing it", file=sys.stderr)
        proc.kill()
        proc.wait()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Start the demo API and a Stockade gateway in front of it.")
    parser.add_argument("--port", type=int, default=Ports.gateway, help="gateway port (default 8080)")
    parser.add_argument("--admin-port", type=int, default=Ports.admin, help="admin port (default 8081)")
    parser.add_argument("--upstream-port", type=int, default=Ports.upstream, help="demo API port (default 9000)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE,
        help="the store (consumers, API keys) and the decision log (default examples/demo/.stockade)",
    )
    args = parser.parse_args(argv)
    for flag, port in (
        ("--port", args.port),
        ("--admin-port", args.admin_port),
        ("--upstream-port", args.upstream_port),
    ):
        if not 1 <= port <= 65535:
            parser.error(f"{flag} {port}: not a TCP port")
    if len({args.port, args.admin_port, args.upstream_port}) != 3:
        parser.error("the gateway, admin and upstream ports must differ")
    return args


def busy_port(ports: Ports) -> str | None:
    """A message naming the first port something else already listens on, if any."""
    for what, flag, port in (
        ("gateway", "--port", ports.gateway),
        ("admin", "--admin-port", ports.admin),
        ("upstream", "--upstream-port", ports.upstream),
    ):
        if port_in_use(port):
            return (
                f"port {port} ({what}) is already in use on {HOST}; free it or pick another with {flag} "
                f'(make demo DEMO_ARGS="{flag} N")'
            )
    return None


def gateway_setup(ports: Ports, state: Path) -> tuple[Path, dict[str, str]]:
    """The config file to serve and the environment that points the gateway at these ports and files."""
    config = CONFIG
    if ports.upstream != Ports.upstream or ports.gateway != Ports.gateway or state != DEFAULT_STATE:
        # Routes are not overridable from the environment, so the upstream URL and the token issuer (the
        # gateway's own URL, also named in routes) are changed in a copy. The copy lives elsewhere, so it names
        # the spec by its absolute path (json.dumps: a quoted YAML scalar), and names the state directory's store
        # and secrets itself: the banner gives the copy as the policy, and `stockade --config COPY keys create`
        # run without this script's environment must reach the store the gateway serves, not a new one.
        config = state / "demo-stockade.yaml"
        urls = {CONFIG_UPSTREAM: f"http://{HOST}:{ports.upstream}", CONFIG_ISSUER: f"http://{HOST}:{ports.gateway}"}
        # One pass, so a new upstream URL that happens to equal the old issuer (or the reverse) is not rewritten again.
        pattern = "|".join(re.escape(url) for url in urls)
        text = re.sub(pattern, lambda m: urls[m.group(0)], CONFIG.read_text(encoding="utf-8"))
        text = text.replace(CONFIG_SPEC, f"spec: {json.dumps(str(HERE / 'openapi.yaml'))}")
        text = text.replace(CONFIG_STORAGE, f"storage: {json.dumps(f'sqlite:///{state / STORE}')}")
        secrets = {"pepper_file": str(state / "pepper"), "kek_file": str(state / "kek")}
        text += f"\n# Written by run.py: the state directory's secrets.\nsecrets: {json.dumps(secrets)}\n"
        config.write_text(text, encoding="utf-8")
    env = dict(os.environ)
    env |= {"STOCKADE_LISTEN__PORT": str(ports.gateway), "STOCKADE_ADMIN__PORT": str(ports.admin)}
    env |= {"STOCKADE_STORAGE": f"sqlite:///{state / STORE}", "STOCKADE_LOG__DECISIONS": str(state / DECISIONS)}
    # The pepper (API keys are stored under it) and the KEK (it seals the token signing keys) belong with the store
    # they protect, whichever config file is served: a copy would otherwise get new ones next to it, and the store's
    # keys and signing keys would stop working.
    env |= {"STOCKADE_SECRETS__PEPPER_FILE": str(state / "pepper"), "STOCKADE_SECRETS__KEK_FILE": str(state / "kek")}
    for kind in ("pepper", "kek"):  # files named in the config must exist: made here, as the gateway would make them
        ensure_file(state / kind, kind)
    return config, env


def stockade_cli(stockade: Path, config: Path, env: dict[str, str], *args: str) -> str:
    """Run `stockade --config CONFIG ARGS...` and return its stdout; a failure raises with its stderr."""
    result = subprocess.run(
        [str(stockade), "--config", str(config), *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        process_group=0,  # like the servers: Ctrl-C reaches this script, which lets the command finish
    )
    if result.returncode != 0:
        raise RuntimeError(f"`stockade {' '.join(args)}` failed: {result.stderr.strip()}")
    return result.stdout


def revoke_made_earlier(
    stockade: Path, config: Path, env: dict[str, str], group: str, name: str, id_field: str
) -> None:
    """Revoke the active `stockade GROUP` objects (keys, clients) named `name`: those earlier starts made."""
    for line in stockade_cli(stockade, config, env, group, "list", "--json").splitlines():
        listed = json.loads(line)
        if listed["name"] == name and listed["status"] == "active":
            stockade_cli(stockade, config, env, group, "revoke", listed[id_field])


def make_key(stockade: Path, config: Path, env: dict[str, str]) -> str:
    """A fresh API key for the demo consumer (created with it if new), in the demo's store, made with the CLI as
    the docs show. The keys earlier starts made are revoked first, so one demo key at a time is valid."""
    revoke_made_earlier(stockade, config, env, "keys", KEY_NAME, "id")
    created = stockade_cli(
        stockade, config, env, "keys", "create", "--consumer", CONSUMER, "--scopes", SCOPES, "--name", KEY_NAME
    )
    return created.splitlines()[-1]  # the key is the last line of stdout; details go to stderr


def make_client(stockade: Path, config: Path, env: dict[str, str]) -> tuple[str, str]:
    """A fresh OAuth2 client (id, secret) for the token endpoint examples, registered with the CLI. As with keys,
    the clients earlier starts made are revoked first (their tokens stop working too)."""
    revoke_made_earlier(stockade, config, env, "clients", CLIENT_NAME, "client_id")
    created = stockade_cli(stockade, config, env, "clients", "create", "--name", CLIENT_NAME, "--scopes", CLIENT_SCOPES)
    fields = dict(line.split(": ", 1) for line in created.splitlines() if ": " in line)
    return fields["client_id"], fields["client_secret"]


def wait_ready(checks: list[tuple[str, subprocess.Popen[bytes], str]], stopping: threading.Event) -> str | None:
    """Poll each readiness URL until it answers 200. Returns why not (a child exited, time ran out) or None."""
    deadline = time.monotonic() + READY_TIMEOUT
    for name, proc, url in checks:
        while not ok(url):
            if proc.poll() is not None:
                return f"the {name} exited with code {proc.returncode} while starting (see above)"
            if stopping.is_set():
                return None
            if time.monotonic() > deadline:
                return f"the {name} was not ready after {READY_TIMEOUT:.0f}s ({url})"
            stopping.wait(0.1)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ports = Ports(args.port, args.admin_port, args.upstream_port)
    stockade = Path(sys.executable).parent / "stockade"  # the console script of this same environment
    problem = busy_port(ports)
    if problem is None and not stockade.exists():
        problem = f"{stockade} not found; run `make install` (or `make demo`, which installs first)"
    if problem is not None:
        print(f"demo: {problem}", file=sys.stderr)
        return 1
    state = args.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    config, env = gateway_setup(ports, state)

    stopping = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signal.Signals(signum).name)
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal went away
        signal.signal(sig, on_signal)

    upstream = spawn([sys.executable, str(HERE / "api.py"), "--port", str(ports.upstream)])
    procs = [("upstream", upstream)]
    try:
        try:
            key = make_key(stockade, config, env)  # while the API starts
            client = make_client(stockade, config, env)
        except (RuntimeError, subprocess.TimeoutExpired, KeyError, ValueError) as exc:  # ValueError: bad JSON
            print(f"demo: could not make the demo API key and OAuth2 client: {exc!r}", file=sys.stderr)
            return 1
        if stopping.is_set():  # Ctrl-C while the key or client was being made: nothing more to start
            print(f"demo: {received[0]} received, stopping the API", file=sys.stderr)
            return 0
        gateway = spawn([str(stockade), "serve", "--config", str(config)], env)
        procs.insert(0, ("gateway", gateway))  # stopped first
        problem = wait_ready(
            [
                ("upstream", upstream, f"http://{HOST}:{ports.upstream}/healthz"),
                ("gateway", gateway, f"http://{HOST}:{ports.admin}/readyz"),
            ],
            stopping,
        )
        if problem is not None:
            print(f"demo: {problem}", file=sys.stderr)
            return 1
        if not stopping.is_set():
            print(banner(ports, config, state, state / DECISIONS, key, client), flush=True)
        while not stopping.wait(0.5):
            for name, proc in procs:
                if proc.poll() is not None:
                    print(f"demo: the {name} exited unexpectedly with code {proc.returncode}", file=sys.stderr)
                    return 1
        print(f"demo: {received[0]} received, stopping the gateway and the API", file=sys.stderr)
        return 0
    finally:
        for name, proc in procs:
            stop(proc, name)


if __name__ == "__main__":
    sys.exit(main())
