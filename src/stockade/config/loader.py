"""Load a config file: YAML, environment overrides, strict validation, stage configs, cross-checks.

Every problem is collected and reported at once, each naming the file, line, route id, stage and field.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from stockade.config.env import apply_env
from stockade.config.models import GatewayConfig, HandlerEntry, StageEntry
from stockade.config.yamldoc import line_map, parse, read_text
from stockade.errors import ConfigError
from stockade.handlers import BUILTIN_HANDLERS, UnknownHandlerError, load_handler_class
from stockade.pipeline.phase import Phase
from stockade.pipeline.route_shadows import shadowed
from stockade.pipeline.routing import Router, RouteSpec, RouteTemplateError, parse_template
from stockade.pipeline.stage import Stage, StageConfig
from stockade.scalars import quote_hint

if TYPE_CHECKING:
    from stockade.handlers.base import Handler
from stockade.stages import BUILTIN_STAGES, UnknownStageError, load_stage_class

_Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class StagePlan:
    """A validated stage entry, ready to be instantiated."""

    cls: type[Stage]
    config: StageConfig
    entry: StageEntry
    where: str  # "route 'items' > stage 'jwt' (stages[1])" for messages
    at: str = ""  # "gw.yaml:12": the file and line of the entry, for problems found when it is built


@dataclass(frozen=True)
class HandlerPlan:
    """A validated handler entry, ready to be instantiated."""

    cls: type[Handler]
    config: StageConfig
    where: str
    at: str = ""


@dataclass(frozen=True)
class LoadedConfig:
    """A config that passed every check: the model, plus each route's stage plan."""

    config: GatewayConfig
    source: str  # the file name for messages ("<string>" when loaded from text)
    base_dir: Path
    text: str
    global_stages: tuple[StagePlan, ...] = ()
    route_stages: dict[str, tuple[StagePlan, ...]] = field(default_factory=dict)
    route_handlers: dict[str, HandlerPlan] = field(default_factory=dict)
    lines: Mapping[tuple[str | int, ...], int] = field(default_factory=dict)  # YAML path -> line, for messages
    warnings: tuple[str, ...] = ()  # valid, but worth a word (logged at every load, printed by `config check`)
    overrides: tuple[str, ...] = ()  # the STOCKADE_* variables applied (names only: values may be secrets)
    asgi: bool = False  # loaded for the ASGI middleware: `listen`, `admin` and `workers` are not used

    def at(self, loc: Sequence[str | int]) -> str:
        """`file:line` of a location (of its nearest located parent; the file alone if none), for problems found
        after loading (files the config names)."""
        loc = tuple(loc)
        for n in range(len(loc), 0, -1):
            if (line := self.lines.get(loc[:n])) is not None:
                return f"{self.source}:{line}"
        return self.source


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None, **kw: Any) -> LoadedConfig:
    """Read and validate a config file. Raises ConfigError listing every problem."""
    p = Path(path)
    text = read_text(p)
    return load_config_text(text, source=str(p), base_dir=p.resolve().parent, env=env, **kw)


