"""The `openapi` stage through a real gateway and upstream: the demo and petstore specs, strict mode."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from stockade.testing import TestGateway, TestUpstream

from .openapi_cases import (
    BAD_PARAM,
    CONFIG,
    DEMO_SPEC,
    FORM,
    INVALID,
    JSON,
    MALFORMED,
    MEDIA,
    UNKNOWN,
    Case,
    gateway,
    run_case,
)


@pytest.fixture(scope="module")
def demo() -> Iterator[tuple[TestGateway, TestUpstream]]:
    yield from gateway(str(DEMO_SPEC))


@pytest.fixture(scope="module")
def petstore() -> Iterator[tuple[TestGateway, TestUpstream]]:
    yield from gateway("petstore.yaml")


@pytest.fixture(scope="module")
def petstore_strict() -> Iterator[tuple[TestGateway, TestUpstream]]:
    yield from gateway("petstore.yaml", strict=True)


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
    # Parsers disagree on these (Go's mime/multipart reads the first header, others the last; Go decodes
    # quoted-printable): refused rather than validated one way and read another
    "photo-repeated-part-header": Case(
        "POST",
        "/v1/pets/3/photo",
        400,
        MALFORMED,
        (("/body", "multipart"),),
        _multipart(("file", *FILE), ("caption", '\r\nContent-Disposition: form-data; name="role"', b"x")),
        MULTIPART,
    ),
    "photo-quoted-printable": Case(
        "POST",
        "/v1/pets/3/photo",
        400,
        MALFORMED,
        (("/body", "multipart"),),
        _multipart(("file", *FILE), ("caption", "\r\nContent-Transfer-Encoding: quoted-printable", b"=3Cb=3E")),
        MULTIPART,
    ),
    "photo-json-part-repeated-key": Case(
        "POST",
        "/v1/pets/3/photo",
        400,
        MALFORMED,
        (("/body/meta", "duplicate_key"),),
        _multipart(("file", *FILE), ("meta", "\r\nContent-Type: application/json", b'{"width":99,"width":1}')),
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
    # `*/*` with a schema: a body the gateway cannot read would pass unvalidated, and the upstream may well read
    # it as JSON (many frameworks parse any body as JSON, or sniff it)
    "wildcard-media-opaque-refused": Case(
        "POST", "/v1/pets/3/notes", 415, MEDIA, body=b'{"text":1}', headers={"Content-Type": "application/octet-stream"}
    ),
    "wildcard-media-x-json-refused": Case(
        "POST", "/v1/pets/3/notes", 415, MEDIA, body=b'{"text":1}', headers={"Content-Type": "application/x-json"}
    ),
    "wildcard-media-jsonrequest-refused": Case(
        "POST", "/v1/pets/3/notes", 415, MEDIA, body=b'{"text":1}', headers={"Content-Type": "application/jsonrequest"}
    ),
    "wildcard-media-text-validated": Case(
        "POST", "/v1/pets/3/notes", 422, INVALID, (("/body", "type"),), b"hi", {"Content-Type": "text/plain"}
    ),
    "content-type-list": Case(
        "POST", "/v1/pets", 415, MEDIA, body=b'{"name":"Rex"}', headers={"Content-Type": "application/json, text/plain"}
    ),
}

# Express (qs), PHP and Rails read `limit[]` and `limit[0]` as `limit`: an alias of a declared parameter or form
# field would reach them unvalidated.
PETSTORE_CASES |= {
    "query-bracket-alias": Case("GET", "/v1/pets?limit[]=5000", 400, BAD_PARAM, (("/query/limit", "alias"),)),
    "query-encoded-index-alias": Case(
        "GET", "/v1/pets?limit%5B0%5D=5000", 400, BAD_PARAM, (("/query/limit", "alias"),)
    ),
    "query-alias-beside-the-name": Case(
        "GET", "/v1/pets?status=sold&status[]=lost", 400, BAD_PARAM, (("/query/status", "alias"),)
    ),
    "query-array-alias": Case("GET", "/v1/pets?tags[0]=a&tags[1]=b", 400, BAD_PARAM, (("/query/tags", "alias"),)),
    "query-undeclared-bracket-key-passes": Case("GET", "/v1/pets?limit=5&page[size]=9", 200),
    "form-bracket-alias": Case(
        "POST", "/v1/pets", 400, MALFORMED, (("/body/status", "alias"),), b"name=Rex&status[]=lost", FORM
    ),
    "form-undeclared-bracket-key-passes": Case("POST", "/v1/pets", 200, body=b"name=Rex&x[]=1", headers=FORM),
    "multipart-bracket-alias": Case(
        "POST",
        "/v1/pets/3/photo",
        400,
        MALFORMED,
        (("/body/rating", "alias"),),
        _multipart(("file", *FILE), ("rating[]", "", b"9")),
        MULTIPART,
    ),
}

# PHP cuts a key at a NUL, drops its leading spaces and reads spaces and dots as underscores: `limit%00`, `%20limit`
# and `li.mit`-style spellings are the declared name to `$_GET` and `$_POST` (security/readings.py)
PETSTORE_CASES |= {
    "query-nul-alias": Case("GET", "/v1/pets?limit%00=5000", 400, BAD_PARAM, (("/query/limit", "alias"),)),
    "query-nul-suffix-alias": Case("GET", "/v1/pets?limit%00x=5000", 400, BAD_PARAM, (("/query/limit", "alias"),)),
    "query-leading-space-alias": Case("GET", "/v1/pets?%20limit=5000", 400, BAD_PARAM, (("/query/limit", "alias"),)),
    "query-plus-space-alias": Case("GET", "/v1/pets?+limit=5000", 400, BAD_PARAM, (("/query/limit", "alias"),)),
    "form-nul-alias": Case(
        "POST", "/v1/pets", 400, MALFORMED, (("/body/status", "alias"),), b"name=Rex&status%00=lost", FORM
    ),
    "query-undeclared-dotted-key-passes": Case("GET", "/v1/pets?limit=5&page.size=9", 200),
    # ASP.NET Core binds query keys ignoring case (the last one wins): `LIMIT` is `limit` to it
    "query-case-variant-alias": Case("GET", "/v1/pets?LIMIT=5000", 400, BAD_PARAM, (("/query/limit", "alias"),)),
    "query-case-variant-beside-the-name": Case(
        "GET", "/v1/pets?limit=5&Limit=5000", 400, BAD_PARAM, (("/query/limit", "alias"),)
    ),
    "query-dotless-i-variant-alias": Case(
        "GET", "/v1/pets?L%C4%B0M%C4%B0T=5000", 400, BAD_PARAM, (("/query/limit", "alias"),)
    ),
    "query-undeclared-upper-key-passes": Case("GET", "/v1/pets?limit=5&PAGE=2", 200),
}

# Django decodes the body and the query string in the request's charset, and DRF's JSON parser too: in UTF-7,
# `+ACIALAAi-role+ACIAOgAi-admin` inside one JSON string is a second key, `role`, that a UTF-8 reading never sees
PETSTORE_CASES |= {
    "json-utf7-refused": Case(
        "POST",
        "/v1/pets",
        415,
        MEDIA,
        body=b'{"name":"Rex+ACIALAAi-weight+ACIAOgAi-0"}',
        headers={"Content-Type": "application/json; charset=utf-7"},
    ),
    "query-with-a-utf7-content-type-refused": Case(
        "GET", "/v1/pets?tags=x+ACY-limit+AD0-5000", 415, MEDIA, headers={"Content-Type": "text/plain; charset=utf-7"}
    ),
    "form-latin1-refused": Case(
        "POST",
        "/v1/pets",
        415,
        MEDIA,
        body=b"name=Rex",
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=iso-8859-1"},
    ),
    "two-charsets-refused": Case(
        "POST",
        "/v1/pets",
        415,
        MEDIA,
        body=b'{"name":"Rex"}',
        headers={"Content-Type": "application/json; charset=utf-8; charset=utf-7"},
    ),
    "utf8-charset-quoted-upper-ok": Case(
        "POST", "/v1/pets", 200, body=b'{"name":"Rex"}', headers={"Content-Type": 'application/json; Charset="UTF-8"'}
    ),
    "ascii-charset-ok": Case(
        "POST", "/v1/pets", 200, body=b'{"name":"Rex"}', headers={"Content-Type": "application/json;charset=us-ascii"}
    ),
}

# python-multipart takes the last `boundary` parameter, PHP the first `boundary` it finds: one body, two readings
PETSTORE_CASES |= {
    "multipart-two-boundaries": Case(
        "POST",
        "/v1/pets/3/photo",
        400,
        MALFORMED,
        (("/body", "multipart"),),
        _multipart(("file", *FILE), ("caption", "", b"x")),
        {"Content-Type": "multipart/form-data; boundary=AAA; boundary=XyZ"},
    ),
    "multipart-boundary-look-alike": Case(
        "POST",
        "/v1/pets/3/photo",
        400,
        MALFORMED,
        (("/body", "multipart"),),
        _multipart(("file", *FILE), ("caption", "", b"x")),
        {"Content-Type": "multipart/form-data; xboundary=AAA; boundary=XyZ"},
    ),
}

# Go's encoding/json and ASP.NET Core bind keys case-insensitively: `ID` is `id` (readOnly) and `\u017ftatus`
# (long s) is `status` (an enum) to them, and the last one wins
PETSTORE_CASES |= {
    "json-case-variant-of-readonly": Case(
        "PUT", "/v1/pets/7", 422, INVALID, (("/body/ID", "caseVariant"),), b'{"name":"Rex","ID":7}', JSON
    ),
    "json-case-variant-beside-the-name": Case(
        "POST",
        "/v1/pets",
        422,
        INVALID,
        (("/body/Status", "caseVariant"),),
        b'{"name":"Rex","status":"sold","Status":"lost"}',
        JSON,
    ),
    "json-long-s-variant": Case(
        "POST",
        "/v1/pets",
        422,
        INVALID,
        (("/body/\u017ftatus", "caseVariant"),),
        '{"name":"Rex","\u017ftatus":"lost"}'.encode(),
        JSON,
    ),
    "json-nested-case-variant": Case(
        "PUT",
        "/v1/owners/9b2f3c1e-8d4a-4b6e-9f0a-1c2d3e4f5a6b",
        422,
        INVALID,
        (("/body/address/ZIP", "caseVariant"),),
        b'{"email":"a@example.com","address":{"ZIP":"x"}}',
        JSON,
    ),
    "json-other-undeclared-key-passes": Case("POST", "/v1/pets", 200, body=b'{"name":"Rex","named":1}', headers=JSON),
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
    "query-bracket-alias": Case("GET", "/v1/pets?limit[]=5000", 400, BAD_PARAM, (("/query/limit", "alias"),)),
    "undeclared-query-key": Case(
        "GET", "/v1/pets?limit=1&debug=1", 422, INVALID, (("/query/debug", "additionalProperties"),)
    ),
}


@pytest.mark.parametrize("case", DEMO_CASES.values(), ids=DEMO_CASES.keys())
def test_openapi_demo_spec(demo: tuple[TestGateway, TestUpstream], case: Case) -> None:
    run_case(demo, case)


@pytest.mark.parametrize("case", PETSTORE_CASES.values(), ids=PETSTORE_CASES.keys())
def test_openapi_petstore_spec(petstore: tuple[TestGateway, TestUpstream], case: Case) -> None:
    run_case(petstore, case)


@pytest.mark.parametrize("case", STRICT_CASES.values(), ids=STRICT_CASES.keys())
def test_openapi_strict_mode_closes_objects(petstore_strict: tuple[TestGateway, TestUpstream], case: Case) -> None:
    run_case(petstore_strict, case)


EDGE_SPEC = """\
openapi: 3.1.0
info: {title: t, version: '1'}
paths:
  /users:
    post:
      requestBody:
        required: true
        content:
          'application/json; charset=UTF-8':
            schema: {type: object, properties: {role: {type: string, enum: [user]}}}
          '*/*': {}
      responses: {'200': {description: ok}}
  /items:
    get:
      parameters:
        - {name: session, in: cookie, schema: {type: string, pattern: "^[^<>']*$"}}
        - {name: X-Limit, in: header, schema: {type: integer, maximum: 100}}
      responses: {'200': {description: ok}}
  /notes:
    post:
      requestBody:
        content:
          'application/*':
            schema: {type: object, properties: {role: {type: string, enum: [user]}}}
      responses: {'200': {description: ok}}
