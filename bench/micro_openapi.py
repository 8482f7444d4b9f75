"""Micro-benchmark of OpenAPI validation CPU cost (not a test): `python bench/micro_openapi.py`.

Measures, per request, the `openapi` stage's whole `check` for a ~1 KB JSON body with 20 fields (target: <= 20 us
of CPU), its parts, path matching in a 20- and a 200-operation spec, and the JSON Schema engines that were
candidates (jsonschema-rs, fastjsonschema, jsonschema) on the same body. CPU time is `time.process_time`; each
figure is the best of several rounds, because the machine is shared and only the minimum is meaningful.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import yaml

from stockade.openapi.spec import Options, Spec
from stockade.pipeline.stage import Services, StageEnv
from stockade.stages.validate.openapi import OpenApiConfig, OpenApiStage
from stockade.testing import FakeClock, make_context

ORDER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "email", "name", "created", "status", "qty", "price"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "email": {"type": "string", "format": "email", "maxLength": 254},
        "name": {"type": "string", "minLength": 1, "maxLength": 80},
        "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
        "created": {"type": "string", "format": "date-time"},
        "status": {"type": "string", "enum": ["new", "paid", "shipped", "cancelled"]},
        "qty": {"type": "integer", "minimum": 1, "maximum": 1000},
        "price": {"type": "number", "exclusiveMinimum": 0},
        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "note": {"type": "string", "maxLength": 500},
        "gift": {"type": "boolean"},
        "tags": {"type": "array", "maxItems": 10, "items": {"type": "string", "maxLength": 20}},
        "address": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "street": {"type": "string"},
                "city": {"type": "string"},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                "country": {"type": "string", "minLength": 2, "maxLength": 2},
            },
        },
        "phone": {"type": "string", "pattern": "^\\+?[0-9 ]{6,20}$"},
        "discount": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
        "ref": {"type": "string"},
        "channel": {"type": "string", "enum": ["web", "app", "api"]},
        "priority": {"type": "integer"},
        "weight": {"type": "number"},
        "coupon": {"type": "string", "maxLength": 32},
    },
}
BODY = {
    "id": "9b2f3c1e-8d4a-4b6e-9f0a-1c2d3e4f5a6b",
    "email": "alice.smith@example.com",
    "name": "Alice Smith, spring order",
    "sku": "ABC-1234",
    "created": "2024-05-01T12:34:56Z",
    "status": "paid",
    "qty": 3,
    "price": 19.99,
    "currency": "EUR",
    "note": "Please leave the parcel at the door next to the blue flower pot; ring twice, the bell is quiet. " * 5,
    "gift": False,
    "tags": ["spring", "sale", "vip", "returning"],
    "address": {"street": "1 Main Street", "city": "Springfield", "zip": "12345", "country": "US"},
    "phone": "+1 555 123 4567",
    "discount": 5.5,
    "ref": "order-ref-000123456789",
    "channel": "web",
    "priority": 2,
    "weight": 1.25,
    "coupon": "SPRING24",
}


def spec_document(operations: int) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    ok = {"200": {"description": "ok"}}
    body = {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Order"}}}}
    for i in range(max(1, operations // 4)):
        paths[f"/r{i}/orders"] = {"get": {"responses": ok}, "post": {"requestBody": body, "responses": ok}}
        item = {"parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}]}
        paths[f"/r{i}/orders/{{id}}"] = {**item, "get": {"responses": ok}, "delete": {"responses": ok}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "bench", "version": "1"},
        "paths": paths,
        "components": {"schemas": {"Order": ORDER}},
    }


def best_us(fn: Callable[[], object], n: int, rounds: int = 7) -> float:
    """Best-of-rounds CPU microseconds per call."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - start) / n * 1e6)
    return best


def run_check(stage: OpenApiStage, raw: bytes, path: str) -> Callable[[], object]:
    headers = {"content-type": "application/json", "content-length": str(len(raw))}

    def once() -> object:
        ctx = make_context("POST", path, headers=headers, body=raw)
        try:
            stage.check(ctx).send(None)
        except StopIteration as stop:
            return stop.value
        raise RuntimeError("the stage awaited I/O")

    return once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=20_000, help="calls per round")
    args = parser.parse_args()
    raw = orjson.dumps(BODY)
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for ops in (20, 200):
            (Path(tmp) / f"s{ops}.yaml").write_text(yaml.safe_dump(spec_document(ops)))
        env = StageEnv(route_id="bench", base_dir=Path(tmp), services=Services(clock=FakeClock()))
        stage = OpenApiStage(OpenApiConfig(spec="s200.yaml"), env)
        once = run_check(stage, raw, "/r37/orders")
        if type(once()).__name__ != "Continue":
            raise SystemExit(f"the benchmark body must be valid: {once()!r}")
        rows.append((f"openapi stage check, {len(raw)} B JSON body, {len(BODY)} fields", best_us(once, args.n)))
        rows.append(
            (
                "  of which: building a RequestContext (harness)",
                best_us(
                    lambda: make_context("POST", "/r37/orders", headers={"content-type": "application/json"}, body=raw),
                    args.n,
                ),
            )
        )
        for ops in (20, 200):
            spec = Spec(Path(tmp) / f"s{ops}.yaml", Options())
            rows.append((f"path match, {len(spec.operations)}-operation spec", best_us(matcher(spec), args.n)))
        op = stage.spec.match("/r37/orders", "POST")[0]  # type: ignore[index]
        validator = op.bodies["application/json"].check.validator
        instance = {"body": BODY}
        rows.append(("jsonschema-rs is_valid (envelope + body)", best_us(lambda: validator.is_valid(instance), args.n)))
        rows.append(("JSON parse with duplicate-key check", best_us(lambda: stage_parse(raw), args.n)))
        rows.append(("orjson.loads (no duplicate check)", best_us(lambda: orjson.loads(raw), args.n)))
        rows.extend(engines(args.n))
    width = max(len(name) for name, _ in rows)
    print(f"{'measure':<{width}}  CPU us/call (best of 7)")
    for name, us in rows:
        print(f"{name:<{width}}  {us:8.2f}")


def matcher(spec: Spec) -> Callable[[], object]:
    return lambda: spec.match("/r3/orders/42", "DELETE")


def stage_parse(raw: bytes) -> object:
    from stockade.openapi.request import DUPLICATES_ONLY
    from stockade.security.jsonscan import parse

    return parse(raw, DUPLICATES_ONLY)


def engines(n: int) -> list[tuple[str, float]]:
    """The candidates, compiled once, validating the same Python object (patterns: each engine's own)."""
    import jsonschema_rs

    out = []
    rs = jsonschema_rs.validator_for(ORDER, validate_formats=True, pattern_options=jsonschema_rs.RegexOptions())
    out.append(("engine: jsonschema-rs (regex crate, formats on)", best_us(lambda: rs.is_valid(BODY), n)))
    try:
        import fastjsonschema

        fj = fastjsonschema.compile({**ORDER, "$schema": "http://json-schema.org/draft-07/schema#"})
        out.append(("engine: fastjsonschema (draft 7, Python `re`)", best_us(lambda: fj(BODY), n)))
    except ImportError:
        out.append(("engine: fastjsonschema (not installed)", float("nan")))
    try:
        import jsonschema  # type: ignore[import-untyped]

        ref = jsonschema.Draft202012Validator(ORDER, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
        out.append(
            ("engine: jsonschema (reference, pure Python)", best_us(lambda: ref.is_valid(BODY), max(1, n // 20)))
        )
    except ImportError:
        out.append(("engine: jsonschema (not installed)", float("nan")))
    return out


if __name__ == "__main__":
    main()
