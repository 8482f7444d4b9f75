"""Explicit registries: a `use:` name maps to "module:attribute", imported only when a config uses it."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def load_registered(registry: Mapping[str, str], name: str, missing: type[LookupError]) -> Any:
    """Import what `name` is registered as; raise `missing` if it is not registered, or if the object's `id`
    does not match the name it is registered under (a registry typo must not load the wrong class)."""
    target = registry.get(name)
    if target is None:
        raise missing(name)
    module_name, _, attr = target.partition(":")
    obj = getattr(importlib.import_module(module_name), attr)
    declared = getattr(obj, "id", name)
    if declared != name:
        raise missing(f"{target} declares id {declared!r}, registered as {name!r}")
    return obj
