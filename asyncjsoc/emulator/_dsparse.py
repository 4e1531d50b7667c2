"""Parse DRMS record-set specifications into per-prime-key index sets.

Grammar (protocol doc §9): ``series[pk1][pk2]...[? where ?]{seg,...}``, comma-separated
subsets at the top level. A bracket holds a comma list of items for the next prime
key (``[]`` skips one, ``[NAME=...]`` names it). Time items: ``t``, ``a-b`` (both ends
included), ``t/dur`` (end excluded), each with optional ``@cadence``; ``^``/``$`` are
the first/last value; ``#n`` items give slot indices. ``[:#r1-#r2,#r3]`` selects by
record number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

from ._indexset import IndexSet
from ._model import DsError, PrimeKey, Segment, Series
from ._times import match_duration, match_time
from ._where import Predicate, compile_where

__all__ = ["SubsetSpec", "parse_ds", "split_top"]


@dataclass
class SubsetSpec:
    """One comma-separated subset of a record-set specification."""

    series: Series
    keys: list[IndexSet | None]
    recnums: IndexSet | None = None
    wheres: list[Predicate] = field(default_factory=list)
    segments: tuple[Segment, ...] | None = None


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split at ``sep`` outside brackets, braces and where clauses."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _frac(x: float) -> Fraction:
    """A float as an exact-ish fraction (decimal strings like 90.0 stay exact)."""
    return Fraction(repr(x)).limit_denominator(10**6)


def _slot_item(pk: PrimeKey, series: Series, item: str) -> IndexSet:
    """One item of a time prime-key list."""
    s = item.strip()
    if s == "^":
        return IndexSet.interval(series.slot_lo, series.slot_lo)
    if s == "$":
        return IndexSet.interval(series.slot_hi, series.slot_hi)
    if s.startswith("#"):
        return _index_item(s[1:], lambda v: v)
    got = match_time(s)
    if got is None:
        raise DsError(f"invalid time value '{s}' for prime key {pk.name}")
    t0, pos = got
    i0 = pk.slot_of(t0)
    i1 = i0
    if pos < len(s) and s[pos] == "-":
        got = match_time(s, pos + 1)
        if got is None:
            raise DsError(f"invalid end time in '{s}'")
        i1 = pk.slot_of(got[0])
        pos = got[1]
    elif pos < len(s) and s[pos] == "/":
        dur = match_duration(s, pos + 1)
        if dur is None:
            raise DsError(f"invalid duration in '{s}'")
        i1 = pk.slot_of(t0 + dur[0]) - 1
        pos = dur[1]
    stride = Fraction(1)
    if pos < len(s) and s[pos] == "@":
        cad = match_duration(s, pos + 1)
        if cad is None or cad[0] <= 0:
            raise DsError(f"invalid cadence in '{s}'")
        stride = _frac(cad[0]) / _frac(pk.step)
        pos = cad[1]
    if pos != len(s):
        raise DsError(f"unexpected text '{s[pos:]}' in time value '{s}'")
    return IndexSet.progression(i0, i1, stride)


def _index_item(s: str, conv: Callable[[int], int]) -> IndexSet:
    """An integer item: ``n``, ``a-b``, ``a/n``, each with optional ``@k``."""
    body, _, skip = s.partition("@")
    stride = Fraction(1)
    if skip:
        try:
            stride = Fraction(int(skip.strip()))
        except ValueError as exc:
            raise DsError(f"invalid skip '{skip}'") from exc
    body = body.strip().replace("#", "")
    try:
        if "/" in body:
            a, n = body.split("/", 1)
            lo = int(a)
            return IndexSet.progression(conv(lo), conv(lo + int(n) - 1), stride)
        dash = body.find("-", 1)
        if dash > 0:
            return IndexSet.progression(conv(int(body[:dash])), conv(int(body[dash + 1 :])), stride)
        return IndexSet.interval(conv(int(body)), conv(int(body)))
    except ValueError as exc:
        raise DsError(f"invalid integer value '{s}'") from exc


def _int_item(pk: PrimeKey, series: Series, item: str) -> IndexSet:
    """One item of an integer prime-key list (HARPNUM, CAMERA, WAVELNTH)."""
    s = item.strip()
    if pk.kind == "harp":
        assert series.harps is not None
        lo, hi = 1, series.harps.max_harp
    else:
        lo, hi = min(pk.values), max(pk.values)
    if s == "^":
        return IndexSet.interval(lo, lo)
    if s == "$":
        return IndexSet.interval(hi, hi)
    return _index_item(s, lambda v: v)


def _key_filter(series: Series, pk: PrimeKey, body: str) -> IndexSet:
    """Parse the value list of one prime key."""
    items = split_top(body)
    out = IndexSet()
    for item in items:
        if not item.strip():
            raise DsError(f"empty value in '[{body}]'")
        part = _slot_item(pk, series, item) if pk.kind == "slot" else _int_item(pk, series, item)
        try:
            out = out.union(part)
        except OverflowError as exc:
            raise DsError("too many records in overlapping ranges") from exc
    return out


def _recnum_filter(series: Series, body: str) -> IndexSet:
    """Parse ``#r``, ``#a-#b``, ``#a/n`` lists after ``:``."""
    out = IndexSet()
    total = series.count()
    for item in split_top(body):
        s = item.strip()
        if s in ("#^", "#$"):
            r = series.first_recnum + (0 if s == "#^" else total - 1)
            part = IndexSet.interval(r, r)
        elif s.startswith("#"):
            part = _index_item(s[1:], lambda v: v)
        else:
            raise DsError(f"record number must start with '#': '{s}'")
        out = out.union(part)
    return out


