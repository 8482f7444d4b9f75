"""Response protection: upstream JSON checked against the declared schema; undeclared and writeOnly data stripped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from stockade.testing import Reply, TestGateway, TestUpstream, gateway_with_upstream

SPECS = Path(__file__).resolve().parents[2] / "openapi" / "specs"
OWNER = "/v1/owners/9b2f3c1e-8d4a-4b6e-9f0a-1c2d3e4f5a6b"

CONFIG = """
limits: {path_parameters: true}  # shop.yaml has matrix-style path parameters
routes:
  - id: pets
    match: {path: "/v1/**"}
    upstream: "{upstream}"
    stages:
      - use: anonymous
      - use: openapi
        config: {spec: petstore.yaml, responses: %s, response_action: %s}
  - id: shop
    match: {path: "/api/**"}
    upstream: "{upstream}"
    stages:
      - use: anonymous
      - use: openapi
        config: {spec: shop.yaml, responses: %s, response_action: %s}
"""


def _json(doc: object, status: int = 200, **headers: str) -> Reply:
    return Reply(status, [("Content-Type", "application/json"), *headers.items()], orjson.dumps(doc))


def _gateway(tmp: Path, responses: str, action: str = "strip") -> Iterator[tuple[TestGateway, TestUpstream, Path]]:
    log = tmp / f"{responses}-{action}.log"
    config = CONFIG % (responses, action, responses, action)
    with gateway_with_upstream(config, base_dir=SPECS, log_path=log) as (gw, up):
        yield gw, up, log


@pytest.fixture(scope="module")
def enforce(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestGateway, TestUpstream, Path]]:
    yield from _gateway(tmp_path_factory.mktemp("log"), "enforce")


@pytest.fixture(scope="module")
def reject(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestGateway, TestUpstream, Path]]:
    yield from _gateway(tmp_path_factory.mktemp("log"), "enforce", "reject")


@pytest.fixture(scope="module")
def monitor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestGateway, TestUpstream, Path]]:
    yield from _gateway(tmp_path_factory.mktemp("log"), "monitor")


def _last_log(gw: TestGateway, log: Path) -> dict[str, object]:
    gw.flush_log()
    line: dict[str, object] = json.loads(log.read_text().splitlines()[-1])
    return line


LEAKY_OWNER = {
    "email": "a@example.com",
    "password": "hunter2hunter2",  # writeOnly: must never leave
    "ssn": "078-05-1120",  # not in the schema at all
    "address": {"city": "Springfield", "zip": "12345", "geo": [1, 2]},
    "labels": {"free": "form", "map": "kept"},
}


def test_enforce_strips_undeclared_and_write_only(enforce: tuple[TestGateway, TestUpstream, Path]) -> None:
    gw, up, log = enforce
    up.reply(OWNER, _json(LEAKY_OWNER))
    status, headers, body = gw.request("GET", OWNER)
    assert status == 200
    assert json.loads(body) == {
        "email": "a@example.com",
        "address": {"city": "Springfield", "zip": "12345"},
        "labels": {"free": "form", "map": "kept"},
    }
    assert int(headers["content-length"]) == len(body)
    entry = _last_log(gw, log)
    assert entry["findings"] == ["openapi.response_filtered"]


def test_enforce_passes_a_clean_response_byte_for_byte(enforce: tuple[TestGateway, TestUpstream, Path]) -> None:
    gw, up, _ = enforce
    raw = b'{ "email": "a@example.com",  "name": "Ann" }'
    up.reply(OWNER, Reply(200, [("Content-Type", "application/json")], raw))
    assert gw.request("GET", OWNER)[2] == raw


def test_enforce_filters_inside_arrays_and_all_of(enforce: tuple[TestGateway, TestUpstream, Path]) -> None:
    gw, up, _ = enforce
    up.reply("/v1/pets", _json([{"id": 1, "name": "Rex", "internal_score": 9}, {"id": 2, "name": "Tom"}]))
    status, _, body = gw.request("GET", "/v1/pets")
    assert status == 200
    assert json.loads(body) == [{"id": 1, "name": "Rex"}, {"id": 2, "name": "Tom"}]


def test_enforce_filters_the_matching_one_of_branch(enforce: tuple[TestGateway, TestUpstream, Path]) -> None:
    gw, up, _ = enforce
    dog = {"kind": "Dog", "name": "Rex", "good_boy": True, "secret_chip": "123", "indoor": False}
    up.reply("/api/v2/animals", Reply(201, [("Content-Type", "application/vnd.shop+json")], orjson.dumps(dog)))
    status, _, body = gw.request(
        "POST",
        "/api/v2/animals",
        headers={"Content-Type": "application/vnd.shop+json"},
        body=b'{"kind":"Dog","name":"R"}',
    )
    assert status == 201
    assert json.loads(body) == {"kind": "Dog", "name": "Rex", "good_boy": True}  # `indoor` is Cat's, not Dog's


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (_json({"email": 42}), "wrong type"),
        (_json({"name": "no email"}), "required property missing"),
        (Reply(200, [("Content-Type", "application/json")], b"<html>oops</html>"), "not JSON"),
        (_json(LEAKY_OWNER, **{"Content-Encoding": "gzip"}), "encoded: cannot be inspected"),
    ],
    ids=["type", "required", "not-json", "content-encoding"],
)
def test_enforce_answers_502_when_the_response_cannot_be_repaired(
    enforce: tuple[TestGateway, TestUpstream, Path], reply: Reply, why: str
) -> None:
    gw, up, log = enforce
    up.reply(OWNER, reply)
    status, _headers, body = gw.request("GET", OWNER)
    assert status == 502, why
    assert json.loads(body)["reason"] == "response.invalid"
    assert b"hunter2" not in body and b"oops" not in body
    entry = _last_log(gw, log)
    assert (entry["decision"], entry["reason"], entry["stage"]) == ("deny", "response.invalid", "openapi")


def test_default_response_schema_applies_to_other_statuses(enforce: tuple[TestGateway, TestUpstream, Path]) -> None:
    gw, up, _ = enforce
    up.reply("/v1/pets/5", _json({"code": 404, "message": "no", "trace": "at Foo.java:12"}, 404))
    status, _, body = gw.request("GET", "/v1/pets/5")
    assert status == 404
    assert json.loads(body) == {"code": 404, "message": "no"}


@pytest.mark.parametrize(
    ("path", "reply"),
    [
        ("/v1/pets/mine", _json({"anything": "goes"})),  # the operation declares no content
        ("/v1/pets/7", Reply(204)),  # delete: no body
        (OWNER, _json({"anything": "goes"}, 500)),  # status not declared, no default
        (OWNER, Reply(500, [("Content-Type", "text/html")], b"<h1>oops</h1>")),
        (OWNER, Reply(200, [("Content-Type", "text/plain")], b"")),  # empty: nothing to check or leak
    ],
    ids=["no-content-declared", "no-body", "undeclared-status", "undeclared-status-html", "empty-body"],
)
def test_response_without_a_schema_passes_unchanged(
    enforce: tuple[TestGateway, TestUpstream, Path], path: str, reply: Reply
) -> None:
    gw, up, _ = enforce
    up.reply(path, reply)
    method = "DELETE" if reply.status == 204 else "GET"
    status, _, body = gw.request(method, path)
    assert (status, body) == (reply.status, reply.body)


LEAKY_XML = b"<owner><email>a@example.com</email><password>hunter2hunter2</password></owner>"
UNDECLARED_MEDIA = {
    "xml": Reply(200, [("Content-Type", "application/xml")], LEAKY_XML),  # what `Accept: application/xml` gets
    "text-json": Reply(200, [("Content-Type", "text/json")], orjson.dumps(LEAKY_OWNER)),
    "x-json": Reply(200, [("Content-Type", "application/x-json")], orjson.dumps(LEAKY_OWNER)),
    "text-plain": Reply(200, [("Content-Type", "text/plain")], orjson.dumps(LEAKY_OWNER)),
    "no-content-type": Reply(200, [], orjson.dumps(LEAKY_OWNER)),
}


@pytest.mark.parametrize("reply", UNDECLARED_MEDIA.values(), ids=UNDECLARED_MEDIA.keys())
def test_enforce_refuses_a_media_type_the_status_does_not_declare(
    enforce: tuple[TestGateway, TestUpstream, Path], reply: Reply
) -> None:
    """Only JSON was checked: an upstream that negotiates XML (the client's `Accept`) or labels its JSON anything
    else sent the password out unfiltered."""
    gw, up, log = enforce
    up.reply(OWNER, reply)
    status, _, body = gw.request("GET", OWNER, headers={"Accept": "application/xml"})
    assert status == 502
    assert orjson.loads(body)["reason"] == "response.invalid"
    assert b"hunter2" not in body
    entry = _last_log(gw, log)
    assert (entry["reason"], entry["stage"]) == ("response.invalid", "openapi")
    assert "media type" in str(entry["detail"])


@pytest.mark.parametrize("reply", UNDECLARED_MEDIA.values(), ids=UNDECLARED_MEDIA.keys())
def test_monitor_records_a_media_type_the_status_does_not_declare(
    monitor: tuple[TestGateway, TestUpstream, Path], reply: Reply
) -> None:
    gw, up, log = monitor
    up.reply(OWNER, reply)
    status, _, body = gw.request("GET", OWNER)
    assert (status, body) == (200, reply.body)
    entry = _last_log(gw, log)
    assert entry["findings"] == ["openapi.response_invalid"]


def test_head_passes_whatever_the_media_type(enforce: tuple[TestGateway, TestUpstream, Path]) -> None:
    gw, up, _ = enforce
    up.reply(
        OWNER, Reply(200, [("Content-Type", "application/xml"), ("Content-Length", str(len(LEAKY_XML)))], LEAKY_XML)
    )
    assert gw.request("HEAD", OWNER)[0] == 200


def test_accept_encoding_is_removed_so_the_body_can_be_checked(enforce: tuple[TestGateway, TestUpstream, Path]) -> None:
    gw, up, _ = enforce
    up.reply(OWNER, _json({"email": "a@example.com"}))
    gw.request("GET", OWNER, headers={"Accept-Encoding": "gzip, br"})
    assert up.received[-1].header("accept-encoding") is None


def test_reject_mode_answers_502_for_undeclared_data(reject: tuple[TestGateway, TestUpstream, Path]) -> None:
    gw, up, _ = reject
    up.reply(OWNER, _json(LEAKY_OWNER))
    status, _, body = gw.request("GET", OWNER)
    assert status == 502
    assert b"hunter2" not in body and b"078-05" not in body
    up.reply(OWNER, _json({"email": "a@example.com"}))
    assert gw.request("GET", OWNER)[0] == 200


def test_monitor_mode_forwards_unchanged_and_logs_a_finding(monitor: tuple[TestGateway, TestUpstream, Path]) -> None:
    gw, up, log = monitor
    up.reply(OWNER, _json(LEAKY_OWNER))
    status, _, body = gw.request("GET", OWNER)
    assert (status, json.loads(body)) == (200, LEAKY_OWNER)
    entry = _last_log(gw, log)
    assert entry["decision"] == "allow"
    assert entry["findings"] == ["openapi.response_invalid"]


WRITE_ONLY_SPEC = """\
openapi: 3.1.0
info: {title: t, version: '1'}
components:
  schemas:
    Secret: {type: string, writeOnly: true}
paths:
  /users/{id}:
    get:
      parameters: [{name: id, in: path, required: true, schema: {type: integer}}]
      responses:
        '200':
          description: ok
          content:
            application/json:
              schema:
                type: object
                properties:
                  name: {type: string}
                  pw1: {allOf: [{$ref: '#/components/schemas/Secret'}, {description: the password}]}
                  pw2: {allOf: [{type: string}, {writeOnly: true}]}
                  pw3: {anyOf: [{$ref: '#/components/schemas/Secret'}, {type: 'null'}]}
"""


@pytest.mark.parametrize("field", ["pw1", "pw2", "pw3"])
def test_write_only_is_stripped_however_the_property_schema_is_composed(tmp_path: Path, field: str) -> None:
    """A password marked writeOnly through a composition went out byte for byte: the closed check did not know."""
    (tmp_path / "wo.yaml").write_text(WRITE_ONLY_SPEC)
    config = (
        "routes:\n  - id: u\n    match: {path: /**}\n    upstream: '{upstream}'\n    stages:\n"
        "      - use: anonymous\n      - use: openapi\n        config: {spec: wo.yaml, responses: enforce}\n"
    )
    with gateway_with_upstream(config, base_dir=tmp_path) as (gw, up):
        up.reply("/users/1", _json({"name": "bob", field: "hunter2"}))
        status, _, body = gw.request("GET", "/users/1")
    assert status == 200
    assert orjson.loads(body) == {"name": "bob"}


def test_filtering_keeps_big_integers_exact(enforce: tuple[TestGateway, TestUpstream, Path]) -> None:
    gw, up, _ = enforce
    raw = b'{"id":5,"name":"Rex","password":"hunter2hunter2","chip_serial":123456789012345678901234567890}'
    up.reply("/v1/pets/5", Reply(200, [("Content-Type", "application/json")], raw))
    status, _, body = gw.request("GET", "/v1/pets/5")
    assert status == 200
    assert b"hunter2" not in body
    assert b"1.23456789" not in body  # not turned into a float on the way


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_statuses_pass_whatever_their_content_type(
    enforce: tuple[TestGateway, TestUpstream, Path], status: int
) -> None:
    gw, up, _ = enforce
    up.reply("/v1/pets/6", Reply(status, [("Content-Type", "application/json"), ("ETag", '"v1"')], b""))
    got = gw.request("GET", "/v1/pets/6", headers={"If-None-Match": '"v1"'})[0]
    assert got == status


def test_range_is_not_forwarded_where_responses_are_checked(enforce: tuple[TestGateway, TestUpstream, Path]) -> None:
    """A 206 slice of a document cannot be checked and would carry what the whole one has filtered out."""
    gw, up, _ = enforce
    gw.request("GET", "/v1/pets/7", headers={"Range": "bytes=22-43", "If-Range": '"v1"'})
    seen = up.received[-1]
    assert seen.header("range") is None and seen.header("if-range") is None


DEEP_SPEC = """\
openapi: 3.1.0
info: {title: t, version: '1'}
paths:
  /users:
    post:
      requestBody:
        content:
          application/json:
            schema: {type: object, properties: {tags: {type: array, items: {type: string}}}}
      responses:
        '200':
          description: ok
          content:
            application/json:
              schema: {type: object, properties: {data: {}}}
"""


def test_values_nested_hundreds_deep_are_answered_not_crashed_on(tmp_path: Path) -> None:
    """The validator's own recursion limit raised ValueError: a 500 and a traceback per request."""
    (tmp_path / "deep.yaml").write_text(DEEP_SPEC)
    config = (
        "routes:\n  - id: u\n    match: {path: /users}\n    upstream: '{upstream}'\n    stages:\n"
        "      - use: anonymous\n      - use: openapi\n        config: {spec: deep.yaml, responses: enforce}\n"
    )
    with gateway_with_upstream(config, base_dir=tmp_path) as (gw, up):
        body = b'{"tags":' + b"[" * 300 + b"]" * 300 + b"}"
        status, _, raw = gw.request("POST", "/users", body=body, headers={"Content-Type": "application/json"})
        assert (status, orjson.loads(raw)["reason"]) == (400, "openapi.malformed_body")
        deep = b'{"data":' + b"[" * 300 + b"]" * 300 + b',"secret":"x"}'
        up.reply("/users", Reply(200, [("Content-Type", "application/json")], deep))
        status, _, raw = gw.request("POST", "/users", body=b'{"tags":[]}', headers={"Content-Type": "application/json"})
        assert status == 200 and b"secret" not in raw


@pytest.mark.parametrize(
    ("responses", "content_type", "size", "status", "reason"),
    [
        ("enforce", "application/json", 1000, 200, None),
        ("enforce", "application/json", 3000, 502, "response.too_large"),
        ("monitor", "application/json", 3000, 200, None),  # observe-only: never breaks traffic
        ("enforce", "text/plain", 3000, 502, "response.invalid"),  # a media type 200 does not declare
    ],
    ids=["within", "over", "over-monitor", "over-undeclared-type"],
)
def test_responses_beyond_max_response_bytes_are_not_checked(
    tmp_path: Path, responses: str, content_type: str, size: int, status: int, reason: str | None
) -> None:
    """Responses up to 16 MiB were read whole and filtered on the event loop: one leaky 16 MB list held a worker
    for seconds and grew it by more than a gigabyte. Larger than `max_response_bytes` (1 MiB by default) a
    response is not checked: refused under enforce, passed with a finding under monitor."""
    (tmp_path / "wo.yaml").write_text(WRITE_ONLY_SPEC)
    config = (
        "routes:\n  - id: u\n    match: {path: /**}\n    upstream: '{upstream}'\n    stages:\n"
        "      - use: anonymous\n      - use: openapi\n"
        f"        config: {{spec: wo.yaml, responses: {responses}, max_response_bytes: 2048}}\n"
    )
    with gateway_with_upstream(config, base_dir=tmp_path) as (gw, up):
        doc = orjson.dumps({"name": "b" * size, "pw1": "hunter2"})
        up.reply("/users/1", Reply(200, [("Content-Type", content_type)], doc))
        got, _, body = gw.request("GET", "/users/1")
    assert got == status
    if reason is not None:
        assert b"hunter2" not in body and orjson.loads(body)["reason"] == reason
    elif size <= 2048 and responses == "enforce":
        assert orjson.loads(body) == {"name": "b" * size}


def test_a_response_with_two_content_types_is_refused(enforce: tuple[TestGateway, TestUpstream, Path]) -> None:
    """The check read the first (text/plain: no schema, passed unchanged) while a client may read the second."""
    gw, up, _ = enforce
    up.reply(
        OWNER,
        Reply(200, [("Content-Type", "text/plain"), ("Content-Type", "application/json")], orjson.dumps(LEAKY_OWNER)),
    )
    status, _, body = gw.request("GET", OWNER)
    assert status == 502 and b"hunter2" not in body
    assert orjson.loads(body)["reason"] == "response.invalid"


MEDIA_KEYS_SPEC = """\
openapi: 3.1.0
info: {title: t, version: '1'}
components:
  schemas:
    User:
      type: object
      required: [id]
      properties: {id: {type: integer}, name: {type: string}, password: {type: string, writeOnly: true}}
paths:
  /users/{id}:
    get:
      parameters: [{name: id, in: path, required: true, schema: {type: integer}}]
      responses:
        '200':
          description: springdoc's default key
          content: {'*/*': {schema: {$ref: '#/components/schemas/User'}}}
        '201':
          description: a key with parameters
          content: {'Application/JSON;charset=UTF-8': {schema: {$ref: '#/components/schemas/User'}}}
        '202':
          description: any application type
          content: {'application/*': {schema: {$ref: '#/components/schemas/User'}}}
        '203':
          description: any type, no schema
          content: {'*/*': {}, 'application/json': {schema: {$ref: '#/components/schemas/User'}}}
  /texts/{id}:
    get:
      parameters: [{name: id, in: path, required: true, schema: {type: integer}}]
      responses:
        '200':
          description: springdoc's key for a controller that returns a String
          content: {'*/*': {schema: {type: string}}}
        default:
          description: the API's own errors
          content: {application/json: {schema: {$ref: '#/components/schemas/User'}}}
  /only-default/{id}:
    get:
      parameters: [{name: id, in: path, required: true, schema: {type: integer}}]
      responses:
        default:
          description: every status
          content: {application/json: {schema: {$ref: '#/components/schemas/User'}}}
"""
LEAKY_USER = {"id": 1, "name": "bob", "password": "hunter2", "ssn": "078-05-1120"}


@pytest.fixture(scope="module")
def media_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestGateway, TestUpstream]]:
    tmp = tmp_path_factory.mktemp("spec")
    (tmp / "keys.yaml").write_text(MEDIA_KEYS_SPEC)
    config = (
        "routes:\n  - id: u\n    match: {path: /**}\n    upstream: '{upstream}'\n    stages:\n"
        "      - use: anonymous\n      - use: openapi\n        config: {spec: keys.yaml, responses: enforce}\n"
    )
    with gateway_with_upstream(config, base_dir=tmp) as pair:
        yield pair


