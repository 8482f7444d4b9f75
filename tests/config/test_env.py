"""STOCKADE_* environment overrides set one setting each, and a name that sets nothing is refused, not ignored."""

from __future__ import annotations

from pathlib import Path

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
        ("STOCKADE_TRUSTED_PROXIES", "{a: 10.0.0.0/8}", "[a, b]"),
        ("STOCKADE_TRUSTED_PROXIES", "[[10.0.0.0/8]]", "[a, b]"),
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


# What Kubernetes puts in every pod for a Service in the namespace (named `stockade`, `stockade-admin`), and what
# Docker's legacy --link gives for an alias: none of it is an override, and none of it may stop the gateway.
SERVICE_LINKS = {
    "k8s-host": ("STOCKADE_SERVICE_HOST", "10.96.0.12"),
    "k8s-host-v6": ("STOCKADE_SERVICE_HOST", "fd00:10:96::c"),
    "k8s-port": ("STOCKADE_SERVICE_PORT", "8080"),
    "k8s-named-port": ("STOCKADE_SERVICE_PORT_HTTP_ADMIN", "8081"),
    "k8s-url": ("STOCKADE_PORT", "tcp://10.96.0.12:8080"),
    "k8s-url-v6": ("STOCKADE_PORT", "tcp://[fd00:10:96::c]:8080"),
    "k8s-port-tcp": ("STOCKADE_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
    "k8s-port-proto": ("STOCKADE_PORT_8080_TCP_PROTO", "tcp"),
    "k8s-port-port": ("STOCKADE_PORT_8080_TCP_PORT", "8080"),
    "k8s-port-addr": ("STOCKADE_PORT_8080_TCP_ADDR", "10.96.0.12"),
    "k8s-udp": ("STOCKADE_PORT_53_UDP", "udp://10.96.0.10:53"),
    "k8s-sctp-addr": ("STOCKADE_PORT_9_SCTP_ADDR", "10.96.0.9"),
    "k8s-other-service-host": ("STOCKADE_ADMIN_SERVICE_HOST", "10.96.0.13"),
    "k8s-other-service-url": ("STOCKADE_ADMIN_PORT", "tcp://10.96.0.13:8081"),
    "k8s-listen-service-url": ("STOCKADE_LISTEN_PORT", "tcp://10.96.0.14:80"),
    "k8s-other-service-port-addr": ("STOCKADE_REDIS_PORT_6379_TCP_ADDR", "10.96.0.15"),
    "docker-name": ("STOCKADE_NAME", "/gateway/stockade"),
    "docker-env": ("STOCKADE_ENV_STOCKADE_LISTEN__PORT", "9090"),
    "docker-other-env": ("STOCKADE_DB_ENV_POSTGRES_PASSWORD", "x"),
    "docker-range-start": ("STOCKADE_PORT_8000_TCP_START", "tcp://172.17.0.2:8000"),
    "docker-range-port-end": ("STOCKADE_PORT_8000_TCP_PORT_END", "8010"),
}


@pytest.mark.parametrize(("name", "value"), SERVICE_LINKS.values(), ids=SERVICE_LINKS.keys())
def test_service_link_variables_are_ignored(name: str, value: str) -> None:
    """A Service named `stockade` in the namespace stopped every gateway pod: STOCKADE_SERVICE_HOST is no setting."""
    loaded = load_config_text(GOOD, env={name: value, "STOCKADE_LISTEN__PORT": "9999"})
    assert loaded.overrides == ("STOCKADE_LISTEN__PORT",)
    assert loaded.config.listen.port == 9999


def test_every_service_link_variable_of_a_service_at_once_is_ignored() -> None:
    assert load_config_text(GOOD, env=dict(SERVICE_LINKS.values())).overrides == ()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STOCKADE_LISTEN_PORT", "9090"),  # one underscore: a typo, not a link (whose value is a URL)
        ("STOCKADE_ADMIN_PORT", "8082"),
        ("STOCKADE_LISTN__PORT", "tcp://10.96.0.12:8080"),  # a '__' is an override's, never a service name's
        ("STOCKADE_SERVICE_HOST", "gw.example"),  # Kubernetes gives a cluster IP
        ("STOCKADE_SERVICE_PORT", "http"),
        ("STOCKADE_PORT_8080_TCP_PROTO", "http"),
        ("STOCKADE_PORT_8080_HTTP", "tcp://10.96.0.12:8080"),
        ("STOCKADE_NAME", "gateway"),  # Docker gives /container/alias
    ],
)
def test_a_misspelt_override_shaped_like_a_link_is_still_refused(name: str, value: str) -> None:
    problem = refused({name: value})
    assert name in problem and "is not a setting" in problem, problem


def test_the_cli_ignores_service_link_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command loads the config (and the root checks former option variables) with the pod's environment."""
    from click.testing import CliRunner

    from stockade.cli import cli

    path = tmp_path / "gw.yaml"
    path.write_text(GOOD)
    for name, value in SERVICE_LINKS.values():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("STOCKADE_KEYS_CREATE_NAME", "/gateway/stockade-keys-create")  # a --link alias
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "environment overrides" not in result.output