"""


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestGateway, TestUpstream]]:
    tmp = tmp_path_factory.mktemp("spec")
    (tmp / "keys.yaml").write_text(EDGE_SPEC)
    yield from gateway(str(tmp / "keys.yaml"))


@pytest.mark.parametrize(
    "case",
    [
        Case("POST", "/users", 422, INVALID, (("/body/role", "enum"),), b'{"role":"admin"}', JSON),
        Case(
            "POST",
            "/users",
            422,
            INVALID,
            (("/body/role", "enum"),),
            b'{"role":"admin"}',
            {"Content-Type": "application/json; charset=utf-8"},
        ),
        Case("POST", "/users", 200, body=b'{"role":"user"}', headers=JSON),
    ],
    ids=["plain", "with-charset", "valid"],
)
def test_request_body_keys_with_parameters_are_matched_by_essence(
    edge: tuple[TestGateway, TestUpstream], case: Case
) -> None:
    """`application/json; charset=UTF-8` never matched a JSON request, so a `*/*` beside it took the body unread."""
    run_case(edge, case)


@pytest.mark.parametrize(
    "case",
    [
        Case("POST", "/notes", 415, MEDIA, body=b'{"role":"admin"}', headers={"Content-Type": "application/x-json"}),
        Case("POST", "/notes", 422, INVALID, (("/body/role", "enum"),), b'{"role":"admin"}', JSON),
        Case("POST", "/users", 200, body=b"\x00\x01", headers={"Content-Type": "application/octet-stream"}),
    ],
    ids=["application-star-unreadable", "application-star-json", "star-without-schema-passes"],
)
def test_wildcard_media_with_a_schema_needs_a_readable_body(edge: tuple[TestGateway, TestUpstream], case: Case) -> None:
    run_case(edge, case)


@pytest.mark.parametrize(
    "case",
    [
        Case("GET", "/items", 400, BAD_PARAM, (("/cookie/session", "escape"),),
             headers={"Cookie": 'session="\\074script\\076"'}),
        Case("GET", "/items", 400, BAD_PARAM, (("/cookie/session", "escape"),),
             headers={"Cookie": 'theme=dark; session="a\\"b"'}),
        Case("GET", "/items", 422, INVALID, (("/cookie/session", "pattern"),), headers={"Cookie": "session=<script>"}),
        Case("GET", "/items", 200, headers={"Cookie": 'session="plain"; other="\\074"'}),
    ],
    ids=["octal-escape", "escaped-quote", "pattern", "undeclared-cookie-escapes-pass"],
)  # fmt: skip
def test_quoted_cookie_values_with_escapes_are_refused(edge: tuple[TestGateway, TestUpstream], case: Case) -> None:
    """http.cookies and Werkzeug unquote `"\\074script\\076"` to `<script>` after the pattern saw backslashes."""
    run_case(edge, case)


@pytest.mark.parametrize(
    "case",
    [
        Case("GET", "/items", 400, BAD_PARAM, (("/header/x-limit", "alias"),), headers={"X_Limit": "5000"}),
        Case("GET", "/items", 400, BAD_PARAM, (("/header/x-limit", "alias"),),
             headers={"X-Limit": "5", "x_limit": "5000"}),
        Case("GET", "/items", 422, INVALID, (("/header/x-limit", "maximum"),), headers={"X-Limit": "5000"}),
        Case("GET", "/items", 200, headers={"X-Limit": "5", "X_Other": "1"}),
    ],
    ids=["underscore-alone", "underscore-beside-the-name", "dashed-checked", "undeclared-underscore-passes"],
)  # fmt: skip
def test_underscore_spellings_of_declared_headers_are_refused(
    edge: tuple[TestGateway, TestUpstream], case: Case
) -> None:
    """CGI and WSGI servers read `X_Limit` as `X-Limit` (both HTTP_X_LIMIT): it skipped the header's checks."""
    run_case(edge, case)


