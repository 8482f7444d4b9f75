"""Config errors name the file, line, route, stage and field; everything wrong is reported at once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stockade.config.loader import load_config, load_config_text
from stockade.errors import ConfigError

GOOD = """\
listen: {host: 127.0.0.1, port: 8080}
admin: {host: 127.0.0.1, port: 8081}
routes:
  - id: items
    match: {path: "/api/**", methods: [GET, POST]}
    upstream: http://127.0.0.1:9000
    stages:
      - use: anonymous
      - use: request_size
        config: {max_bytes: 1024}
      - use: security_headers
"""


def problems(text: str, **kw: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, source="gw.yaml", env={}, **kw)  # type: ignore[arg-type]
    return info.value.problems


def test_the_issue_example_is_valid() -> None:
    loaded = load_config_text(GOOD, env={})
    assert [p.entry.use for p in loaded.route_stages["items"]] == ["anonymous", "request_size", "security_headers"]


BROKEN = [
    ("unknown-top-level", "routez: []\n", ["gw.yaml:1:", "field 'routez'", "unknown field"]),
    ("bad-port", GOOD.replace("port: 8080", "port: 99999"), ["gw.yaml:1:", "field 'listen.port'", "65535"]),
    ("port-not-int", GOOD.replace("port: 8080", "port: eighty"), ["field 'listen.port'", "integer"]),
    (  # each worker would bind a port of its own: two unrelated listeners, and no one port to name
        "port-0-with-workers",
        GOOD.replace("port: 8080", "port: 0").replace("admin: {", "workers: 2\nadmin: {"),
        ["listen.port is 0", "2 workers"],
    ),
    (
        "unknown-stage",
        GOOD.replace("use: security_headers", "use: security_header"),
        [
            "gw.yaml:11:",
            "route 'items' (routes[0])",
            "stage 'security_header' (stages[2])",
            "field 'use'",
            "did you mean 'security_headers'",
        ],
    ),
    (
        "stage-field-type",
        GOOD.replace("max_bytes: 1024", "max_bytes: lots"),
        ["gw.yaml:10:", "route 'items'", "stage 'request_size' (stages[1])", "field 'config.max_bytes'", "integer"],
    ),
    (
        "stage-unknown-field",
        GOOD.replace("max_bytes: 1024", "max_bytes: 1024, maxbytes: 5"),
        ["stage 'request_size'", "field 'config.maxbytes'", "unknown field"],
    ),
    (
        "stage-missing-field",
        GOOD.replace("config: {max_bytes: 1024}", "config: {}"),
        ["stage 'request_size'", "field 'config.max_bytes'", "field required"],
    ),
    (
        "no-authenticator",
        GOOD.replace("      - use: anonymous\n", ""),
        ["route 'items'", "field 'stages'", "no authenticator", "use: anonymous"],
    ),
    (
        "missing-upstream",
        GOOD.replace("    upstream: http://127.0.0.1:9000\n", ""),
        ["route 'items'", "field 'upstream'", "needs an upstream"],
    ),
    (
        "upstream-scheme",
        GOOD.replace("http://127.0.0.1:9000", "ftp://x"),
        ["route 'items'", "field 'upstream.url'", "http:// or https://"],
    ),
    (
        "upstream-credentials",
        GOOD.replace("http://127.0.0.1:9000", "http://u:p@x"),
        ["field 'upstream.url'", "credentials"],
    ),
    ("bad-method", GOOD.replace("[GET, POST]", "[GET, FETCH]"), ["field 'match.methods'", "FETCH"]),
    (
        "bad-template",
        GOOD.replace('"/api/**"', '"/api/**/x"'),
        ["route 'items'", "field 'match.path'", "only as the last segment"],
    ),
    (
        "relative-template",
        GOOD.replace('"/api/**"', '"api"'),
        ["gw.yaml:5:", "route 'items'", "field 'match.path'", "must start with '/'"],
    ),
    *(
        (
            f"host-{name}",
            GOOD.replace("methods: [GET, POST]", f"methods: [GET, POST], host: '{host}'"),
            [
                "field 'match.host'",
                message,
            ],
        )
        for name, host, message in [
            ("with-port", "admin.example.com:8443", "without a port"),
            ("url", "https://secure.example.com", "not a URL"),
            ("inner-wildcard", "a.*.example.com", "only as a prefix"),
            ("bare-wildcard", "*", "only as a prefix"),
            ("empty-label", "a..example.com", "not a host name"),
        ]
    ),
    ("bad-route-id", GOOD.replace("id: items", "id: 'has space'"), ["routes[0]", "field 'id'"]),
    *(
        (
            f"anonymous-id-{name}",
            GOOD.replace("- use: anonymous", f"- {{use: anonymous, config: {{id: {value}}}}}"),
            ["stage 'anonymous'", "field 'config.id'"],
        )
        for name, value in [("space", "'bad id'"), ("empty", "''"), ("long", "a" * 65), ("newline", '"a\\nb"')]
    ),
    (
        "fail-open-on-authn",
        GOOD.replace("- use: anonymous", "- {use: anonymous, fail_open: true}"),
        ["stage 'anonymous'", "field 'fail_open'", "rate-limit and detect"],
    ),
    (
        "anonymous-not-last",
        GOOD.replace("      - use: request_size", "      - use: anonymous\n      - use: request_size").replace(
            "      - use: anonymous\n      - use: anonymous",
            "      - {use: anonymous, config: {id: a}}\n      - {use: anonymous, config: {id: b}}",
        ),
        ["must be the last authenticator"],
    ),
    (
        "ip-filter-bad-cidr",
        GOOD.replace("- use: security_headers", "- {use: ip_filter, config: {allow: [10.0.0.0/33]}}"),
        ["stage 'ip_filter'", "field 'config.allow'", "10.0.0.0/33"],
    ),
    (
        "ip-filter-empty",
        GOOD.replace("- use: security_headers", "- {use: ip_filter, config: {}}"),
        ["stage 'ip_filter'", "set `allow`, `deny` or both"],
    ),
    ("trusted-proxy-cidr", "trusted_proxies: [nonsense]\n", ["field 'trusted_proxies'", "nonsense"]),
    ("yaml-syntax", "routes: [\n", ["gw.yaml:2:", "YAML syntax error"]),
    ("not-a-mapping", "- a\n- b\n", ["top level must be a mapping"]),
    ("tls-half", GOOD.replace("port: 8080}", "port: 8080, tls: {cert: c.pem}}"), ["field 'listen.tls.key'"]),
    (
        "duplicate-route-id",
        GOOD + GOOD[GOOD.index("  - id: items") :].replace('"/api/**"', '"/b/**"'),
        ["field 'id'", "duplicate route id"],
    ),
    (
        "overlapping-routes",
        GOOD + GOOD[GOOD.index("  - id: items") :].replace("id: items", "id: twin"),
        ["routes 'items' and 'twin' both match"],
    ),
    (
        "handler-and-upstream",
        GOOD.replace("    stages:", "    handler: {use: static}\n    stages:", 1),
        ["route 'items'", "either an upstream or a handler"],
    ),
    (
        "unknown-handler",
        GOOD.replace("    upstream: http://127.0.0.1:9000\n", "    handler: {use: nope}\n"),
        ["field 'handler.use'", "unknown handler"],
    ),
    (
        "global-stage-error",
        "stages:\n  - use: request_size\n    config: {max_bytes: -5}\n",
        ["global stage 'request_size' (stages[0])", "field 'config.max_bytes'"],
    ),
]


@pytest.mark.parametrize(("text", "fragments"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_broken_config_names_where(text: str, fragments: list[str]) -> None:
    found = problems(text)
    joined = "\n".join(found)
    for fragment in fragments:
        assert fragment in joined, f"{fragment!r} not in:\n{joined}"
    assert all(p.startswith("gw.yaml") for p in found)


@pytest.mark.parametrize(
    ("written", "compared"),
    [
        ("Admin.Example.COM.", "admin.example.com"),
        ("*.Internal.example.com.", "*.internal.example.com"),
        ("[::1]", "::1"),
        ("bücher.example.com", "xn--bcher-kva.example.com"),
        ("straße.example", "xn--strae-oqa.example"),  # IDNA 2008, as browsers send it (2003 gives strasse)
        ("*.Bücher.example", "*.xn--bcher-kva.example"),
        ("☃.net", "xn--n3h.net"),  # refused by strict IDNA 2008, sent by browsers
        ("a_b.ünï.de", "a_b.xn--n-nga1b.de"),
        ("api_1.compose", "api_1.compose"),
    ],
)
def test_host_patterns_are_stored_as_requests_are_compared(written: str, compared: str) -> None:
    """Each of these used to load as written and then match no Host header: every request went to the any-host
    routes (fail open)."""
    loaded = load_config_text(GOOD.replace("methods: [GET, POST]", f"methods: [GET, POST], host: '{written}'"), env={})
    assert loaded.config.routes[0].match.host == [compared]


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        (
            "{use: rate_limit, config: {limits: [{rate: five/minute, key: ip}]}}",
            ["field 'config.limits[0].rate': rate 'five/minute' is not"],  # no follow-on "list too short"
        ),
        (
            "{use: brute_force, config: {login: {failure_statuses: 401}}}",
            ["field 'config.login.failure_statuses': should be a list"],  # not pydantic's "a valid tuple"
        ),
    ],
)
def test_stage_config_errors_say_what_the_user_wrote(stage: str, expected: list[str]) -> None:
    found = problems(GOOD.replace("- use: security_headers", f"- {stage}"))
    assert len(found) == len(expected), found
    assert all(any(e in p for p in found) for e in expected), found


def test_every_problem_is_reported_in_one_run() -> None:
    text = (
        GOOD.replace("port: 8080", "port: -1")
        .replace("max_bytes: 1024", "max_bytes: x")
        .replace("use: security_headers", "use: nope")
    )
    found = problems(text)
    assert len(found) == 3
    assert any("listen.port" in p for p in found)
    assert any("config.max_bytes" in p for p in found)
    assert any("unknown stage 'nope'" in p for p in found)


def test_environment_overrides_settings() -> None:
    env = {
        "STOCKADE_LISTEN__PORT": "9999",
        "STOCKADE_LIMITS__HEADER_TIMEOUT": "2.5",
        "STOCKADE_WORKERS": "3",
        "STOCKADE_CONFIG": "ignored.yaml",
        "STOCKADE_PEPPER": "not-a-setting",
    }
    loaded = load_config_text(GOOD, env=env)
    assert loaded.config.listen.port == 9999
    assert loaded.config.listen.host == "127.0.0.1"
    assert loaded.config.limits.header_timeout == 2.5
    assert loaded.config.workers == 3


@pytest.mark.parametrize(
    ("name", "hint"),
    [("STOCKADE_LISTN__PORT", "did you mean STOCKADE_LISTEN__"), ("STOCKADE_NOPE__X", "")],
)
def test_a_misspelt_override_is_an_error_not_ignored(name: str, hint: str) -> None:
    """STOCKADE_LISTN__PORT=1 used to load the file's port without a word: the operator believed it applied."""
    with pytest.raises(ConfigError) as info:
        load_config_text(GOOD, source="gw.yaml", env={name: "1", "STOCKADE_TEST_REDIS_URL": "redis://x"})
    (problem,) = info.value.problems
    assert name in problem and "is not a setting" in problem and hint in problem


