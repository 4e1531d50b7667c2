"""Resource accounting for one contender run (wall clock, CPU seconds, peak RSS)."""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Usage:
    """What a measured block cost: wall seconds, CPU seconds and peak resident memory."""

    wall_s: float = 0.0
    cpu_self_s: float = 0.0
    cpu_children_s: float = 0.0
    rss_self_mb: float = 0.0
    rss_children_mb: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def _cpu(who: int) -> float:
    """User + system CPU seconds of ``who`` (RUSAGE_SELF or RUSAGE_CHILDREN)."""
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def _maxrss_mb(who: int) -> float:
    """Peak RSS in MB (Linux reports KiB, macOS bytes)."""
    raw = resource.getrusage(who).ru_maxrss
    return raw / (1 << 20) if sys.platform == "darwin" else raw / 1024


@contextmanager
def measure() -> Iterator[Usage]:
    """Measure the enclosed block; children are counted once they have been waited for."""
    usage = Usage()
    s0, c0, t0 = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    try:
        yield usage
    finally:
        usage.wall_s = time.perf_counter() - t0
        usage.cpu_self_s = _cpu(resource.RUSAGE_SELF) - s0
        usage.cpu_children_s = _cpu(resource.RUSAGE_CHILDREN) - c0
        usage.rss_self_mb = _maxrss_mb(resource.RUSAGE_SELF)
        usage.rss_children_mb = _maxrss_mb(resource.RUSAGE_CHILDREN)


def tree_size(root: Path) -> tuple[int, int]:
    """Number of regular files under ``root`` and their total size, ignoring ``.part`` files."""
    files = 0
    total = 0
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".asyncjsoc"]  # asyncjsoc's state, not data
        for name in names:
            if name.endswith((".part", ".aria2")):
                continue
            try:
                st = os.stat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            files += 1
            total += st.st_size
    return files, total


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_cpu_s() -> float | None:
    """CPU seconds the whole machine has spent busy (user, nice, system, irq, softirq) since
    boot, from ``/proc/stat``; None where there is no ``/proc`` (not Linux)."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal guest guest_nice
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in first[1:8])
    return (user + nice + system + irq + softirq) / _TICK


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads), or None if unknown."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK
