"""brute_force end to end through a real gateway: identity and IP back-off and lockout on gateway auth,
the login-route mode counting upstream 401/403 per username, and lockouts shared through Redis."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
from pathlib import Path

import orjson
import pytest

from stockade.clock import FakeClock
from stockade.config.loader import load_config_text
from stockade.errors import ConfigError
from stockade.pipeline.stage import Services
from stockade.ratelimit.backend import SHARED_KEY, LimiterBackend, Lockout
from stockade.runtime import build_runtime
from stockade.security.keys import username_key
from stockade.stages.ratelimit.brute_force import UnreadableLoginError, hash_username, username
from stockade.stages.ratelimit.username_key import SHARED_KEY as USERNAME_KEY
from stockade.stages.ratelimit.username_key import UsernameKey
from stockade.testing import Reply, TestGateway, gateway_with_upstream
from tests.ratelimit.redisutil import fresh_redis_url

AUTH = """
{head}
routes:
  - id: items
    match: {{path: /items}}
    upstream: "{{upstream}}"
    stages:
      - use: brute_force
        config:
          per_ip: {per_ip}
          per_identity: {{free_failures: 2, lockout_after: 4, backoff_base: 1, backoff_max: 10, lockout_seconds: 300}}
      - use: test_auth
"""

ANN_WRONG = {"x-user": "ann", "x-password": "wrong"}
ANN_RIGHT = {"x-user": "ann", "x-password": "right"}


def answer(gw: TestGateway, headers: dict[str, str], path: str = "/items") -> tuple[int, str, str | None]:
    status, hdrs, body = gw.request("GET", path, headers=headers)
    reason = orjson.loads(body).get("reason", "") if hdrs.get("content-type") == "application/problem+json" else ""
    return status, reason, hdrs.get("retry-after")


def backend(gw: TestGateway) -> LimiterBackend:
    return gw.services.shared[SHARED_KEY]  # type: ignore[no-any-return]


def user_subject(gw: TestGateway, name: str) -> str:
    """The lockout subject `name` is counted under by this gateway (keyed with its username key)."""
    found = gw.services.shared[USERNAME_KEY]
    assert isinstance(found, UsernameKey)
    return f"user:{hash_username(found.key, name)}"


def test_identity_backs_off_then_locks_and_answers_the_same_for_right_and_wrong() -> None:
    with gateway_with_upstream(AUTH.format(head="", per_ip="null")) as (gw, up):
        assert [answer(gw, ANN_WRONG)[0] for _ in range(3)] == [401, 401, 401]  # 2 free, the 3rd backs off
        assert answer(gw, ANN_RIGHT) == (429, "auth.throttled", "1")  # even the right password must wait
        gw.advance(1)
        assert answer(gw, ANN_WRONG)[0] == 401  # 4th failure: locked out
        locked = (429, "auth.locked_out", "300")
        assert answer(gw, ANN_RIGHT) == locked
        assert answer(gw, ANN_WRONG) == locked  # same answer: a guesser learns nothing
        assert answer(gw, {"x-user": "bob", "x-password": "right"})[0] == 200  # others are unaffected
        assert len(up.received) == 1
        [lockout] = asyncio.run(backend(gw).lockouts())
        assert lockout.subject.startswith("id:") and lockout.locked and lockout.failures == 4
        assert "ann" not in lockout.subject  # a hash of the identity, never the name or the secret
        gw.advance(300)
        assert answer(gw, ANN_RIGHT)[0] == 200


def test_success_forgets_earlier_failures() -> None:
    with gateway_with_upstream(AUTH.format(head="", per_ip="null")) as (gw, _up):
        assert [answer(gw, ANN_WRONG)[0] for _ in range(2)] == [401, 401]
        assert answer(gw, ANN_RIGHT)[0] == 200
        assert [answer(gw, ANN_WRONG)[0] for _ in range(3)] == [401, 401, 401]  # two free failures again
        assert answer(gw, ANN_RIGHT)[0] == 429


def test_requests_without_credentials_are_not_failures() -> None:
    with gateway_with_upstream(AUTH.format(head="", per_ip="{free_failures: 0, lockout_after: 2}")) as (gw, _up):
        assert [answer(gw, {})[1] for _ in range(5)] == ["auth.required"] * 5


def test_ip_locks_out_across_identities_before_authentication() -> None:
    per_ip = "{free_failures: 3, lockout_after: 5, lockout_seconds: 600}"
    head = "trusted_proxies: [127.0.0.1/32]"
    with gateway_with_upstream(AUTH.format(head=head, per_ip=per_ip)) as (gw, up):
        sprayer = {"X-Forwarded-For": "203.0.113.66"}
        for i in range(5):  # credential stuffing: one wrong guess per account, patient enough to wait out back-off
            assert answer(gw, {**sprayer, "x-user": f"user{i}", "x-password": "guess"})[0] == 401
            if i == 3:
                assert answer(gw, {**sprayer, "x-user": "x", "x-password": "right"}) == (429, "auth.throttled", "1")
            gw.advance(1)
        assert answer(gw, {**sprayer, "x-user": "zed", "x-password": "right"}) == (429, "auth.locked_out", "599")
        assert answer(gw, sprayer)[1] == "auth.locked_out"  # refused in PRE_AUTH: no credential needed
        assert answer(gw, {"X-Forwarded-For": "198.51.100.2", **ANN_RIGHT})[0] == 200  # another client
        assert len(up.received) == 1


LOGIN = """
routes:
  - id: login
    match: {path: /login, methods: [POST]}
    upstream: "{upstream}"
    stages:
      - use: anonymous
      - use: brute_force
        config:
          per_ip: {free_failures: 100, lockout_after: 1000}
          per_identity: {free_failures: 1, lockout_after: 3, backoff_base: 2, lockout_seconds: 120}
          login: {username_field: user.email}
