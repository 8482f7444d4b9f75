"""`stockade config check|schema` and the global --config option."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from stockade.cli import cli
from stockade.config.loader import load_config
from tests.config.test_loader import GOOD


def test_check_valid_exits_zero(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD)
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path}: OK (1 route, 3 stage placements, 1 worker)" in result.output


def test_check_invalid_exits_nonzero_naming_route_and_field(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD.replace("max_bytes: 1024", "max_bytes: -3"))
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert "route 'items'" in result.output
    assert "field 'config.max_bytes'" in result.output
    assert f"{path}:10" in result.output
    assert "Traceback" not in result.output


def test_check_uses_global_config_option(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD)
    result = CliRunner().invoke(cli, ["--config", str(path), "config", "check"])
    assert result.exit_code == 0, result.output


def test_check_takes_config_after_the_subcommand_too(tmp_path: Path) -> None:
    """The top-level help says commands that read a config take --config after the subcommand."""
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD)
    result = CliRunner().invoke(cli, ["config", "check", "--config", str(path)])
    assert result.exit_code == 0, result.output


def test_check_missing_file_says_how_to_name_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["config", "check", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2
    assert "no config file" in result.output and "--config FILE" in result.output
    assert "configuration invalid" not in result.output


ASGI = """routes:
  - id: items
    match: {path: "/api/**"}
    stages: [{use: anonymous}]
