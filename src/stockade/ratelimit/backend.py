"""The limiter backend interface, chosen by `limits_storage` URL and shared by every stage of a process.

A request's limits go to the backend as one batch of hits and are decided atomically: either every limit
admits the request and all of them count it, or none counts it (a request refused by its daily quota does
not use up its per-second allowance). Brute-force lockouts live in the same backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from stockade.errors import StorageError
from stockade.storage import mask_url

if TYPE_CHECKING:
    from stockade.pipeline.stage import Services
    from stockade.ratelimit.leases import HeldSlots

# Algorithms, as passed to the backends (and to the Redis script) in a hit's first field. Times are integer
# microseconds everywhere, so Python and Lua (whose numbers are doubles, exact below 2**53) compute the same.
GCRA = "g"  # p1 = emission interval, p2 = tolerance (burst x interval)
WINDOW = "w"  # sliding-window counter: p1 = window, p2 = limit
QUOTA = "q"  # calendar quota: p1 = period end (epoch), p2 = limit; the key names the period
CONCURRENCY = "c"  # in flight: p1 = lease (a slot never released expires after it), p2 = limit

US = 1_000_000
Hit = tuple[str, str, int, int, int]  # (algorithm, key, p1, p2, cost)
# Per hit: (allowed, remaining, reset, retry-after), the last two in microseconds. Reset: until fully restored.
HitResult = tuple[bool, int, int, int]
Decision = tuple[bool, list[HitResult]]
CONCURRENCY_RETRY = US  # nobody knows when a request in flight ends: suggest trying again in a second

SHARED_KEY = "ratelimit.backend"
REDIS_SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster")
SCHEMES = ("memory", *REDIS_SCHEMES)


class LimiterUnavailableError(StorageError):
    """The limits backend could not be reached or did not answer in time."""

    code = "rate_limit.unavailable"


@dataclass(frozen=True, slots=True)
class LockoutRule:
    """How failures of one kind of subject (client IP, identity) turn into back-off and lockout."""

    free_failures: int  # failures tolerated before back-off starts
    lockout_after: int  # failures that lock the subject out
    backoff_base: float  # seconds of back-off after the first failure past the free ones; doubles each time
    backoff_max: float
    lockout_seconds: float
    window: float  # failures are forgotten this long after the last one


@dataclass(frozen=True, slots=True)
class Lockout:
    """A subject that is backing off or locked out (`until` is epoch seconds)."""

    subject: str  # "ip:203.0.113.7", "id:<hash>", "user:<hash>" - never a secret
    failures: int
    until: float
    locked: bool  # True: locked out; False: backing off


class LimiterBackend(Protocol):
    """Counters for rate limits and lockouts. `sync` backends (memory) decide without awaiting I/O.

    `blocked` answers, per subject, (seconds still refused, locked out rather than backing off, failures).
    """

    sync: bool
    url: str  # the `limits_storage` it was made from
    leases: HeldSlots  # concurrency slots this process holds, renewed while in use (ratelimit/leases.py)
    prefix: str  # prepended to every key (Redis: `?prefix=` of the URL, so tenants and tests stay apart)

    def hit(self, hits: Sequence[Hit], token: str) -> Decision: ...
    async def hit_async(self, hits: Sequence[Hit], token: str) -> Decision: ...
    def release(self, keys: Sequence[str], token: str) -> None: ...
    async def blocked(self, subjects: Sequence[str]) -> list[tuple[float, bool, int]]: ...
    async def failed(self, subjects: Sequence[tuple[str, LockoutRule]]) -> list[Lockout | None]: ...
    async def succeeded(self, subjects: Sequence[str]) -> None: ...
    async def lockouts(self) -> list[Lockout]: ...
    async def clear(self, subject: str | None) -> int: ...
    async def agree(self, name: str, value: str) -> str | None: ...  # see RedisBackend.agree
    async def aclose(self) -> None: ...
    async def ping(self) -> None: ...  # raises LimiterUnavailableError when the backend is unreachable


def storage_problems(url: str, workers: int) -> list[str]:
    """Config problems with a `limits_storage` URL for a deployment of `workers` processes."""
    try:
        scheme = urlsplit(url).scheme
    except ValueError as exc:  # an unclosed `[` of an IPv6 host
        return [f"limits_storage {mask_url(url)!r}: {exc}"]
    if scheme not in SCHEMES:
        return [
            f"limits_storage {mask_url(url)!r}: unsupported scheme {scheme!r}; use memory://, redis://host:port/db "
            "or redis+cluster://host:port,host:port"
        ]
    if scheme in REDIS_SCHEMES:
        from stockade.ratelimit.resp import RedisUrl

        try:
            RedisUrl.parse(url)
        except ValueError as exc:
            return [f"limits_storage: {exc}"]
    if scheme == "memory" and workers > 1:
        return [
            f"limits_storage is memory:// but the gateway runs {workers} workers: each would count on its own and "
            f"a limit would be silently split {workers} ways; use redis://host:port/db (or one worker)"
        ]
    return []


def backend_from_url(url: str, services: Services) -> LimiterBackend:
    """A new backend for `url` (memory://, redis[s]:// or redis[s]+cluster://). Raises ValueError for a bad URL."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from stockade.ratelimit.memory import MemoryBackend

        return MemoryBackend(services.clock)
    if scheme in REDIS_SCHEMES:
        from stockade.ratelimit.redis import RedisBackend

        return RedisBackend(url, services.clock, services.metrics)
    raise ValueError(f"limits_storage {mask_url(url)!r}: unsupported scheme {scheme!r}")


def limits_backend(services: Services, *, required: bool = True) -> LimiterBackend:
    """The process's one backend, created on first use from `limits_storage` (every route shares it).
    `required`: the caller fails closed without it (not a `fail_open` stage), so /readyz depends on it."""
    services.need("limits", required=required)
    url = services.config.limits_storage if services.config is not None else "memory://"
    current: LimiterBackend | None = services.shared.get(SHARED_KEY)
    if current is not None and current.url == url:  # a reload cannot change the URL; a test harness may
        return current
    backend = backend_from_url(url, services)
    services.shared[SHARED_KEY] = backend  # Services.close() calls its aclose() when the process stops
    return backend
