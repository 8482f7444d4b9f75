"""What a stage returns: Continue, Skip or Deny. Stages return values; only the runner acts on them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from stockade.pipeline.principal import Principal


@dataclass(frozen=True, slots=True)
class Finding:
    """Something a detector saw. Findings never deny by themselves; ACT stages turn them into decisions."""

    rule: str
    severity: str = "medium"  # low | medium | high | critical
    detail: str = ""  # for operators; never a credential


class Continue:
    """Go on to the next stage, optionally editing the upstream request or establishing the principal."""

    __slots__ = ("findings", "principal", "removal", "remove_headers", "set_headers", "set_query")

    def __init__(
        self,
        *,
        set_headers: Mapping[str, str] | None = None,
        remove_headers: Sequence[str] | None = None,
        principal: Principal | None = None,
        findings: Sequence[Finding] | None = None,
        set_query: str | None = None,
    ) -> None:
        self.set_headers = set_headers
        self.set_query = set_query  # replaces the raw query string sent upstream (e.g. a credential removed)
        self.remove_headers = remove_headers
        # Lower-cased once here: a stage that reuses its verdict (most do) pays for this once, not per request.
        self.removal = frozenset(n.lower() for n in remove_headers) if remove_headers else None
        self.principal = principal
        self.findings = findings

    def __repr__(self) -> str:
        return f"Continue(principal={self.principal!r}, findings={self.findings!r})"


class Skip:
    """The stage does not apply (an authenticator that found no credential of its kind)."""

    __slots__ = ("why",)

    def __init__(self, why: str = "") -> None:
        self.why = why

    def __repr__(self) -> str:
        return f"Skip({self.why!r})"


class Deny:
    """Stop and answer the client. `reason` is a stable code; `detail` goes to the decision log only.

    `extra` adds members to the problem document (e.g. a validator's `errors` list of JSON pointers and
    rule names); it is client-facing, so it must never carry submitted values, credentials or internals.
    """

    __slots__ = ("detail", "extra", "headers", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: str,
        *,
        headers: Mapping[str, str] | None = None,
        detail: str = "",
        extra: Mapping[str, object] | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.detail = detail
        self.extra = extra

    def __repr__(self) -> str:
        return f"Deny({self.status}, {self.reason!r})"


Verdict = Continue | Skip | Deny

CONTINUE: Final = Continue()
