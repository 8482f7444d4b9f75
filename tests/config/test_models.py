"""The config models refuse what would fail later (at bind, on every request) or mean something else than written."""

from __future__ import annotations

import pytest

from stockade.config.loader import load_config_text
from tests.config.test_loader import GOOD, problems

UP = "upstream: http://127.0.0.1:9000"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        # urlsplit drops CR, LF and tab: the check passed and the raw URL went into the request line
        ("http://127.0.0.1:1/a\\r\\nX-Injected: 1\\r\\nY:", "control"),
        ("http://127.0.0.1:1/a\\tb", "control"),
        ("http://127.0.0.1:1/a b", "control"),
        ("http://127.0.0.1:1/\\x00", "control"),
        ("http://127.0.0.1:1/ápi", "ASCII"),  # every request was a 500 (UnicodeEncodeError)
        ("http://@127.0.0.1:1/", "credentials"),  # empty user info
        ("http://u@127.0.0.1:1/", "credentials"),
    ],
    ids=["crlf", "tab", "space", "nul", "non-ascii", "empty-userinfo", "user"],
)
def test_an_upstream_url_that_cannot_go_on_the_wire_as_written_is_refused(url: str, fragment: str) -> None:
    found = problems(GOOD.replace(UP, f'upstream: "{url}"'))
    assert len(found) == 1 and "field 'upstream.url'" in found[0] and fragment in found[0], found


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/api%C3%A1", "https://api.example:8443/v1", "http://[::1]:9/"])
def test_an_upstream_url_in_wire_form_passes(url: str) -> None:
    load_config_text(GOOD.replace(UP, f'upstream: "{url}"'), env={})


@pytest.mark.parametrize(
    ("section", "host"),
    [("listen", "not a host!"), ("listen", "a..b"), ("admin", "-x.example"), ("admin", "[::1]"), ("listen", "")],
)
def test_a_listener_host_that_cannot_be_bound_is_refused(section: str, host: str) -> None:
    """`config check` passed `not a host!`, then serve died with socket.gaierror."""
    found = problems(GOOD.replace(f"{section}: {{host: 127.0.0.1", f"{section}: {{host: '{host}'"))
    assert len(found) == 1 and f"field '{section}.host'" in found[0], found


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "::1", "localhost", "gw-1.internal", "api_1.compose", "LOCALHOST"])
def test_a_listener_host_may_be_an_address_or_a_name(host: str) -> None:
    load_config_text(GOOD.replace("listen: {host: 127.0.0.1", f"listen: {{host: '{host}'"), env={})


@pytest.mark.parametrize(
    ("listen", "admin", "clash"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("0.0.0.0", "127.0.0.1", True),
        ("::", "::", True),
        ("localhost", "127.0.0.1", True),
        ("127.0.0.1", "127.0.0.2", False),
        ("10.0.0.1", "127.0.0.1", False),
        # A wildcard covers its own family: both listeners bind IPv6 sockets IPv6-only, so 0.0.0.0 is every IPv4
        # address and :: every IPv6 one (both bind one port: checked with a real gateway, one worker and two).
        ("0.0.0.0", "::1", False),
        ("0.0.0.0", "fd00::1", False),
        ("::1", "0.0.0.0", False),
        ("0.0.0.0", "::", False),
        ("::", "10.0.0.1", False),
        ("127.0.0.1", "::", False),
        ("fd00::1", "::", True),
        ("::", "gw.internal", True),  # a name may resolve to an IPv6 address
        # addresses compare as addresses
        ("0::1", "::1", True),
        ("0:0:0:0:0:0:0:0", "::", True),
        ("0.0.0.0", "gw.internal", True),  # a name may resolve to an IPv4 address
        # localhost is both loopbacks
        ("localhost", "::1", True),
        ("::1", "LOCALHOST", True),
        ("localhost", "127.0.0.2", False),
        ("0.0.0.0", "localhost", True),
        ("gw.internal", "10.0.0.1", False),
    ],
)
def test_admin_and_listen_on_one_port_and_host_are_refused(listen: str, admin: str, clash: bool) -> None:
    routes = GOOD.split("\n", 2)[2]
    text = f"listen: {{host: '{listen}', port: 8080}}\nadmin: {{host: '{admin}', port: 8080}}\n{routes}"
    if not clash:
        load_config_text(text, env={})
        return
    (problem,) = problems(text)
    assert "admin.port" in problem and "listen.port" in problem, problem