def test_the_asgi_middleware_ignores_service_link_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from stockade.asgi import StockadeMiddleware

    for name, value in SERVICE_LINKS.values():
        monkeypatch.setenv(name, value)

    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("not called")

    text = GOOD.replace("    upstream: http://127.0.0.1:9000\n", "")
    StockadeMiddleware(app, config_text=text)


# Text settings take the value as written: YAML read ` #` as the start of a comment and cut the value there.
AS_WRITTEN = {
    "redis-password-hash": (
        "STOCKADE_LIMITS_STORAGE",
        "redis://:secret #1@127.0.0.1:6379/11",
        ("limits_storage",),
        "redis://:secret #1@127.0.0.1:6379/11",
    ),
    "path-hash": ("STOCKADE_LOG__DECISIONS", "/tmp/x/dec #1.log", ("log", "decisions"), "/tmp/x/dec #1.log"),
    "sqlite-hash": ("STOCKADE_STORAGE", "sqlite:////tmp/demo #1/s.db", ("storage",), "sqlite:////tmp/demo #1/s.db"),
    "single-quoted": ("STOCKADE_STORAGE", "'sqlite:///q.db'", ("storage",), "sqlite:///q.db"),
    "double-quoted": ("STOCKADE_STORAGE", '"sqlite:///q.db"', ("storage",), "sqlite:///q.db"),
    "quoted-no-escapes": ("STOCKADE_LOG__DECISIONS", '"/tmp/a\\tb"', ("log", "decisions"), "/tmp/a\\tb"),
    "quoted-hash": ("STOCKADE_LOG__DECISIONS", "'/tmp/x #1'", ("log", "decisions"), "/tmp/x #1"),
    "unmatched-quote": ("STOCKADE_LOG__DECISIONS", "'/tmp/x", ("log", "decisions"), "'/tmp/x"),
    "inner-quote": ("STOCKADE_LOG__DECISIONS", "/tmp/it's", ("log", "decisions"), "/tmp/it's"),
    "colon-space": ("STOCKADE_LOG__DECISIONS", "/tmp/a: b", ("log", "decisions"), "/tmp/a: b"),
    "spaces-around": ("STOCKADE_LOG__DECISIONS", " /tmp/x ", ("log", "decisions"), "/tmp/x"),
    "quoted-null": ("STOCKADE_LOG__DECISIONS", "'null'", ("log", "decisions"), "null"),
    "v6-unquoted": ("STOCKADE_TRUSTED_PROXIES", "[::1/128]", ("trusted_proxies",), ["::1/128"]),
    "v6-mixed": (
        "STOCKADE_TRUSTED_PROXIES",
        "[10.0.0.0/8, '::1/128', \"fd00::/8\",2001:db8::1]",
        ("trusted_proxies",),
        ["10.0.0.0/8", "::1/128", "fd00::/8", "2001:db8::1"],
    ),
    "empty-list": ("STOCKADE_TRUSTED_PROXIES", "[]", ("trusted_proxies",), []),
    "spaced-list": (
        "STOCKADE_ADMIN__ALLOWED_HOSTS",
        " [ a.example ,b.example ] ",
        ("admin", "allowed_hosts"),
        ["a.example", "b.example"],
    ),
}


@pytest.mark.parametrize(("name", "value", "field", "expected"), AS_WRITTEN.values(), ids=AS_WRITTEN.keys())
def test_a_text_or_list_override_is_taken_as_written(
    tmp_path: Path, name: str, value: str, field: tuple[str, ...], expected: object
) -> None:
    loaded = load_config_text(GOOD, env={name: value})
    node: object = loaded.config
    for part in field:
        node = getattr(node, part)
    assert node == expected


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("STOCKADE_STORAGE", "", "empty or null"),
        ("STOCKADE_STORAGE", "  ", "empty or null"),
        ("STOCKADE_STORAGE", "''", "empty or null"),
        ("STOCKADE_LOG__DECISIONS", "~", "empty or null"),
        ("STOCKADE_LOG__DECISIONS", "null", "empty or null"),
        ("STOCKADE_TRUSTED_PROXIES", "10.0.0.0/8", "[a, b]"),
        ("STOCKADE_TRUSTED_PROXIES", "[10.0.0.0/8", "[a, b]"),
        ("STOCKADE_TRUSTED_PROXIES", "[10.0.0.0/8,, ::1]", "an empty item"),
        ("STOCKADE_TRUSTED_PROXIES", "[a, {b: c}]", "[a, b]"),
        ("STOCKADE_TRUSTED_PROXIES", "['a]", "[a, b]"),
    ],
    ids=[
        "empty",
        "blank",
        "quoted-empty",
        "tilde",
        "null",
        "no-brackets",
        "unclosed",
        "empty-item",
        "map-item",
        "quote",
    ],
)
def test_a_text_or_list_override_of_no_value_or_shape_is_refused(name: str, value: str, fragment: str) -> None:
    problem = refused({name: value})
    assert name in problem and fragment in problem, problem
