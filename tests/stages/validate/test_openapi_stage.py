"""The `openapi` stage through a real gateway and upstream: what is refused, how, and what reaches the upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stockade.testing import TestGateway, TestUpstream, gateway_with_upstream

SPECS = Path(__file__).resolve().parents[2] / "openapi" / "specs"
DEMO_SPEC = Path(__file__).resolve().parents[3] / "examples" / "demo" / "openapi.yaml"  # the demo API's own

CONFIG = """
routes:
  - id: api
    match: {path: "/**"}
    upstream: "{upstream}"
    stages:
      - use: anonymous
      - use: openapi
        config: {spec: %s, strict: %s}
"""

JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
SHOP_JSON = {"Content-Type": "application/vnd.shop+json"}


@dataclass(frozen=True)
class Case:
    method: str
    target: str
    status: int
    reason: str = ""
    errors: tuple[tuple[str, str], ...] = ()  # (pointer, rule) pairs that must all be listed
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _gateway(spec: str, strict: bool = False) -> Iterator[tuple[TestGateway, TestUpstream]]:
    with gateway_with_upstream(CONFIG % (spec, str(strict).lower()), base_dir=SPECS) as pair:
        yield pair


@pytest.fixture(scope="module")
def demo() -> Iterator[tuple[TestGateway, TestUpstream]]:
    yield from _gateway(str(DEMO_SPEC))


@pytest.fixture(scope="module")
def petstore() -> Iterator[tuple[TestGateway, TestUpstream]]:
    yield from _gateway("petstore.yaml")


@pytest.fixture(scope="module")
def petstore_strict() -> Iterator[tuple[TestGateway, TestUpstream]]:
    yield from _gateway("petstore.yaml", strict=True)


@pytest.fixture(scope="module")
def shop() -> Iterator[tuple[TestGateway, TestUpstream]]:
    yield from _gateway("shop.yaml")


@pytest.fixture(scope="module")
def shop_strict() -> Iterator[tuple[TestGateway, TestUpstream]]:
    yield from _gateway("shop.yaml", strict=True)


def _run(pair: tuple[TestGateway, TestUpstream], case: Case) -> None:
    gw, up = pair
    before = len(up.received)
    status, headers, body = gw.request(case.method, case.target, headers=case.headers, body=case.body)
    forwarded = up.received[before:]
    if case.status == 200:
        assert status == 200, body
        assert len(forwarded) == 1
        assert forwarded[0].body == case.body  # the body goes upstream exactly as sent
        return
    assert status == case.status, body
    assert forwarded == []
    doc = json.loads(body)
    assert headers["content-type"] == "application/problem+json"
    assert doc["reason"] == case.reason
    listed = {(e["pointer"], e["rule"]) for e in doc.get("errors", ())}
    assert set(case.errors) <= listed, listed
    for value in _string_values(case.body):  # never the submitted values (property names may appear in pointers)
        assert value.encode() not in body or any(value in pointer for pointer, _ in listed)


def _string_values(raw: bytes) -> list[str]:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return []
    values = doc.values() if isinstance(doc, dict) else []
    return [v for v in values if isinstance(v, str) and len(v) > 3]


INVALID = "openapi.invalid_request"
UNKNOWN = "openapi.unknown_operation"
MEDIA = "openapi.unsupported_media_type"
MALFORMED = "openapi.malformed_body"
BAD_PARAM = "openapi.bad_parameter"

DEMO_CASES = {
    "list-ok": Case("GET", "/books?limit=5&author=Tolkien", 200),
    "head-maps-to-get": Case("HEAD", "/books", 200),
    "limit-above-maximum": Case("GET", "/books?limit=500", 422, INVALID, (("/query/limit", "maximum"),)),
    "limit-not-integer": Case("GET", "/books?limit=ten", 422, INVALID, (("/query/limit", "type"),)),
    "limit-twice": Case("GET", "/books?limit=1&limit=2", 400, BAD_PARAM, (("/query/limit", "duplicate"),)),
    "path-id-zero": Case("GET", "/books/0", 422, INVALID, (("/path/book_id", "minimum"),)),
    "path-id-text": Case("GET", "/books/abc", 422, INVALID, (("/path/book_id", "type"),)),
    "unknown-path": Case("GET", "/internal/debug", 404, UNKNOWN),
    "unknown-method": Case("DELETE", "/users", 404, UNKNOWN),
    "trailing-slash-is-another-path": Case("GET", "/books/", 404, UNKNOWN),
    "order-ok": Case("POST", "/orders", 200, body=b'{"items":[{"book_id":1,"quantity":2}]}', headers=JSON),
    "order-quantity-zero": Case(
        "POST",
        "/orders",
        422,
        INVALID,
        (("/body/items/0/quantity", "minimum"),),
        b'{"items":[{"book_id":1,"quantity":0}]}',
        JSON,
    ),
    "order-owner-injected": Case(
        "POST",
        "/orders",
        422,
        INVALID,
        (("/body/owner", "additionalProperties"),),
        b'{"items":[{"book_id":1,"quantity":1}],"owner":"mallory"}',
        JSON,
    ),
    "order-no-body": Case("POST", "/orders", 422, INVALID, (("/body", "required"),), headers=JSON),
    "order-not-json": Case("POST", "/orders", 400, MALFORMED, (("/body", "json"),), b"{items:", JSON),
    "order-duplicate-key": Case(
        "POST", "/orders", 400, MALFORMED, (("/body/items", "duplicate_key"),), b'{"items":[],"items":[]}', JSON
    ),
    "order-nested-beyond-parsing": Case(
        "POST",
        "/orders",
        400,
        MALFORMED,
        (("/body", "too_deep"),),
        b'{"items":' + b"[" * 3000 + b"]" * 3000 + b"}",
        JSON,
    ),
    "order-as-text": Case("POST", "/orders", 415, MEDIA, body=b"items=1", headers={"Content-Type": "text/plain"}),
    "order-no-content-type": Case("POST", "/orders", 415, MEDIA, body=b'{"items":[]}'),
    "json-charset-ok": Case(
        "POST",
        "/orders",
        200,
        body=b'{"items":[{"book_id":3,"quantity":1}]}',
        headers={"Content-Type": "Application/JSON; charset=utf-8"},
    ),
    "body-on-bodiless-operation": Case("GET", "/books", 415, MEDIA, body=b'{"a":1}', headers=JSON),
    "signup-role-readonly": Case(
        "POST",
        "/users",
        422,
        INVALID,
        (("/body/role", "additionalProperties"), ("/body/email", "format")),
        b'{"username":"alice","name":"Alice","email":"not-an-email","password":"correct horse battery","role":"staff"}',
        JSON,
    ),
    "book-isbn-pattern": Case(
        "POST",
        "/books",
        422,
        INVALID,
        (("/body/isbn", "pattern"),),
        b'{"isbn":"123","title":"T","author":"A","year":2000,"price_cents":100}',
        JSON,
    ),
    "book-update-empty": Case("PATCH", "/books/1", 422, INVALID, (("/body", "minProperties"),), b"{}", JSON),
    "book-update-isbn-not-changeable": Case(
        "PATCH", "/books/1", 422, INVALID, (("/body/isbn", "additionalProperties"),), b'{"isbn":"9780000000000"}', JSON
    ),
}

PETSTORE_CASES = {
    "base-path-required": Case("GET", "/pets", 404, UNKNOWN),
    "list-ok": Case("GET", "/v1/pets?limit=10&tags=a&tags=b&status=sold", 200),
    "limit-int32-overflow": Case("GET", "/v1/pets?limit=99999999999", 422, INVALID, (("/query/limit", "maximum"),)),
    "tags-too-many": Case("GET", "/v1/pets?tags=a&tags=b&tags=c&tags=d", 422, INVALID, (("/query/tags", "maxItems"),)),
    "status-enum": Case("GET", "/v1/pets?status=lost", 422, INVALID, (("/query/status", "enum"),)),
    "header-uuid": Case(
        "GET", "/v1/pets", 422, INVALID, (("/header/x-request-id", "format"),), headers={"X-Request-Id": "nope"}
    ),
    "header-uuid-ok": Case("GET", "/v1/pets", 200, headers={"X-Request-Id": "9b2f3c1e-8d4a-4b6e-9f0a-1c2d3e4f5a6b"}),
    "literal-beats-template": Case("GET", "/v1/pets/mine", 200),
    "create-ok": Case("POST", "/v1/pets", 200, body=b'{"name":"Rex","tag":null,"weight":3.5}', headers=JSON),
    "create-open-schema-extra-allowed": Case(
        "POST", "/v1/pets", 200, body=b'{"name":"Rex","admin":true}', headers=JSON
    ),
    "create-weight-exclusive-zero": Case(
        "POST", "/v1/pets", 422, INVALID, (("/body/weight", "exclusiveMinimum"),), b'{"name":"Rex","weight":0}', JSON
    ),
    "create-date-format": Case(
        "POST",
        "/v1/pets",
        422,
        INVALID,
        (("/body/birthday", "format"),),
        b'{"name":"Rex","birthday":"2024-13-45"}',
        JSON,
    ),
    "create-name-missing": Case("POST", "/v1/pets", 422, INVALID, (("/body/name", "required"),), b'{"tag":"x"}', JSON),
    "create-form-ok": Case("POST", "/v1/pets", 200, body=b"name=Rex&weight=2.5&vaccinated=true", headers=FORM),
    "create-form-bad-number": Case(
        "POST", "/v1/pets", 422, INVALID, (("/body/weight", "type"),), b"name=Rex&weight=heavy", FORM
    ),
    "create-form-duplicate": Case(
        "POST", "/v1/pets", 400, MALFORMED, (("/body/name", "duplicate"),), b"name=Rex&name=Max", FORM
    ),
    "replace-readonly-id": Case(
        "PUT", "/v1/pets/7", 422, INVALID, (("/body/id", "readOnly"),), b'{"id":7,"name":"Rex"}', JSON
    ),
    "replace-without-id-ok": Case("PUT", "/v1/pets/7", 200, body=b'{"name":"Rex"}', headers=JSON),
    "delete-ok": Case("DELETE", "/v1/pets/7", 200),
    "owner-uuid-path": Case("GET", "/v1/owners/42", 422, INVALID, (("/path/ownerId", "format"),)),
    "owner-writeonly-accepted-in-request": Case(
        "PUT",
        "/v1/owners/9b2f3c1e-8d4a-4b6e-9f0a-1c2d3e4f5a6b",
        200,
        body=b'{"email":"a@example.com","password":"long enough"}',
        headers=JSON,
    ),
}


def _multipart(*parts: tuple[str, str, bytes]) -> bytes:
    """(name, extra headers, content) parts, boundary `XyZ`."""
    out = b""
    for name, extra, content in parts:
        out += f'--XyZ\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n\r\n'.encode() + content + b"\r\n"
    return out + b"--XyZ--\r\n"


MULTIPART = {"Content-Type": "multipart/form-data; boundary=XyZ"}
FILE = ('; filename="a.png"\r\nContent-Type: image/png', b"\x89PNG\x00\xff")
PETSTORE_CASES |= {
    "photo-ok": Case(
        "POST",
        "/v1/pets/3/photo",
        200,
        body=_multipart(("file", *FILE), ("caption", "", b"cute"), ("rating", "", b"5")),
        headers=MULTIPART,
    ),
    "photo-json-part": Case(
        "POST",
        "/v1/pets/3/photo",
        422,
        INVALID,
        (("/body/meta/width", "minimum"),),
        _multipart(("file", *FILE), ("meta", "\r\nContent-Type: application/json", b'{"width":0}')),
        MULTIPART,
    ),
    "photo-rating-bounds": Case(
        "POST",
        "/v1/pets/3/photo",
        422,
        INVALID,
        (("/body/rating", "maximum"), ("/body/caption", "maxLength")),
        _multipart(("file", *FILE), ("rating", "", b"9"), ("caption", "", b"x" * 30)),
        MULTIPART,
    ),
    "photo-file-missing": Case(
        "POST",
        "/v1/pets/3/photo",
        422,
        INVALID,
        (("/body/file", "required"),),
        _multipart(("caption", "", b"x")),
        MULTIPART,
    ),
    "photo-truncated": Case(
        "POST",
        "/v1/pets/3/photo",
        400,
        MALFORMED,
        (("/body", "multipart"),),
        _multipart(("caption", "", b"x"))[:-9],
        MULTIPART,
    ),
    "photo-no-boundary": Case(
        "POST",
        "/v1/pets/3/photo",
        400,
        MALFORMED,
        (("/body", "multipart"),),
        _multipart(("caption", "", b"x")),
        {"Content-Type": "multipart/form-data"},
    ),
}

PETSTORE_CASES |= {
    "deprecated-allowed-by-default": Case("GET", "/v1/pets/legacy", 200),
    "wildcard-media-json-validated": Case(
        "POST", "/v1/pets/3/notes", 422, INVALID, (("/body/text", "maxLength"),), b'{"text":"' + b"x" * 30 + b'"}', JSON
    ),
    "wildcard-media-form-validated": Case(
        "POST", "/v1/pets/3/notes", 422, INVALID, (("/body/text", "required"),), b"note=hi", FORM
    ),
    "wildcard-media-opaque-passes": Case(
        "POST", "/v1/pets/3/notes", 200, body=b"\x00\x01", headers={"Content-Type": "application/octet-stream"}
    ),
    "content-type-list": Case(
        "POST", "/v1/pets", 415, MEDIA, body=b'{"name":"Rex"}', headers={"Content-Type": "application/json, text/plain"}
    ),
}

STRICT_CASES = {
    "create-extra-property": Case(
        "POST",
        "/v1/pets",
        422,
        INVALID,
        (("/body/admin", "unevaluatedProperties"),),
        b'{"name":"Rex","admin":true}',
        JSON,
    ),
    "replace-allof-sees-both-parts": Case("PUT", "/v1/pets/7", 200, body=b'{"name":"Rex","tag":"x"}', headers=JSON),
    "replace-allof-extra": Case(
        "PUT",
        "/v1/pets/7",
        422,
        INVALID,
        (("/body/owner", "unevaluatedProperties"),),
        b'{"name":"Rex","owner":1}',
        JSON,
    ),
    "nested-object-closed": Case(
        "PUT",
        "/v1/owners/9b2f3c1e-8d4a-4b6e-9f0a-1c2d3e4f5a6b",
        422,
        INVALID,
        (("/body/address/planet", "unevaluatedProperties"),),
        b'{"email":"a@example.com","address":{"city":"X","planet":"Mars"}}',
        JSON,
    ),
    "free-form-map-stays-open": Case(
        "PUT",
        "/v1/owners/9b2f3c1e-8d4a-4b6e-9f0a-1c2d3e4f5a6b",
        200,
        body=b'{"email":"a@example.com","labels":{"any":"thing"}}',
        headers=JSON,
    ),
    "undeclared-query-key": Case(
        "GET", "/v1/pets?limit=1&debug=1", 422, INVALID, (("/query/debug", "additionalProperties"),)
    ),
}

SEARCH_OK = "/api/v2/search?q=books&price[min]=1&price[max]=9&ids=1|2|3"
SEARCH_HEADERS = {"Cookie": "session=0123456789abcdef", "X-Api-Version": "2"}

SHOP_CASES = {
    "server-variable-v1": Case("GET", "/api/v1/items/.5", 200),
    "server-variable-other": Case("GET", "/api/v3/items/.5", 404, UNKNOWN),
    "label-style-bad": Case("GET", "/api/v2/items/5", 400, BAD_PARAM, (("/path/id", "style"),)),
    "label-style-invalid": Case("GET", "/api/v2/items/.0", 422, INVALID, (("/path/id", "minimum"),)),
    "matrix-ok": Case("GET", "/api/v2/stores/;coords=1.5,2", 200),
    "matrix-one-number": Case("GET", "/api/v2/stores/;coords=1.5", 422, INVALID, (("/path/coords", "minItems"),)),
    "mixed-segment-ok": Case("GET", "/api/v2/reports/sales.csv", 200),
    "mixed-segment-enum": Case("GET", "/api/v2/reports/sales.exe", 422, INVALID, (("/path/format", "enum"),)),
    "search-ok": Case("GET", SEARCH_OK, 200, headers=SEARCH_HEADERS),
    "search-deep-object-extra": Case(
        "GET",
        SEARCH_OK + "&price[avg]=3",
        422,
        INVALID,
        (("/query/price/avg", "additionalProperties"),),
        headers=SEARCH_HEADERS,
    ),
    "search-pipe-item-type": Case(
        "GET", "/api/v2/search?q=books&ids=1|x", 422, INVALID, (("/query/ids/1", "type"),), headers=SEARCH_HEADERS
    ),
    "search-q-missing": Case(
        "GET", "/api/v2/search", 422, INVALID, (("/query/q", "required"),), headers=SEARCH_HEADERS
    ),
    "search-cookie-missing": Case(
        "GET",
        "/api/v2/search?q=books",
        422,
        INVALID,
        (("/cookie/session", "required"),),
        headers={"X-Api-Version": "1"},
    ),
    "search-cookie-pattern": Case(
        "GET",
        "/api/v2/search?q=books",
        422,
        INVALID,
        (("/cookie/session", "pattern"),),
        headers={"Cookie": "session=zz", "X-Api-Version": "1"},
    ),
    "search-header-enum": Case(
        "GET",
        "/api/v2/search?q=books",
        422,
        INVALID,
        (("/header/x-api-version", "enum"),),
        headers={**SEARCH_HEADERS, "X-Api-Version": "3"},
    ),
    "search-json-param": Case(
        "GET",
        "/api/v2/search?q=books&filter=%7B%22x%22%3A1%7D",
        422,
        INVALID,
        (("/query/filter/field", "required"),),
        headers=SEARCH_HEADERS,
    ),
    "search-json-param-malformed": Case(
        "GET", "/api/v2/search?q=books&filter=%7B", 400, BAD_PARAM, (("/query/filter", "json"),), headers=SEARCH_HEADERS
    ),
    "order-external-refs-ok": Case(
        "POST",
        "/api/v2/orders",
        200,
        body=b'{"lines":[{"sku":"ABC-1234","quantity":2}],'
        b'"ship_to":{"street":"1 Main","city":"X","country":"DE","zip":null}}',
        headers=JSON,
    ),
    "order-external-sku-pattern": Case(
        "POST",
        "/api/v2/orders",
        422,
        INVALID,
        (("/body/lines/0/sku", "pattern"), ("/body/ship_to/country", "required")),
        b'{"lines":[{"sku":"abc","quantity":1}],"ship_to":{"street":"1 Main","city":"X"}}',
        JSON,
    ),
    "order-readonly-total": Case(
        "POST",
        "/api/v2/orders",
        422,
        INVALID,
        (("/body/total", "readOnly"),),
        b'{"lines":[{"sku":"ABC-1234","quantity":1}],"ship_to":{"street":"a","city":"b","country":"DE"},"total":1}',
        JSON,
    ),
    "order-int32-quantity": Case(
        "POST",
        "/api/v2/orders",
        422,
        INVALID,
        (("/body/lines/0/quantity", "maximum"),),
        b'{"lines":[{"sku":"ABC-1234","quantity":3000000000}],"ship_to":{"street":"a","city":"b","country":"DE"}}',
        JSON,
    ),
    "payment-card-ok": Case(
        "POST",
        "/api/v2/payments",
        200,
        body=b'{"method":"card","amount":5,"card_number":"4111111111111111"}',
        headers=JSON,
    ),
    "payment-sepa-mapped": Case(
        "POST",
        "/api/v2/payments",
        200,
        body=b'{"method":"sepa","amount":5,"iban":"DE89370400440532013000"}',
        headers=JSON,
    ),
    "payment-unknown-method": Case(
        "POST",
        "/api/v2/payments",
        422,
        INVALID,
        (("/body/method", "discriminator"),),
        b'{"method":"cash","amount":5}',
        JSON,
    ),
    "payment-branch-errors-precise": Case(
        "POST",
        "/api/v2/payments",
        422,
        INVALID,
        (("/body/card_number", "required"),),
        b'{"method":"card","amount":5}',
        JSON,
    ),
    "payment-amount-exclusive-zero": Case(
        "POST",
        "/api/v2/payments",
        422,
        INVALID,
        (("/body/amount", "exclusiveMinimum"),),
        b'{"method":"card","amount":0,"card_number":"4111111111111111"}',
        JSON,
    ),
    "payment-not-an-object": Case("POST", "/api/v2/payments", 422, INVALID, (("/body", "type"),), b'"card"', JSON),
    "animal-implicit-mapping": Case(
        "POST", "/api/v2/animals", 200, body=b'{"kind":"Cat","name":"Tom"}', headers=SHOP_JSON
    ),
    "animal-vendor-json-required": Case(
        "POST", "/api/v2/animals", 415, MEDIA, body=b'{"kind":"Cat","name":"Tom"}', headers=JSON
    ),
    "animal-unknown-kind": Case(
        "POST",
        "/api/v2/animals",
        422,
        INVALID,
        (("/body/kind", "discriminator"),),
        b'{"kind":"Cow","name":"Tom"}',
        SHOP_JSON,
    ),
    "inventory-nullable-ok": Case(
        "PATCH", "/api/v2/inventory/ABC-1234", 200, body=b'{"quantity":null,"discount":50,"note":null}', headers=JSON
    ),
    "inventory-exclusive-min-bool": Case(
        "PATCH",
        "/api/v2/inventory/ABC-1234",
        422,
        INVALID,
        (("/body/quantity", "exclusiveMinimum"),),
        b'{"quantity":0}',
        JSON,
    ),
    "inventory-nullable-enum": Case(
        "PATCH", "/api/v2/inventory/ABC-1234", 422, INVALID, (("/body/note", "enum"),), b'{"note":"free"}', JSON
    ),
    "inventory-sku-path-external": Case(
        "PATCH", "/api/v2/inventory/abc", 422, INVALID, (("/path/sku", "pattern"),), b"{}", JSON
    ),
}


SHOP_STRICT_CASES = {
    "payment-branch-properties-count": Case(
        "POST",
        "/api/v2/payments",
        200,
        body=b'{"method":"card","amount":5,"card_number":"4111111111111111"}',
        headers=JSON,
    ),
    "payment-other-branch-property": Case(
        "POST",
        "/api/v2/payments",
        422,
        INVALID,
        (("/body/iban", "unevaluatedProperties"),),
        b'{"method":"card","amount":5,"card_number":"4111111111111111","iban":"DE89370400440532013000"}',
        JSON,
    ),
    "order-nested-external-closed": Case(
        "POST",
        "/api/v2/orders",
        422,
        INVALID,
        (("/body/lines/0/price", "unevaluatedProperties"), ("/body/ship_to/geo", "unevaluatedProperties")),
        b'{"lines":[{"sku":"ABC-1234","quantity":1,"price":0}],"ship_to":{"street":"a","city":"b","country":"DE","geo":1}}',
        JSON,
    ),
}


@pytest.mark.parametrize("case", SHOP_STRICT_CASES.values(), ids=SHOP_STRICT_CASES.keys())
def test_openapi_strict_mode_through_discriminators_and_files(
    shop_strict: tuple[TestGateway, TestUpstream], case: Case
) -> None:
    _run(shop_strict, case)


@pytest.mark.parametrize("case", DEMO_CASES.values(), ids=DEMO_CASES.keys())
def test_openapi_demo_spec(demo: tuple[TestGateway, TestUpstream], case: Case) -> None:
    _run(demo, case)


@pytest.mark.parametrize("case", PETSTORE_CASES.values(), ids=PETSTORE_CASES.keys())
def test_openapi_petstore_spec(petstore: tuple[TestGateway, TestUpstream], case: Case) -> None:
    _run(petstore, case)


@pytest.mark.parametrize("case", STRICT_CASES.values(), ids=STRICT_CASES.keys())
def test_openapi_strict_mode_closes_objects(petstore_strict: tuple[TestGateway, TestUpstream], case: Case) -> None:
    _run(petstore_strict, case)


@pytest.mark.parametrize("case", SHOP_CASES.values(), ids=SHOP_CASES.keys())
def test_openapi_shop_spec(shop: tuple[TestGateway, TestUpstream], case: Case) -> None:
    _run(shop, case)


MODES = """
routes:
  - id: api
    match: {path: "/**"}
    upstream: "{upstream}"
    stages:
      - use: anonymous
      - use: json_limits
      - use: openapi
        config: {spec: "%s", requests: %s, unknown_operations: %s}
