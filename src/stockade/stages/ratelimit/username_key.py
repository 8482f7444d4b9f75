"""The key login usernames are counted under, and the check that every process sharing a limits backend uses the
same one.

With Redis, usernames are counted as `keys.username_hash(username_key(pepper), name)` (with `memory://`, under a
random key of the process's own). Nodes sharing one Redis but not one pepper would count the same username under
different subjects, so N such nodes give a guesser N times the allowance, silently. The first process records
`keys.username_key_check` (which reveals nothing of the key) in the backend; a process whose check differs
refuses: at start-up as a config error (exit 2), and on the request path, where the check is read again every
`RECHECK` seconds (the record may have been lost with Redis's data, and a node with another pepper may have
recorded its own since), with 503 `brute_force.unavailable`.
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from stockade.errors import ConfigError
from stockade.ratelimit.backend import LimiterUnavailableError, limits_backend
from stockade.security import keys
from stockade.security.secrets import PEPPER_ENV, shared_pepper
from stockade.storage import mask_url

if TYPE_CHECKING:
    from stockade.pipeline.stage import Services
    from stockade.ratelimit.backend import LimiterBackend

log = logging.getLogger("stockade.ratelimit")

SHARED_KEY = "brute_force.username_key"
CHECK_NAME = "username-key-check"
RECHECK = 60.0  # seconds between two reads of the recorded check on the request path


class KeyMismatchError(LimiterUnavailableError):
    """The limits backend holds another process's username-key check: this one's pepper differs."""

    code = "brute_force.pepper_mismatch"


class UsernameKey:
    """The process's username key (one for every route, kept across reloads) and its agreement with the backend."""

    def __init__(self, key: bytes, services: Services, *, own: bool = False) -> None:
        self.key = key
        self.own = own  # this process's alone (a memory:// backend): there is nobody to agree with
        self.check = keys.username_key_check(key)
        self._services = services
        self._agreed_until = float("-inf")  # monotonic
        self.reported = False  # the mismatch was logged (once, not on every refused login)

    async def verify(self, backend: LimiterBackend) -> None:
        """Raises KeyMismatchError if another process recorded another check, LimiterUnavailableError if the
        backend cannot say. Reads the backend at most once per `RECHECK` seconds while they agree."""
        clock = self._services.clock
        if self.own or clock.monotonic() < self._agreed_until:
            return
        if await backend.agree(CHECK_NAME, self.check) is not None:
            raise KeyMismatchError(mismatch_message(backend))
        self._agreed_until = clock.monotonic() + RECHECK
        self.reported = False


def mismatch_message(backend: LimiterBackend) -> str:
    from stockade.ratelimit.redis import CHECK_TAG  # only a Redis backend can disagree

    return (
        f"login usernames are counted under another key than the other processes sharing limits_storage "
        f"{mask_url(backend.url)!r} count them under (a guesser would get each node's allowance): this process's "
        f"pepper differs from theirs; give every node the same pepper (secrets.pepper_file or {PEPPER_ENV}), or, "
        f"after changing it on every node, delete {backend.prefix}{CHECK_TAG}{CHECK_NAME} (docs/rate-limiting.md)"
    )


def username_key(services: Services, user: str) -> UsernameKey:
    """The process's UsernameKey, made on first use. With `limits_storage: memory://` the counts live and die with
    this process, so a random key of its own does (nothing to load, nothing another node must agree with: a
    read-only config directory or `secrets.generate: false` is no obstacle). With Redis every node must count a
    username under one key: derived from the pepper, loaded alone (no KEK). Raises SecretsError."""
    found = services.shared.get(SHARED_KEY)
    url = services.config.limits_storage if services.config is not None else "memory://"
    if urlsplit(url).scheme == "memory":
        if isinstance(found, UsernameKey) and found.own:
            return found
        made = services.shared[SHARED_KEY] = UsernameKey(secrets.token_bytes(32), services, own=True)
        return made
    key = keys.username_key(shared_pepper(services, user))
    if isinstance(found, UsernameKey) and found.key == key:
        return found
    made = services.shared[SHARED_KEY] = UsernameKey(key, services)
    return made


async def verify_username_key(services: Services) -> None:
    """At start-up, if a route counts login usernames: refuse (ConfigError) a pepper other than the one the shared
    limits backend was first used with. A backend that cannot be reached now is no reason to refuse to start: the
    request path checks again (and fails closed meanwhile)."""
    found = services.shared.get(SHARED_KEY)
    if services.dry_run or not isinstance(found, UsernameKey) or found.own:
        return
    try:
        await found.verify(limits_backend(services))
    except KeyMismatchError as exc:
        raise ConfigError([f"brute_force: {exc}"]) from None
    except LimiterUnavailableError as exc:
        log.warning("login usernames' key not checked against the limits backend, which is unreachable: %s", exc)
