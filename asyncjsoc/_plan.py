"""Split a query into export-sized chunks, counting records rather than listing them.

The JSOC refuses exports over a size cap and the project assumes a files-per-request cap
(AIA 15 000, HMI 30 000; protocol doc §13). :func:`make_plan` cuts a :class:`Query` into
:class:`~asyncjsoc.Chunk` record sets that together select exactly the query's records (no
gap, no overlap) and each select at most the cap's worth of files.

How a query is cut, per comma-separated subset:

* **Explicit subsets** (every prime key pinned to single values or value lists, as job lists
  are) need no counting to plan: each value combination selects at most one record. Their
  values are packed, in order, into chunks by that upper bound; runs of consecutive slot
  times are written as ``a-b`` ranges to keep the record sets short. Each chunk is counted
  once at the end (one ``count`` call per chunk).
* **Other subsets** are counted, and when over the cap cut along one filter and counted
  again piece by piece, recursively: a time range or span first (even pieces on the
  cadence/slot grid anchored at the range start, written ``start/duration[@cadence]``, the
  last piece keeping the original end), then a value list (partitioned), then an integer
  range (``7300-7310`` halves). Adjacent pieces are merged back while they fit. A time range
  that is *full* (one record in every slot it spans) is cut without counting its pieces:
  their counts follow by arithmetic (see :func:`_slot_capacity`). A piece of more than two
  chunks' worth and at most :data:`LIST_MAX_RECORDS` records, with a time range on a slotted
  key, is instead cut at its records' own slot times, from one ``rs_list`` of them
  (:meth:`_Planner.by_listing`): one request where counting would cost one per chunk.

Pieces are then packed into chunks (comma-joined subsets) up to the cap and a record-set
length limit (long ``ds`` strings do not fit in a URL).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from itertools import pairwise, product
from typing import Protocol

import anyio
import anyio.to_thread

from asyncjsoc._models import Chunk, Plan, SeriesInfo
from asyncjsoc._query import Query
from asyncjsoc._recordset import (
    Filter,
    IntValue,
    Item,
    NumberValue,
    Range,
    Recnums,
    RecordSet,
    Select,
    Skip,
    Span,
    Subset,
    TimeValue,
    Where,
    WordValue,
    parse_recordset,
)
from asyncjsoc._times import TimeParts, fast_tai_datetime, to_tai_parts
from asyncjsoc.exceptions import InvalidInputError

__all__ = [
    "DEFAULT_MAX_RECORDSET_CHARS",
    "PlanningApi",
    "default_file_cap",
    "files_per_record",
    "make_plan",
    "split_chunk",
]

DEFAULT_MAX_RECORDSET_CHARS = 4000
"""Chunks are packed so their record set stays under this many characters (when a single
piece is longer it still goes alone): a ``ds`` travels in a URL query string."""

_OVERSPLIT = 1.0  # even pieces sized at the cap; the over-cap ones are cut again
_MAX_EXPLODE = 100_000  # beyond this many value combinations a subset is counted instead
LIST_MAX_RECORDS = 50_000
"""Largest over-cap piece whose slot times are listed (one ``rs_list``) instead of cut and
counted slice by slice: about 30 bytes of answer per record, so at most 1.5 MB."""


class PlanningApi(Protocol):
    """What planning needs from the JSOC: series metadata and record counts.

    An API that also has ``rs_list(ds, keys=...)``, answering with ``keywords`` (name to
    values), as ``JsocApi`` does, lets the planner list the slot times of a small over-cap
    piece instead of counting its slices.
    """

    async def series_info(self, series: str) -> SeriesInfo:
        """``series_struct`` of a series, typed."""
        ...

    async def count(self, ds: str) -> int:
        """How many records a record set selects (``rs_summary``)."""
        ...


def default_file_cap(series: str) -> int:
    """The files-per-export cap to plan with: ``aia.*`` 15 000, ``hmi.*`` and others 30 000.

    Parameters
    ----------
    series
        Series name (case-insensitive).
    """
    return 15_000 if series.lower().startswith("aia.") else 30_000


def files_per_record(info: SeriesInfo, segments: Sequence[str] | None) -> int:
    """How many files one record exports: one per selected segment (all when ``None``).

    Raises
    ------
    InvalidInputError
        When a named segment is not in the series.
    """
    if segments is None:
        return max(1, len(info.segments))
    for name in segments:
        if info.segments and info.segment(name) is None:
            available = ", ".join(s.name for s in info.segments)
            raise InvalidInputError(f"{info.name} has no segment {name!r}",
                                    hint=f"its segments are {available}")
    return max(1, len(segments))


async def make_plan(
    api: PlanningApi,
    query: Query,
    *,
    max_files_per_export: int | None = None,
    max_recordset_chars: int = DEFAULT_MAX_RECORDSET_CHARS,
    on_count: Callable[[int], None] | None = None,
) -> Plan:
    """Split ``query`` into chunks of at most ``max_files_per_export`` files each.

    Parameters
    ----------
    api
        Series metadata and counts (``JsocApi`` or anything with the same two methods).
    query
        What to download.
    max_files_per_export
        The cap; default :func:`default_file_cap` of the series.
    max_recordset_chars
        Keep each chunk's record set under this length where possible.
    on_count
        Called after each planning request (a ``count``, or a listing of slot times) with
        the number made so far (for progress).

    Returns
    -------
    Plan
        Chunks in query order; chunks that select nothing are left out.

    Raises
    ------
    InvalidInputError
        When the cap is below one record's files, or an over-cap part of the query has
        nothing left to cut along (for example a whole series with no time range).
    """
    info = await api.series_info(query.series)
    fpr = max(files_per_record(info, s.segments) for s in query.parsed.subsets)
    cap = default_file_cap(query.series) if max_files_per_export is None else max_files_per_export
    if cap < 1:
        raise InvalidInputError(f"max_files_per_export must be at least 1, not {cap}")
    max_records = cap // fpr
    if max_records < 1:
        raise InvalidInputError(
            f"one record of {query.series} has {fpr} files, more than the cap of {cap}",
            hint="select fewer segments with {...}, or raise the cap "
                 "(--max-files-per-export; max_files_per_export in Python)")
    for subset in query.parsed.subsets:
        _check_integer_keys(subset, info)
    planner = _Planner(api, info, max_records, max(100, max_recordset_chars), on_count)
    pieces: list[_Piece | _Atom] = []
    for subset in query.parsed.subsets:
        pieces.extend(await planner.pieces(subset))
    chunks: list[Chunk] = []
    for group in planner.pack(pieces):
        for recordset, n in await planner.finish(group):
            if n > 0:
                chunks.append(Chunk(len(chunks), recordset, n, n * fpr))
    n_records = sum(c.n_records for c in chunks)
    return Plan(series=query.series, chunks=tuple(chunks), n_records=n_records,
                n_files=n_records * fpr)


async def split_chunk(api: PlanningApi, chunk: Chunk, parts: int = 2) -> list[Chunk]:
    """Cut one chunk into about ``parts`` smaller ones (after the server said "too large").

    Multi-subset chunks are split between subsets; a single subset along its time range,
    value list or integer range, as :func:`make_plan` does. Each part is counted; parts that
    select nothing are left out. ``index`` of the returned chunks is their position in the
    returned list (callers renumber).

    Raises
    ------
    InvalidInputError
        When the chunk cannot be cut (a single record, or nothing to cut along).
    """
    if parts < 2:
        raise InvalidInputError(f"parts must be at least 2, not {parts}")
    parsed = parse_recordset(chunk.recordset)
    info = await api.series_info(parsed.series)
    fpr = max(files_per_record(info, s.segments) for s in parsed.subsets)
    if len(parsed.subsets) > 1:
        subs = parsed.subsets
        bounds = _bounds(0, len(subs), parts)
        candidates = [RecordSet(subs[lo:hi]) for lo, hi in bounds]
    else:
        axis = _find_axis(parsed.subsets[0], info)
        if axis is None:
            raise InvalidInputError(
                f"cannot split {chunk.recordset!r} any further",
                hint="a single record is over the server's limit: select fewer segments")
        candidates = [RecordSet((axis.subset(lo, hi),)) for lo, hi in _bounds(0, axis.size, parts)]
    out: list[Chunk] = []
    for candidate in candidates:
        n = await api.count(str(candidate))
        if n > 0:
            out.append(Chunk(len(out), str(candidate), n, n * fpr))
    return out


# -------------------------------------------------------------------------------- internals


def _bounds(lo: int, hi: int, parts: int) -> list[tuple[int, int]]:
    """Cut ``[lo, hi)`` into at most ``parts`` even, non-empty pieces."""
    parts = max(1, min(parts, hi - lo))
    edges = [lo + (hi - lo) * i // parts for i in range(parts + 1)]
    return [(a, b) for a, b in pairwise(edges) if b > a]


@dataclass(frozen=True, eq=False)
class _Axis:
    """One filter of a subset that can be cut into ``size`` ordered slices."""

    template: Subset
    index: int
    size: int
    render: Callable[[int, int], Filter]
    capacity: Callable[[int, int], int] | None = None
    """At least as many records as slices ``[lo, hi)`` can select, when that is known."""

    def subset(self, lo: int, hi: int) -> Subset:
        """The template with slices ``[lo, hi)`` of this filter."""
        filters = list(self.template.filters)
        filters[self.index] = self.render(lo, hi)
        return replace(self.template, filters=tuple(filters))


@dataclass(frozen=True)
class _Piece:
    """A standalone subset with its record count (``exact``) or an upper bound."""

    subset: Subset
    n: int
    exact: bool = True
    axis: tuple[_Axis, int, int] | None = None


@dataclass(frozen=True)
class _Run:
    """``n`` consecutive slot times from ``start`` (TAI), ``step_us`` apart."""

    start: datetime
    n: int
    step_us: int

    def item(self) -> Item:
        """One time, or an inclusive ``a-b`` range."""
        first = TimeValue(TimeParts.from_datetime(self.start))
        if self.n == 1:
            return first
        end = self.start + timedelta(microseconds=self.step_us * (self.n - 1))
        return Range(first, TimeValue(TimeParts.from_datetime(end)))

    def cut(self, k: int) -> tuple[_Run, _Run]:
        """The first ``k`` times and the rest."""
        rest = self.start + timedelta(microseconds=self.step_us * k)
        return _Run(self.start, k, self.step_us), _Run(rest, self.n - k, self.step_us)


@dataclass(frozen=True)
class _Atom:
    """One value (or run of slot times) of the varying bracket of an explicit subset."""

    template: Subset
    index: int
    value: Item | _Run
    n: int
    text: str = field(default="", compare=False)

    @property
    def exact(self) -> bool:
        """Atoms carry upper bounds, never counts."""
        return False

    def item(self) -> Item:
        """The bracket item this atom writes."""
        return self.value.item() if isinstance(self.value, _Run) else self.value


def _find_axis(subset: Subset, info: SeriesInfo) -> _Axis | None:
    """The filter to cut next: a time range/span, else the longest list, else an int range."""
    lists: list[tuple[int, int]] = []
    ints: list[_Axis] = []
    keys = _positional_keys(subset, info)
    for index, f in enumerate(subset.filters):
        if not isinstance(f, Select):
            continue
        if len(f.items) > 1:
            lists.append((len(f.items), index))
            continue
        item = f.items[0]
        if isinstance(item, Range | Span) and isinstance(item.start, TimeValue):
            axis = _time_axis(subset, index, item, _step_of(info, keys.get(index)),
                              one_per_slot=_one_record_per_slot(subset, index, keys, info))
            if axis is not None:
                return axis
        elif (isinstance(item, Range) and isinstance(item.start, IntValue)
              and isinstance(item.end, IntValue) and item.cadence is None
              and item.end.value > item.start.value):
            ints.append(_int_axis(subset, index, item.start.value, item.end.value))
    if lists:
        size, index = max(lists, key=lambda x: x[0])
        select = subset.filters[index]
        assert isinstance(select, Select)
        items = select.items
        return _Axis(subset, index, size, lambda lo, hi: Select(items[lo:hi]))
    return ints[0] if ints else None


_INTEGER_TYPES = frozenset({"char", "short", "int", "longlong"})
"""DRMS keyword types that hold whole numbers."""


def _check_integer_keys(subset: Subset, info: SeriesInfo) -> None:
    """Refuse a number written with a point or an exponent for an integer prime key.

    How DRMS reads ``[1e5]`` or ``[7302.0]`` for an ``int`` key is not documented (a C
    integer parse would stop at the ``e`` or the point and select another record), so such
    a value is refused rather than sent or rewritten.
    """
    keys = _positional_keys(subset, info)
    for index, flt in enumerate(subset.filters):
        kw = info.keyword(keys.get(index, ""))
        if kw is None or kw.type.lower() not in _INTEGER_TYPES or not isinstance(flt, Select):
            continue
        for item in flt.items:
            ends = (item.start, item.end) if isinstance(item, Range) else (item,)
            for value in ends:
                if isinstance(value, NumberValue):
                    if value.value.is_integer() and abs(value.value) < 1e18:
                        hint = f"write it in digits: {int(value.value)}"
                    elif math.isfinite(value.value) and not value.value.is_integer():
                        hint = f"{kw.name} takes whole numbers only"
                    else:  # 1e400 is inf; 1e30 is whole but beyond a 64-bit integer
                        hint = (f"{kw.name} takes whole numbers written in digits, "
                                "below 9223372036854775808 (a 64-bit integer)")
                    raise InvalidInputError(
                        f"{kw.name} is an integer prime key of {info.name}, but {value} is "
                        "not written as an integer", hint=hint)


def _slot_groups(values: Sequence[str], max_records: int) -> list[tuple[datetime, int]] | None:
    """Slot-time strings grouped in time order, at most ``max_records`` records a group and
    never splitting a slot: (first slot as a TAI datetime, records) each.
    ``None`` when a value is not a time, needs astropy to convert (UTC before 1972), or one
    slot alone is over ``max_records``. Runs in a worker thread."""
    # Records of one slot share its string (seven AIA wavelengths, many HARPs): each
    # distinct string is converted once.
    per_slot: dict[datetime, int] = {}
    try:
        for text, n in Counter(values).items():
            t = fast_tai_datetime(text)
            if t is None:
                return None
            per_slot[t] = per_slot.get(t, 0) + n
    except (InvalidInputError, ValueError):
        return None
    groups: list[tuple[datetime, int]] = []
    for t in sorted(per_slot):
        n = per_slot[t]
        if n > max_records:
            return None
        if groups and groups[-1][1] + n <= max_records:
            groups[-1] = (groups[-1][0], groups[-1][1] + n)
        else:
            groups.append((t, n))
    return groups


def _slotted_span(subset: Subset, info: SeriesInfo) -> tuple[int, str] | None:
    """The first time range or span without a cadence on a slotted prime key: its filter
    index and the key's name; ``None`` when there is none."""
    keys = _positional_keys(subset, info)
    for index, f in enumerate(subset.filters):
        if not isinstance(f, Select) or len(f.items) != 1:
            continue
        item = f.items[0]
        if (isinstance(item, Range | Span) and isinstance(item.start, TimeValue)
                and item.cadence is None and _step_of(info, keys.get(index)) is not None):
            return index, keys[index]
    return None


