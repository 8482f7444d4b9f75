"""YAML 1.1 scalars a config did not mean: a boolean where a number goes, a date or number where text goes."""

from __future__ import annotations

import datetime
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationInfo


def no_bool_for_number(model: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """A `field_validator("*", mode="before")` body: refuse a boolean for a number field. Pydantic's lax mode takes
    true as 1, so `port: yes` was port 1 and `max_bytes: on` one byte."""
    if isinstance(value, bool) and info.field_name is not None:
        field = model.model_fields.get(info.field_name)
        if field is not None and _number_not_bool(field.annotation):
            raise ValueError("should be a number, not a boolean (YAML reads unquoted yes/no/on/off/true/false as one)")
    return value


def _number_not_bool(tp: Any) -> bool:
    members = _members(tp)
    return any(m in (int, float) for m in members) and not any(m is bool or m is Any for m in members)


def _members(tp: Any) -> list[Any]:
    origin = get_origin(tp)
    if origin is Annotated:
        return _members(get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        return [m for arg in get_args(tp) for m in _members(arg)]
    if origin is Literal:
        return [type(arg) for arg in get_args(tp)]
    return [tp]


def quote_hint(value: Any) -> str:
    """Why a text field got something else, when YAML is the reason: `methods: [GET, NO]`, `id: 2024-01-01`."""
    if isinstance(value, bool):
        return " (YAML read `yes/no/on/off` unquoted as a boolean; quote it)"
    if isinstance(value, datetime.date):
        return f" (YAML read {value.isoformat()} as a date; quote it)"
    if isinstance(value, int | float):
        return f" (YAML read {value!r} as a number; quote it)"
    return ""