"""


def test_decision_log_names_rule_and_pointer_never_the_value(tmp_path: Path) -> None:
    log = tmp_path / "decisions.log"
    with gateway_with_upstream(MODES % (DEMO_SPEC, "enforce", "deny"), base_dir=SPECS, log_path=log) as (gw, _):
        body = b'{"items":[{"book_id":1,"quantity":99}],"note":"secret-value-123"}'
        assert gw.request("POST", "/orders", headers=JSON, body=body)[0] == 422
        gw.flush_log()
    entry = json.loads(log.read_text().splitlines()[-1])
    assert (entry["decision"], entry["reason"], entry["stage"]) == ("deny", "openapi.invalid_request", "openapi")
    assert "createOrder" in entry["detail"] and "maximum at /body/items/0/quantity" in entry["detail"]
    assert "secret-value-123" not in log.read_text()


def test_monitor_modes_forward_and_record_findings(tmp_path: Path) -> None:
    log = tmp_path / "decisions.log"
    with gateway_with_upstream(MODES % (DEMO_SPEC, "monitor", "monitor"), base_dir=SPECS, log_path=log) as (gw, up):
        assert gw.request("GET", "/internal/shadow")[0] == 200
        assert gw.request("GET", "/books?limit=5000")[0] == 200
        assert [r.target for r in up.received] == ["/internal/shadow", "/books?limit=5000"]
        gw.flush_log()
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["findings"] for e in entries] == [["openapi.unknown_operation"], ["openapi.invalid_request"]]
    assert all(e["decision"] == "allow" for e in entries)


def test_json_limits_in_front_shares_its_parse_and_its_limits(tmp_path: Path) -> None:
    with gateway_with_upstream(MODES % (DEMO_SPEC, "enforce", "deny"), base_dir=SPECS) as (gw, up):
        deep = b'{"items":' + b"[" * 40 + b"]" * 40 + b"}"
        status, _, body = gw.request("POST", "/orders", headers=JSON, body=deep)
        assert (status, json.loads(body)["reason"]) == (413, "json.too_deep")
        ok = b'{"items":[{"book_id":1,"quantity":1}]}'
        assert gw.request("POST", "/orders", headers=JSON, body=ok)[0] == 200
        assert up.received[-1].body == ok


def test_deprecated_operations_can_be_refused_as_zombies() -> None:
    config = CONFIG.replace("strict: %s", "deprecated: deny") % "petstore.yaml"
    with gateway_with_upstream(config, base_dir=SPECS) as (gw, up):
        status, _, body = gw.request("GET", "/v1/pets/legacy")
        assert (status, json.loads(body)["reason"]) == (404, "openapi.unknown_operation")
        assert gw.request("GET", "/v1/pets/mine")[0] == 200
        assert [r.target for r in up.received] == ["/v1/pets/mine"]


def test_response_hook_exists_only_when_responses_are_checked() -> None:
    from stockade.pipeline.stage import Services, StageEnv
    from stockade.stages.validate.openapi import OpenApiConfig, OpenApiStage
    from stockade.testing import FakeClock

    env = StageEnv(route_id="r", base_dir=SPECS, services=Services(clock=FakeClock()))
    plain = OpenApiStage(OpenApiConfig(spec="petstore.yaml"), env)
    checking = OpenApiStage(OpenApiConfig(spec="petstore.yaml", responses="monitor"), env)
    assert not hasattr(plain, "on_response") and not getattr(plain, "needs_response_body", False)
    assert hasattr(checking, "on_response") and checking.needs_response_body is True  # type: ignore[attr-defined]
    assert isinstance(checking, OpenApiStage)


def test_two_content_type_headers_are_ambiguous(petstore: tuple[TestGateway, TestUpstream]) -> None:
    from stockade.testing import http_request

    gw, up = petstore
    before = len(up.received)
    raw = (
        b"POST /v1/pets HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Type: text/plain\r\n"
        b'Content-Length: 14\r\nConnection: close\r\n\r\n{"name":"Rex"}'
    )
    with gw.connect() as sock:
        [(status, _, body)] = http_request(sock, raw)
    assert (status, json.loads(body)["reason"]) == (400, "http.duplicate_header")
    assert len(up.received) == before