"""


def test_check_asgi_configs_need_no_upstream(tmp_path: Path) -> None:
    """docs/asgi.md: the wrapped app is the upstream; the proxy needs one per route."""
    path = tmp_path / "app.yaml"
    path.write_text(ASGI)
    plain = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert plain.exit_code == 2 and "field 'upstream'" in plain.output and "config check --asgi" in plain.output
    result = CliRunner().invoke(cli, ["config", "check", "--asgi", str(path)])
    assert result.exit_code == 0, result.output


def test_schema_is_json_schema_with_every_stage() -> None:
    result = CliRunner().invoke(cli, ["config", "schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema["$schema"].startswith("https://json-schema.org/")
    uses = set(schema["$defs"]["StageEntry"]["properties"]["use"]["enum"])
    assert {"anonymous", "ip_filter", "request_size", "security_headers"} <= uses
    assert schema["properties"]["listen"]


def test_help_lists_commands() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "serve" in result.output and "config" in result.output


def test_check_loads_runtime_files_and_reports_them(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD.replace("port: 8080}", "port: 8080, tls: {cert: missing.pem, key: missing.key}}"))
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert f"{path}:1: field 'listen.tls.cert': no such file" in result.output  # with its line, as parse errors
    assert "Traceback" not in result.output


def test_check_has_no_side_effects(tmp_path: Path) -> None:
    """Checking a config that uses the key store creates no database and no secret files."""
    path = tmp_path / "gw.yaml"
    path.write_text(
        "storage: sqlite:///state/gw.db\nroutes:\n  - id: r\n    match: {path: /**}\n    upstream: http://x\n"
        "    stages: [{use: api_key}]\n"
    )
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gw.yaml"]


def test_serve_reports_runtime_config_errors_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD.replace("port: 8080}", "port: 0, tls: {cert: missing.pem, key: missing.key}}"))
    result = CliRunner().invoke(cli, ["serve", "--config", str(path)])
    assert result.exit_code == 2
    assert "listen.tls" in result.output
    assert "Traceback" not in result.output


def test_decision_log_path_resolves_against_the_config_and_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD.replace("admin:", "log: {decisions: nowhere/decisions.log}\nadmin:"))
    for args in (["config", "check", str(path)], ["serve", "--config", str(path)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        assert "field 'log.decisions'" in result.output
        assert str(tmp_path / "nowhere") in result.output
        assert "Traceback" not in result.output


def test_relative_decision_log_path_is_next_to_the_config(tmp_path: Path) -> None:
    from stockade.clock import SYSTEM_CLOCK
    from stockade.config.loader import load_config
    from stockade.pipeline.stage import Services
    from stockade.runtime import build_runtime

    path = tmp_path / "gw.yaml"
    path.write_text(GOOD.replace("admin:", "log: {decisions: decisions.log}\nadmin:"))
    runtime = build_runtime(load_config(path, env={}), Services(clock=SYSTEM_CLOCK, dry_run=True))
    assert runtime.decision_log == str(tmp_path / "decisions.log")


def test_problems_found_while_building_name_the_line_of_the_stage(tmp_path: Path) -> None:
    """A missing spec (found when the stage is built, not when the file is parsed) had no line number."""
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD.replace("- use: security_headers", "- use: openapi\n        config: {spec: nope.yaml}"))
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert f"{path}:11: route 'items' (routes[0]) > stage 'openapi' (stages[2]): openapi spec" in result.output


def test_check_warns_where_a_route_takes_methods_from_a_broader_one(tmp_path: Path) -> None:
    """A route owns its path for every method: `/login` for POST next to a `/**` site route makes GET /login
    405, where Kong would have tried the site route. Valid, but worth a word."""
    path = tmp_path / "gw.yaml"
    path.write_text(
        "routes:\n"
        "  - {id: login, match: {path: /login, methods: [POST]}, upstream: 'http://a', stages: [{use: anonymous}]}\n"
        "  - {id: site, match: {path: /**}, upstream: 'http://a', stages: [{use: anonymous}]}\n"
    )
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output
    assert "route 'login' owns /login for POST: DELETE, GET, OPTIONS, PATCH, PUT, TRACE there get 405" in result.output
    assert "not route 'site'" in result.output


def test_check_lists_every_shadow_a_load_only_counts(tmp_path: Path) -> None:
    """A load (every worker, every reload) logs a screenful of shadow warnings and points here; `config check`
    lists every route each 405 hides."""
    sites = [
        f"  - {{id: site{h}, match: {{path: /**, methods: [GET], host: t{h}.example.com}}, upstream: 'http://a',"
        " stages: [{use: anonymous}]}"
        for h in range(30)
    ]
    apis = [
        f"  - {{id: api{i}, match: {{path: '/api/r{i}/{{id}}', methods: [POST]}}, upstream: 'http://a',"
        " stages: [{use: anonymous}]}"
        for i in range(10)
    ]
    path = tmp_path / "gw.yaml"
    path.write_text("\n".join(["routes:", *sites, *apis]) + "\n")
    loaded = load_config(path)
    assert len(loaded.warnings) == 21
    assert loaded.warnings[-1].endswith("... and 10 more routes whose 405s hide other routes: `stockade config "
                                        "check` lists them all")  # fmt: skip
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 30
    assert all(w.count("get 405, not route 'api") == 10 for w in warnings)


def test_check_warns_where_a_host_route_hides_an_any_host_route(tmp_path: Path) -> None:
    """A host's routes answer its requests first, a 405 included: POST /admin on that host never reaches the
    any-host route that allows it. The warning names the host as requests are compared (lower-case, no dot)."""
    path = tmp_path / "gw.yaml"
    path.write_text(
        "routes:\n"
        "  - {id: admin, match: {path: /admin, methods: [GET], host: API.Example.com.}, upstream: 'http://a',\n"
        "     stages: [{use: anonymous}]}\n"
        "  - {id: admin-any, match: {path: /admin, methods: [GET, POST]}, upstream: 'http://a',\n"
        "     stages: [{use: anonymous}]}\n"
    )
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert (
        "route 'admin' owns /admin on api.example.com for GET: POST there get 405, not route 'admin-any'"
    ) in result.output


LOGIN_ROUTE = """
{head}
routes:
  - id: login
    match: {{path: /login, methods: [POST]}}
    upstream: http://127.0.0.1:9
    stages:
      - use: anonymous
      - use: brute_force
        config: {{login: {{username_field: username}}}}
"""


IDENTITY_ROUTE = """
{head}
routes:
  - id: api
    match: {{path: /api}}
    upstream: http://127.0.0.1:9
    stages:
      - use: brute_force
      - use: jwt
        config: {{issuers: [{{issuer: "https://idp.example", audiences: [api], jwks_url: "https://idp.example/jwks"}}]}}
