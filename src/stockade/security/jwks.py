"""Key sets for JWT issuers: static keys, and JWKS documents fetched off the hot path with a TTL cache,
rate-limited refetch on an unknown `kid`, stale-if-error, same-host redirects only and a size limit."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

from stockade.clock import Clock
from stockade.security.fetch import bounded_body
from stockade.security.jwk import Jwk, JwkError, parse_jwk

log = logging.getLogger("stockade.jwks")

MAX_REDIRECTS = 3
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d{1,10})", re.IGNORECASE)


class JwksError(ValueError):
    """A JWKS document could not be fetched or parsed (the previous good set, if any, stays in use)."""


class KeySet:
    """An issuer's keys, indexed by exact `kid`. A kid is only ever a dictionary key: never a path, URL or query."""

    __slots__ = ("by_kid", "digest", "keys", "unambiguous")

    def __init__(self, keys: Iterable[Jwk], digest: str = "") -> None:
        self.keys: tuple[Jwk, ...] = tuple(keys)
        self.digest = digest
        by_kid: dict[str, Jwk] = {}
        duplicated: set[str] = set()
        for k in self.keys:
            if k.kid is None:
                continue
            if k.kid in by_kid:
                duplicated.add(k.kid)
            by_kid[k.kid] = k
        for kid in duplicated:  # an ambiguous kid matches nothing rather than whichever came last
            del by_kid[kid]
        self.by_kid = by_kid
        # A token without a kid may use the one key that can verify it, but never a key whose kid is ambiguous.
        self.unambiguous = tuple(k for k in self.keys if k.kid is None or k.kid not in duplicated)

    def find(self, kid: str | None, alg: str) -> Jwk | None:
        """The key for `kid` if it can verify `alg`. Without a kid, only an unambiguous single candidate."""
        if kid is not None:
            key = self.by_kid.get(kid)
            return key if key is not None and key.accepts(alg) else None
        candidates = [k for k in self.unambiguous if k.accepts(alg)]
        return candidates[0] if len(candidates) == 1 else None

    def __len__(self) -> int:
        return len(self.keys)


