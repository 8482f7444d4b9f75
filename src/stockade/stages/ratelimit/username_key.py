"""The key login usernames are counted under: with Redis, `keys.username_key(pepper)`, the pepper loaded alone
(never a KEK); with `memory://`, a random key of the process's own."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from stockade.security import keys
from stockade.security.secrets import shared_pepper

if TYPE_CHECKING:
    from stockade.pipeline.stage import Services

SHARED_KEY = "brute_force.username_key"


class UsernameKey:
    """The process's username key (one for every route, kept across reloads)."""

    def __init__(self, key: bytes, services: Services, *, own: bool = False) -> None:
        self.key = key
        self.own = own  # this process's alone (a memory:// backend): there is nobody to agree with
        self._services = services


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