"""


@pytest.mark.parametrize(
    ("route", "route_id"), [(LOGIN_ROUTE, "login"), (IDENTITY_ROUTE, "api")], ids=["login", "identity"]
)
@pytest.mark.parametrize(
    ("head", "warned"),
    [
        ('limits_storage: "redis://127.0.0.1:6379/0"\nsecrets: {generate: false}', True),
        ('limits_storage: "redis://127.0.0.1:6379/0"\nsecrets: {pepper_file: nowhere/pepper}', True),
        ('limits_storage: "redis://127.0.0.1:6379/0"\nsecrets: {generate: false, pepper_file: pepper}', False),
        ('limits_storage: "redis://127.0.0.1:6379/0"', False),  # generated at start, next to the config
        ("secrets: {generate: false}", False),  # memory://: the process's own key, no pepper needed
    ],
    ids=["no-pepper", "named-missing", "named-present", "generated", "memory"],
)
def test_check_warns_when_serve_would_find_no_pepper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, route: str, route_id: str, head: str, warned: bool
) -> None:
    """It said OK, and serve then exited 2: a login route on Redis counts usernames keyed with the pepper. Any other
    brute_force route (identities) needs none, so is never warned about. The check still reads no secret file: it
    goes by names and permissions."""
    monkeypatch.delenv("STOCKADE_PEPPER", raising=False)
    (tmp_path / "pepper").write_text("not read by a check")
    path = tmp_path / "gw.yaml"
    path.write_text(route.format(head=head))
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    warning = f"serve would refuse to start: route '{route_id}': stage brute_force needs the pepper"
    assert (warning in result.stderr) is (warned and route_id == "login"), result.stderr
    assert not (tmp_path / ".stockade").exists()


def test_check_names_the_overrides_it_applied_but_not_their_values(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD)
    env = {"STOCKADE_LISTEN__PORT": "9123", "STOCKADE_STORAGE": "sqlite:///secret-name.db"}
    result = CliRunner().invoke(cli, ["config", "check", str(path)], env=env)
    assert result.exit_code == 0, result.output
    assert "environment overrides: STOCKADE_LISTEN__PORT, STOCKADE_STORAGE" in result.output
    assert "9123" not in result.output and "secret-name" not in result.output


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("x: " + "1" * 5000 + "\n", "integer too long"),
        ("x: &a [*a]\n", "recursive alias"),
        (GOOD.replace("host: 127.0.0.1, port: 8080", "host: 'not a host!', port: 8080"), "field 'listen.host'"),
        (GOOD.replace("port: 8081", "port: 8080"), "admin.port"),
    ],
    ids=["long-int", "recursive-alias", "listen-host", "port-clash"],
)
def test_check_reports_what_used_to_crash_or_pass_with_exit_2(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 2, result.output
    assert fragment in result.output and str(path) in result.output and "Traceback" not in result.output


def test_check_refuses_an_endless_device_as_too_large() -> None:
    """`config check /dev/zero` read until the process was killed."""
    result = CliRunner().invoke(cli, ["config", "check", "/dev/zero"])
    assert result.exit_code == 2 and "/dev/zero: larger than 16 MiB" in result.output, result.output


PIPED = {
    "stdin": ("cat {f} | {stockade} config check /dev/stdin", "/dev/stdin: OK"),
    "process-substitution": ("{stockade} config check <(cat {f})", ": OK"),
}


@pytest.mark.parametrize(("command", "said"), PIPED.values(), ids=PIPED.keys())
def test_check_reads_a_config_given_as_a_pipe(tmp_path: Path, command: str, said: str) -> None:
    """Both worked before configs had to be regular files."""
    import shlex
    import subprocess
    import sys

    path = tmp_path / "gw.yaml"
    path.write_text(GOOD)
    line = command.format(f=shlex.quote(str(path)), stockade=f"{shlex.quote(sys.executable)} -m stockade")
    result = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert said in result.stdout, result.stdout