@pytest.mark.parametrize(
    ("status", "content_type"),
    [
        (200, "application/json"),
        (200, "application/vnd.user+json"),
        (201, "application/json;charset=UTF-8"),
        (201, "application/json"),
        (202, "application/json"),
    ],
    ids=["star-json", "star-vendor-json", "params-exact", "params-essence", "application-star"],
)
def test_json_under_wildcard_or_parameterised_keys_is_filtered(
    media_keys: tuple[TestGateway, TestUpstream], status: int, content_type: str
) -> None:
    """Response schemas under `*/*` (springdoc's default) or `application/json;charset=UTF-8` were never
    compiled: those responses went out with every secret in them."""
    gw, up = media_keys
    up.reply("/users/1", Reply(status, [("Content-Type", content_type)], orjson.dumps(LEAKY_USER)))
    got, _, body = gw.request("GET", "/users/1")
    assert (got, orjson.loads(body)) == (status, {"id": 1, "name": "bob"})


@pytest.mark.parametrize(
    ("status", "content_type"),
    [(200, "application/xml"), (200, "text/json"), (200, ""), (202, "application/x-json"), (202, "text/plain")],
    ids=["star-xml", "star-text-json", "star-no-type", "application-star-x-json", "application-star-undeclared"],
)
def test_a_body_a_wildcard_schema_cannot_check_is_refused(
    media_keys: tuple[TestGateway, TestUpstream], status: int, content_type: str
) -> None:
    gw, up = media_keys
    headers = [("Content-Type", content_type)] if content_type else []
    up.reply("/users/1", Reply(status, headers, orjson.dumps(LEAKY_USER)))
    got, _, body = gw.request("GET", "/users/1")
    assert got == 502 and b"hunter2" not in body
    assert orjson.loads(body)["reason"] == "response.invalid"


