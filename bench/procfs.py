"""Reading a process tree's CPU time, memory and CPU affinity from /proc (Linux only)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may contain spaces and parentheses)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def tree_pids(root: int) -> list[int]:
    """`root` and all its descendants (nginx: master and workers), found by scanning parent pids."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))  # fields[1] is ppid
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return sorted(out)


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of every thread of these processes, in seconds (clock-tick resolution)."""
    user, kernel = cpu_split(pids)
    return user + kernel


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """(utime, stime) of every thread of these processes, in seconds. The kernel's split is sampled at each clock
    tick, so it is an estimate; over a run of seconds it is close enough to tell the two apart."""
    user = kernel = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            user += int(fields[11])  # stat fields 14 and 15: utime, stime
            kernel += int(fields[12])
    return user / TICKS_PER_SECOND, kernel / TICKS_PER_SECOND


def cpu_spent(
    groups: Mapping[str, list[int]], before: Mapping[str, tuple[float, float]]
) -> tuple[dict[str, float], dict[str, float]]:
    """CPU seconds each group used since `before` (its cpu_split then): in all, and of that in the kernel."""
    now = {name: cpu_split(pids) for name, pids in groups.items()}
    total = {name: sum(now[name]) - sum(before[name]) for name in groups}
    kernel = {name: now[name][1] - before[name][1] for name in groups}
    return total, kernel


def rss_bytes(pids: list[int]) -> int:
    """Resident set size summed over these processes (shared pages counted once per process)."""
    total = 0
    for pid in pids:
        try:
            resident = Path(f"/proc/{pid}/statm").read_text().split()[1]
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(resident) * PAGE_BYTES
    return total


def affinity(pids: list[int]) -> dict[str, list[int]]:
    """The CPUs each process may run on, as recorded proof that pinning took effect."""
    out = {}
    for pid in pids:
        try:
            out[str(pid)] = sorted(os.sched_getaffinity(pid))
        except ProcessLookupError:
            continue
    return out


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages: how busy the machine was around the measurement."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