def test_bad_environment_override_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(GOOD, source="gw.yaml", env={"STOCKADE_ADMIN__PORT": "many"})
    assert "field 'admin.port'" in info.value.problems[0]
    assert "STOCKADE_ADMIN__PORT" in info.value.problems[0]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STOCKADE_LISTEN__TLS", ""),  # an empty variable (a missing Kubernetes secret) must not turn TLS off
        ("STOCKADE_LISTEN__TLS", "~"),
        ("STOCKADE_LISTEN__TLS", "null"),
        ("STOCKADE_ADMIN", ""),
        ("STOCKADE_LISTEN__PORT", "  "),
    ],
)
def test_empty_or_null_environment_override_is_refused(name: str, value: str) -> None:
    text = "listen: {host: 127.0.0.1, port: 8443, tls: {cert: c.pem, key: k.pem}}\n" + GOOD.split("\n", 1)[1]
    with pytest.raises(ConfigError) as info:
        load_config_text(text, source="gw.yaml", env={name: value}, require_upstreams=False)
    (problem,) = info.value.problems
    assert problem.startswith("gw.yaml: ")
    assert name in problem
    assert "unset the variable" in problem


def test_global_stages_apply_to_every_route_and_route_stages_override_them() -> None:
    text = """\
stages:
  - use: request_size
    config: {max_bytes: 10}
  - use: security_headers
routes:
  - id: a
    match: {path: /a}
    upstream: http://x
    stages: [{use: anonymous}]
  - id: b
    match: {path: /b}
    upstream: http://x
    stages: [{use: anonymous}, {use: request_size, config: {max_bytes: 99}}]
"""
    loaded = load_config_text(text, env={})
    assert [p.entry.use for p in loaded.route_stages["a"]] == ["request_size", "security_headers", "anonymous"]
    b = {p.entry.use: p for p in loaded.route_stages["b"]}
    assert b["request_size"].config.max_bytes == 99  # type: ignore[attr-defined]
    assert loaded.route_stages["a"][0] is loaded.global_stages[0]


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml", env={})


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "gw.yaml").write_text(GOOD)
    loaded = load_config(tmp_path / "gw.yaml", env={})
    assert loaded.base_dir == tmp_path.resolve()