def parse_jwks(doc: object, *, allow_private: bool = False) -> list[Jwk]:
    """Parse a JWKS document. Keys we cannot use (encryption keys, unknown types, weak keys) are skipped."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
        raise JwksError("not a JWK Set (an object with a `keys` array)")
    out: list[Jwk] = []
    for i, item in enumerate(doc["keys"]):
        if not isinstance(item, Mapping):
            continue
        if item.get("use", "sig") != "sig":
            continue
        try:
            out.append(parse_jwk(item, allow_private=allow_private))
        except JwkError as exc:
            log.warning("JWKS key %d (kid %r) skipped: %s", i, item.get("kid"), exc)
    return out


class StaticKeys:
    """Keys given in config: never refreshed."""

    def __init__(self, keys: Sequence[Jwk]) -> None:
        self.keys: KeySet | None = KeySet(keys, "static")
        self.fresh_until = float("inf")

    async def current(self, now: float) -> KeySet | None:
        return self.keys

    async def refetch(self, now: float) -> bool:
        return False


@dataclass(frozen=True)
class FetchPolicy:
    """How a JWKS URL is fetched and cached. Bounds are enforced by the issuer config model."""

    timeout: float = 5.0
    default_ttl: float = 300.0
    min_ttl: float = 60.0
    max_ttl: float = 86400.0
    refetch_interval: float = 60.0  # at most one unknown-kid refetch per interval: kid spraying cannot hammer the IdP
    retry_interval: float = 30.0  # after a failed fetch, serve the stale set this long before trying again
    stale_if_error: float = 86400.0  # how long past expiry a set is still used while the IdP is unreachable
    max_bytes: int = 256 * 1024
    ca_file: str | None = None


class JwksFetcher:
    """One JWKS URL: the current set, when it expires, and a single shared in-flight fetch."""

    def __init__(self, url: str, clock: Clock, policy: FetchPolicy) -> None:
        self.url = url
        self.clock = clock
        self.policy = policy
        self.keys: KeySet | None = None
        self.fresh_until = 0.0  # wall time the current set expires
        self.stale_until = 0.0
        self.next_attempt = 0.0  # earliest time a TTL refresh may be tried again after a failure
        self.last_fetch = float("-inf")
        self.fetches = 0  # network fetches attempted (for tests and metrics)
        self._inflight: asyncio.Future[bool] | None = None

    async def current(self, now: float) -> KeySet | None:
        """The set to verify with now. Once it expires it is refreshed in the background while the old set still
        serves (stale-while-revalidate, and stale-if-error while the IdP fails): requests wait for the IdP only
        when there is no usable set at all. Waiting on every expiry held all JWT traffic, cached tokens too, for
        up to `timeout` whenever the IdP hung."""
        if now < self.fresh_until:
            return self.keys
        usable = self.keys is not None and now < self.stale_until
        if now >= self.next_attempt:
            if usable:
                self._start_refresh()
            else:
                await self._refresh()
        return self.keys if self.keys is not None and now < self.stale_until else None

    async def refetch(self, now: float) -> bool:
        """An unknown kid: fetch again, at most once per `refetch_interval`. True if the set changed."""
        if now - self.last_fetch < self.policy.refetch_interval:
            return False
        return await self._refresh()

    async def _refresh(self) -> bool:
        return await asyncio.shield(self._start_refresh())  # a cancelled request does not cancel the shared fetch

    def _start_refresh(self) -> asyncio.Future[bool]:
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch_and_store())
            self._inflight.add_done_callback(self._clear)
        return self._inflight

    def _clear(self, fut: asyncio.Future[bool]) -> None:
        if self._inflight is fut:
            self._inflight = None
        if not fut.cancelled():
            fut.exception()  # retrieved: a failure was already logged

    async def _fetch_and_store(self) -> bool:
        self.fetches += 1
        self.last_fetch = self.clock.time()
        try:
            body, max_age = await asyncio.wait_for(self._download(), self.policy.timeout)
            digest = hashlib.sha256(body).hexdigest()
            changed = self.keys is None or digest != self.keys.digest
            keys = KeySet(parse_jwks(_load_json(body)), digest) if changed else self.keys
        except Exception as exc:  # any failure means "no new set": the caller falls back or fails closed
            now = self.clock.time()
            self.next_attempt = now + self.policy.retry_interval
            log.warning(
                "JWKS fetch from %s failed: %s; %s", self.url, str(exc) or type(exc).__name__, self._fallback(now)
            )
            return False
        now = self.clock.time()
        ttl = min(
            max(max_age if max_age is not None else self.policy.default_ttl, self.policy.min_ttl), self.policy.max_ttl
        )
        self.keys = keys
        self.fresh_until = now + ttl
        self.stale_until = self.fresh_until + self.policy.stale_if_error
        self.next_attempt = 0.0
        if changed:
            log.info("JWKS from %s: %d key(s), kids %s", self.url, len(keys or ()), sorted(keys.by_kid if keys else {}))
        return changed

    def _fallback(self, now: float) -> str:
        if self.keys is not None and now < self.stale_until:
            return f"keeping the previous key set for up to {self.stale_until - now:.0f}s"
        return "no usable key set"

    async def _download(self) -> tuple[bytes, int | None]:
        import httpx  # the control-plane HTTP client: imported only when a JWKS URL is configured

        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=self.policy.ca_file)
        url = self.url
        origin = _origin(url)
        async with httpx.AsyncClient(
            timeout=self.policy.timeout, follow_redirects=False, trust_env=False, verify=verify
        ) as client:
            for _ in range(MAX_REDIRECTS + 1):
                headers = {"accept": "application/jwk-set+json, application/json"}
                async with client.stream("GET", url, headers=headers) as resp:
                    if resp.is_redirect:
                        target = urljoin(url, resp.headers.get("location", ""))
                        if _origin(target) != origin:
                            raise JwksError(f"redirect to another origin refused: {_origin(target)}")
                        url = target
                        continue
                    if resp.status_code != 200:
                        raise JwksError(f"HTTP {resp.status_code}")
                    body = await bounded_body(resp, self.policy.max_bytes)
                    if body is None:
                        raise JwksError(f"document larger than {self.policy.max_bytes} bytes")
                    return body, _max_age(resp.headers.get("cache-control", ""))
        raise JwksError(f"more than {MAX_REDIRECTS} redirects")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def _max_age(cache_control: str) -> int | None:
    lowered = cache_control.lower()
    if "no-store" in lowered or "no-cache" in lowered:
        return 0  # clamped up to min_ttl: we never refetch per request
    m = _MAX_AGE.search(cache_control)
    return int(m.group(1)) if m else None


def _load_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise JwksError("document is not JSON") from None


def fetcher_for(shared: dict[str, Any], url: str, clock: Clock, policy: FetchPolicy) -> JwksFetcher:
    """One fetcher per (URL, policy) per process, shared by every route and kept across reloads."""
    registry: dict[tuple[str, FetchPolicy], JwksFetcher] = shared.setdefault("jwks.fetchers", {})
    fetcher = registry.get((url, policy))
    if fetcher is None:
        fetcher = registry[(url, policy)] = JwksFetcher(url, clock, policy)
    return fetcher
