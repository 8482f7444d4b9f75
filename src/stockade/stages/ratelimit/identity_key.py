"""The key brute_force counts presented identities under: on Redis one random key every process shares through Redis
itself; on `memory://` the process's own.

Identities (what jwt, introspection, mtls and api_key record under AUTH_IDENTITY) are counted as
`keys.identity_subject(key, identity)`, so whoever can list lockouts cannot confirm a guessed `sub` or certificate
name. Every node sharing a Redis must count an identity under one key, or N nodes give a guesser N allowances; the
key is not derived from the pepper (a JWT- or mTLS-only deployment never needed one) but recorded in Redis: the first
process records a fresh random key (SET NX, `LimiterBackend.agree`) and every process uses the recorded one. It is
read again every `RECHECK` seconds, so a Redis that lost its data (or whose key an operator deleted to re-key)
converges: the first process to read it again records a new one, the others take it on their next read. Whoever
can read Redis can read the key (unlike the username key, keyed with the pepper): the trade-off is documented in
docs/rate-limiting.md.
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from stockade.ratelimit.backend import LimiterUnavailableError, limits_backend
from stockade.stages.ratelimit.username_key import RECHECK

if TYPE_CHECKING:
    from stockade.pipeline.stage import Services
    from stockade.ratelimit.backend import LimiterBackend

log = logging.getLogger("stockade.ratelimit")

SHARED_KEY = "brute_force.identity_key"
NAME = "identity-key"  # `<prefix>{bf}.identity-key`: in the lockouts' slot, outside their SCAN pattern
KEY_BYTES = 32


class IdentityKey:
    """The process's identity key (one for every route, kept across reloads of the same `limits_storage`)."""

    def __init__(self, url: str, services: Services) -> None:
        self.url = url
        self.own = urlsplit(url).scheme == "memory"  # this process's alone: there is nobody to share it with
        self._services = services
        self._key = secrets.token_bytes(KEY_BYTES) if self.own else None
        self._read_until = float("-inf")  # monotonic

    async def current(self, backend: LimiterBackend) -> bytes:
        """The key to count identities under. Raises LimiterUnavailableError if the backend cannot say (the
        caller fails closed): a key of this process's own would give a guesser another allowance."""
        clock = self._services.clock
        if self._key is not None and (self.own or clock.monotonic() < self._read_until):
            return self._key
        # A fresh candidate on every read, not the key in use: a deleted record then means a new key.
        offered = secrets.token_bytes(KEY_BYTES).hex()
        recorded = await backend.agree(NAME, offered) or offered
        try:
            key = bytes.fromhex(recorded)
        except ValueError:
            key = b""
        if len(key) != KEY_BYTES:
            from stockade.ratelimit.redis import CHECK_TAG  # only a Redis backend records a key

            where = f"{backend.prefix}{CHECK_TAG}{NAME}"
            raise LimiterUnavailableError(f"{where} holds no {KEY_BYTES}-byte hex key: delete it to re-key")
        self._key = key
        self._read_until = clock.monotonic() + RECHECK
        return key


def identity_key(services: Services) -> IdentityKey:
    """The process's IdentityKey, made on first use (nothing is read until a request or `fetch_identity_key` needs
    it, so a build - `config check` - contacts no backend)."""
    url = services.config.limits_storage if services.config is not None else "memory://"
    found = services.shared.get(SHARED_KEY)
    if isinstance(found, IdentityKey) and found.url == url:
        return found
    made = services.shared[SHARED_KEY] = IdentityKey(url, services)
    return made


async def fetch_identity_key(services: Services) -> None:
    """At start-up, if a route counts identities: read (or record) the shared key now rather than on the first
    request. A backend that cannot be reached now is no reason to refuse to start: requests presenting an identity
    are refused (503) until it answers."""
    found = services.shared.get(SHARED_KEY)
    if services.dry_run or not isinstance(found, IdentityKey) or found.own:
        return
    try:
        await found.current(limits_backend(services))
    except LimiterUnavailableError as exc:
        log.warning(
            "brute_force: presented identities' key not read from the limits backend, which is unreachable "
            "(requests presenting one are refused until it answers): %s",
            exc,
        )