ROUTE_WITH_TWO_STAGE_LISTS = """
routes:
  - id: r
    match: {path: /x}
    upstream: http://127.0.0.1:9
    stages: [{use: anonymous}, {use: request_size, config: {max_bytes: 10}}]
    stages: [{use: anonymous}]
"""


def _bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + f"\nlisten: {{host: '127.0.0.1', port: 8080}}\nx: *a{levels}\n"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        # YAML keeps the last of repeated keys silently: here that would drop request_size without a word
        (ROUTE_WITH_TWO_STAGE_LISTS, "repeated key 'stages'"),
        ("listen: {port: 8080}\nlisten: {port: 9090}\n", "repeated key 'listen'"),
        (_bomb(7), "expands to"),  # "billion laughs": a few hundred bytes, 10**8 nodes
        ("listen: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ],
    ids=["repeated-stages", "repeated-section", "alias-bomb", "deep-nesting"],
)
def test_yaml_that_hides_or_explodes_is_refused(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, env={})
    assert fragment in str(info.value)


def test_merge_keys_may_be_overridden_and_small_aliases_pass() -> None:
    text = (
        "routes:\n"
        "  - id: r\n    match: {path: /x}\n    upstream: &up {url: 'http://127.0.0.1:9', read_timeout: 5}\n"
        "    stages: [&anon {use: anonymous}]\n"
        "  - id: s\n    match: {path: /y}\n    upstream: {<<: *up, read_timeout: 9}\n    stages: [*anon]\n"
    )
    routes = {r.id: r for r in load_config_text(text, env={}).config.routes}
    assert routes["r"].upstream is not None and routes["s"].upstream is not None
    assert (routes["r"].upstream.read_timeout, routes["s"].upstream.read_timeout) == (5, 9)
    assert routes["s"].upstream.url == "http://127.0.0.1:9"


