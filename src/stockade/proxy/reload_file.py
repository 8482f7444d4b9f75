"""Reading the config file for a reload once it has stopped changing: a write caught half-way is not a config.

A file cut at a line boundary is often valid YAML (`routes:` with its last routes missing), so no check of the
text can tell it from the file meant. What can be told is that the file is still moving: its size, modification
time or inode change while it is read, or it was modified a moment ago. Such a read waits and tries again, a
bounded number of times, then refuses. A writer that pauses longer than the settle time between two writes is
not caught: files should be replaced atomically (write a temporary file, then rename it into place).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

from stockade.clock import SYSTEM_CLOCK, Clock
from stockade.config.yamldoc import decode, read_bounded
from stockade.errors import ConfigError

SETTLE_SECONDS = 0.5  # a file modified more recently than this may still be being written
ATTEMPTS = 5  # so a reload waits at most ATTEMPTS * (SETTLE_SECONDS + TIMER_SLACK) for a writer to finish
TIMER_SLACK = 0.05  # event loop timers may fire a little early (uvloop rounds to milliseconds)


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


async def read_settled(
    path: str,
    *,
    clock: Clock = SYSTEM_CLOCK,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    settle: float = SETTLE_SECONDS,
    attempts: int = ATTEMPTS,
) -> str:
    """The file's text, read while nothing was writing it. Raises ConfigError if it cannot be read, or if it is
    still changing after `attempts` waits of up to `settle` seconds."""
    for _ in range(attempts):
        try:
            before = os.stat(path)
            # A regular file only, of at most the cap: a FIFO would block the event loop (and /readyz) in open, a
            # link to /dev/zero read until MemoryError. A small file is read synchronously.
            data, read = read_bounded(path, pipes=False)
            after = os.stat(path)
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read config: {exc.strerror or exc}"]) from None
        age = clock.time() - after.st_mtime_ns / 1e9
        same = _identity(before) == _identity(read) == _identity(after) and len(data) == after.st_size
        # A modification time in the future (a clock set wrong, `touch -d`) would otherwise refuse every reload.
        if same and not 0 <= age < settle:
            return decode(data, path)
        await sleep((settle - age if same else settle) + TIMER_SLACK)
    raise ConfigError(
        [
            f"{path}: the file is still being written (it changed while it was read, or within {settle:g} s, "
            f"{attempts} times); write it atomically (write a temporary file, then rename it into place) and "
            "reload again"
        ]
    )