def load_config_text(
    text: str,
    *,
    source: str = "<string>",
    base_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    require_upstreams: bool = True,
    require_routes: bool = False,
    all_shadows: bool = False,
) -> LoadedConfig:
    """Validate config text. `env` defaults to os.environ; pass {} to ignore STOCKADE_* overrides.
    `require_routes`: a file to serve must say `routes:` (the CLI's store-only configs need not).
    `all_shadows`: warn of every route shadowed by another's 405 (`config check`), not the first few (a load)."""
    raw = parse(text, source) if text.strip() else {}
    if raw is None or raw == {}:
        # Most often a file caught mid-write (a shell `>` truncates first): applied, it would drop every route.
        raise ConfigError([f"{source}: the file is empty (write `routes: []` for a gateway with no routes)"])
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: the top level must be a mapping, not {type(raw).__name__}"])

    lines = line_map(text)
    overrides = apply_env(raw, os.environ if env is None else env, source)
    ctx = _Reporter(source, raw, lines, overrides)
    try:
        # require_upstreams=False is a config for the ASGI middleware, which opens no listener of its own.
        config = GatewayConfig.model_validate(raw, context={"asgi": not require_upstreams})
    except ValidationError as exc:
        for err in _errors(exc):
            ctx.add(err["loc"], _message(err))
        _check_raw_stages(ctx, raw)  # report stage-config problems in the same run, not one fix later
        raise ConfigError(ctx.problems) from None

    global_plans = _plan_stages(ctx, config.stages, ("stages",), config)
    route_plans: dict[str, tuple[StagePlan, ...]] = {}
    handler_plans: dict[str, HandlerPlan] = {}
    seen: dict[str, int] = {}
    templates_ok = True
    for i, route in enumerate(config.routes):
        loc: _Loc = ("routes", i)
        if route.id in seen:
            ctx.add((*loc, "id"), f"duplicate route id (also routes[{seen[route.id]}])")
        seen[route.id] = i
        if route.handler is not None:
            if (hplan := _plan_handler(ctx, route.handler, (*loc, "handler"))) is not None:
                handler_plans[route.id] = hplan
        elif require_upstreams and route.upstream is None:
            ctx.add(
                (*loc, "upstream"),
                "a route needs an upstream URL (or a built-in `handler`); a config for the ASGI middleware, "
                "whose app is the upstream, is checked with `stockade config check --asgi`",
            )
        plans = _plan_stages(ctx, route.stages, (*loc, "stages"), config)
        route_plans[route.id] = _merge(global_plans, plans, own_auth=route.own_auth)
        _check_route_stages(ctx, loc, route.id, route_plans[route.id])
        if route.websocket and route.match.methods and "GET" not in route.match.methods:
            ctx.add((*loc, "websocket"), "websocket upgrades arrive as GET, but the route does not allow GET")
        try:
            parse_template(route.match.path)  # here, to name the route; the router below finds overlaps
        except RouteTemplateError as exc:
            ctx.add((*loc, "match", "path"), str(exc))
            templates_ok = False
    if require_routes and "routes" not in raw:  # a file cut short at a line boundary would drop every route
        ctx.add(("routes",), "no `routes:` in the file (cut short? write `routes: []` for a gateway with none)")
    warnings: list[str] = []
    try:
        if templates_ok:
            router = Router(
                [RouteSpec(r.id, r.match.path, _methods(r.match.methods), r.match.hosts()) for r in config.routes],
                fold_case=config.limits.case_insensitive_routing,
            )
            warnings += [f"{source}: {w}" for w in shadowed(router, complete=all_shadows)]
    except RouteTemplateError as exc:
        ctx.add(("routes",), str(exc))
    if ctx.problems:
        raise ConfigError(ctx.problems)
    warnings += _open_doors(ctx, config, proxy=require_upstreams)
    return LoadedConfig(
        config=config,
        source=source,
        base_dir=base_dir or Path.cwd(),
        text=text,
        global_stages=global_plans,
        route_stages=route_plans,
        route_handlers=handler_plans,
        lines=lines,
        warnings=tuple(warnings),
        overrides=tuple(sorted(overrides.values())),
        asgi=not require_upstreams,
    )


def _open_doors(ctx: _Reporter, config: GatewayConfig, *, proxy: bool) -> list[str]:
    """Valid settings that let any client past checks, worth a word at every load (as a route shadow is)."""
    out = []
    for i, cidr in enumerate(config.trusted_proxies):
        if ipaddress.ip_network(cidr, strict=False).prefixlen == 0:
            out.append(
                f"{ctx.at(('trusted_proxies', i))}: trusted_proxies {cidr!r} trusts every address: any client can "
                "set X-Forwarded-For and choose the address ip_filter and per-IP limits see; name your proxies"
            )
    host = config.listen.host
    if proxy and config.listen.tls is None and not _loopback(host):  # the ASGI middleware's server listens instead
        out.append(
            f"{ctx.at(('listen', 'host'))}: listen.host {host!r} is not loopback and listen.tls is not set: "
            "credentials and tokens cross the network in clear unless TLS ends in front of the gateway"
        )
    return out


def _loopback(host: str) -> bool:
    try:
        return host.lower() == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _methods(methods: list[str] | None) -> frozenset[str] | None:
    return frozenset(methods) if methods else None


