"""Sorted sets of integers made of arithmetic runs: counting and indexing in O(runs).

Slot indices (``T_REC_index``) and integer prime-key values (HARPNUM, WAVELNTH) are
selected as unions of runs ``first + round((j0 + m) * p / q)`` for ``m`` in ``[0, n)``.
A cadence ``@c`` over a slot step ``s`` is the run with ``p/q = c/s`` (at least 1).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from itertools import accumulate

__all__ = ["MATERIALIZE_CAP", "IndexSet", "Run"]

#: Overlapping runs with a cadence are expanded to plain integers up to this many values.
MATERIALIZE_CAP = 5_000_000


def _ceil_div(a: int, b: int) -> int:
    """Ceiling of a / b for b > 0."""
    return -((-a) // b)


@dataclass(frozen=True, slots=True)
class Run:
    """Values ``first + floor((j0 + m) * p / q + 1/2)`` for ``0 <= m < n`` (p >= q)."""

    first: int
    p: int
    q: int
    j0: int
    n: int

    def value(self, m: int) -> int:
        """The m-th value of the run."""
        return self.first + (2 * (self.j0 + m) * self.p + self.q) // (2 * self.q)

    @property
    def lo(self) -> int:
        """Smallest value."""
        return self.value(0)

    @property
    def hi(self) -> int:
        """Largest value."""
        return self.value(self.n - 1)

    @property
    def dense(self) -> bool:
        """True when the run is a plain interval."""
        return self.p == self.q

    def clip(self, lo: int, hi: int) -> Run | None:
        """The part of the run inside ``[lo, hi]``, or None."""
        two_p = 2 * self.p
        jmin = _ceil_div((2 * (lo - self.first) - 1) * self.q, two_p)
        jmax = _ceil_div((2 * (hi - self.first) + 1) * self.q, two_p) - 1
        jmin = max(jmin, self.j0)
        jmax = min(jmax, self.j0 + self.n - 1)
        if jmax < jmin:
            return None
        return Run(self.first, self.p, self.q, jmin, jmax - jmin + 1)

    def index_of(self, x: int) -> int | None:
        """Position m of value x in the run, or None."""
        got = self.clip(x, x)
        return None if got is None else got.j0 - self.j0

    def __iter__(self) -> Iterator[int]:
        if self.dense:
            return iter(range(self.lo, self.lo + self.n))
        return (self.value(m) for m in range(self.n))


class IndexSet:
    """An immutable sorted set of integers stored as disjoint, ordered runs."""

    __slots__ = ("_los", "_prefix", "_runs")

    def __init__(self, runs: Iterable[Run] = ()) -> None:
        self._runs: tuple[Run, ...] = _normalize([r for r in runs if r.n > 0])
        self._prefix: list[int] = [0, *accumulate(r.n for r in self._runs)]
        self._los: list[int] = [r.lo for r in self._runs]

    @classmethod
    def interval(cls, lo: int, hi: int) -> IndexSet:
        """All integers in ``[lo, hi]``."""
        return cls([Run(lo, 1, 1, 0, hi - lo + 1)] if hi >= lo else [])

    @classmethod
    def progression(cls, lo: int, hi: int, stride: Fraction = Fraction(1)) -> IndexSet:
        """``lo + round(j * stride)`` for j >= 0 while <= hi (stride below 1 counts as 1)."""
        if hi < lo:
            return cls()
        stride = max(stride, Fraction(1))
        p, q = stride.numerator, stride.denominator
        n = _ceil_div((2 * (hi - lo) + 1) * q, 2 * p)
        return cls([Run(lo, p, q, 0, n)])

    @classmethod
    def of(cls, values: Iterable[int]) -> IndexSet:
        """A set of explicit integers."""
        return cls(_compress(sorted(set(values))))

    @property
    def runs(self) -> tuple[Run, ...]:
        """The disjoint runs in increasing order."""
        return self._runs

    def __len__(self) -> int:
        return self._prefix[-1]

    def __bool__(self) -> bool:
        return bool(self._runs)

    def __iter__(self) -> Iterator[int]:
        for r in self._runs:
            yield from r

    def __getitem__(self, i: int) -> int:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        k = bisect_right(self._prefix, i) - 1
        return self._runs[k].value(i - self._prefix[k])

    def __contains__(self, x: object) -> bool:
        return isinstance(x, int) and self.rank(x) is not None

    def __repr__(self) -> str:
        return f"IndexSet({list(self._runs)!r})"

    def rank(self, x: int) -> int | None:
        """Position of x in the set, or None when absent."""
        k = bisect_right(self._los, x) - 1
        if k < 0:
            return None
        m = self._runs[k].index_of(x)
        return None if m is None else self._prefix[k] + m

    @property
    def lo(self) -> int:
        """Smallest member (the set must not be empty)."""
        return self._runs[0].lo

    @property
    def hi(self) -> int:
        """Largest member (the set must not be empty)."""
        return self._runs[-1].hi

    def clip(self, lo: int, hi: int) -> IndexSet:
        """Members inside ``[lo, hi]``."""
        out = [c for r in self._runs if r.hi >= lo and r.lo <= hi for c in [r.clip(lo, hi)] if c]
        return IndexSet(out)

    def count_in(self, lo: int, hi: int) -> int:
        """Number of members inside ``[lo, hi]`` without building a new set."""
        total = 0
        for r in self._runs:
            if r.hi < lo or r.lo > hi:
                continue
            if r.lo >= lo and r.hi <= hi:
                total += r.n
            else:
                c = r.clip(lo, hi)
                total += c.n if c else 0
        return total

    def union(self, other: IndexSet) -> IndexSet:
        """Members of either set."""
        return IndexSet([*self._runs, *other._runs])


def _compress(values: list[int]) -> list[Run]:
    """Sorted distinct integers as dense runs."""
    out: list[Run] = []
    start = prev = None
    for v in values:
        if start is None or prev is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            out.append(Run(start, 1, 1, 0, prev - start + 1))
            start = prev = v
    if start is not None and prev is not None:
        out.append(Run(start, 1, 1, 0, prev - start + 1))
    return out


def _merge_dense(runs: list[Run]) -> list[Run]:
    """Merge plain intervals that overlap or touch."""
    spans: list[list[int]] = []
    for r in sorted(runs, key=lambda r: r.lo):
        if spans and r.lo <= spans[-1][1] + 1:
            spans[-1][1] = max(spans[-1][1], r.hi)
        else:
            spans.append([r.lo, r.hi])
    return [Run(lo, 1, 1, 0, hi - lo + 1) for lo, hi in spans]


def _normalize(runs: list[Run]) -> tuple[Run, ...]:
    """Sort runs and make them disjoint (merging intervals, expanding cadence overlaps)."""
    runs.sort(key=lambda r: (r.lo, r.hi))
    out: list[Run] = []
    for r in runs:
        overlapping: list[Run] = []
        while out and out[-1].hi >= r.lo:
            overlapping.append(out.pop())
        if not overlapping:
            if out and out[-1].dense and r.dense and r.lo == out[-1].hi + 1:
                last = out.pop()
                out.append(Run(last.lo, 1, 1, 0, r.hi - last.lo + 1))
            else:
                out.append(r)
            continue
        group = [*overlapping, r]
        if all(g.dense for g in group):
            out.extend(_merge_dense(group))
            continue
        if sum(o.n for o in overlapping) + r.n > MATERIALIZE_CAP:
            raise OverflowError("too many distinct values in overlapping ranges")
        merged: set[int] = set(r)
        for o in overlapping:
            merged.update(o)
        out.extend(_compress(sorted(merged)))
    return tuple(out)
