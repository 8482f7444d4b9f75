"""The upstream response as response hooks see it, and the outcome completion hooks see."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_LOOKUPS: Final[dict[str, re.Pattern[bytes]]] = {}


def _lookup_pattern(name: str) -> re.Pattern[bytes]:
    """A compiled search for one header line in a raw head (hooks ask for the same few names)."""
    pattern = _LOOKUPS.get(name)
    if pattern is None:
        pattern = re.compile(rb"\r\n" + re.escape(name.encode("latin-1")) + rb"[ \t]*:[ \t]*([^\r\n]*)", re.I)
        if len(_LOOKUPS) < 256:
            _LOOKUPS[name] = pattern
    return pattern


def head_fields(raw_head: bytes) -> list[tuple[str, str]]:
    """The header fields of a raw head, parsed: (lower-case name, stripped value), in order."""
    fields = []
    for line in raw_head.split(b"\r\n")[1:]:
        if line:
            name, _, value = line.partition(b":")
            fields.append((name.decode("latin-1").strip().lower(), value.decode("latin-1").strip()))
    return fields


def has_raw_header(raw_head: bytes, name: str) -> bool:
    """Whether a raw head has a line for the (lower-case) header `name`: the test `Response.get` makes on it."""
    return _lookup_pattern(name).search(raw_head) is not None


class Response:
    """Status, headers and (when a hook asked for it) the body; edits are recorded, not applied in place.

    The proxy builds it from the raw upstream head and forwards that head verbatim unless an edit was made;
    header parsing happens only if a hook reads a header.
    """

    __slots__ = (
        "_body",
        "_headers",
        "_raw_head",
        "added",
        "rejected_by",
        "rejection",
        "removed",
        "status",
    )

    def __init__(
        self,
        status: int,
        *,
        raw_head: bytes | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
    ) -> None:
        self.status = status
        self._raw_head = raw_head
        self._headers = headers
        self._body = body
        self.removed: set[str] = set()
        self.added: list[tuple[str, str]] = []
        self.rejection: tuple[int, str, str] | None = None
        self.rejected_by = ""

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Headers as received from upstream (names lower-cased), before edits."""
        h = self._headers
        if h is None:
            h = self._headers = head_fields(self._raw_head or b"")
        return h

    def get(self, name: str) -> str | None:
        """Current value of a header (lower-case name), edits included."""
        for n, v in reversed(self.added):
            if n == name:
                return v
        if name in self.removed:
            return None
        if self._headers is None and self._raw_head is not None:
            m = _lookup_pattern(name).search(self._raw_head)  # one search, not a parse of every header
            return m.group(1).decode("latin-1").strip() if m else None
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def set_header(self, name: str, value: str) -> None:
        name = name.lower()
        self.removed.add(name)
        added = self.added
        if added:
            self.added = added = [(n, v) for n, v in added if n != name]
        added.append((name, value))

    def remove_header(self, name: str) -> None:
        self.remove_headers((name,))

    def remove_headers(self, names: tuple[str, ...] | list[str] | frozenset[str]) -> None:
        """Remove several headers at once (names lower-case)."""
        self.removed.update(names)
        if self.added:
            gone = frozenset(names)  # not `self.removed`: it also holds names set_header replaced
            self.added = [(n, v) for n, v in self.added if n not in gone]

    @property
    def modified(self) -> bool:
        return bool(self.removed or self.added)

    @property
    def body(self) -> bytes | None:
        """The buffered body if a hook declared `needs_response_body`, else None (it is streamed)."""
        return self._body

    def replace_body(self, body: bytes) -> None:
        self._body = body

    def reject(self, status: int, reason: str, *, detail: str = "") -> None:
        """Replace the upstream response with a gateway problem (e.g. 502 `response.invalid`).

        The fronts render it with the one renderer instead of forwarding anything of the upstream response;
        later hooks do not run. `reason` is the stable client-facing code, `detail` goes to the decision log.
        """
        self.rejection = (status, reason, detail)

    def final_headers(self) -> list[tuple[str, str]]:
        """Headers after edits, in order: surviving upstream headers, then added ones."""
        removed = self.removed
        out = [(n, v) for n, v in self.headers if n not in removed]
        out.extend(self.added)
        return out


@dataclass(slots=True)
class Outcome:
    """What happened to a request after the pipeline: completion hooks and the decision log read it."""

    status: int
    upstream_status: int = 0
    upstream_us: int = 0
    total_us: int = 0
    bytes_sent: int = 0
    error: str = ""  # a stable code such as upstream.timeout, or "" on success