"""


def login(gw: TestGateway, email: str, *, form: bool = False) -> tuple[int, str]:
    if form:
        body = f"user.email={email}&password=x".encode()
        ctype = "application/x-www-form-urlencoded"
    else:
        body = orjson.dumps({"user": {"email": email}, "password": "x"})
        ctype = "application/json"
    status, headers, raw = gw.request("POST", "/login", headers={"Content-Type": ctype}, body=body)
    reason = orjson.loads(raw).get("reason", "") if headers.get("content-type") == "application/problem+json" else ""
    return status, reason


def test_login_route_counts_upstream_401_per_username() -> None:
    with gateway_with_upstream(LOGIN) as (gw, up):
        up.reply("/login", Reply(401, [("Content-Type", "text/plain")], b"no"))
        assert login(gw, "alice@example.com") == (401, "")  # the upstream's own answer, forwarded
        assert login(gw, "Alice@Example.com ") == (401, "")  # same account: case and spaces do not matter
        assert login(gw, "alice@example.com") == (429, "auth.throttled")  # backing off 2 s
        assert len(up.received) == 2  # refused before the upstream saw it
        gw.advance(2)
        assert login(gw, "ALICE@example.com", form=True) == (401, "")  # third failure: locked
        assert login(gw, "alice@example.com") == (429, "auth.locked_out")
        up.reply("/login", Reply(200, [("Content-Type", "application/json")], b"{}"))
        assert login(gw, "bob@example.com")[0] == 200  # other accounts log in
        assert login(gw, "alice@example.com") == (429, "auth.locked_out")  # even with the right password
        assert asyncio.run(backend(gw).clear(user_subject(gw, "alice@example.com"))) == 1
        assert login(gw, "alice@example.com")[0] == 200


def test_login_route_403_counts_and_success_resets() -> None:
    with gateway_with_upstream(LOGIN) as (gw, up):
        up.reply("/login", Reply(403))
        assert login(gw, "carol@example.com")[0] == 403
        up.reply("/login", Reply(200))
        assert login(gw, "carol@example.com")[0] == 200
        up.reply("/login", Reply(403))
        assert login(gw, "carol@example.com")[0] == 403  # the success forgot the first failure: still free
        assert login(gw, "carol@example.com")[0] == 403


@pytest.mark.parametrize("limits", ["memory", "redis"])
def test_login_subjects_are_keyed(tmp_path: Path, limits: str) -> None:
    """They were SHA-256 of the folded username: anyone who could list lockouts (a viewer admin token, Redis read
    access) confirmed guessed usernames offline. With Redis the key derives from the pepper (every node must count
    alike); with memory:// it is the process's own."""
    subjects = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "pepper").write_text(base64.b64encode(name.encode() * 16).decode())
        head = f'limits_storage: "{fresh_redis_url()}"\n' if limits == "redis" else ""
        text = head + "secrets: {pepper_file: pepper}\n" + LOGIN
        with gateway_with_upstream(text, base_dir=tmp_path / name) as (gw, up):
            up.reply("/login", Reply(401))
            assert [login(gw, "ceo@example.com")[0] for _ in range(2)] == [401, 401]
            [lockout] = asyncio.run(_lockouts(gw))  # backing off
            assert lockout.subject == user_subject(gw, "CEO@example.com ")
            if limits == "redis":
                key = username_key(base64.b64decode(base64.b64encode(name.encode() * 16)))
                assert lockout.subject == f"user:{hash_username(key, 'ceo@example.com')}"
            subjects.append(lockout.subject)
    unkeyed = hashlib.sha256(b"stockade-login:ceo@example.com").hexdigest()[:32]
    assert subjects[0] != subjects[1] and unkeyed not in subjects[0] and unkeyed not in subjects[1]