def test_a_wildcard_without_a_schema_admits_other_types(media_keys: tuple[TestGateway, TestUpstream]) -> None:
    gw, up = media_keys
    up.reply("/users/1", Reply(203, [("Content-Type", "text/csv")], b"id,name\n1,bob\n"))
    assert gw.request("GET", "/users/1")[:3:2] == (203, b"id,name\n1,bob\n")
    up.reply("/users/1", Reply(203, [("Content-Type", "application/json")], orjson.dumps(LEAKY_USER)))
    assert orjson.loads(gw.request("GET", "/users/1")[2]) == {"id": 1, "name": "bob"}


DUPLICATE_KEYS = {
    "top-level": b'{"email":"a@example.com","password":"hunter2hunter2","password":"x"}',
    "nested-earlier-copy-leaks": b'{"email":"a@example.com","address":{"city":"x","ssn":"hunter2"},"address":{}}',
    "escaped-spelling": b'{"email":"a@example.com","labels":{"hunter2":"1"},"label\\u0073":{}}',
}


@pytest.mark.parametrize("raw", DUPLICATE_KEYS.values(), ids=DUPLICATE_KEYS.keys())
def test_enforce_refuses_a_response_with_duplicate_keys(
    enforce: tuple[TestGateway, TestUpstream, Path], raw: bytes
) -> None:
    """The check saw the last copy of a key (clean) while the raw bytes, with the first copy, went out."""
    gw, up, log = enforce
    up.reply(OWNER, Reply(200, [("Content-Type", "application/json")], raw))
    status, _, body = gw.request("GET", OWNER)
    assert status == 502 and b"hunter2" not in body
    assert orjson.loads(body)["reason"] == "response.invalid"
    assert "duplicate_key" in str(_last_log(gw, log)["detail"])


