"""Property: no request that is invalid under the spec reaches the upstream, and every refusal is a 4xx.

Requests are generated (valid and invalid), sent through a real gateway, and whatever the upstream received is
checked independently with the reference `jsonschema` library against the spec's own schemas.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import jsonschema
import pytest
import referencing
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from stockade.testing import TestGateway, TestUpstream, gateway_with_upstream

SPECS = Path(__file__).resolve().parents[2] / "openapi" / "specs"
SPEC = yaml.safe_load((SPECS / "petstore.yaml").read_text())
REGISTRY = referencing.Registry().with_resource(
    "urn:petstore", referencing.Resource.from_contents(SPEC, referencing.jsonschema.DRAFT202012)
)
CONFIG = """
routes:
  - id: api
    match: {path: "/**"}
    upstream: "{upstream}"
    stages:
      - use: anonymous
      - use: openapi
        config: {spec: petstore.yaml}
"""
REFUSED = {400, 404, 415, 422}


def _reference(pointer: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        {"$ref": "urn:petstore#" + pointer},
        registry=REGISTRY,
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )


NEW_PET = _reference("/components/schemas/NewPet")
PET = _reference("/components/schemas/Pet")
STATUS = _reference("/components/schemas/Status")


def _body_valid(validator: jsonschema.Draft202012Validator, body: bytes, *, read_only_id: bool) -> bool:
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    if read_only_id and isinstance(doc, dict):
        # readOnly (the reference library knows no direction): a request must not send `id`, and a required
        # readOnly property is required only in responses, so check the rest as if the server had set it.
        if "id" in doc:
            return False
        doc = {**doc, "id": 1}
    return validator.is_valid(doc)


def _query_valid(query: str) -> bool:
    """listPets' parameters, read as the spec defines them (form style, exploded arrays)."""
    q = parse_qs(query, keep_blank_values=True)
    if "limit" in q:
        if len(q["limit"]) != 1 or not re.fullmatch(r"-?[0-9]+", q["limit"][0]):  # ASCII digits: "¹".isdigit()
            return False
        if not 1 <= int(q["limit"][0]) <= 100:
            return False
    if "tags" in q and (len(q["tags"]) > 3 or any(len(t) > 10 for t in q["tags"])):
        return False
    return "status" not in q or (len(q["status"]) == 1 and STATUS.is_valid(q["status"][0]))


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[TestGateway, TestUpstream]]:
    with gateway_with_upstream(CONFIG, base_dir=SPECS) as pair:
        yield pair


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=40),
    st.sampled_from(["Rex", "available", "sold", "2024-02-29", "2024-13-01", "9b2f3c1e-8d4a-4b6e-9f0a-1c2d3e4f5a6b"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
keys = st.sampled_from(["name", "tag", "status", "birthday", "chip", "weight", "vaccinated", "id", "extra"])
bodies = st.one_of(
    st.dictionaries(keys, values, max_size=6).map(lambda d: json.dumps(d).encode()),
    st.fixed_dictionaries(
        {"name": st.from_regex(r"\A[A-Za-z][A-Za-z ]{0,28}\Z")},
        optional={"weight": st.floats(0, 250), "id": st.integers(1, 5)},
    ).map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=30),
)
query_values = st.one_of(
    st.integers(-5, 200).map(str), st.text(max_size=12), st.sampled_from(["available", "lost", "1"])
)
queries = st.lists(st.tuples(st.sampled_from(["limit", "tags", "status", "other"]), query_values), max_size=5).map(
    lambda items: "&".join(f"{k}={quote(v, safe='')}" for k, v in items)
)
requests = st.one_of(
    st.tuples(st.just("POST"), st.just("/v1/pets"), bodies, st.sampled_from(["application/json", "text/plain"])),
    st.tuples(
        st.just("PUT"), st.sampled_from(["/v1/pets/1", "/v1/pets/0", "/v1/pets/x"]), bodies, st.just("application/json")
    ),
    st.tuples(st.just("GET"), queries.map(lambda q: "/v1/pets?" + q), st.just(b""), st.just("")),
    st.tuples(
        st.sampled_from(["GET", "PATCH"]),
        st.sampled_from(["/v1/admin", "/v1/pets/1/x", "/pets"]),
        st.just(b""),
        st.just(""),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests)
def test_only_requests_valid_under_the_spec_reach_the_upstream(
    gateway: tuple[TestGateway, TestUpstream], request: tuple[str, str, bytes, str]
) -> None:
    gw, up = gateway
    method, target, body, content_type = request
    headers = {"Content-Type": content_type} if content_type else {}
    before = len(up.received)
    status, _, _ = gw.request(method, target, headers=headers, body=body)
    forwarded = up.received[before:]
    valid = _independently_valid(method, target, body, content_type)
    event(f"{method} {'forwarded' if forwarded else status}")
    if forwarded:
        assert status == 200
        assert valid, f"{method} {target} {body!r} reached the upstream but is invalid under the spec"
    else:
        assert status in REFUSED
        assert not valid, f"{method} {target} {body!r} is valid under the spec but was refused ({status})"


def _independently_valid(method: str, target: str, body: bytes, content_type: str) -> bool:
    parts = urlsplit(target)
    if method == "GET" and parts.path == "/v1/pets":
        return _query_valid(parts.query)
    if method == "POST" and parts.path == "/v1/pets":
        return content_type == "application/json" and _body_valid(NEW_PET, body, read_only_id=False)
    if method == "PUT" and parts.path == "/v1/pets/1":
        return _body_valid(PET, body, read_only_id=True) or body == b""
    return False  # unknown operations and invalid path parameters
