"""Case variants of property names: the check refusing a key that equals a declared name but for case.

Go's encoding/json and ASP.NET Core bind JSON keys case-insensitively (the last one wins), so `IsAdmin`, `ROLE`
or `status` spelt with a long s would reach `isAdmin`, `role` or `status` past their `readOnly`, `enum` or pattern.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def name_check(names: Sequence[str]) -> dict[str, Any] | None:
    """A `propertyNames` schema refusing a key that matches one of `names` under `(?i)` but is none of them;
    None if no name has letters. The `regex` crate's `(?i)` uses Unicode simple case folding, as Go's EqualFold
    does."""
    variants = [n for n in names if n.lower() != n.upper()]  # only names with letters have variants
    if not variants:
        return None
    pattern = "(?i)^(?:" + "|".join(_literal(n) for n in variants) + ")$"
    return {"anyOf": [{"enum": list(names)}, {"not": {"pattern": pattern}}]}


def _literal(name: str) -> str:
    """`name` as a regex matching exactly it: ASCII punctuation as hex escapes, never as metacharacters."""
    return "".join(c if c.isalnum() or not c.isascii() else f"\\x{{{ord(c):X}}}" for c in name)
