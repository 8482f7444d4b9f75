"""The demo (`make demo`): its policy loads, run.py starts and stops real processes on real ports, and every
example the banner prints answers as the banner promises (the examples are demo_tour.py's `SECTIONS` data)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .demo_support import DEMO, ROOT, Demo, call, children_of, free_ports, run, start_demo, stop_demo, tour, wait_for

pytestmark = pytest.mark.slow

STOCKADE = Path(sys.executable).parent / "stockade"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_demo_config_passes_config_check() -> None:
    result = subprocess.run(
        [str(STOCKADE), "config", "check", str(DEMO / "stockade.yaml")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "OK (16 routes" in result.stdout  # 12 written, 4 made for the token endpoint


def test_banner_prints_every_example_under_its_heading_with_its_promised_status(demo: Demo) -> None:
    banner = demo.banner()
    for section in tour.SECTIONS:
        lines = "".join(
            f"  # {ex.says}  -> {tour.promise(ex)}\n  {ex.curl(demo.ports, ROOT)}\n" for ex in section.examples
        )
        assert f"\n{section.title}\n" in banner
        assert lines in banner, section.title
    assert f"tail -f {demo.state / 'decisions.log'}" in banner


def test_banner_prints_a_well_formed_key_before_the_examples_that_use_it(demo: Demo) -> None:
    banner = demo.banner()
    first_use = min(banner.index(ex.curl(demo.ports, ROOT)) for ex in tour.EXAMPLES if ex.uses(tour.KEY))
    assert banner.index(f"  KEY={demo.key}\n") < first_use
    assert re.fullmatch(r"stk_live_[0-9A-Za-z]{49}", demo.key)


def test_banner_prints_the_client_and_the_token_line_before_the_examples_that_use_them(demo: Demo) -> None:
    banner = demo.banner()
    users = [ex for ex in tour.EXAMPLES if ex.uses(tour.CLIENT_ID) or ex.uses(tour.TOKEN)]
    assert {tour.promise(ex) for ex in users} >= {"200", "401"}
    first_use = min(banner.index(ex.curl(demo.ports, ROOT)) for ex in users)
    setup = [f"  CLIENT_ID={demo.client_id}\n", f"  CLIENT_SECRET={demo.client_secret}\n"]
    setup.append(f"  {tour.token_command(demo.ports)}\n")
    assert [banner.index(line) for line in setup] == sorted(banner.index(line) for line in setup)
    assert banner.index(setup[-1]) < first_use
    assert re.fullmatch(r"cl_\S+", demo.client_id)
    assert demo.client_secret.startswith("stk_secret_")


def _check_answer(demo: Demo, example: Any, status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == example.status, body
    for name in example.has_headers:
        assert name in headers, f"{name} missing from {sorted(headers)}"
    for name in example.lacks_headers:
        assert name not in headers, f"{name} leaked: {headers[name]}"
    if example.contains is not None:
        assert example.contains in body.decode()
    if example.omits is not None:
        assert example.omits not in body.decode()
    if example.reason is not None:
        problem = json.loads(body)
        assert headers["content-type"] == "application/problem+json"
        assert problem["reason"] == example.reason
        logged = demo.decision(problem["request_id"])
        assert (logged["decision"], logged["reason"], logged["status"]) == ("deny", example.reason, status)


@pytest.mark.parametrize(
    "example", tour.EXAMPLES, ids=[f"{i:02d}-{e.method}-{e.target}{e.path}" for i, e in enumerate(tour.EXAMPLES)]
)
def test_example_answers_as_the_banner_promises(demo: Demo, example: Any) -> None:
    # Each example is the only one in the banner on its route's rate limit, so a repeated one starts from a full
    # allowance: every answer but the last is 200.
    values = demo.values()
    port, body, headers = demo.port(example.target), example.body_bytes(values), example.request_headers(values)
    for _ in range(example.repeat - 1):
        status, _, answer = call(port, example.method, example.path, body, headers)
        assert status == 200, answer
    status, got, answer = call(port, example.method, example.path, body, headers)
    _check_answer(demo, example, status, got, answer)


SHELL_REPLAYED = [e for e in tour.EXAMPLES if e.repeat == 1 and not e.pipe]


@pytest.mark.skipif(
    not all(map(shutil.which, ("curl", "bash", "python3"))), reason="needs curl, bash and python3 (the TOKEN= line)"
)
@pytest.mark.parametrize("example", SHELL_REPLAYED, ids=[f"{e.method}-{e.target}{e.path}" for e in SHELL_REPLAYED])
def test_banner_command_as_printed_gets_the_promised_status_from_a_shell(demo: Demo, example: Any) -> None:
    # The banner's text itself, run by bash from the repository root as a user would paste it (after the KEY=,
    # CLIENT_ID=, CLIENT_SECRET= and TOKEN= lines, also as printed): this checks the quoting, the variables, the
    # token line and the body file paths, which the replay above cannot see.
    script = f"{demo.shell_setup()}{example.curl(demo.ports, ROOT)} -o /dev/null -w '%{{http_code}}'"
    result = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, str(example.status)), result.stderr


@pytest.mark.skipif(
    not all(map(shutil.which, ("curl", "bash", "python3"))), reason="needs curl, bash and python3 (the TOKEN= line)"
)
def test_piped_banner_commands_as_printed_show_what_they_promise(tmp_path: Path) -> None:
    # A demo of its own: the loop spends the rate limit that the shared demo's replay counts on.
    d = start_demo(tmp_path)
    try:
        piped = [e for e in tour.EXAMPLES if e.pipe]
        assert {e.repeat > 1 for e in piped} == {True, False}  # the rate-limit loop and the metrics grep
        for example in sorted(piped, key=lambda e: e.repeat == 1):  # the loop first: the metrics then count it
            result = subprocess.run(
                ["bash", "-c", example.curl(d.ports, ROOT)], cwd=ROOT, capture_output=True, text=True, timeout=60
            )
            assert result.returncode == 0, result.stderr
            lines = result.stdout.lower().splitlines()
            if example.repeat > 1:
                statuses = [line.split()[1] for line in lines if line.startswith("http/")]
                assert statuses == ["200"] * (example.repeat - 1) + [str(example.status)], result.stdout
                last = lines[max(i for i, line in enumerate(lines) if line.startswith("http/")) + 1 :]
                assert sorted(line.split(":")[0] for line in last) == ["ratelimit", "retry-after"], result.stdout
            else:
                assert lines and all(line.startswith(example.contains) for line in lines), result.stdout
    finally:
        stop_demo(d)


def test_no_other_example_spends_a_repeated_examples_rate_limit() -> None:
    def request(e: Any) -> tuple[str, str, str]:
        return e.target, e.method, e.path.split("?")[0]

    limited = [ex for ex in tour.EXAMPLES if ex.repeat > 1]
    assert limited
    for ex in limited:
        assert [e for e in tour.EXAMPLES if request(e) == request(ex)] == [ex]


def test_the_api_maps_the_keys_consumer_to_its_seeded_user(demo: Demo) -> None:
    status, _, body = call(demo.ports.gateway, "GET", "/me", None, [("X-API-Key", demo.key)])
    assert status == 200
    me = json.loads(body)
    assert (me["principal"], me["anonymous"], me["user"]["username"]) == (tour.CONSUMER, False, tour.CONSUMER)


def test_gateway_strips_client_identity_and_api_sees_the_anonymous_principal(demo: Demo) -> None:
    forged = (("X-Stockade-Principal", "alice"), ("X-Stockade-Anonymous", "false"))
    status, _, body = call(demo.ports.gateway, "GET", "/me", None, forged)
    assert status == 200
    assert json.loads(body) == {"principal": "anonymous", "anonymous": True, "user": None}


def test_demo_keeps_its_store_log_secrets_and_config_copy_in_the_state_dir(demo: Demo) -> None:
    assert (demo.state / "decisions.log").is_file()
    assert (demo.state / "stockade.db").is_file()  # the key run.py made lives here
    assert (demo.state / "pepper").is_file()  # with the store, not next to the config copy
    assert (demo.state / "kek").is_file()  # sealed the token signing keys
    assert not (demo.state / ".stockade").exists()
    copy = (demo.state / "demo-stockade.yaml").read_text()
    assert f"http://127.0.0.1:{demo.ports.upstream}" in copy
    assert "http://127.0.0.1:9000" not in copy
    assert copy.count(f"http://127.0.0.1:{demo.ports.gateway}") == 2  # the issuer, and the routes that trust it
    assert "http://127.0.0.1:8080" not in copy
    assert copy.count(f"spec: {json.dumps(str(DEMO / 'openapi.yaml'))}") == (DEMO / "stockade.yaml").read_text().count(
        "spec: openapi.yaml"
    )


def test_the_config_copy_alone_points_the_cli_at_the_demos_store(demo: Demo) -> None:
    """The banner names the copy as the policy: `stockade --config COPY ...`, without run.py's environment, must
    reach the store the gateway serves (not a new, empty one next to the copy) and use the same pepper."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")}
    copy = demo.state / "demo-stockade.yaml"
    result = subprocess.run(
        [str(STOCKADE), "--config", str(copy), "keys", "create", "--consumer", "carol", "--scopes", "books:write"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    assert "generated" not in result.stderr  # no new pepper or KEK
    staff = result.stdout.strip().splitlines()[-1]
    wait_for(
        lambda: call(demo.ports.gateway, "GET", "/me", None, [("X-API-Key", staff)])[0] == 200,
        15,
        "the gateway to accept the key the CLI made through the copy",
    )
    assert not (demo.state / ".stockade").exists()


def test_a_restart_makes_a_new_key_and_revokes_the_previous_one(tmp_path: Path) -> None:
    first = start_demo(tmp_path)
    try:
        old = first.key
        old_client, old_secret, old_token = first.client_id, first.client_secret, first.values()[tour.TOKEN]
        assert stop_demo(first) == 0, first.err.read_text()
    finally:
        stop_demo(first)
    again = start_demo(tmp_path)  # the same state directory, so the same store
    try:
        assert again.key != old
        assert call(again.ports.gateway, "GET", "/me", None, [("X-API-Key", old)])[0] == 401
        assert call(again.ports.gateway, "GET", "/me", None, [("X-API-Key", again.key)])[0] == 200
        assert again.client_id != old_client
        form = f"grant_type=client_credentials&client_id={old_client}&client_secret={old_secret}".encode()
        assert call(again.ports.gateway, "POST", "/oauth2/token", form, [tour.FORM])[0] == 401
        assert call(again.ports.gateway, "GET", "/me", None, [("Authorization", f"Bearer {old_token}")])[0] == 401
        assert (
            call(again.ports.gateway, "GET", "/me", None, [("Authorization", f"Bearer {again.values()[tour.TOKEN]}")])[
                0
            ]
            == 200
        )
    finally:
        stop_demo(again)


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_signal_stops_the_gateway_and_the_api_and_frees_the_ports(tmp_path: Path, sig: signal.Signals) -> None:
    d = start_demo(tmp_path)
    try:
        children = children_of(d.proc.pid)
        commands = [cmdline(pid) for pid in children]
        assert len(commands) == 2, commands
        assert any("examples/demo/api.py --port" in c for c in commands), commands
        assert any("stockade serve --config" in c for c in commands), commands
        assert stop_demo(d, sig) == 0, d.err.read_text()
    finally:
        stop_demo(d)  # a failed assertion above must not leave the demo running
    assert f"{sig.name} received" in d.err.read_text()
    assert [pid for pid in children if alive(pid)] == []
    for port in (d.ports.gateway, d.ports.admin, d.ports.upstream):
        assert not run.port_in_use(port), port


def test_a_busy_port_fails_fast_and_names_the_flag(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        admin, upstream = free_ports(2)
        cmd = [sys.executable, str(DEMO / "run.py"), "--port", str(busy), "--admin-port", str(admin)]
        cmd += ["--upstream-port", str(upstream), "--state-dir", str(tmp_path / "state")]
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"port {busy} (gateway) is already in use" in result.stderr
    assert 'make demo DEMO_ARGS="--port N"' in result.stderr  # the Makefile passes DEMO_ARGS through
    assert not (tmp_path / "state").exists()  # failed before doing anything


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "7000", "--admin-port", "7000"], "must differ"),
        (["--port", "70000"], "not a TCP port"),
    ],
    ids=["same-port-twice", "port-out-of-range"],
)
def test_bad_port_arguments_are_usage_errors(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, str(DEMO / "run.py"), *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_a_copy_never_rewrites_a_url_twice(tmp_path: Path) -> None:
    """The new upstream port may be the port the issuer had (8080): each URL is rewritten once, by what it was."""
    config, _ = run.gateway_setup(tour.Ports(gateway=8090, admin=8091, upstream=8080), tmp_path)
    text = config.read_text()
    assert "upstream: http://127.0.0.1:8080" in text
    assert "upstream: http://127.0.0.1:8090" not in text
    assert "issuer: http://127.0.0.1:8090" in text


@pytest.mark.parametrize("ports", [tour.Ports(), tour.Ports(8090, 8091, 9090)], ids=["defaults", "moved"])
def test_the_stores_secrets_stay_with_the_store_whatever_config_is_served(ports: Any, tmp_path: Path) -> None:
    """Served as is or as a copy, the gateway and the CLI use the pepper and KEK of the state directory, so a
    change of ports between runs leaves the stored keys and token signing keys readable."""
    config, env = run.gateway_setup(ports, tmp_path)
    assert config == tmp_path / "demo-stockade.yaml"  # another state directory: a copy, even on the default ports
    text = config.read_text()
    store = tmp_path / "stockade.db"
    assert f"storage: {json.dumps(f'sqlite:///{store}')}" in text
    assert "storage: sqlite:///.stockade/stockade.db" not in text
    secrets = {"pepper_file": str(tmp_path / "pepper"), "kek_file": str(tmp_path / "kek")}
    assert f"secrets: {json.dumps(secrets)}" in text
    assert env["STOCKADE_SECRETS__PEPPER_FILE"] == str(tmp_path / "pepper")
    assert env["STOCKADE_SECRETS__KEK_FILE"] == str(tmp_path / "kek")
    assert env["STOCKADE_STORAGE"] == f"sqlite:///{tmp_path / 'stockade.db'}"


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ('{"a": 1}', "'{\"a\": 1}'"),
        ("Authorization: Bearer $TOKEN", '"Authorization: Bearer $TOKEN"'),
        ("client_id=$CLIENT_ID&client_secret=$CLIENT_SECRET", '"client_id=$CLIENT_ID&client_secret=$CLIENT_SECRET"'),
        ("Bearer $TOKENS", None),  # bash would expand $TOKENS
        ("$KEY and $HOME", None),  # only the placeholders may expand
        ("$KEY!", None),  # history expansion inside double quotes
        ('say "$KEY"', None),
    ],
)
def test_banner_words_are_quoted_so_only_the_placeholders_expand(text: str, word: str | None) -> None:
    if word is None:
        with pytest.raises(ValueError):
            tour._shell_word(text)
    else:
        assert tour._shell_word(text) == word
