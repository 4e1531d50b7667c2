"""Selections: the records a parsed record-set names, counted arithmetically, listed lazily."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from itertools import islice

from ._dsparse import SubsetSpec
from ._indexset import IndexSet
from ._model import Record, Segment, Series

__all__ = ["Selection"]


class _Subset:
    """Records of one subset in DRMS order, ignoring where clauses."""

    def __init__(self, spec: SubsetSpec) -> None:
        self.spec = spec
        self.series = spec.series
        s = self.series
        tpos = next(i for i, p in enumerate(s.pkeys) if p.kind == "slot")
        slots = spec.keys[tpos]
        self.slots: IndexSet | None = None if slots is None else slots.clip(s.slot_lo, s.slot_hi)
        self.tpos = tpos
        if s.harps is None:
            ipos = next((i for i, p in enumerate(s.pkeys) if p.kind == "int"), None)
            self.ipos = ipos
            if ipos is None:
                self.vals: tuple[int, ...] = (0,)
            else:
                allowed = spec.keys[ipos]
                self.vals = tuple(
                    v for v in s.pkeys[ipos].values if allowed is None or v in allowed
                )
            if self.slots is None:
                self.slots = IndexSet.interval(s.slot_lo, s.slot_hi)
        else:
            h = spec.keys[1 - tpos]
            self.harps: IndexSet | None = None if h is None else h.clip(1, s.harps.max_harp)
        self._positions: IndexSet | None = None
        if spec.recnums is not None:
            self._positions = IndexSet(
                r for r in _shift(spec.recnums, -s.first_recnum).clip(0, s.count() - 1).runs
            )

    def _pk_match(self, rec: Record) -> bool:
        """Whether a record (from a recnum filter) also matches the prime-key filters."""
        return all(f is None or v in f for f, v in zip(self.spec.keys, rec.values, strict=True))

    def count(self) -> int:
        """Number of records (where clauses not applied)."""
        s = self.series
        if self._positions is not None:
            if all(k is None for k in self.spec.keys):
                return len(self._positions)
            return sum(1 for _ in self.iter_from(0))
        if s.harps is None:
            assert self.slots is not None
            return len(self.slots) * len(self.vals)
        return s.harps.count(self.harps, self.slots)

    def iter_from(self, start: int) -> Iterator[Record]:
        """Records from the ``start``-th on."""
        s = self.series
        if self._positions is not None:
            recs = (s.record_at(p) for p in self._positions)
            if all(k is None for k in self.spec.keys):
                return islice(recs, start, None)
            return islice((r for r in recs if self._pk_match(r)), start, None)
        if s.harps is None:
            return self._iter_product(start)
        return self._iter_harps(start)

    def _iter_product(self, start: int) -> Iterator[Record]:
        """Slot-major iteration of a time × value series."""
        s = self.series
        assert self.slots is not None
        nv_all = s._nvals()
        vals = self.vals
        nv = len(vals)
        if nv == 0:
            return
        ipos = self.ipos
        vidx = [0] if ipos is None else [s.pkeys[ipos].values.index(v) for v in vals]
        i, j = divmod(start, nv)
        for k in range(i, len(self.slots)):
            slot = self.slots[k]
            base = s.first_recnum + (slot - s.slot_lo) * nv_all
            for m in range(j, nv):
                if ipos is None:
                    values: tuple[int, ...] = (slot,)
                elif self.tpos == 0:
                    values = (slot, vals[m])
                else:
                    values = (vals[m], slot)
                yield Record(s, base + vidx[m], values)
            j = 0

    def _harp_list(self) -> Iterator[tuple[int, int, int]]:
        """(harp, first slot, last slot) of candidate HARPs in order."""
        sched = self.series.harps
        assert sched is not None
        if self.slots is not None:
            if not self.slots:
                return
            cand: range | IndexSet = sched.harps_overlapping(self.slots.lo, self.slots.hi)
        else:
            cand = self.harps if self.harps is not None else range(1, sched.max_harp + 1)
        for h in cand:
            if self.harps is not None and self.slots is not None and h not in self.harps:
                continue
            a, b = sched.window(h)
            yield h, a, b

    def _iter_harps(self, start: int) -> Iterator[Record]:
        """HARP-major iteration of a SHARP series."""
        s = self.series
        sched = s.harps
        assert sched is not None
        for h, a, b in self._harp_list():
            sub: IndexSet | range = range(a, b + 1) if self.slots is None else self.slots.clip(a, b)
            n = len(sub)
            if start >= n:
                start -= n
                continue
            base = s.first_recnum + sched.prefix[h - 1] - a
            for k in range(start, n):
                slot = sub[k]
                yield Record(s, base + slot, (h, slot) if self.tpos == 1 else (slot, h))
            start = 0


def _shift(ix: IndexSet, delta: int) -> IndexSet:
    """Add ``delta`` to every member."""
    from ._indexset import Run

    return IndexSet(Run(r.first + delta, r.p, r.q, r.j0, r.n) for r in ix.runs)


class Selection:
    """The records named by a record-set specification.

    Attributes
    ----------
    series
        The series all subsets belong to.
    segments
        Selected segments (all of the series' segments when the spec has no ``{}``).
    explicit_segments
        True when the spec listed segments with ``{...}``.
    """

    def __init__(self, specs: list[SubsetSpec], limit: int | None = None) -> None:
        self.series: Series = specs[0].series
        self._subsets = [_Subset(sp) for sp in specs]
        self._wheres = [sp.wheres for sp in specs]
        chosen = [sp.segments for sp in specs if sp.segments is not None]
        self.explicit_segments = bool(chosen)
        if chosen:
            merged: list[Segment] = []
            for segs in chosen:
                merged.extend(sg for sg in segs if sg not in merged)
            self.segments: tuple[Segment, ...] = tuple(merged)
        else:
            self.segments = self.series.segments
        self._limit = limit or None
        self._filtered = any(self._wheres)

    def _all(self) -> Iterator[Record]:
        """Every selected record, where clauses applied, no limit."""
        for sub, wheres in zip(self._subsets, self._wheres, strict=True):
            recs = sub.iter_from(0)
            if wheres:
                yield from (r for r in recs if all(w(r) for w in wheres))
            else:
                yield from recs

    def _total(self) -> int:
        """Count without the limit."""
        if self._filtered:
            return sum(1 for _ in self._all())
        return sum(sub.count() for sub in self._subsets)

    def count(self) -> int:
        """Number of selected records (arithmetic unless a where clause is present)."""
        total = self._total()
        return total if self._limit is None else min(total, abs(self._limit))

    def __iter__(self) -> Iterator[Record]:
        if self._limit is None:
            return self._all()
        if self._limit > 0:
            return islice(self._all(), self._limit)
        if self._filtered:
            return iter(deque(self._all(), maxlen=-self._limit))
        return self._tail(-self._limit)

    def _tail(self, n: int) -> Iterator[Record]:
        """The last ``n`` records, skipping arithmetically to them."""
        counts = [sub.count() for sub in self._subsets]
        skip = max(0, sum(counts) - n)
        for sub, c in zip(self._subsets, counts, strict=True):
            if skip >= c:
                skip -= c
                continue
            yield from sub.iter_from(skip)
            skip = 0
