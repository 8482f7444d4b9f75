"""JSON Schema for editors: the gateway config, with each built-in stage's config schema attached."""

from __future__ import annotations

from typing import Any

from stockade.config.models import GatewayConfig
from stockade.stages import BUILTIN_STAGES, load_stage_class


def config_schema() -> dict[str, Any]:
    schema = GatewayConfig.model_json_schema()
    variants = []
    for name in sorted(BUILTIN_STAGES):
        cls = load_stage_class(name)
        variants.append(
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["use"],
                "properties": {
                    "use": {"const": name},
                    "config": cls.Config.model_json_schema(),
                    "fail_open": {"type": "boolean", "default": False},
                },
            }
        )
    schema.setdefault("$defs", {})["StageEntry"] = {"oneOf": variants}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Stockade gateway configuration"
    return schema