def _merge(
    global_plans: tuple[StagePlan, ...], route_plans: tuple[StagePlan, ...], *, own_auth: bool = False
) -> tuple[StagePlan, ...]:
    """Global stages first; a route stage with the same `use` replaces the global one (route config wins).
    A route whose handler authenticates its callers (`own_auth`) takes no global authenticator or authorizer."""
    own = {p.entry.use for p in route_plans}
    skip = (Phase.AUTHENTICATE, Phase.AUTHORIZE) if own_auth else ()
    return tuple(p for p in global_plans if p.entry.use not in own and p.cls.phase not in skip) + route_plans


def _plan_handler(ctx: _Reporter, entry: HandlerEntry, loc: _Loc) -> HandlerPlan | None:
    try:
        cls = load_handler_class(entry.use)
    except UnknownHandlerError:
        ctx.add((*loc, "use"), f"unknown handler {entry.use!r}; known: {', '.join(sorted(BUILTIN_HANDLERS))}")
        return None
    try:
        config = cls.Config.model_validate(entry.config)
    except ValidationError as exc:
        for err in _errors(exc):
            ctx.add((*loc, "config", *err["loc"]), _message(err))
        return None
    return HandlerPlan(cls, config, ctx.describe(loc), ctx.at(loc))


def _plan_stages(
    ctx: _Reporter, entries: Sequence[StageEntry], loc: _Loc, gateway: GatewayConfig | None = None
) -> tuple[StagePlan, ...]:
    plans: list[StagePlan] = []
    for j, entry in enumerate(entries):
        sloc = (*loc, j)
        try:
            cls = load_stage_class(entry.use)
        except UnknownStageError:
            close = difflib.get_close_matches(entry.use, BUILTIN_STAGES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(sorted(BUILTIN_STAGES))}"
            ctx.add((*sloc, "use"), f"unknown stage {entry.use!r}{hint}")
            ctx.failed_authenticators.add(loc)  # it may be the authenticator meant
            continue
        if entry.fail_open and cls.phase not in (Phase.RATE_LIMIT, Phase.DETECT):
            ctx.add(
                (*sloc, "fail_open"), f"fail_open is allowed only for rate-limit and detect stages, not {entry.use}"
            )
        try:
            stage_config = cls.Config.model_validate(entry.config)
        except ValidationError as exc:
            for err in _errors(exc):
                ctx.add((*sloc, "config", *err["loc"]), _message(err))
            if cls.phase is Phase.AUTHENTICATE:
                ctx.failed_authenticators.add(loc)
            continue
        check = getattr(cls, "check_deployment", None)
        if gateway is not None and check is not None:
            for problem in check(stage_config, gateway):
                ctx.add((*sloc, "config"), problem)
        plans.append(StagePlan(cls, stage_config, entry, ctx.describe(sloc), ctx.at(sloc)))
    return tuple(plans)


def _check_raw_stages(ctx: _Reporter, raw: dict[str, Any]) -> None:
    """Validate stage configs straight from the raw document (used when the document itself is invalid)."""
    sources: list[tuple[object, _Loc]] = [(raw.get("stages"), ("stages",))]
    routes = raw.get("routes")
    if isinstance(routes, list):
        sources += [(r.get("stages"), ("routes", i, "stages")) for i, r in enumerate(routes) if isinstance(r, dict)]
    for entries, loc in sources:
        if not isinstance(entries, list):
            continue
        valid: list[StageEntry] = []
        for item in entries:
            try:
                valid.append(StageEntry.model_validate(item))
            except ValidationError:
                return  # already reported by the document pass; indices would no longer line up
        _plan_stages(ctx, valid, loc)


def _check_route_stages(ctx: _Reporter, loc: _Loc, route_id: str, plans: tuple[StagePlan, ...]) -> None:
    authenticators = [p for p in plans if p.cls.phase is Phase.AUTHENTICATE]
    if not authenticators:
        if {("stages",), (*loc, "stages")} & ctx.failed_authenticators:
            return  # its authenticator is there, and reported as invalid: "no authenticator" would only mislead
        ctx.add(
            (*loc, "stages"),
            "route has no authenticator; add one (e.g. `use: api_key`) or say `use: anonymous` explicitly",
        )
        return
    for p in authenticators[:-1]:
        if p.entry.use == "anonymous":
            ctx.add((*loc, "stages"), "`anonymous` must be the last authenticator: it accepts every request")