def _parse_subset(find: Callable[[str], Series | None], text: str) -> SubsetSpec:
    """Parse one subset ``series[...]...{...}``."""
    s = text.strip()
    n = 0
    while n < len(s) and (s[n].isalnum() or s[n] in "._"):
        n += 1
    name = s[:n]
    if not name or not name[0].isalpha():
        raise DsError(f"invalid series name in '{text}'")
    series = find(name)
    if series is None:
        raise DsError("series not found", "series")
    spec = SubsetSpec(series, [None] * len(series.pkeys))
    pos = n
    keynum = 0
    while pos < len(s):
        ch = s[pos]
        if ch.isspace():
            pos += 1
            continue
        if ch == "[":
            end = _closing(s, pos)
            keynum = _apply_bracket(spec, s[pos + 1 : end], keynum)
            pos = end + 1
        elif ch == "{":
            end = s.find("}", pos)
            if end < 0:
                raise DsError(f"unterminated segment list in '{text}'")
            spec.segments = _segments(series, s[pos + 1 : end])
            pos = end + 1
        else:
            raise DsError(f"Series name must be followed by '[', found '{s[pos:]}'")
    return spec


def _closing(s: str, pos: int) -> int:
    """Index of the ``]`` closing the bracket at ``pos`` (where clauses may hold ``]``)."""
    inner = s[pos + 1 : pos + 2]
    if inner in ("?", "!"):
        end = s.find(inner + "]", pos + 2)
        if end < 0:
            raise DsError(f"unterminated where clause in '{s}'")
        return end + 1
    end = s.find("]", pos)
    if end < 0:
        raise DsError(f"unterminated '[' in '{s}'")
    return end


def _apply_bracket(spec: SubsetSpec, body: str, keynum: int) -> int:
    """Apply one bracket to the subset; return the next positional prime-key number."""
    series = spec.series
    b = body.strip()
    if b[:1] in ("?", "!"):
        if len(b) < 2 or b[-1] != b[0]:
            raise DsError(f"Embedded SQL query should end with '{b[:1]}'")
        spec.wheres.append(compile_where(series, b[1:-1]))
        return keynum
    if not b:
        return keynum + 1
    if b.startswith(":"):
        spec.recnums = _recnum_filter(series, b[1:])
        return keynum
    name, eq, rest = b.partition("=")
    if eq and name.strip().replace("_", "").isalnum() and not name.strip()[:1].isdigit():
        idx = next(
            (i for i, p in enumerate(series.pkeys) if p.name.lower() == name.strip().lower()),
            None,
        )
        if idx is None:
            raise DsError(f"'{name.strip()}' is not a primary index for series '{series.name}'")
        spec.keys[idx] = _intersect(spec.keys[idx], _key_filter(series, series.pkeys[idx], rest))
        return keynum
    if keynum >= len(series.pkeys):
        raise DsError(
            f"More primary keys are implied than exist ({len(series.pkeys)}) "
            f"for series {series.name}"
        )
    pk = series.pkeys[keynum]
    spec.keys[keynum] = _intersect(spec.keys[keynum], _key_filter(series, pk, b))
    return keynum + 1


def _intersect(a: IndexSet | None, b: IndexSet) -> IndexSet:
    """Intersection of two filters on the same key (None = everything)."""
    if a is None:
        return b
    if len(a) > len(b):
        a, b = b, a
    return IndexSet.of(v for v in a if v in b)


def _segments(series: Series, body: str) -> tuple[Segment, ...]:
    """Validate a ``{seg,...}`` list (case-insensitive; ``**ALL**`` allowed)."""
    out: list[Segment] = []
    for raw in body.split(","):
        name = raw.strip()
        if not name:
            continue
        if name.upper() == "**ALL**":
            out.extend(s for s in series.segments if s not in out)
            continue
        seg = series.segment(name)
        if seg is None:
            raise DsError(f"Invalid segment name '{name}' for series '{series.name}'", "segment")
        if seg not in out:
            out.append(seg)
    return tuple(out)


def parse_ds(find: Callable[[str], Series | None], ds: str) -> list[SubsetSpec]:
    """Parse a whole record-set specification into subsets of one series."""
    if not ds or not ds.strip():
        raise DsError("empty record-set specification")
    subsets = [_parse_subset(find, part) for part in split_top(ds)]
    first = subsets[0].series
    for sub in subsets[1:]:
        if sub.series is not first:
            raise DsError(
                f"record-set subsets name different series ('{first.name}' and "
                f"'{sub.series.name}')", "mixed",
            )
    return subsets