def test_monitor_records_a_response_with_duplicate_keys(monitor: tuple[TestGateway, TestUpstream, Path]) -> None:
    gw, up, log = monitor
    raw = DUPLICATE_KEYS["nested-earlier-copy-leaks"]
    up.reply(OWNER, Reply(200, [("Content-Type", "application/json")], raw))
    assert gw.request("GET", OWNER)[::2] == (200, raw)
    assert _last_log(gw, log)["findings"] == ["openapi.response_invalid"]


@pytest.mark.parametrize(
    ("reply", "checked"),
    [
        (Reply(200, [("Content-Type", "text/plain")], b"hello"), False),  # a string under `*/*`: nothing to filter
        (Reply(302, [("Content-Type", "text/html"), ("Location", "/x")], b"Redirecting..."), False),
        (Reply(401, [("Content-Type", "text/plain")], b"Unauthorized"), False),  # a framework's own page
        (Reply(500, [("Content-Type", "application/json")], orjson.dumps(LEAKY_USER)), True),  # the API's: checked
    ],
    ids=["string-controller", "redirect-page", "plain-error-page", "json-error"],
)
def test_what_default_and_scalar_wildcards_let_through(
    media_keys: tuple[TestGateway, TestUpstream], reply: Reply, checked: bool
) -> None:
    """A Flask or Express redirect page, or a String controller springdoc declares as `*/*`, got 502 once
    responses in undeclared media types were refused; `default` and scalar schemas now let such bodies pass."""
    gw, up = media_keys
    up.reply("/texts/1", reply)
    status, _, body = gw.request("GET", "/texts/1")
    if checked:
        assert (status, orjson.loads(body)) == (reply.status, {"id": 1, "name": "bob"})
    else:
        assert (status, body) == (reply.status, reply.body)


