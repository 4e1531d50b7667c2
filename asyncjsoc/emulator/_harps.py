"""A deterministic, synthetic schedule of HARP regions for the SHARP series.

HARP ``n`` appears at ``start(n)`` (a piecewise-linear function of n through real
anchor points, so numbers grow over the mission like the real ones) and lives a
hashed 3-14 days. A few HARPs seen in real traffic get their real windows.
All times are 720 s slot indices on the 1993.01.01_00:00:00_TAI epoch.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from functools import cache
from itertools import accumulate

from ._indexset import IndexSet, Run
from ._times import DAY, parse_time

__all__ = ["STEP", "HarpSchedule", "harp_schedule", "mix_hash", "unit_hash"]

STEP = 720
_PER_DAY = DAY // STEP

#: (HARPNUM, start time) anchors; between them start times are interpolated.
_ANCHORS = (
    (1, "2010.05.01_00:00:00_TAI"),
    (3604, "2014.01.08_03:12:00_TAI"),
    (7020, "2017.05.19_06:00:00_TAI"),
    (7302, "2018.09.02_12:00:00_TAI"),
    (7310, "2018.09.25_00:00:00_TAI"),
    (7408, "2020.01.28_00:00:00_TAI"),
    (11500, "2024.06.01_00:00:00_TAI"),
)
#: After the last anchor new HARPs appear at this rate (per day) until the end.
_TAIL_RATE = 2.0
#: Lifetimes (in slots) of HARPs whose real window is known from recorded traffic.
_LIFE_OVERRIDE = {
    3604: 1223,
    7020: 8 * _PER_DAY,
    7302: 11 * _PER_DAY,
    7310: 7 * _PER_DAY,
    7408: 1319,
}
MAX_LIFE = 14 * _PER_DAY


def unit_hash(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1) from the given parts."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


_M64 = (1 << 64) - 1


def mix_hash(tag: int, n: int) -> float:
    """A fast stable pseudo-random number in [0, 1) from two integers (splitmix64)."""
    z = (tag * 0x9E3779B97F4A7C15 + n + 0x632BE59BD9B4E019) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return (z ^ (z >> 31)) / 2**64


def _slot(text: str) -> int:
    """Slot index of an anchor time."""
    return round(parse_time(text) / STEP)


@dataclass(frozen=True)
class HarpSchedule:
    """Start slot, end slot (inclusive) and record prefix sums of every HARP number."""

    starts: tuple[int, ...]  # index 0 is HARP 1
    ends: tuple[int, ...]
    prefix: tuple[int, ...]  # prefix[i] = records of HARPs 1..i

    @property
    def max_harp(self) -> int:
        """Largest HARP number in the schedule."""
        return len(self.starts)

    def window(self, harp: int) -> tuple[int, int]:
        """(first slot, last slot) of a HARP."""
        return self.starts[harp - 1], self.ends[harp - 1]

    def records(self, harp: int) -> int:
        """Number of records of a HARP."""
        return self.prefix[harp] - self.prefix[harp - 1]

    def harps_overlapping(self, lo: int, hi: int) -> range:
        """HARP numbers whose windows may intersect slots ``[lo, hi]`` (a superset)."""
        first = bisect_left(self.starts, lo - MAX_LIFE) + 1
        last = bisect_right(self.starts, hi)
        return range(first, last + 1)

    def count(self, harps: IndexSet | None, slots: IndexSet | None) -> int:
        """Records of the selected HARPs at the selected slots (None = all)."""
        if slots is None:
            if harps is None:
                return self.prefix[-1]
            return sum(
                self.prefix[r.hi] - self.prefix[r.lo - 1] if r.dense else _sum_records(self, r)
                for r in harps.clip(1, self.max_harp).runs
            )
        if not slots:
            return 0
        cand = self.harps_overlapping(slots.lo, slots.hi)
        if harps is None and len(slots.runs) == 1 and slots.runs[0].dense:
            return self._count_dense(cand, slots.lo, slots.hi)
        total = 0
        for h in cand:
            if harps is not None and h not in harps:
                continue
            s, e = self.starts[h - 1], self.ends[h - 1]
            total += slots.count_in(s, e)
        return total

    def _count_dense(self, cand: range, lo: int, hi: int) -> int:
        """Records in slots [lo, hi] over all HARPs: prefix sums for HARPs fully inside."""
        if not cand:
            return 0
        inner_first = bisect_left(self.starts, lo) + 1
        inner_last = bisect_right(self.starts, hi - MAX_LIFE)
        total = 0
        if inner_last >= inner_first:
            total += self.prefix[inner_last] - self.prefix[inner_first - 1]
        for h in cand:
            if inner_first <= h <= inner_last:
                continue
            s, e = self.starts[h - 1], self.ends[h - 1]
            total += max(0, min(e, hi) - max(s, lo) + 1)
        return total

    def harp_of_position(self, pos: int) -> int:
        """HARP number holding the record at global position ``pos``."""
        return bisect_right(self.prefix, pos)


def _sum_records(sched: HarpSchedule, run: Run) -> int:
    """Records of the HARPs listed in a sparse run."""
    return sum(sched.records(h) for h in run)


@cache
def harp_schedule(end_slot: int) -> HarpSchedule:
    """Build the schedule of every HARP starting before ``end_slot`` (cached)."""
    anchors = [(n, _slot(t)) for n, t in _ANCHORS]
    starts: list[int] = []
    ends: list[int] = []
    n = 1
    while True:
        if n <= anchors[-1][0]:
            k = max(i for i, (an, _) in enumerate(anchors) if an <= n)
            n0, s0 = anchors[k]
            if n == n0:
                start = s0
            else:
                n1, s1 = anchors[k + 1]
                start = s0 + (s1 - s0) * (n - n0) // (n1 - n0)
        else:
            n_last, s_last = anchors[-1]
            start = s_last + round((n - n_last) * _PER_DAY / _TAIL_RATE)
        if start > end_slot:
            break
        u = unit_hash("harp-life", n)
        life = _LIFE_OVERRIDE.get(n, int((3 + 11 * u * u) * _PER_DAY))
        starts.append(start)
        ends.append(min(start + life - 1, end_slot))
        n += 1
    prefix = (0, *accumulate(e - s + 1 for s, e in zip(starts, ends, strict=True)))
    return HarpSchedule(tuple(starts), tuple(ends), prefix)
