"""STOCKADE_* environment overrides set one setting each, and a name that sets nothing is refused, not ignored."""

from __future__ import annotations

import click
import pytest

from stockade.config.loader import load_config_text
from stockade.errors import ConfigError
from tests.config.test_loader import GOOD

TLS = GOOD.replace(
    "listen: {host: 127.0.0.1, port: 8080}",
    "listen:\n  host: 127.0.0.1\n  port: 8443\n"
    "  tls: {cert: c.pem, key: k.pem, client_ca: ca.pem, client_auth: required}",
)


def refused(env: dict[str, str], text: str = GOOD) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, source="gw.yaml", env=env)
    (problem,) = info.value.problems
    return problem


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        # A whole section from one variable replaced it: `tls` (or client_auth) went without a word.
        ("STOCKADE_LISTEN", "{port: 32082}", "'listen' is a section"),
        ("STOCKADE_LISTEN__TLS", "{cert: a.pem, key: b.pem}", "'listen.tls' is a section"),
        ("STOCKADE_LIMITS", "{max_headers: 50}", "'limits' is a section"),
        ("STOCKADE_LISTEN__PORT", "[1, 2]", "takes one value"),
        ("STOCKADE_LISTEN__PORT", "{a: 1}", "takes one value"),
        ("STOCKADE_WORKERS", "[2]", "takes one value"),
        ("STOCKADE_TRUSTED_PROXIES", "{a: 10.0.0.0/8}", "a YAML list"),
        ("STOCKADE_TRUSTED_PROXIES", "[[10.0.0.0/8]]", "a YAML list"),
    ],
    ids=["listen", "listen-tls", "limits", "port-list", "port-map", "workers-list", "proxies-map", "proxies-nested"],
)
def test_an_override_sets_one_leaf_not_a_section(name: str, value: str, fragment: str) -> None:
    problem = refused({name: value}, TLS)
    assert name in problem and fragment in problem, problem


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("STOCKADE_LIMIT_STORAGE", "STOCKADE_LIMITS_STORAGE"),
        ("STOCKADE_WORKER", "STOCKADE_WORKERS"),
        ("STOCKADE_LISTEN_PORT", "STOCKADE_LISTEN__PORT"),
        ("STOCKADE_TRUSTED_PROXY", "STOCKADE_TRUSTED_PROXIES"),
        ("STOCKADE_LISTN__PORT", "STOCKADE_LISTEN__PORT"),
        ("STOCKADE_LISTEN__PORTT", "STOCKADE_LISTEN__PORT"),
        ("STOCKADE_ADMIN__TLS", ""),
        ("STOCKADE_NOPE__X", ""),
    ],
)
def test_a_name_that_sets_nothing_is_refused_with_the_nearest_name(name: str, hint: str) -> None:
    """STOCKADE_LISTEN_PORT=9 (one underscore) used to be ignored: the gateway served on the file's port."""
    problem = refused({name: "1", "STOCKADE_TEST_REDIS_URL": "redis://x"})
    assert name in problem and "is not a setting" in problem, problem
    assert f"did you mean {hint}?" in problem if hint else "did you mean" not in problem, problem


@pytest.mark.parametrize("name", ["STOCKADE_ROUTES", "STOCKADE_STAGES", "STOCKADE_ROUTES__0", "STOCKADE_OAUTH2_SERVER"])
def test_routes_and_what_makes_them_are_not_overridable(name: str) -> None:
    """docs: overrides never touch routes; `oauth2_server` expands into four of them."""
    problem = refused({name: "[]"})
    assert name in problem and "not overridable from the environment" in problem, problem


def test_variables_the_project_reads_elsewhere_are_left_alone() -> None:
    env = {
        "STOCKADE_PEPPER": "x",
        "STOCKADE_KEK": "x",
        "STOCKADE_CONFIG": "gw.yaml",
        "STOCKADE_TEST_POSTGRES_URL": "postgresql://x",
        "STOCKADE_TEST_REDIS_URL": "redis://x",
    }
    assert load_config_text(GOOD, env=env).overrides == ()


def _former_option_variables(cmd: click.Command, prefix: str) -> list[str]:
    names = [
        f"{prefix}_{p.name.upper()}"
        for p in cmd.params
        if isinstance(p, click.Option) and p.expose_value and p.name and p.envvar is None
    ]
    for sub, child in (cmd.commands if isinstance(cmd, click.Group) else {}).items():
        names += _former_option_variables(child, f"{prefix}_{sub.upper().replace('-', '_')}")
    return names


def test_former_option_variables_are_left_to_the_cli() -> None:
    """The CLI refuses them with their own message (or ignores an empty one); the loader must not refuse them as
    misspelt settings (`STOCKADE_SERVE_WORKERS=` in a unit file)."""
    from stockade.cli import cli

    names = _former_option_variables(cli, "STOCKADE")
    assert "STOCKADE_SERVE_WORKERS" in names and "STOCKADE_ADMIN_TOKEN_CREATE_TTL" in names
    assert load_config_text(GOOD, env=dict.fromkeys(names, "")).overrides == ()


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        ("STOCKADE_LISTEN__HOST", "0x7f000001", ("listen", "host"), "0x7f000001"),  # YAML: an int
        ("STOCKADE_LISTEN__TLS__MIN_VERSION", "1.3", ("listen", "tls", "min_version"), "1.3"),  # YAML: a float
        ("STOCKADE_LOG__DECISIONS", "off", ("log", "decisions"), "off"),
        ("STOCKADE_STORAGE", "'sqlite:///q.db'", ("storage",), "sqlite:///q.db"),  # quoted still works
        ("STOCKADE_LISTEN__PORT", "9999", ("listen", "port"), 9999),
        ("STOCKADE_TRUSTED_PROXIES", "[10.0.0.0/8, 192.0.2.1]", ("trusted_proxies",), ["10.0.0.0/8", "192.0.2.1"]),
        ("STOCKADE_ADMIN__ALLOWED_HOSTS", "[gw.example]", ("admin", "allowed_hosts"), ["gw.example"]),
        ("STOCKADE_LISTEN__TLS__CLIENT_AUTH", "optional", ("listen", "tls", "client_auth"), "optional"),
    ],
)
def test_an_override_sets_the_leaf_it_names(name: str, value: str, field: tuple[str, ...], expected: object) -> None:
    loaded = load_config_text(TLS, env={name: value})
    node: object = loaded.config
    for part in field:
        node = getattr(node, part)
    assert node == expected
    assert loaded.config.listen.tls is not None and loaded.config.listen.tls.client_auth in ("required", "optional")
    assert loaded.overrides == (name,)


def test_a_boolean_for_a_number_is_refused() -> None:
    """`yes` is YAML 1.1 for true, and true was port 1."""
    problem = refused({"STOCKADE_LISTEN__PORT": "yes"})
    assert "STOCKADE_LISTEN__PORT" in problem and "boolean" in problem, problem


def test_a_number_too_long_to_read_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(GOOD, source="gw.yaml", env={"STOCKADE_WORKERS": "1" * 5000})
    assert all("STOCKADE_WORKERS" in p for p in info.value.problems), info.value.problems