def test_log_decisions_off_unquoted_is_off() -> None:
    loaded = load_config_text("log: {decisions: off}\n", env={}, require_upstreams=False)
    assert loaded.config.log.decisions == "off"


def test_own_auth_is_only_for_routes_with_a_handler() -> None:
    """On an upstream route it silently dropped the global authenticators and authorizers."""
    text = (
        "stages: [{use: api_key}, {use: scopes, config: {require: [admin]}}]\n"
        "routes:\n  - id: r\n    match: {path: /x}\n    upstream: http://127.0.0.1:9\n    own_auth: true\n"
        "    stages: [{use: anonymous}]\n"
    )
    with pytest.raises(ConfigError, match="own_auth is for routes with a handler"):
        load_config_text(text, env={})


def test_a_reload_that_changes_secrets_is_refused_as_restart_only() -> None:
    from stockade.proxy.process import restart_only_changes

    base = "routes:\n  - id: r\n    match: {path: /x}\n    upstream: http://127.0.0.1:9\n"
    base += "    stages: [{use: anonymous}]\n"
    old = load_config_text(base, env={})
    new = load_config_text("secrets: {pepper_file: other-pepper}\n" + base, env={})
    assert restart_only_changes(old, new) == ["secrets"]
    assert restart_only_changes(old, load_config_text(base, env={})) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("   \n# nothing yet\n", "the file is empty"),
        ("listen: {host: 127.0.0.1, port: 8080}\n", "no `routes:` in the file"),  # cut short at a line boundary
    ],
    ids=["empty", "comments-only", "no-routes"],
)
def test_a_file_caught_mid_write_is_refused_where_it_would_be_served(text: str, message: str) -> None:
    """A shell `>` truncates before it writes: reloaded at that moment, the gateway dropped every route."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config_text(text, source="gw.yaml", env={}, require_routes=True)
    assert load_config_text("routes: []\n", env={}, require_routes=True).config.routes == []  # said on purpose


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("x: " + "1" * 5000 + "\n", "gw.yaml:1:4: YAML error: integer too long"),  # int() refuses > 4300 digits
        ("x: &a [*a]\n", "gw.yaml:1:4: YAML error: recursive alias"),
        ("routes: &r\n  - *r\n", "gw.yaml:1:9: YAML error: recursive alias"),
        ("x: !!binary aGVsbG8=\n", "gw.yaml:1:4: YAML error: the !!binary tag"),  # was accepted as a string
        ("routes: []\nx: a\0b\n", "gw.yaml:2:5: YAML syntax error: unacceptable character #x0000"),
    ],
    ids=["long-int", "recursive-alias", "recursive-routes", "binary", "nul"],
)
def test_yaml_the_loader_cannot_use_is_a_config_error_with_its_line(text: str, fragment: str) -> None:
    """Each of these was a traceback (exit 1), or a message without a line."""
    (problem,) = problems(text)
    assert problem.startswith(fragment), problem


def test_a_file_over_the_size_cap_is_refused_unread(tmp_path: Path) -> None:
    from stockade.config.yamldoc import MAX_FILE_BYTES

    path = tmp_path / "gw.yaml"
    path.write_text(GOOD + "#" * MAX_FILE_BYTES)
    with pytest.raises(ConfigError, match="larger than 16 MiB"):
        load_config(path, env={})


def test_a_limits_storage_url_urlsplit_refuses_is_a_config_error() -> None:
    text = 'limits_storage: "rediss://user:pw@[::1"\n' + GOOD.replace(
        "use: security_headers", "{use: rate_limit, config: {limits: [{rate: 5/minute, key: ip}]}}"
    )
    (problem,) = problems(text)
    assert "limits_storage 'rediss://user:***@[::1'" in problem and ":pw@" not in problem, problem


def test_an_invalid_authenticator_is_not_also_reported_as_missing() -> None:
    found = problems(GOOD.replace("- use: anonymous", "- {use: jwt, config: {issuer: 5}}"))
    assert found and all("stage 'jwt'" in p for p in found), found


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("trusted_proxies: [0.0.0.0/0]\n" + GOOD, "gw.yaml:1: trusted_proxies '0.0.0.0/0' trusts every address"),
        ("trusted_proxies: ['::/0']\n" + GOOD, "trusted_proxies '::/0' trusts every address"),
        (GOOD.replace("listen: {host: 127.0.0.1", "listen: {host: 0.0.0.0"), "gw.yaml:1: listen.host '0.0.0.0'"),
    ],
    ids=["any-v4", "any-v6", "plain-http-everywhere"],
)
def test_settings_that_open_the_gateway_are_warned_of(text: str, fragment: str) -> None:
    warnings = load_config_text(text, source="gw.yaml", env={}).warnings
    assert any(w.startswith(fragment) or fragment in w for w in warnings), warnings


def test_a_plain_loopback_listener_and_narrow_proxies_are_not_warned_of() -> None:
    assert load_config_text("trusted_proxies: [10.0.0.0/8]\n" + GOOD, env={}).warnings == ()
    asgi = GOOD.replace("host: 127.0.0.1", "host: 0.0.0.0")  # the middleware's server listens, not `listen`
    assert load_config_text(asgi, env={}, require_upstreams=False).warnings == ()