@pytest.mark.parametrize(
    ("reply", "expected_status", "expected_body"),
    [
        # Express's res.send(JSON.stringify(user)) is text/html: a 2xx only `default` covers is refused...
        (Reply(200, [("Content-Type", "text/html")], orjson.dumps(LEAKY_USER)), 502, None),
        (Reply(200, [], orjson.dumps(LEAKY_USER)), 502, None),
        # ...and an error page that is JSON under another label is filtered as JSON
        (Reply(500, [("Content-Type", "text/plain")], orjson.dumps(LEAKY_USER)), 500, {"id": 1, "name": "bob"}),
        (Reply(404, [("Content-Type", "text/html")], b"<h1>Not Found</h1>"), 404, b"<h1>Not Found</h1>"),
    ],
    ids=["2xx-json-as-html", "2xx-no-type", "error-json-as-text", "error-html-page"],
)
def test_a_status_only_default_covers(
    media_keys: tuple[TestGateway, TestUpstream], reply: Reply, expected_status: int, expected_body: object
) -> None:
    gw, up = media_keys
    up.reply("/only-default/1", reply)
    status, _, body = gw.request("GET", "/only-default/1")
    assert status == expected_status and b"hunter2" not in body
    if isinstance(expected_body, dict):
        assert orjson.loads(body) == expected_body
    elif expected_body is not None:
        assert body == expected_body