async def _lockouts(gw: TestGateway) -> list[Lockout]:
    from stockade.ratelimit.redis import RedisBackend

    url = gw.services.config.limits_storage  # type: ignore[union-attr]
    if not url.startswith("redis"):
        return await backend(gw).lockouts()
    other = RedisBackend(url, gw.clock)  # a client on this loop, as the CLI would have
    try:
        async with asyncio.timeout(10):
            while not (found := await other.lockouts()):  # failures are recorded after the answer
                await asyncio.sleep(0.01)
            return found
    finally:
        await other.aclose()


def test_a_redis_login_route_needs_the_pepper_and_config_check_reads_none(tmp_path: Path) -> None:
    head = 'limits_storage: "redis://127.0.0.1:6379/0"\nsecrets: {generate: false}\n'
    text = head + LOGIN.replace("{upstream}", "http://127.0.0.1:9")
    loaded = load_config_text(text, base_dir=tmp_path, env={})
    with pytest.raises(ConfigError) as info:  # at load, not on the first login: the pepper file does not exist
        build_runtime(loaded, Services(clock=FakeClock()))
    [problem] = info.value.problems
    assert "route 'login'" in problem and "brute_force" in problem and "pepper does not exist" in problem
    build_runtime(loaded, Services(clock=FakeClock(), dry_run=True))  # `config check`: throwaway material
    assert not (tmp_path / ".stockade").exists()


@pytest.mark.parametrize(
    ("secrets", "made"),
    [
        ("{}", ["pepper"]),  # generated: the pepper alone
        ("{pepper_file: own/pepper, kek_file: own/kek, generate: false}", []),  # no KEK file: none needed
    ],
    ids=["generated", "named-without-kek"],
)
def test_a_redis_login_route_loads_the_pepper_and_no_kek(tmp_path: Path, secrets: str, made: list[str]) -> None:
    """It loaded (and generated) a KEK too, which nothing on a login route uses: a config naming no KEK file, or
    one whose KEK lives elsewhere, was refused."""
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "pepper").write_text(base64.b64encode(b"p" * 32).decode())
    head = f'limits_storage: "redis://127.0.0.1:6379/0"\nsecrets: {secrets}\n'
    loaded = load_config_text(head + LOGIN.replace("{upstream}", "http://127.0.0.1:9"), base_dir=tmp_path, env={})
    build_runtime(loaded, Services(clock=FakeClock()))
    found = sorted(p.name for p in (tmp_path / ".stockade").iterdir()) if (tmp_path / ".stockade").exists() else []
    assert found == made