@pytest.mark.parametrize(("listen", "admin"), [("0.0.0.0", "0.0.0.0"), ("::", "127.0.0.1"), ("127.0.0.1", "127.0.0.1")])
def test_an_asgi_config_has_no_listeners_to_clash(listen: str, admin: str) -> None:
    """docs/asgi.md: `listen` and `admin` are ignored under the middleware (its server listens), so neither the
    port rule nor the warnings about them apply."""
    routes = GOOD.split("\n", 2)[2].replace("    upstream: http://127.0.0.1:9000\n", "")
    text = f"listen: {{host: '{listen}', port: 8080}}\nadmin: {{host: '{admin}', port: 8080}}\n{routes}"
    loaded = load_config_text(text, env={}, require_upstreams=False)
    assert loaded.asgi and loaded.warnings == ()


def test_an_empty_listener_host_names_the_wildcards() -> None:
    """asyncio reads host '' as every interface; written here it is more likely a variable that was not set."""
    (problem,) = problems(GOOD.replace("listen: {host: 127.0.0.1", "listen: {host: ''"))
    assert "field 'listen.host'" in problem and "0.0.0.0" in problem and "'::'" in problem, problem


def test_admin_disabled_or_on_port_zero_may_share_the_number() -> None:
    rest = GOOD.split("\n", 2)[2]
    load_config_text("listen: {port: 8080}\nadmin: {port: 8080, enabled: false}\n" + rest, env={})
    load_config_text("listen: {port: 0}\nadmin: {port: 0}\n" + rest, env={})


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("port: 8080", "port: yes", "listen.port"),  # YAML 1.1: true, which was port 1
        ("port: 8081", "port: on", "admin.port"),
        ("admin: {", "workers: true\nadmin: {", "workers"),
        ("max_bytes: 1024", "max_bytes: yes", "config.max_bytes"),  # a stage's config
        ("listen: {", "limits: {header_timeout: yes}\nlisten: {", "limits.header_timeout"),
    ],
    ids=["listen-port", "admin-port", "workers", "stage-int", "float"],
)
def test_a_boolean_is_not_a_number(old: str, new: str, field: str) -> None:
    (problem,) = problems(GOOD.replace(old, new, 1))
    assert f"field '{field}'" in problem and "boolean" in problem, problem


@pytest.mark.parametrize(
    ("old", "new", "field", "hint"),
    [
        ("methods: [GET, POST]", "methods: [GET, NO]", "match.methods[1]", "read `yes/no/on/off`"),
        ("upstream: http://127.0.0.1:9000", "upstream: {url: off}", "upstream.url", "read `yes/no/on/off`"),
        ("id: items", "id: 2024-01-01", "id", "as a date"),
        ("id: items", "id: 12", "id", "as a number"),
    ],
    ids=["method-no", "url-off", "id-date", "id-number"],
)
def test_a_string_field_given_another_yaml_type_says_to_quote_it(old: str, new: str, field: str, hint: str) -> None:
    (problem,) = problems(GOOD.replace(old, new))
    assert f"field '{field}'" in problem and hint in problem and "quote" in problem, problem
    assert "datetime" not in problem and "route 12 " not in problem, problem  # `route datetime.date(2024, 1, 1)`


def test_an_empty_host_list_is_refused() -> None:
    """`host: []` matched every host, where `methods: []` was refused."""
    (problem,) = problems(GOOD.replace("methods: [GET, POST]", "methods: [GET, POST], host: []"))
    assert "field 'match.host'" in problem and "empty" in problem, problem
