"""Checking a presented admin API token against the store (keyed hash, constant-time, expiry and revocation)."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from stockade.security import keys
from stockade.security.secrets import shared_secrets
from stockade.storage import shared_store

if TYPE_CHECKING:
    from stockade.pipeline.stage import Services
    from stockade.storage.records import AdminToken


async def authenticate(services: Services, token: str) -> AdminToken | None:
    """The usable admin token `token` is, or None (unknown, malformed, revoked and expired alike)."""
    try:
        keys.parse(token, env="admin")
    except keys.KeyFormatError:
        return None
    token_hash = keys.hash_secret(shared_secrets(services).pepper, token)
    found = await shared_store(services).find_admin_token(token_hash)
    if found is None or not hmac.compare_digest(found.token_hash, token_hash):
        return None
    return found if found.usable(services.clock.time()) else None
