"""The `openapi` stage's modes and edges: decision log, monitor modes, deprecated operations, hooks, headers."""

from __future__ import annotations

import json
from pathlib import Path

from stockade.testing import gateway_with_upstream

from .openapi_cases import CONFIG, DEMO_SPEC, JSON, SPECS

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


def test_two_content_type_headers_are_ambiguous() -> None:
    from stockade.testing import http_request

    raw = (
        b"POST /v1/pets HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Type: text/plain\r\n"
        b'Content-Length: 14\r\nConnection: close\r\n\r\n{"name":"Rex"}'
    )
    with gateway_with_upstream(CONFIG % ("petstore.yaml", "false"), base_dir=SPECS) as (gw, up):
        with gw.connect() as sock:
            [(status, _, body)] = http_request(sock, raw)
        assert up.received == []
    assert (status, json.loads(body)["reason"]) == (400, "http.duplicate_header")