SIZED = CONFIG.replace("strict: %s", "requests: %s, max_request_bytes: 2048")


@pytest.mark.parametrize("mode", ["enforce", "monitor"])
def test_request_bodies_over_max_request_bytes_are_not_validated(mode: str) -> None:
    """A 10 MiB array of small objects (the route's default body limit) held a worker about 1 s in validation."""
    from stockade.testing import gateway_with_upstream

    items = b",".join([b'{"book_id":1,"quantity":2}'] * 100)  # valid, and 2.7 KB
    big = b'{"items":[' + items + b"]}"
    small = b'{"items":[{"book_id":1,"quantity":2}]}'
    with gateway_with_upstream(SIZED % (DEMO_SPEC, mode)) as (gw, up):
        status, _, raw = gw.request("POST", "/orders", headers=JSON, body=big)
        if mode == "enforce":
            assert (status, json.loads(raw)["reason"]) == (413, "openapi.body_too_large")
            assert up.received == []
        else:
            assert status == 200 and up.received[-1].body == big  # a finding, not a refusal
        assert gw.request("POST", "/orders", headers=JSON, body=small)[0] == 200


def test_uploads_keep_the_route_limit_not_max_request_bytes() -> None:
    """A 3 KB photo (over this route's 2 KB max_request_bytes) is an upload, not a document to validate."""
    from stockade.testing import gateway_with_upstream
    from tests.stages.validate.openapi_cases import SPECS

    photo = _multipart(("file", '; filename="a.png"\r\nContent-Type: image/png', b"\x89PNG" + b"\x00" * 3000))
    with gateway_with_upstream(SIZED % ("petstore.yaml", "enforce"), base_dir=SPECS) as (gw, up):
        status, _, _ = gw.request("POST", "/v1/pets/3/photo", headers=MULTIPART, body=photo)
        assert status == 200 and up.received[-1].body == photo
        # ...but its fields are parsed and validated: they are held to max_request_bytes (an 11 MiB JSON part
        # held a worker 1.7 s)
        big_part = _multipart(
            ("file", *FILE), ("meta", "\r\nContent-Type: application/json", b'{"width":' + b" " * 3000 + b"1}")
        )
        status, _, raw = gw.request("POST", "/v1/pets/3/photo", headers=MULTIPART, body=big_part)
        assert (status, json.loads(raw)["reason"]) == (413, "openapi.body_too_large")
