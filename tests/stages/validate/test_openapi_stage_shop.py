"""The `openapi` stage over the larger OpenAPI 3.0 shop spec: every parameter style, files, discriminators."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stockade.testing import TestGateway, TestUpstream

from .openapi_cases import (
    BAD_PARAM,
    INVALID,
    JSON,
    MEDIA,
    SHOP_JSON,
    UNKNOWN,
    Case,
    gateway,
    run_case,
)


@pytest.fixture(scope="module")
def shop() -> Iterator[tuple[TestGateway, TestUpstream]]:
    yield from gateway("shop.yaml")


@pytest.fixture(scope="module")
def shop_strict() -> Iterator[tuple[TestGateway, TestUpstream]]:
    yield from gateway("shop.yaml", strict=True)


SEARCH_OK = "/api/v2/search?q=books&price[min]=1&price[max]=9&ids=1|2|3"
SEARCH_HEADERS = {"Cookie": "session=0123456789abcdef", "X-Api-Version": "2"}

SHOP_CASES = {
    "search-pipe-delimited-alias": Case(
        "GET", SEARCH_OK + "&ids[]=99", 400, BAD_PARAM, (("/query/ids", "alias"),), headers=SEARCH_HEADERS
    ),
    "search-deep-object-nested-alias": Case(
        "GET", SEARCH_OK + "&q[x]=1", 400, BAD_PARAM, (("/query/q", "alias"),), headers=SEARCH_HEADERS
    ),
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
    run_case(shop_strict, case)


@pytest.mark.parametrize("case", SHOP_CASES.values(), ids=SHOP_CASES.keys())
def test_openapi_shop_spec(shop: tuple[TestGateway, TestUpstream], case: Case) -> None:
    run_case(shop, case)


def test_matrix_path_parameters_need_path_parameters_allowed() -> None:
    """Matrix-style path parameters put ';' in paths, which the gateway refuses by default: a config error that
    names the route, the stage and the operation, instead of a spec whose operations always answer 400."""
    from stockade.errors import ConfigError
    from stockade.testing import gateway_with_upstream

    from .openapi_cases import CONFIG, SPECS

    config = CONFIG.replace("limits: {path_parameters: true}", "") % ("shop.yaml", "false")
    with pytest.raises(ConfigError) as caught, gateway_with_upstream(config, base_dir=SPECS):
        pass
    message = str(caught.value)
    assert "route 'api'" in message and "stage 'openapi'" in message
    assert "getStore" in message and "limits.path_parameters" in message