def test_a_pepper_that_cannot_be_generated_says_what_to_give(tmp_path: Path) -> None:
    (tmp_path / ".stockade").write_text("a file where the secrets directory would go (as read-only: nothing made)")
    head = 'limits_storage: "redis://127.0.0.1:6379/0"\n'
    loaded = load_config_text(head + LOGIN.replace("{upstream}", "http://127.0.0.1:9"), base_dir=tmp_path, env={})
    with pytest.raises(ConfigError) as info:
        build_runtime(loaded, Services(clock=FakeClock()))
    [problem] = info.value.problems
    assert "route 'login'" in problem and "cannot generate" in problem and "STOCKADE_PEPPER" in problem


BAD = UnreadableLoginError  # the expected "result" of a body the gateway must refuse (400 brute_force.bad_login)


@pytest.mark.parametrize(
    ("body", "ctype", "field", "expected"),
    [
        (b'{"username": "ann"}', "application/json", "username", "ann"),
        (b'{"user": {"email": "a@b"}}', "application/json; charset=utf-8", "user.email", "a@b"),
        (b'{"username": 5551234}', "application/json", "username", "5551234"),  # an account number: its digits
        (b'{"username": 5.5}', "application/json", "username", BAD),
        (b'{"username": 9007199254740993}', "application/json", "username", BAD),  # one double in JavaScript
        (b'{"username": "victim", "username": "decoy"}', "application/json", "username", BAD),  # first or last?
        (b'{"username": true}', "application/json", "username", BAD),
        (b'{"username": ["ann"]}', "application/json", "username", BAD),
        (b'{"username": null}', "application/json", "username", None),
        (b'{"username": "  "}', "application/json", "username", None),
        (b"not json", "application/json", "username", BAD),
        (b'\xef\xbb\xbf{"username": "ann"}', "application/json", "username", BAD),  # BOM: Python's json reads it
        ('{"username": "ann"}'.encode("utf-16"), "application/json", "username", BAD),  # so does json.loads(bytes)
        (b"[1, 2]", "application/json", "username", None),
        (b"username=ann&password=x", "application/x-www-form-urlencoded", "username", "ann"),
        (b"password=x", "application/x-www-form-urlencoded", "username", None),
        (b"username=decoy&username=ann", "application/x-www-form-urlencoded", "username", BAD),  # Django: last
        (b"username=&username=ann", "application/x-www-form-urlencoded", "username", BAD),
        (b"username=%ff", "application/x-www-form-urlencoded", "username", BAD),
        (b"username=\xffann", "application/x-www-form-urlencoded", "username", BAD),
        (b"username=ren%C3%A9&password=ren%E9", "application/x-www-form-urlencoded", "username", "ren\u00e9"),
        (b'{"username": "ann"}', "text/plain", "username", None),
        (b'{"username": "' + b"a" * 600 + b'"}', "application/json", "username", BAD),
        (b'{"username": "' + b" " * 600 + b'ann"}', "application/json", "username", "ann"),  # trimmed, then measured
        # Django decodes the body in the request's charset: in UTF-7 this is `username=d1&username=alice`
        (b"username=d1+ACY-username+AD0-alice", "application/x-www-form-urlencoded; charset=utf-7", "username", BAD),
        (b'{"username": "ann"}', "application/json; charset=utf-16", "username", BAD),
        (b'{"username": "ann"}', 'application/json; charset="UTF-8"', "username", "ann"),
        (b'{"username": "ann"}', "text/plain; charset=utf-7", "username", None),  # not a login body at all
        # PHP's $_POST: ` username`, `username%00` and `user.name` are `username`, `username` and `user_name`
        (b"%20username=alice&password=x", "application/x-www-form-urlencoded", "username", BAD),
        (b"username%00=alice&username=d1", "application/x-www-form-urlencoded", "username", BAD),
        (b"user.name=alice", "application/x-www-form-urlencoded", "user_name", BAD),
        (b"user.name=alice&user_name=ann", "application/x-www-form-urlencoded", "user.name", "alice"),
    ],
    ids=[
        "json",
        "nested",
        "account-number",
        "float",
        "beyond-2**53",
        "json-repeated-key",
        "bool",
        "list",
        "null",
        "blank",
        "bad-json",
        "bom",
        "utf-16",
        "array",
        "form",
        "form-missing",
        "form-repeated",
        "form-repeated-blank",
        "form-bad-percent-utf8",
        "form-raw-bad-utf8",
        "form-latin1-password",
        "other-type",
        "too-long",
        "padded",
        "form-utf7",
        "json-utf16-charset",
        "json-utf8-charset-quoted",
        "other-type-utf7",
        "form-php-leading-space",
        "form-php-nul",
        "form-php-dot",
        "form-dotted-field-itself",
    ],
)
def test_username_extraction(body: bytes, ctype: str, field: str, expected: str | type[Exception] | None) -> None:
    if expected is BAD:
        with pytest.raises(UnreadableLoginError):
            username(body, ctype, field)
    else:
        assert username(body, ctype, field) == expected


