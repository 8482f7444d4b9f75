"""The root path the app is mounted at: configuration, checked against every scope, taken off before routing.

Servers disagree on what `path` holds under a root path: uvicorn puts the root in it, hypercorn, daphne and granian
do not. Starlette, FastAPI and Django route on what follows the root either way (Starlette's `get_route_path`:
the root is taken off only as whole segments), so that is what the routes match, and one config protects the app
under any of them. The root itself is never taken from the scope: daphne sets it from a request header.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from stockade.pipeline.verdict import Deny

if TYPE_CHECKING:
    from stockade.asgi.scope import Scope
    from stockade.config.models import GatewayConfig
    from stockade.pipeline.context import RequestContext

_NO_MOUNT = ("", "")
_WRAP_ATTRIBUTES = ("app", "application", "http", "default")
_WRAP_DEPTH = 8  # wrappers followed inward from the app passed in
_WRAP_COUNT = 32


class RootPath:
    """`path` is the configured root ('' for none). `accepted` are the scope root paths served: the configured one,
    and also none when the app sets that same root on every scope itself (FastAPI's `root_path`)."""

    __slots__ = ("_depth", "_under", "accepted", "path")

    def __init__(self, path: str, app: object) -> None:
        path = trimmed(path)
        check_root_path(path)
        layers = wrapped_apps(app)
        if path and any(_made_by(layer, "quart") for layer in layers):
            # Quart routes on what follows the root path's first occurrence anywhere in `path` (`/x/api/admin` under
            # `/api` is its `/admin`): no route table can follow that.
            raise ValueError("StockadeMiddleware: Quart does not take a root path off as a prefix; serve it with none")
        own, setting = _own_root(layers)
        if own != "/" and own != trimmed(own):
            # The app sets it on every scope after us, and Starlette keeps '/api/' on '/api/docs': it would route
            # the whole path where the middleware judged what follows '/api'.
            raise ValueError(f"StockadeMiddleware: the app's own root path ({setting}={own!r}) must not end in '/'")
        own = trimmed(own)  # '/': none (Starlette keeps it on every normalised path)
        if own and own != path:
            raise ValueError(
                f"StockadeMiddleware: the app routes under its own root path ({setting}={own!r}), so the middleware"
                f" would judge paths the app reads another way; pass root_path={own!r}"
            )
        self.path = path
        self.accepted: tuple[str, ...] = (path, "") if own else (path,)
        self._under = path + "/"
        self._depth = path.count("/")

    def check_routes(self, config: GatewayConfig, *, allowed: bool = False) -> None:
        """Refuse routes written with the root in front (`/api/admin/**` under `/api`): routes match what follows
        the root, so such a guard matches only paths that repeat the root, and the requests it was written for
        fall to another route. Configs written for earlier versions, which matched the whole path under a `Mount`,
        look like that. `allowed`: the app's own paths do start with the root (`/api/api/status`)."""
        root = self.path
        if not root or allowed:
            return
        fold = config.limits.case_insensitive_routing
        under = [
            (route.id, route.match.path)
            for route in config.routes
            if _starts_with_root(route.match.path.lower() if fold else route.match.path, root.lower() if fold else root)
        ]
        if under:
            named = ", ".join(f"{rid!r} ({template})" for rid, template in under)
            raise ValueError(
                f"StockadeMiddleware: with root_path={root!r} routes match the path after the root, so route(s)"
                f" {named} match only requests that repeat it ({root}{root}/...); drop the {root!r} prefix from"
                " their paths, or pass root_prefixed_routes=True if the app's own paths start with it"
                " (see docs/asgi.md)"
            )

    def check(self, scope: Scope) -> Deny | None:
        """A 400 for a scope whose root path is not the configured one (fail closed: it re-roots the app)."""
        root = trimmed(scope.get("root_path") or "")
        if root in self.accepted:
            return None
        detail = (
            f"unexpected root path {root!r} (StockadeMiddleware root_path={self.path!r});"
            " routes match the path after the root"
        )
        return Deny(400, "http.bad_path", detail=detail)

    def take_off(self, scope: Scope, ctx: RequestContext) -> tuple[str, str] | None:
        """Leave on `ctx` the path the app routes on; return the mount point taken off (decoded, encoded) for the
        app's scope, or None if the path climbed out of the root it was sent under (`/api/../admin`)."""
        path = ctx.path
        root = self.path
        if path == root:
            mount = (root, ctx.raw_path)
            ctx.path = ctx.raw_path = "/"
            return mount
        if path.startswith(self._under):
            raw = ctx.raw_path
            cut = _segments_end(raw, self._depth)
            ctx.path = path[len(root) :]
            ctx.raw_path = raw[cut:]
            return root, raw[:cut]
        sent = scope.get("path") or ""
        if sent == root or sent.startswith(self._under):
            return None
        return _NO_MOUNT


def _starts_with_root(template: str, root: str) -> bool:
    return template == root or template.startswith(root + "/")


def trimmed(root: str) -> str:
    """A root path without its trailing '/' ('/' is none): how the app is handed it, so that Starlette, which takes a
    root off only when a '/' follows it, routes on what follows `/api` for `/api/` too (`uvicorn --root-path /api/`
    sends '/api//docs', routed as '/docs'; a path normalised to '/api/docs' would be routed whole under '/api/')."""
    return root[:-1] if root.endswith("/") and not root.endswith("//") else root


def _segments_end(raw: str, depth: int) -> int:
    """Where the first `depth` segments of an encoded path end (its segments are the decoded path's, one for one:
    an encoded '/' never gets this far)."""
    pos = 0
    for _ in range(depth):
        pos = raw.find("/", pos + 1)
    return pos


def check_root_path(path: str) -> None:
    """A root path must be one a normalised path can start with: '' or '/a/b', no empty, '.' or '..' segments."""
    if path == "":
        return
    segments = path.split("/")
    if (
        segments[0] != ""
        or any(s in ("", ".", "..") for s in segments[1:])
        or any(c in path for c in "?#\\")
        or not path.isprintable()
    ):
        raise ValueError(f"StockadeMiddleware: root_path {path!r} must be '' or like '/api' (no empty or dot segments)")


def wrapped_apps(app: object) -> list[object]:
    """The app and the apps it wraps, as far as plain attributes tell (`.app` of Starlette-style middleware,
    `.application`, `.http`, `.default`, the values of Channels' `application_mapping`): a few levels, read from
    instance dictionaries only, so no property or `__getattr__` of the app's runs. Best effort: an app wrapped
    another way is not seen, which is why `root_path=` is configuration."""
    found: list[object] = []
    seen: set[int] = set()
    level = [app]
    for _ in range(_WRAP_DEPTH):
        below: list[object] = []
        for layer in level:
            if id(layer) in seen or len(found) >= _WRAP_COUNT:
                continue
            seen.add(id(layer))
            found.append(layer)
            attributes = _instance_dict(layer)
            below.extend(v for name in _WRAP_ATTRIBUTES if (v := attributes.get(name)) is not None)
            mapping = attributes.get("application_mapping")
            if isinstance(mapping, dict):
                below.extend(mapping.values())
        level = below
    return found


def _instance_dict(obj: object) -> dict[str, object]:
    try:
        attributes = object.__getattribute__(obj, "__dict__")
    except AttributeError:
        return {}
    return attributes if isinstance(attributes, dict) else {}


def _own_root(layers: list[object]) -> tuple[str, str]:
    """The own root path the wrapped apps set, if any; two different ones are refused (which would route?)."""
    roots = {found for layer in layers if (found := app_root_path(layer))[0]}
    if len(roots) > 1:
        named = ", ".join(f"{setting}={own!r}" for own, setting in sorted(roots))
        raise ValueError(f"StockadeMiddleware: the wrapped apps set different root paths of their own ({named})")
    return roots.pop() if roots else ("", "")


def app_root_path(app: object) -> tuple[str, str]:
    """The root path an app routes under whatever the server sent, and the setting that says so: FastAPI's
    `root_path` (put into every scope), Django's FORCE_SCRIPT_NAME (its script prefix). '' if none is known."""
    if _made_by(app, "fastapi"):  # Flask-style apps (Quart) have a `root_path` too: their source directory
        own = getattr(app, "root_path", None)
        if isinstance(own, str) and own:
            return own, f"{type(app).__name__}.root_path"
    if _made_by(app, "django"):
        conf = sys.modules.get("django.conf")  # loaded by whoever built a Django handler
        script = getattr(getattr(conf, "settings", None), "FORCE_SCRIPT_NAME", None)
        if isinstance(script, str) and script:
            return script, "FORCE_SCRIPT_NAME"
    return "", ""


def _made_by(app: object, package: str) -> bool:
    """Whether the app is an instance of a class from `package` (or of a subclass of one)."""
    return any(cls.__module__.partition(".")[0] == package for cls in type(app).__mro__)
