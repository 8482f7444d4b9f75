"""Admin API for brute-force lockouts: list them (viewer) and lift them (operator)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from starlette.responses import JSONResponse

from stockade.admin.app import AdminEndpoint, AdminState
from stockade.errors import StorageError
from stockade.ratelimit.backend import LimiterBackend, LimiterUnavailableError, Lockout, limits_backend
from stockade.storage import audit, shared_store

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

log = logging.getLogger("stockade.admin")


def lockout_json(lk: Lockout, now: float) -> dict[str, Any]:
    return {
        "subject": lk.subject,
        "state": "locked_out" if lk.locked else "backing_off",
        "failures": lk.failures,
        "until": datetime.fromtimestamp(lk.until, UTC).isoformat(timespec="seconds"),
        "seconds_left": max(0, round(lk.until - now)),
    }


def _problem(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"status": status, "reason": reason}, status_code=status)


def endpoints(state: AdminState) -> list[AdminEndpoint]:
    """`GET /lockouts` and `POST /lockouts/clear` with `{"subject": "ip:203.0.113.7"}` or `{"all": true}`."""

    def backend() -> LimiterBackend | None:
        services = state.services
        return limits_backend(services) if services is not None and services.config is not None else None

    async def list_lockouts(request: Request) -> Response:
        store = backend()
        if store is None:
            return _problem(503, "lockouts.unavailable")
        try:
            items = await store.lockouts()
        except LimiterUnavailableError:
            return _problem(503, "rate_limit.unavailable")
        now = state.services.clock.time()
        return JSONResponse({"lockouts": [lockout_json(lk, now) for lk in items]})

    async def clear(request: Request) -> Response:
        store = backend()
        if store is None:
            return _problem(503, "lockouts.unavailable")
        try:
            doc = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _problem(400, "request.invalid_json")
        subject = doc.get("subject") if isinstance(doc, dict) else None
        everything = isinstance(doc, dict) and doc.get("all") is True
        if (subject is None) == (not everything) or (subject is not None and not isinstance(subject, str)):
            return _problem(400, "lockouts.bad_request")  # exactly one of a subject string or `all: true`
        try:
            cleared = await store.clear(None if everything else subject)
        except LimiterUnavailableError:
            return _problem(503, "rate_limit.unavailable")
        if subject is not None and not cleared:
            return _problem(404, "lockouts.not_found")
        actor = request.scope.get("state", {}).get("admin_actor", "admin-token:unknown")
        log.warning("lockout lifted", extra={"actor": actor, "subject": subject or "*", "cleared": cleared})
        if cleared:
            try:
                await shared_store(state.services).record_admin_action(
                    audit.lockout_cleared(subject, cleared), actor=actor, at=state.services.clock.time()
                )
            except StorageError:
                log.error("lockout lifted but not recorded in the admin change log", extra={"actor": actor})
                return _problem(503, "admin.unavailable")
        return JSONResponse({"cleared": cleared})

    return [
        AdminEndpoint("/lockouts", list_lockouts, ("GET",), "viewer"),
        AdminEndpoint("/lockouts/clear", clear, ("POST",), "operator"),
    ]