def _has_indices(subset: Subset) -> bool:
    """Whether ``subset`` selects by record number or by a prime key's slot index (``#n``)."""
    for flt in subset.filters:
        if isinstance(flt, Recnums):
            return True
        if isinstance(flt, Select):
            for item in flt.items:
                ends = (item.start, item.end) if isinstance(item, Range) else (item,)
                if any(isinstance(v, WordValue) and v.text.startswith("#") for v in ends):
                    return True
    return False


def _positional_keys(subset: Subset, info: SeriesInfo) -> dict[int, str]:
    """Filter index → prime-key name for the positional brackets."""
    out: dict[int, str] = {}
    position = 0
    for index, f in enumerate(subset.filters):
        if not isinstance(f, Where):
            if position < len(info.primekeys):
                out[index] = info.primekeys[position]
            position += 1
    return out


def _one_record_per_slot(subset: Subset, index: int, keys: dict[int, str],
                         info: SeriesInfo) -> bool:
    """Whether ``subset`` selects at most one record per slot of the time key at ``index``.

    DRMS keeps one current record per combination of prime-key values (older versions are
    hidden unless ``[! ... !]`` turns prime-key logic off). So when the filter at ``index`` is
    a slotted time prime key and every *other* prime key of the series is pinned to a single
    value, each slot holds at most one selected record. A prime key left out or given as
    ``[]``, a list, or a range can hold several records per slot (``hmi.M_45s`` has
    ``CAMERA``), and then nothing bounds a slice's count.
    """
    if keys.get(index) is None or _step_of(info, keys[index]) is None:
        return False
    if len(subset.positional) > len(info.primekeys):
        return False
    pinned = {keys[i] for i, f in enumerate(subset.filters)
              if i != index and i in keys and isinstance(f, Select) and len(f.items) == 1
              and isinstance(f.items[0], TimeValue | IntValue | NumberValue | WordValue)}
    others = [k for k in info.primekeys if k != keys[index]]
    if any(k not in pinned for k in others):
        return False
    return all(isinstance(f, Select) or (isinstance(f, Where) and not f.negate)
               for f in subset.filters)


