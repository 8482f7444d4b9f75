"""JSON Schema for editors and CI: the gateway config, with each built-in stage's and handler's config attached."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic.json_schema import models_json_schema

from stockade.config.models import GatewayConfig
from stockade.handlers import BUILTIN_HANDLERS, load_handler_class
from stockade.pipeline.phase import Phase
from stockade.stages import BUILTIN_STAGES, load_stage_class

if TYPE_CHECKING:
    from pydantic import BaseModel

    from stockade.handlers.base import Handler
    from stockade.pipeline.stage import Stage, StageConfig

FAIL_OPEN_PHASES = (Phase.RATE_LIMIT, Phase.DETECT)  # as the loader allows `fail_open`


def config_schema() -> dict[str, Any]:
    """The schema of a config file that uses the built-in stages and handlers."""
    stages = {name: load_stage_class(name) for name in sorted(BUILTIN_STAGES)}
    handlers = {name: load_handler_class(name) for name in sorted(BUILTIN_HANDLERS)}
    return schema_for(stages, handlers)


def schema_for(stages: Mapping[str, type[Stage]], handlers: Mapping[str, type[Handler]]) -> dict[str, Any]:
    """One self-contained schema: the gateway's and every stage's and handler's models share the root `$defs`
    (pydantic renames same-named models apart, so every `$ref` resolves from the root), and an entry's `config`
    is checked against the model of the stage or handler its `use:` names."""
    configs = [*(s.Config for s in stages.values()), *(h.Config for h in handlers.values())]
    models: dict[type[BaseModel], None] = dict.fromkeys([GatewayConfig, *configs])  # handlers share configs
    refs, top = models_json_schema([(model, "validation") for model in models])
    defs: dict[str, Any] = top["$defs"]
    root = defs.pop(refs[(GatewayConfig, "validation")]["$ref"].removeprefix("#/$defs/"))  # nothing refers to it

    def then(config: type[StageConfig], **properties: Any) -> dict[str, Any]:
        # The loader validates a missing `config` as `{}`: a model with required fields needs one.
        required = ["config"] if any(f.is_required() for f in config.model_fields.values()) else []
        return {"properties": {"config": refs[(config, "validation")], **properties}, "required": required}

    defs["StageEntry"] = _entry(
        {
            name: then(cls.Config) if cls.phase in FAIL_OPEN_PHASES else then(cls.Config, fail_open={"const": False})
            for name, cls in stages.items()
        },
        fail_open={"type": "boolean", "default": False, "description": "rate-limit and detect stages only"},
    )
    defs["HandlerEntry"] = _entry({name: then(cls.Config) for name, cls in handlers.items()})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **root,
        "title": "Stockade gateway configuration",
        "$defs": dict(sorted(defs.items())),
    }


def _entry(cases: Mapping[str, dict[str, Any]], **properties: Any) -> dict[str, Any]:
    """A `{use, config, ...}` entry: `use` one of the names, then what that one requires. if/then rather than
    oneOf, so that a validator names the bad option, not "not valid under any of the given schemas"."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["use"],
        "properties": {"use": {"enum": list(cases)}, "config": {"type": "object", "default": {}}, **properties},
        "allOf": [
            {"if": {"properties": {"use": {"const": name}}, "required": ["use"]}, "then": then}
            for name, then in cases.items()
        ],
    }
