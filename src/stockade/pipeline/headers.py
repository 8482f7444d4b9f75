"""Request headers as received, with lazy case-insensitive lookup for stages."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

MAX_LENGTH_DIGITS: Final = 19  # more than any real body (10^19 bytes); a longer Content-Length is malformed


def parse_content_length(value: bytes) -> int | None:
    """A Content-Length value as a number, or None if malformed: digits only, at most MAX_LENGTH_DIGITS of them
    (llhttp takes 5000 leading zeros for a small number; Python's int() raises beyond 4300 digits)."""
    if not value.isdigit() or len(value) > MAX_LENGTH_DIGITS:
        return None
    return int(value)


class DuplicateHeaderError(ValueError):
    """A header that must appear once appeared more than once; ambiguity is a 400, never a guess."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class Headers:
    """Raw `(name, value)` byte pairs in arrival order.

    The lookup map (lower-case byte names to raw values) is built only when a stage first asks, and only the
    values asked for are decoded: a request whose stages read one header pays for that one header.
    """

    __slots__ = ("_dups", "_map", "raw")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw
        self._map: dict[bytes, bytes] | None = None  # lower-case name -> first value
        self._dups: set[bytes] | None = None  # names that appeared more than once

    def _lookup(self) -> dict[bytes, bytes]:
        m = self._map
        if m is None:
            # A plain loop: cheaper than a dict comprehension for the handful of headers a request carries (3.11
            # builds a function per comprehension), and it finds repeated names on the way.
            m = {}
            for name, value in self.raw:
                key = name.lower()
                if key in m:
                    if self._dups is None:
                        self._dups = set()
                    self._dups.add(key)
                else:
                    m[key] = value
            self._map = m
        return m

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of `name` (lower-case), or `default`."""
        value = self._lookup().get(_key(name))
        return value.decode("latin-1") if value is not None else default

    def get_all(self, name: str) -> list[str]:
        key = _key(name)
        value = self._lookup().get(key)
        if value is None:
            return []
        if self._dups is None or key not in self._dups:
            return [value.decode("latin-1")]
        return [v.decode("latin-1") for n, v in self.raw if n.lower() == key]

    def get_single(self, name: str) -> str | None:
        """The value of a header that must not repeat (credentials); raises DuplicateHeaderError if it does."""
        value = self.single(_key(name))
        return value.decode("latin-1") if value is not None else None

    def single(self, key: bytes) -> bytes | None:
        """`get_single` for a lower-case byte name, undecoded: for stages on the hot path that work in bytes."""
        m = self._map
        value = (m if m is not None else self._lookup()).get(key)
        if value is not None and self._dups is not None and key in self._dups:
            raise DuplicateHeaderError(key.decode("latin-1"))
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _key(name) in self._lookup()

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for name, value in self.raw:
            yield name.decode("latin-1").lower(), value.decode("latin-1")

    def __len__(self) -> int:
        return len(self.raw)

    def __repr__(self) -> str:
        return f"Headers({len(self.raw)} fields)"


_keys: Final[dict[str, bytes]] = {}


def _key(name: str) -> bytes:
    """The lookup key for a header name (stages ask for the same few names, so they are encoded once)."""
    key = _keys.get(name)
    if key is None:
        key = name.lower().encode("latin-1")
        if len(_keys) < 1024:
            _keys[name] = key
    return key
