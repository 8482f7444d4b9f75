"""Error types with stable codes, shared by every part of the gateway."""

from __future__ import annotations


class StockadeError(Exception):
    """Base error. `code` is stable and safe to show to clients; the message is for operators."""

    code = "stockade.error"


class ConfigError(StockadeError):
    """A configuration file, or part of one, is invalid. Carries every problem found, not only the first."""

    code = "config.invalid"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class StorageError(StockadeError):
    """A storage backend failed; backend exceptions are wrapped into this at the storage boundary."""

    code = "storage.error"


class ListenError(StockadeError):
    """An address in the config cannot be listened on (taken, not local, not permitted): a start-up failure the
    CLI reports as a configuration problem. The message names the field and the address."""

    code = "listen.unavailable"