KEY = username_key(b"p" * 32)


@pytest.mark.parametrize(
    "variant",
    [
        "Victim",
        " victim ",
        "VICTIM",
        "\uff56ictim",  # fullwidth v
        "\U0001d42fictim",  # mathematical bold v
        "v\u0131ctim".replace("\u0131", "i"),  # control: plain
        "\u1d5bictim".replace("\u1d5b", "v"),  # control: plain
        "victim\u3000",  # ideographic space
    ],
)
def test_username_variants_are_one_identity(variant: str) -> None:
    assert hash_username(KEY, variant) == hash_username(KEY, "victim")


def test_different_usernames_stay_different() -> None:
    assert len({hash_username(KEY, n) for n in ["victim", "victim2", "vict im", "victim.", "v1ctim"]}) == 5


@pytest.mark.parametrize(
    ("headers", "body", "query", "status", "reason"),
    [
        (
            {"Content-Type": "application/x-www-form-urlencoded"},
            b"user.email=decoy&user.email=ann@x",
            "",
            400,
            "bad_login",
        ),
        ({"Content-Type": "application/json"}, '{"user": {"email": "ann@x"}}'.encode("utf-16"), "", 400, "bad_login"),
        ({"Content-Type": "application/json"}, b'\xef\xbb\xbf{"user": {"email": "ann@x"}}', "", 400, "bad_login"),
        ({"Content-Type": "application/json"}, b'{"user": {"email": ["a@x"]}}', "", 400, "bad_login"),
        ({"Content-Type": "application/json"}, b'{"password": "x"}', "user.email=ann@x", 400, "bad_login"),
        (
            {"Content-Type": "application/json", "Content-Encoding": "gzip"},
            gzip.compress(b'{"user": {"email": "ann@x"}}'),
            "",
            415,
            "unsupported_body",
        ),
        (
            {"Content-Type": "application/x-www-form-urlencoded; charset=utf-7"},
            b"user.email=d1+ACY-user.email+AD0-ann+AEA-x",
            "",
            400,
            "bad_login",
        ),
    ],
    ids=["form-repeated", "utf-16", "bom", "not-a-string", "in-the-query", "compressed", "utf-7"],
)
def test_login_requests_the_gateway_cannot_read_a_username_from_are_refused(
    headers: dict[str, str], body: bytes, query: str, status: int, reason: str
) -> None:
    """Each reached the upstream uncounted: a locked account was reachable by changing how the name is sent."""
    with gateway_with_upstream(LOGIN) as (gw, up):
        path = "/login?" + query if query else "/login"
        got, _, raw = gw.request("POST", path, headers=headers, body=body)
        assert (got, orjson.loads(raw)["reason"]) == (status, "brute_force." + reason)
        assert up.received == []


