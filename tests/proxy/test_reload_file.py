"""Reading the config file for a reload only once it has stopped changing (a write caught half-way is refused)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from stockade.clock import FakeClock
from stockade.errors import ConfigError
from stockade.proxy.reload_file import ATTEMPTS, SETTLE_SECONDS, TIMER_SLACK, read_settled

WHOLE = "listen: {port: 8080}\nroutes:\n  - id: a\n  - id: b\n"
CUT = "listen: {port: 8080}\nroutes:\n"


def _touch(path: Path, clock: FakeClock, age: float) -> None:
    """Give the file a modification time `age` seconds before the fake clock's now."""
    ns = int((clock.time() - age) * 1e9)
    os.utime(path, ns=(ns, ns))


def _read(path: Path, clock: FakeClock, writer: Callable[[int], None] | None = None) -> tuple[str, list[float]]:
    """read_settled with a sleep that moves the fake clock (and lets `writer` act as a concurrent writer)."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.advance(seconds)
        if writer is not None:
            writer(len(waits))

    return asyncio.run(read_settled(str(path), clock=clock, sleep=sleep)), waits


def test_read_settled_old_file_is_read_at_once(tmp_path: Path) -> None:
    path, clock = tmp_path / "gw.yaml", FakeClock()
    path.write_text(WHOLE)
    _touch(path, clock, age=60)
    assert _read(path, clock) == (WHOLE, [])


@pytest.mark.parametrize(
    "age",
    [0.0, SETTLE_SECONDS / 2, -3600.0],
    ids=["written-now", "written-a-moment-ago", "mtime-in-the-future"],
)
def test_read_settled_recent_file_waits_until_it_is_settled(tmp_path: Path, age: float) -> None:
    """A file modified within the settle time waits out the rest of it; a file dated in the future (a clock set
    wrong, `touch -d`) is read at once rather than refused forever."""
    path, clock = tmp_path / "gw.yaml", FakeClock()
    path.write_text(WHOLE)
    _touch(path, clock, age=age)
    text, waits = _read(path, clock)
    assert text == WHOLE
    if age < 0:
        assert waits == []
    else:
        assert waits == [pytest.approx(SETTLE_SECONDS - age + TIMER_SLACK)]


def _append_then_stop(path: Path, clock: FakeClock, rest: str, times: int) -> Callable[[int], None]:
    def write(calls: int) -> None:
        if calls <= times:
            with path.open("a") as f:
                f.write(rest)
            _touch(path, clock, age=0)

    return write


def _replace(path: Path, clock: FakeClock, text: str) -> Callable[[int], None]:
    def write(calls: int) -> None:
        if calls == 1:  # an atomic rename: a new inode with the whole text
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
            _touch(path, clock, age=0)

    return write


@pytest.mark.parametrize("shape", ["appended-in-two-writes", "renamed-into-place"])
def test_read_settled_file_being_written_is_read_whole(tmp_path: Path, shape: str) -> None:
    """`cat > file` caught after `routes:`: valid YAML that drops every route. The read waits for the rest."""
    path, clock = tmp_path / "gw.yaml", FakeClock()
    path.write_text(CUT)
    _touch(path, clock, age=0)
    rest = WHOLE[len(CUT) :]
    appended = shape.startswith("appended")
    writer = _append_then_stop(path, clock, rest, times=1) if appended else _replace(path, clock, WHOLE)
    text, waits = _read(path, clock, writer)
    assert text == WHOLE
    assert len(waits) >= 2  # waited for the first write, then again for the settle time after the second


def test_read_settled_file_that_keeps_changing_is_refused(tmp_path: Path) -> None:
    path, clock = tmp_path / "gw.yaml", FakeClock()
    path.write_text(CUT)
    _touch(path, clock, age=0)
    with pytest.raises(ConfigError) as info:
        _read(path, clock, _append_then_stop(path, clock, "# more\n", times=1000))
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: ") and "still being written" in problem
    assert "atomically" in problem and "rename" in problem


def test_read_settled_waits_a_bounded_time(tmp_path: Path) -> None:
    path, clock = tmp_path / "gw.yaml", FakeClock()
    path.write_text(CUT)
    _touch(path, clock, age=0)
    start = clock.monotonic()
    with pytest.raises(ConfigError):
        _read(path, clock, _append_then_stop(path, clock, "# more\n", times=1000))
    assert clock.monotonic() - start <= ATTEMPTS * (SETTLE_SECONDS + TIMER_SLACK) + 0.01


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "cannot read config"),
        (lambda p: p.write_bytes(b"routes: []\n\xff\xfe"), "not UTF-8"),
    ],
    ids=["missing", "not-utf8"],
)
def test_read_settled_unreadable_file_is_a_config_error(
    tmp_path: Path, make: Callable[[Path], object], message: str
) -> None:
    path, clock = tmp_path / "gw.yaml", FakeClock()
    make(path)
    with pytest.raises(ConfigError, match=message):
        _read(path, clock)


def _fifo(p: Path) -> None:
    os.mkfifo(p)


def _zero(p: Path) -> None:
    p.symlink_to("/dev/zero")


def _huge(p: Path) -> None:
    from stockade.config.yamldoc import MAX_FILE_BYTES

    with p.open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_fifo, "not a regular file.*re-read on SIGHUP"),
        (_zero, "not a regular file"),
        (lambda p: p.mkdir(), "not a regular file"),
        (_huge, "larger than 16 MiB"),
    ],
    ids=["fifo", "link-to-dev-zero", "directory", "over-the-cap"],
)
def test_read_settled_refuses_what_is_not_a_bounded_regular_file_at_once(
    tmp_path: Path, make: Callable[[Path], object], message: str
) -> None:
    """A FIFO at the config path froze the data plane and /readyz on SIGHUP (a blocking open in the event loop);
    a symlink to /dev/zero read until MemoryError."""
    path, clock = tmp_path / "gw.yaml", FakeClock()
    make(path)
    with pytest.raises(ConfigError, match=message):
        _read(path, clock)
