"""The Stage extension point, its config base and the optional response and completion hooks."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from stockade.scalars import no_bool_for_number

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from stockade.clock import Clock
    from stockade.config.models import GatewayConfig
    from stockade.observability.metrics import Metrics
    from stockade.pipeline.context import RequestContext
    from stockade.pipeline.phase import Phase
    from stockade.pipeline.response import Outcome, Response
    from stockade.pipeline.verdict import Continue, Deny, Skip

T = TypeVar("T")


class StageConfig(BaseModel):
    """Base for every stage's config: closed (unknown fields are errors), immutable, validated once at load."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, v: Any, info: ValidationInfo) -> Any:
        return no_bool_for_number(cls, v, info)


class Stage(Protocol):
    """One security check. `id` is the `use:` name in config and the label in logs and metrics.

    Built once per route at load as `cls(config, env)`. Optional members, found by name:
    `challenge: str` (an authenticator's WWW-Authenticate challenge), `max_body_bytes: int` (a body limit the
    fronts enforce while streaming), `on_response` / `on_complete` (the hooks below), `head_edits` (a fast form of
    `on_response`, below), `checks_requests = False` (the stage only hooks responses: the runner does not call its
    `check`), `needs_response_body`, `after_authenticate` (the guard below), `credential` (an authenticator's,
    below), and the classmethod `check_deployment(config, gateway_config) -> list[str]`, whose messages become
    config errors at this stage's location (e.g. a memory-backed limiter under several workers).
    """

    id: ClassVar[str]
    phase: ClassVar[Phase]
    Config: ClassVar[type[StageConfig]]

    def check(self, ctx: RequestContext) -> Continue | Skip | Deny | Coroutine[Any, Any, Continue | Skip | Deny]:
        """The verdict on this request. A check that never waits for I/O is a plain `def` returning it; one that
        may is an `async def` (or a `def` that returns a coroutine only when it has to wait, e.g. on a cache miss).
        The runner drives a coroutine eagerly, but a finished one still costs a coroutine and a StopIteration."""
        ...


class ResponseHook(Protocol):
    """Optional: sees the upstream response head (and body if `needs_response_body`), in reverse stage order."""

    def on_response(self, ctx: RequestContext, response: Response) -> None: ...


class HeadEdits(Protocol):
    """Optional, next to `on_response`: the header edits `on_response` would make to a response with this raw
    head, as (names removed, fields added) - `Response.removed` and `Response.added` after the hook ran - without
    building a Response. The proxy uses it when the stage is its route's only response hook and the head is
    forwarded with surgical edits; it must agree with `on_response` exactly."""

    def head_edits(
        self, ctx: RequestContext, raw_head: bytes
    ) -> tuple[frozenset[str], tuple[tuple[str, str], ...]]: ...


class AuthGuard(Protocol):
    """Optional: runs when an authenticator recognised a credential (returned a principal or denied), before
    that outcome takes effect; a Deny replaces it. `ctx.state[AUTH_IDENTITY]` names the presented identity.
    Because the answer does not depend on the credential's validity, a refused identity learns nothing."""

    async def after_authenticate(self, ctx: RequestContext) -> Deny | None: ...


class CredentialSource(Protocol):
    """Optional, on authenticators whose credential travels in the request (and so on to the upstream): where
    this request carries one this stage would check (e.g. "authorization", "x-api-key", "query:api_key"), or
    None. When an earlier authenticator won, a credential that only a later one would have checked makes the
    request ambiguous (400 `auth.ambiguous_credentials`): never forward a credential nobody verified."""

    def credential(self, ctx: RequestContext) -> str | None: ...


class CompletionHook(Protocol):
    """Optional: called after the response was sent (or the connection failed). Must not block."""

    def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None: ...


@dataclass
class Services:
    """Process-wide resources handed to stages at construction, shared across routes and reloads.

    Feature modules keep their backends in `shared` under their own key (e.g. the key store, the limiter's
    counter backend), created on first use from `config`, so the core never imports optional backends.
    """

    clock: Clock
    workers: int = 1
    config: GatewayConfig | None = None  # the config being built; set by build_runtime
    dry_run: bool = False  # `config check`: build everything to validate it, but touch no store or secret file
    base_dir: Path | None = None  # the config file's directory (relative store/secret paths); set by build_runtime
    shared: dict[str, Any] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=lambda: _new_metrics())  # this process's counters (Metrics.event)
    closed: bool = False
    # The backends the config being built relies on ("store", "limits"), each True if some user fails closed
    # without it: what /readyz checks. build_runtime starts each build with an empty one and keeps it.
    needs: dict[str, bool] = field(default_factory=dict)

    def need(self, backend: str, *, required: bool = True) -> None:
        """Record that the config being built uses `backend` (and fails closed without it, if `required`)."""
        self.needs[backend] = self.needs.get(backend, False) or required

    def over_store(self, key: str, kind: type[T], build: Callable[[], T]) -> T:
        """The process's `kind` object over the store (`shared[key]`), built on first use. The store is recorded
        as needed on every call, the cached path too: /readyz checks what the config being built uses."""
        self.need("store")
        found = self.shared.get(key)
        if isinstance(found, kind):
            return found
        made = self.shared[key] = build()
        return made

    async def close(self) -> None:
        """Release what features keep in `shared` (flush buffers, stop background tasks, close stores): every
        value with an async `aclose()` is closed, newest first, once, when the process stops serving."""
        if self.closed:
            return
        self.closed = True
        for value in reversed(list(self.shared.values())):
            aclose = getattr(value, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    logging.getLogger("stockade").exception("closing %s failed", type(value).__name__)


def _new_metrics() -> Metrics:
    from stockade.observability.metrics import Metrics

    return Metrics()


@dataclass(frozen=True)
class StageEnv:
    """What a stage is given when it is built: where it runs and the shared services."""

    route_id: str  # "*" for a stage declared at top level and shared by every route
    base_dir: Path  # the config file's directory: relative paths in stage config resolve against it
    services: Services
    fail_open: bool = False  # the entry's explicit `fail_open` (RATE_LIMIT/DETECT only): a stage that detects its
    # own backend outage lets the request through instead of answering 503 (the runner covers exceptions)

    @property
    def clock(self) -> Clock:
        return self.services.clock