def _errors(exc: ValidationError) -> list[Any]:
    """Pydantic's errors, less the follow-on ones: a list whose one item was refused is also reported "too short
    after validation", which only repeats the item's own error."""
    errors = exc.errors()
    inner = [tuple(e["loc"]) for e in errors]
    return [
        e
        for e in errors
        if not (
            e.get("type") == "too_short"
            and any(len(loc) > len(e["loc"]) and loc[: len(e["loc"])] == tuple(e["loc"]) for loc in inner)
        )
    ]


def _message(err: Mapping[str, Any]) -> str:
    msg = str(err.get("msg", "invalid"))
    if err.get("type") == "extra_forbidden":
        return "unknown field (not allowed here)"
    if err.get("type") == "missing":
        return "field required"
    if err.get("type") in ("tuple_type", "list_type", "frozen_set_type", "set_type"):
        return "should be a list (YAML `[a, b]` or `- a` lines)"  # not pydantic's "a valid tuple"
    if err.get("type") in ("too_short", "too_long"):  # pydantic's "Tuple should have...": the user wrote a list
        return msg.replace("Tuple should", "should").replace("List should", "should")
    if err.get("type") == "string_type":  # `methods: [GET, NO]`, `id: 2024-01-01`: YAML read it as another type
        return msg + quote_hint(err.get("input"))
    return msg.removeprefix("Value error, ")


class _Reporter:
    """Turns a location tuple into `file:line: route 'id' > stage 'use' (stages[n]) > field: message`."""

    def __init__(self, source: str, raw: dict[str, Any], lines: dict[_Loc, int], overrides: dict[_Loc, str]) -> None:
        self.source = source
        self.raw = raw
        self.lines = lines
        self.overrides = overrides
        self.problems: list[str] = []
        self.failed_authenticators: set[_Loc] = set()  # stage lists with an authenticator (or unknown stage) refused

    def add(self, loc: Sequence[str | int], message: str) -> None:
        loc = tuple(loc)
        env = next((name for oloc, name in self.overrides.items() if loc[: len(oloc)] == oloc), None)
        where = self.at(loc)
        suffix = f" (from environment variable {env})" if env else ""
        self.problems.append(f"{where}: {self.describe(loc)}: {message}{suffix}")

    def at(self, loc: Sequence[str | int]) -> str:
        """`file:line` of a location (just the file when the line is unknown)."""
        line = self._line(tuple(loc))
        return f"{self.source}:{line}" if line else self.source

    def _line(self, loc: _Loc) -> int | None:
        for n in range(len(loc), 0, -1):
            line = self.lines.get(loc[:n])
            if line is not None:
                return line
        return None

    def describe(self, loc: Sequence[str | int]) -> str:
        parts: list[str] = []
        rest: list[str] = []
        node: Any = self.raw
        i = 0
        while i < len(loc):
            key = loc[i]
            nxt = loc[i + 1] if i + 1 < len(loc) else None
            if key in ("routes", "stages") and isinstance(nxt, int) and isinstance(node, dict):
                items = node.get(key)
                item = items[nxt] if isinstance(items, list) and 0 <= nxt < len(items) else None
                label = "id" if key == "routes" else "use"
                name = item.get(label) if isinstance(item, dict) else None
                name = name if isinstance(name, str) else None  # `id: 2024-01-01` is a date: not a name to show
                kind = "route" if key == "routes" else ("stage" if parts else "global stage")
                parts.append(f"{kind} {name!r} ({key}[{nxt}])" if name else f"{key}[{nxt}]")
                node = item
                rest = []
                i += 2
                continue
            rest.append(f"[{key}]" if isinstance(key, int) else str(key))
            node = node.get(key) if isinstance(node, dict) else None
            i += 1
        if rest:
            parts.append("field '" + ".".join(rest).replace(".[", "[") + "'")
        return " > ".join(parts) if parts else "top level"
