"""Reading a config document: a regular file, or a pipe or device read once at start, never beyond the size cap."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from stockade.config.yamldoc import MAX_FILE_BYTES, read_bounded, read_text
from stockade.errors import ConfigError

TEXT = "routes: []\n"


@contextmanager
def _pipe(data: bytes) -> Iterator[str]:
    """A pipe with a writer (as `cat f |` or `<(cat f)` give), named as /dev/fd/N; written from a thread, so a
    body larger than the pipe's buffer is read in several chunks."""
    r, w = os.pipe()

    def write() -> None:
        with os.fdopen(w, "wb") as f:
            try:
                f.write(data)
            except BrokenPipeError:
                pass  # the reader stopped at the cap

    writer = threading.Thread(target=write)
    writer.start()
    try:
        yield f"/dev/fd/{r}"
    finally:
        os.close(r)
        writer.join(10)


@pytest.mark.parametrize(
    "data",
    [TEXT.encode(), (TEXT + "#" * 200_000 + "\n").encode()],
    ids=["small", "several-chunks"],
)
def test_a_pipe_is_read_at_start(data: bytes) -> None:
    with _pipe(data) as name:
        assert read_text(Path(name)) == data.decode()


def test_a_pipe_beyond_the_cap_is_refused() -> None:
    with _pipe(b"#" * (MAX_FILE_BYTES + 10)) as name, pytest.raises(ConfigError, match="larger than 16 MiB"):
        read_text(Path(name))


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("/dev/zero", "larger than 16 MiB"), ("/dev/null", ""), ("/", "not a regular file")],
    ids=["zero", "null", "directory"],
)
def test_a_device_is_read_up_to_the_cap_and_a_directory_is_refused(name: str, fragment: str) -> None:
    """/dev/zero read until MemoryError before the cap; it must still stop there."""
    if not fragment:
        assert read_text(Path(name)) == ""
        return
    with pytest.raises(ConfigError, match=fragment):
        read_text(Path(name))


def test_a_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(ConfigError, match=r"cannot read config|not a regular file"):
            read_text(path)


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("fifo", "not a regular file"),
        ("zero", "not a regular file"),
        ("directory", "not a regular file"),
        ("large", "larger than 16 MiB"),
    ],
)
def test_a_file_to_read_again_must_be_a_regular_one_under_the_cap(tmp_path: Path, kind: str, fragment: str) -> None:
    """What a reload reads: a FIFO at the config path froze the event loop, a link to /dev/zero read until
    MemoryError. Refused at once, without waiting for a writer."""
    path = tmp_path / "gw.yaml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    else:
        with path.open("wb") as f:
            f.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(ConfigError, match=fragment) as info:
        read_bounded(path, pipes=False)
    if kind in ("fifo", "zero"):
        assert "re-read on SIGHUP" in info.value.problems[0], info.value.problems


def test_a_regular_file_is_read_with_its_status(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(TEXT)
    data, st = read_bounded(path, pipes=False)
    assert data == TEXT.encode() and st.st_size == len(data) and st.st_ino == path.stat().st_ino
