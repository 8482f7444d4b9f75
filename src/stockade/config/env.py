"""STOCKADE_<SECTION>__<FIELD> environment overrides: one setting per variable, and no STOCKADE_ name ignored
but the project's other variables and service links (service_links.py).

An override sets one leaf: a section (`STOCKADE_LISTEN='{port: 1}'`) would replace the file's whole section and
drop what the variable does not repeat (its `tls`). A text setting takes the value as written (`0x7f000001` is a
host, not a number; `#` starts no comment), less surrounding spaces and one pair of matching quotes around it; a
number or switch is read as a YAML scalar; a list as `[a, b]`, its items split at commas and taken as written
(`[::1/128]`), each optionally quoted. Routes, global stages and `oauth2_server` (which makes routes) are not
overridable: they belong in the file.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from stockade.config.models import GatewayConfig
from stockade.config.service_links import is_service_link
from stockade.errors import ConfigError
from stockade.native import NATIVE_ENV
from stockade.security.secrets import KEK_ENV, PEPPER_ENV

ENV_PREFIX = "STOCKADE_"
NOT_OVERRIDABLE = ("routes", "stages", "oauth2_server")
# STOCKADE_ variables the project reads other than overrides: the secrets, the CLI's --config, the test suite's
# servers, and the CLI options earlier versions read (STOCKADE_<GROUP>_<COMMAND>_<OPTION>), which the CLI refuses
# with its own message. `admin` and `secrets` are also sections, so those groups are named with their commands.
OTHER_VARIABLES = frozenset({PEPPER_ENV, KEK_ENV, NATIVE_ENV, "STOCKADE_CONFIG"})
OTHER_PREFIXES = tuple(
    f"{ENV_PREFIX}{p}_"
    for p in (
        "TEST",
        "SERVE",
        "CONFIG",
        "CONSUMERS",
        "KEYS",
        "CLIENTS",
        "LOCKOUTS",
        "OPENAPI",
        "ADMIN_CHANGES",
        "ADMIN_TOKEN",
        "SECRETS_FORGET_KEK",
        "SECRETS_RESEAL",
    )
)

Kind = Literal["section", "list", "text", "value"]
_Loc = tuple[str | int, ...]


def _kind(tp: Any) -> Kind:
    members = _members(tp)
    if any(isinstance(m, type) and issubclass(m, BaseModel) for m in members):
        return "section"
    if any(get_origin(m) in (list, tuple, set, frozenset) for m in members):
        return "list"
    if all(m in (str, type(None)) for m in members):
        return "text"
    return "value"


def _members(tp: Any) -> list[Any]:
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return [m for arg in get_args(tp) for m in _members(arg)]
    if origin is Literal:
        return [type(arg) for arg in get_args(tp)]
    return [tp]


def _settings(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], tuple[Kind, Any]]:
    """Every overridable path, with its kind (and, for a section, its model)."""
    out: dict[tuple[str, ...], tuple[Kind, Any]] = {}
    for name, info in model.model_fields.items():
        if not prefix and name in NOT_OVERRIDABLE:
            continue
        kind = _kind(info.annotation)
        out[(*prefix, name)] = (kind, info.annotation)
        if kind == "section":
            sub = next(m for m in _members(info.annotation) if isinstance(m, type) and issubclass(m, BaseModel))
            out |= _settings(sub, (*prefix, name))
    return out


SETTINGS = _settings(GatewayConfig)


def env_name(path: tuple[str, ...]) -> str:
    return ENV_PREFIX + "__".join(path).upper()


def parts_of(name: str) -> tuple[str, ...]:
    """The setting path a STOCKADE_ name would set (`STOCKADE_LISTEN__PORT` -> ("listen", "port"))."""
    return tuple(p.lower() for p in name[len(ENV_PREFIX) :].split("__"))


def apply_env(raw: dict[str, Any], env: Mapping[str, str], source: str) -> dict[_Loc, str]:
    """Apply the overrides in `env` to `raw` (the parsed file). Returns each path set, with the variable that set
    it. Raises ConfigError naming every variable refused: a name that sets nothing (`STOCKADE_LISTEN_PORT`, one
    underscore), an empty or null value (it would remove what the file sets: `STOCKADE_LISTEN__TLS=` from a missing
    secret would turn TLS off), a section, or a value of the wrong shape."""
    applied: dict[_Loc, str] = {}
    problems: list[str] = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in OTHER_VARIABLES or name.startswith(OTHER_PREFIXES):
            continue
        parts = parts_of(name)
        setting = SETTINGS.get(parts)
        if setting is None and is_service_link(name, env[name]):
            continue  # a Kubernetes Service or Docker link named stockade*: not ours to read or refuse
        if setting is None:
            problems.append(f"{source}: environment variable {name}{_unknown(parts)}")
            continue
        kind, _ = setting
        try:
            value = _value(kind, env[name], name, parts)
        except ValueError as exc:
            problems.append(f"{source}: environment variable {name}: {exc}")
            continue
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
        applied[parts] = name
    if problems:
        raise ConfigError(problems)
    return applied


def _unknown(parts: tuple[str, ...]) -> str:
    if parts[0] in NOT_OVERRIDABLE:
        return f": {parts[0]} is not overridable from the environment (routes, and what makes them, belong in the file)"
    # Compared without the prefix every name shares (it would make any two names look alike).
    leaves = ["__".join(path) for path, (kind, _) in SETTINGS.items() if kind != "section"]
    close = difflib.get_close_matches("__".join(parts), leaves, n=1, cutoff=0.8)
    return " is not a setting" + (f" (did you mean {ENV_PREFIX}{close[0].upper()}?)" if close else "")


_NULLS = ("", "~", "null", "Null", "NULL")  # YAML's spellings of null, and nothing: a text cannot be them unquoted


def _value(kind: Kind, text: str, name: str, parts: tuple[str, ...]) -> Any:
    value: Any
    if kind == "text":
        value = None if text.strip() in _NULLS else _unquote(text.strip())
    elif kind == "list":
        value = _flow_list(text, name)
    else:
        try:
            value = yaml.safe_load(text)
        except (yaml.YAMLError, ValueError):  # ValueError: an integer of more than 4300 digits
            value = text.strip()
    if value is None or value == "":
        raise ValueError(
            f"the value is empty or null, which would remove '{'.'.join(parts)}'; unset the variable to keep the file's"
            " value, or give one"
        )
    if kind == "section":
        example = next(env_name(p) for p in SETTINGS if p[:-1] == parts)
        raise ValueError(
            f"'{'.'.join(parts)}' is a section: set its fields one variable each (e.g. {example}), so that what the"
            " file sets and the variable does not repeat is kept"
        )
    if kind == "value" and isinstance(value, list | dict):
        raise ValueError(f"'{'.'.join(parts)}' takes one value, not a list or mapping")
    return value


def _unquote(text: str) -> str:
    """`text` less one pair of matching quotes around it; nothing inside is interpreted (no escapes)."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _flow_list(text: str, name: str) -> list[str]:
    """`[a, b]` as its items, split at commas: not YAML, which reads `[::1/128]` as a mapping and `a #1` as `a`.
    No item of a list setting (an address, a network, a host name) contains a comma, a quote or a bracket."""
    shape = f"give a list of values in brackets, separated by commas, each optionally quoted: {name}='[a, b]'"
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        raise ValueError(shape)
    body = body[1:-1].strip()
    if not body:
        return []
    items = [_unquote(item.strip()) for item in body.split(",")]
    if any(not item for item in items):
        raise ValueError(f"an empty item (two commas, or a comma at an end): {shape}")
    if any(set(item) & set("[]{}'\"") for item in items):
        raise ValueError(shape)
    return items