def _step_of(info: SeriesInfo, key: str | None) -> float | None:
    """The slot step of a time prime key, if the series says."""
    if key is None:
        return None
    lowered = key.lower()
    return next((s for k, s in info.time_steps.items() if k.lower() == lowered), None)


def _int_axis(subset: Subset, index: int, a: int, b: int) -> _Axis:
    """Cut ``[a-b]`` into sub-ranges."""

    def render(lo: int, hi: int) -> Filter:
        """Values ``a+lo`` to ``a+hi-1``."""
        if hi - lo == 1:
            return Select((IntValue(a + lo),))
        return Select((Range(IntValue(a + lo), IntValue(a + hi - 1)),))

    return _Axis(subset, index, b - a + 1, render)


def _time_axis(subset: Subset, index: int, item: Range | Span, slot_step: float | None, *,
               one_per_slot: bool = False) -> _Axis | None:
    """Cut a time range or span on the grid ``start + k * step``.

    The step is the cadence when there is one (so every piece samples the same instants as
    the whole), else the series' slot step, else a minute. Every piece but the last is
    written ``start/duration`` (end excluded); the last keeps the original end. With
    ``one_per_slot`` (see :func:`_one_record_per_slot`) and no cadence, the axis knows each
    slice's :func:`_slot_capacity`.
    """
    origin = item.start
    assert isinstance(origin, TimeValue)
    step = item.cadence or slot_step or 60.0
    step_us = round(step * 1e6)
    if step_us <= 0:
        return None
    start = to_tai_parts(origin.parts).to_datetime()
    if isinstance(item, Range):
        if not isinstance(item.end, TimeValue):
            return None
        end = to_tai_parts(item.end.parts).to_datetime()
        if end < start:
            return None
        span_us = (end - start) // timedelta(microseconds=1)
        size = span_us // step_us + 1
    else:
        span_us = round(item.duration * 1e6)
        size = -(-span_us // step_us)
    if size < 2:
        return None

    def render(lo: int, hi: int) -> Filter:
        """Slices ``[lo, hi)`` of the grid as a span, or up to the original end."""
        if lo == 0 and hi == size:
            return Select((item,))
        if lo == 0:
            first = origin
        else:
            moved = start + timedelta(microseconds=step_us * lo)
            first = TimeValue(TimeParts.from_datetime(moved))
        if hi < size:
            return Select((Span(first, step_us * (hi - lo) / 1e6, item.cadence),))
        if isinstance(item, Range):
            return Select((Range(first, item.end, item.cadence),))
        return Select((Span(first, (span_us - step_us * lo) / 1e6, item.cadence),))

    capacity: Callable[[int, int], int] | None = None
    if (one_per_slot and item.cadence is None and slot_step is not None
            and abs(slot_step * 1e6 - step_us) < 1e-3):
        ragged_end = isinstance(item, Range) and span_us % step_us != 0

        def slots(lo: int, hi: int) -> int:
            """Slots slices ``[lo, hi)`` can reach."""
            return _slot_capacity(hi - lo, ragged_end and hi == size)

        capacity = slots
    return _Axis(subset, index, size, render, capacity)


def _slot_capacity(steps: int, ragged_end: bool) -> int:
    """How many slots a time slice ``steps`` slot steps long can select, at most.

    A slice ``t/d`` with ``d = k * step`` reaches exactly ``k`` slots, wherever ``t`` lies:
    whether the server takes the records whose slot time is in ``[t, t + d)`` or (as DRMS
    does) the slot indices ``[slot(t), slot(t + d))`` with ``slot`` rounding to the nearest
    slot. The last slice of a span may be shorter than whole steps; it reaches at most
    ``ceil(d / step)`` slots, its number of grid steps. The last slice of an inclusive range
    ``a-b`` whose length is not a whole number of steps may reach one slot more under
    nearest-slot rounding (``ragged_end``).

    Why this lets the planner skip counting: the slices of a piece partition its records (the
    planner's standing assumption: adjacent slices share their boundary instant), so their
    counts add up to the piece's count ``n``. If every slice holds at most one record
    per slot (:func:`_one_record_per_slot`), each count is at most its capacity; when the
    capacities add up to exactly ``n``, no slice can be below its capacity without another
    being above, so every slice holds exactly its capacity. The piece was full when it was
    counted, so records added to the series later cannot change that (a slot holds one record
    at most); records deleted meanwhile would make the count stale, as they make any count.
    When the capacities add up to more than ``n`` (a gap somewhere), the slices are counted.
    """
    return steps + (1 if ragged_end else 0)


class _Planner:
    """Planning state for one query: API, series, limits."""

    def __init__(self, api: PlanningApi, info: SeriesInfo, max_records: int,
                 max_chars: int, on_count: Callable[[int], None] | None = None) -> None:
        self.api = api
        self.info = info
        self.max_records = max_records
        self.max_chars = max_chars
        self.on_count = on_count
        self.counts = 0

    async def count(self, subsets: Sequence[Subset]) -> int:
        """One ``count`` call for a comma-joined record set."""
        n = await self.api.count(",".join(str(s) for s in subsets))
        self.counts += 1
        if self.on_count is not None:
            self.on_count(self.counts)
        return n

    async def pieces(self, subset: Subset) -> list[_Piece | _Atom]:
        """Planned pieces of one subset, each within the record cap."""
        explicit = self.explicit(subset)
        if explicit is not None:
            return explicit
        n = await self.count([subset])
        return list(await self.split(_Piece(subset, n)))

    def explicit(self, subset: Subset) -> list[_Piece | _Atom] | None:
        """Atoms of a subset whose prime keys are all pinned to values, else ``None``."""
        keys = self.info.primekeys
        positional = [(i, f) for i, f in enumerate(subset.filters) if not isinstance(f, Where)]
        if not keys or len(positional) != len(keys):
            return None
        scalars = (TimeValue, IntValue, NumberValue, WordValue)
        for _, f in positional:
            if not isinstance(f, Select) or not all(isinstance(x, scalars) for x in f.items):
                return None
        sizes = [len(f.items) for _, f in positional if isinstance(f, Select)]
        vary = max(range(len(sizes)), key=lambda i: sizes[i])
        if math.prod(sizes) // sizes[vary] > _MAX_EXPLODE:
            return None
        vary_index, vary_filter = positional[vary]
        assert isinstance(vary_filter, Select)
        others = [(i, f) for k, (i, f) in enumerate(positional) if k != vary]
        choices = [[(i, x) for x in f.items] for i, f in others if isinstance(f, Select)]
        step = _step_of(self.info, keys[vary])
        values = _compress(vary_filter.items, step)
        out: list[_Piece | _Atom] = []
        for combo in product(*choices):
            filters = list(subset.filters)
            for i, x in combo:
                filters[i] = Select((x,))
            filters[vary_index] = Skip()  # a placeholder: each chunk writes its own values
            template = replace(subset, filters=tuple(filters))
            for value in values:
                n = value.n if isinstance(value, _Run) else 1
                while isinstance(value, _Run) and n > self.max_records:
                    head, value = value.cut(self.max_records)
                    out.append(_Atom(template, vary_index, head, head.n))
                    n = value.n
                out.append(_Atom(template, vary_index, value, n))
        return out

    async def split(self, piece: _Piece, listable: bool = True) -> list[_Piece]:
        """Cut a counted piece until every part is within the cap, then merge neighbours.

        ``listable`` is false inside a piece whose listing did not give a plan (one slot
        over the cap, or a listing that did not match the count): its slices are only
        counted, not listed again at every level.
        """
        if piece.n <= self.max_records:
            return [piece]
        if piece.axis is not None and piece.axis[2] - piece.axis[1] >= 2:
            axis, lo, hi = piece.axis
        else:
            found = _find_axis(piece.subset, self.info)
            if found is None:
                hint = "add a time range (start-end or start/duration) to the record set"
                if _has_indices(piece.subset):
                    hint = ("slot indices (#n) and record numbers ([:#n]) are not cut by "
                            "asyncjsoc: select by time instead (start-end), or raise the "
                            "cap (--max-files-per-export) if the server allows it")
                raise InvalidInputError(
                    f"{piece.subset} selects {piece.n} records, more than "
                    f"{self.max_records} per export, and has nothing left to split along",
                    hint=hint)
            axis, lo, hi = found, 0, found.size
        want = math.ceil(piece.n * _OVERSPLIT / self.max_records)
        bounds = _bounds(lo, hi, max(2, want))
        known = _full_counts(axis, bounds, piece.n)
        listing = self.listing_key(piece) if None in known and listable else None
        if listing is not None:
            listed = await self.by_listing(piece, *listing)
            if listed is not None:
                return listed
            listable = False  # listed, and no good: its slices would fail alike
        out: list[_Piece] = []
        for (a, b), n in zip(bounds, known, strict=True):
            sub = axis.subset(a, b)
            if n is None:
                n = await self.count([sub])
            out.extend(await self.split(_Piece(sub, n, True, (axis, a, b)), listable))
        return self.merge(out)

    def listing_key(self, piece: _Piece) -> tuple[int, str] | None:
        """Where :meth:`by_listing` would list ``piece`` (the index of its cadence-free time
        range on a slotted key, and that key), or ``None`` when it is not worth it: the API
        cannot list, or the piece has at most two chunks' worth of records (listing saves
        no request) or more than :data:`LIST_MAX_RECORDS`."""
        if not hasattr(self.api, "rs_list"):
            return None
        if not 2 * self.max_records < piece.n <= LIST_MAX_RECORDS:
            return None
        return _slotted_span(piece.subset, self.info)

    async def by_listing(self, piece: _Piece, index: int, key: str) -> list[_Piece] | None:
        """Cut a small over-cap piece at its records' own slot times, from one listing.

        Counting slices costs one ``rs_summary`` per chunk-sized slice; for a piece of more
        than two chunks' worth and at most :data:`LIST_MAX_RECORDS` records (where it saves
        requests) one ``rs_list`` of its slot times (the first
        time range or span without a cadence, on a slotted prime key) tells where every
        record is. The records are grouped in time order, never splitting a slot (records
        of one slot differ in another prime key, such as ``CAMERA``). The groups tile the
        piece's whole range, as counted slices do: each runs from its first slot time to
        the next group's first (``t/d``, end excluded), the first from the range's own
        start and the last to its own end, so records added later anywhere in the range
        are still in some chunk. Inner boundaries are slot times the server itself
        printed, so none depends on how DRMS rounds a time to a slot, and the groups'
        counts are exact. ``index`` and ``key`` are what :meth:`listing_key` found. ``None``
        (count slices instead) when a value is not a time (or is UTC before 1972), the
        listing does not hold ``piece.n`` records, or one slot alone is over the cap.
        """
        answer = await self.api.rs_list(  # type: ignore[attr-defined]  # see listing_key
            str(piece.subset), keys=(key,))
        self.counts += 1
        if self.on_count is not None:
            self.on_count(self.counts)
        values = next((v for k, v in answer.keywords.items() if k.lower() == key.lower()), None)
        if values is None or len(values) != piece.n:
            return None
        # Tens of thousands of times to read: off the event loop, which may be someone's.
        groups = await anyio.to_thread.run_sync(_slot_groups, values, self.max_records)
        if groups is None:
            return None
        whole = piece.subset.filters[index]
        assert isinstance(whole, Select)
        original = whole.items[0]
        assert isinstance(original, Range | Span)
        assert isinstance(original.start, TimeValue)
        origin = to_tai_parts(original.start.parts).to_datetime()
        out: list[_Piece] = []
        for i, (first_t, n) in enumerate(groups):
            begin, start = ((origin, original.start) if i == 0
                            else (first_t, TimeValue(TimeParts.from_datetime(first_t))))
            item: Item
            if i + 1 < len(groups):
                item = Span(start, (groups[i + 1][0] - begin).total_seconds())
            elif isinstance(original, Range):
                item = Range(start, original.end)
            else:
                end = origin + timedelta(seconds=original.duration)
                item = Span(start, (end - begin).total_seconds())
            filters = list(piece.subset.filters)
            filters[index] = Select((item,))
            out.append(_Piece(replace(piece.subset, filters=tuple(filters)), n))
        return out

    def merge(self, pieces: list[_Piece]) -> list[_Piece]:
        """Join adjacent slices of the same axis while the sum stays within the cap."""
        out: list[_Piece] = []
        for p in pieces:
            q = out[-1] if out else None
            if (q is not None and q.axis is not None and p.axis is not None
                    and q.axis[0] is p.axis[0] and q.axis[2] == p.axis[1]
                    and q.n + p.n <= self.max_records):
                axis, lo, hi = q.axis[0], q.axis[1], p.axis[2]
                out[-1] = _Piece(axis.subset(lo, hi), q.n + p.n, True, (axis, lo, hi))
            else:
                out.append(p)
        return out

    def pack(self, pieces: list[_Piece | _Atom]) -> list[list[_Piece | _Atom]]:
        """Next-fit packing by record count and record-set length, cutting runs to fill."""
        groups: list[list[_Piece | _Atom]] = []
        current: list[_Piece | _Atom] = []
        used = chars = 0
        queue = list(reversed(pieces))
        while queue:
            p = queue.pop()
            extra = self._extra_chars(current[-1] if current else None, p)
            room = self.max_records - used
            if current and (p.n > room or chars + extra > self.max_chars):
                if (isinstance(p, _Atom) and isinstance(p.value, _Run) and 0 < room < p.n
                        and chars + extra <= self.max_chars):
                    head, tail = p.value.cut(room)
                    queue.append(replace(p, value=tail, n=tail.n))
                    p = replace(p, value=head, n=head.n)
                else:
                    groups.append(current)
                    current, used, chars = [], 0, 0
                    extra = self._extra_chars(None, p)
            current.append(p)
            used += p.n
            chars += extra
        if current:
            groups.append(current)
        return groups

    @staticmethod
    def _extra_chars(last: _Piece | _Atom | None, p: _Piece | _Atom) -> int:
        """How much longer a chunk's record set gets by adding ``p`` after ``last``."""
        if isinstance(p, _Atom):
            if (isinstance(last, _Atom) and last.template is p.template
                    and last.index == p.index):
                return len(str(p.item())) + 1
            return len(str(p.template)) + len(str(p.item())) + 1
        return len(str(p.subset)) + 1

    async def finish(self, group: list[_Piece | _Atom]) -> list[tuple[str, int]]:
        """Render a packed group and count it unless every piece was counted already."""
        subsets = _render(group)
        if all(p.exact for p in group):
            return [(",".join(str(s) for s in subsets), sum(p.n for p in group))]
        n = await self.count(subsets)
        if n <= self.max_records:
            return [(",".join(str(s) for s in subsets), n)]
        # the upper bounds were wrong (duplicate prime keys?): halve and count again
        if len(group) > 1:
            half = len(group) // 2
            return await self.finish(group[:half]) + await self.finish(group[half:])
        only = subsets[0]
        return [(str(p.subset), p.n) for p in await self.split(_Piece(only, n))]


def _full_counts(axis: _Axis, bounds: list[tuple[int, int]], n: int) -> list[int | None]:
    """The record counts of slices ``bounds`` of a piece of ``n`` records, where they follow.

    When the slices' capacities add up to ``n`` every slice is full, so its count is its
    capacity (the reasoning is at :func:`_slot_capacity`); otherwise all are unknown.
    """
    if axis.capacity is not None:
        capacities = [axis.capacity(a, b) for a, b in bounds]
        if sum(capacities) == n:
            return list(capacities)
    return [None] * len(bounds)


def _render(group: list[_Piece | _Atom]) -> list[Subset]:
    """Subsets of a packed group: consecutive atoms of one template share one bracket."""
    out: list[Subset] = []
    pending: list[Item] = []
    current: _Atom | None = None

    def flush() -> None:
        """Write the collected atoms as one subset."""
        if current is not None and pending:
            filters = list(current.template.filters)
            filters[current.index] = Select(tuple(pending))
            out.append(replace(current.template, filters=tuple(filters)))

    for p in group:
        if isinstance(p, _Atom):
            if (current is not None and current.template is p.template
                    and current.index == p.index):
                pending.append(p.item())
            else:
                flush()
                current, pending = p, [p.item()]
        else:
            flush()
            current, pending = None, []
            out.append(p.subset)
    flush()
    return out


def _compress(items: tuple[Item, ...], step: float | None) -> list[Item | _Run]:
    """Consecutive TAI slot times ``step`` apart become runs; other values stay single."""
    if step is None or step <= 0:
        return list(items)
    step_us = round(step * 1e6)
    out: list[Item | _Run] = []
    for item in items:
        if not (isinstance(item, TimeValue) and item.parts.zone == "TAI"
                and len(item.parts.frac) <= 6 and item.parts.second < 60):
            out.append(item)
            continue
        moment = item.parts.to_datetime()
        last = out[-1] if out else None
        if (isinstance(last, _Run)
                and moment - last.start == timedelta(microseconds=step_us * last.n)):
            out[-1] = _Run(last.start, last.n + 1, step_us)
        else:
            out.append(_Run(moment, 1, step_us))
    return out


class RecordSizeApi(Protocol):
    """What size estimation needs: one ``rs_list`` call with the ``*size*`` pseudo keyword."""

    async def series_info(self, series: str) -> SeriesInfo:
        """``series_struct`` of a series, typed."""
        ...

    async def rs_list(
        self, ds: str, *, keys: Iterable[str] = (), segments: Iterable[str] = (),
        n: int | None = None,
    ) -> _RsListLike:
        """Keyword values of the records ``ds`` selects."""
        ...


class _RsListLike(Protocol):
    """The part of an ``rs_list`` answer size estimation reads."""

    @property
    def keywords(self) -> dict[str, list[str]]:
        """Keyword name → one string value per record."""
        ...


async def estimate_bytes(api: RecordSizeApi, plan: Plan, *, segments: Sequence[str] | None,
                         sample: int = 3) -> int | None:
    """Estimate the bytes a plan will download, from a few sampled records.

    JSOC's ``jsoc_info`` reports a record's storage-unit size as the ``*size*`` pseudo keyword
    (all of its segments together). The estimate takes the mean over the first ``sample``
    records of the first chunk, scales it by the share of segments selected, and multiplies by
    the plan's record count. It costs one request; when the server gives no usable number the
    answer is ``None`` (unknown), never a guess.

    Parameters
    ----------
    api
        Something with ``series_info`` and ``rs_list`` (``JsocApi``).
    plan
        The plan to estimate.
    segments
        The selected segments (``None``: all of them).
    sample
        How many records to sample.
    """
    if not plan.chunks or plan.n_records == 0:
        return 0 if plan.n_records == 0 else None
    info = await api.series_info(plan.series)
    answer = await api.rs_list(plan.chunks[0].recordset, keys=("*size*",), n=sample)
    sizes: list[float] = []
    for value in next(iter(answer.keywords.values()), []):
        try:
            size = float(value)
        except ValueError:
            continue
        if size >= 0 and size == size:  # drop NaN
            sizes.append(size)
    if not sizes:
        return None
    per_record = sum(sizes) / len(sizes)
    share = files_per_record(info, segments) / max(1, len(info.segments))
    return round(per_record * min(1.0, share) * plan.n_records)
