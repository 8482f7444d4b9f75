"""Request headers as received, with lazy case-insensitive lookup for stages."""

from __future__ import annotations

from collections.abc import Iterator


class DuplicateHeaderError(ValueError):
    """A header that must appear once appeared more than once; ambiguity is a 400, never a guess."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class Headers:
    """Raw `(name, value)` byte pairs in arrival order; the lookup map is built only when a stage asks."""

    __slots__ = ("_map", "raw")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw
        self._map: dict[str, list[str]] | None = None

    def _lookup(self) -> dict[str, list[str]]:
        m = self._map
        if m is None:
            m = {}
            for name, value in self.raw:
                m.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
            self._map = m
        return m

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of `name` (lower-case), or `default`."""
        values = self._lookup().get(name)
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        return list(self._lookup().get(name, ()))

    def get_single(self, name: str) -> str | None:
        """The value of a header that must not repeat (credentials); raises DuplicateHeaderError if it does."""
        values = self._lookup().get(name)
        if not values:
            return None
        if len(values) > 1:
            raise DuplicateHeaderError(name)
        return values[0]

    def __contains__(self, name: object) -> bool:
        return name in self._lookup()

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for name, value in self.raw:
            yield name.decode("latin-1").lower(), value.decode("latin-1")

    def __len__(self) -> int:
        return len(self.raw)

    def __repr__(self) -> str:
        return f"Headers({len(self.raw)} fields)"