def test_a_locked_account_stays_locked_under_another_spelling() -> None:
    with gateway_with_upstream(LOGIN) as (gw, up):
        up.reply("/login", Reply(401))
        for _ in range(3):
            login(gw, "victim@example.com")
            gw.advance(10)
        assert login(gw, "victim@example.com") == (429, "auth.locked_out")
        for spelling in ["\uff56ictim@example.com", "\U0001d42fICTIM@example.com", "victim@example.com" + " " * 600]:
            assert login(gw, spelling) == (429, "auth.locked_out")
            assert login(gw, spelling, form=True) == (429, "auth.locked_out")


def test_login_body_is_bounded() -> None:
    with gateway_with_upstream(LOGIN) as (gw, _up):
        big = orjson.dumps({"user": {"email": "a@b"}, "pad": "x" * 20_000})
        status, _, _ = gw.request("POST", "/login", headers={"Content-Type": "application/json"}, body=big)
    assert status == 413


@pytest.mark.redis
def test_lockouts_are_shared_through_redis() -> None:
    head = f'limits_storage: "{fresh_redis_url()}"'
    # Redis keeps real time, so no back-off step here: the fourth failure locks at once.
    config = AUTH.format(head=head, per_ip="null").replace("free_failures: 2,", "free_failures: 3,")
    with gateway_with_upstream(config) as (gw1, _up1), gateway_with_upstream(config) as (gw2, _up2):
        for gw in (gw1, gw2, gw1, gw2):  # failures spread over two gateways (as over two nodes)
            assert answer(gw, ANN_WRONG)[0] in (401, 429)
        assert answer(gw2, ANN_RIGHT)[1] == "auth.locked_out"
        assert answer(gw1, ANN_RIGHT)[1] == "auth.locked_out"
        assert asyncio.run(_clear_all(gw1)) >= 1
        assert answer(gw2, ANN_RIGHT)[0] == 200


async def _clear_all(gw: TestGateway) -> int:
    from stockade.ratelimit.redis import RedisBackend

    url = gw.services.config.limits_storage  # type: ignore[union-attr]
    other = RedisBackend(url, gw.clock)  # a separate client, as the CLI would be
    try:
        return await other.clear(None)
    finally:
        await other.aclose()


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="user.email"\r\n\r\nalice\r\n--b--\r\n',
        ),
        ("text/plain", b'{"user": {"email": "alice"}}'),  # FastAPI, say, would still parse it as JSON
        (None, b'{"user": {"email": "alice"}}'),
        ("text/json", b'{"user": {"email": "alice"}}'),
    ],
    ids=["multipart", "json-as-text", "json-without-type", "text-json"],
)
def test_a_login_body_whose_username_cannot_be_read_is_refused(content_type: str | None, body: bytes) -> None:
    """Such bodies reached the upstream uncounted: a locked account stayed reachable by changing the format."""
    with gateway_with_upstream(LOGIN) as (gw, up):
        headers = {"Content-Type": content_type} if content_type else {}
        status, _, raw = gw.request("POST", "/login", headers=headers, body=body)
        assert (status, orjson.loads(raw)["reason"]) == (415, "brute_force.unsupported_body")
        assert up.received == []
        assert gw.request("POST", "/login")[0] != 415  # no body: nothing to read, nothing refused


def test_a_login_by_query_string_is_counted_like_a_body_one() -> None:
    """An API that takes the username in the query (`POST /login?username=`) is protected, not refused."""
    with gateway_with_upstream(LOGIN) as (gw, up):
        up.reply("/login", Reply(401))
        for _ in range(3):
            assert gw.request("POST", "/login?user.email=Victim@example.com")[0] == 401
            gw.advance(10)
        assert login(gw, "victim@example.com") == (429, "auth.locked_out")  # the same account, by body
        status, _, raw = gw.request("POST", "/login?user.email=a@x&user.email=victim@example.com")
        assert (status, orjson.loads(raw)["reason"]) == (400, "brute_force.bad_login")
