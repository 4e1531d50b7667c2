"""What to download: a :class:`Query` is one DRMS record set, built three ways.

* :meth:`Query.from_recordset` takes a record-set string as the JSOC writes it;
* :meth:`Query.build` assembles one from a series, a time range, prime-key values, segments
  and simple where clauses;
* :meth:`Query.from_job_lines` / :meth:`Query.from_job_file` batch a job list
  (``HARPNUM.T_REC:A`` lines) into few record sets, one subset per HARP:
  ``hmi.sharp_cea_720s[7020][t1,t2,...]{Br},hmi.sharp_cea_720s[7021][...]{Br}``.

Prime-key order for :meth:`Query.build` comes from a :class:`~asyncjsoc.SeriesInfo` when one
is passed. Without it a small built-in table is used (see :data:`KNOWN_PRIMEKEYS`); for a
series not in the table, only the time range may be given and it goes in the first bracket.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from typing import SupportsIndex

from asyncjsoc._jobfile import JobList, parse_job_lines, read_job_file
from asyncjsoc._models import SeriesInfo
from asyncjsoc._recordset import (
    Filter,
    IntValue,
    Item,
    NumberValue,
    Range,
    RecordSet,
    Select,
    Skip,
    Span,
    Subset,
    TimeValue,
    Where,
    canonical_recordset,
    identity_recordset,
    is_time_item,
    parse_items,
    parse_recordset,
    segment_word_hint,
)
from asyncjsoc._times import DurationLike, TimeLike, parse_duration, to_tai_parts
from asyncjsoc.exceptions import InvalidInputError, RecordSetSyntaxError

__all__ = ["KNOWN_PRIMEKEYS", "PrimeKeyValue", "Query", "known_primekeys"]

KNOWN_PRIMEKEYS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("hmi.sharp_", ("HARPNUM", "T_REC")),
    ("hmi.mharp_", ("HARPNUM", "T_REC")),
    ("hmi.m_", ("T_REC", "CAMERA")),
    ("hmi.v_", ("T_REC", "CAMERA")),
    ("hmi.ic_", ("T_REC", "CAMERA")),
    ("hmi.lw_", ("T_REC", "CAMERA")),
    ("aia.lev1", ("T_REC", "WAVELNTH")),
)
"""Series-name prefixes (lower case) and their prime keys, used when no SeriesInfo is given:
``hmi.sharp_*`` and ``hmi.mharp_*`` are ``HARPNUM, T_REC``; ``hmi.M_*``, ``hmi.V_*``,
``hmi.Ic_*``, ``hmi.Lw_*`` are ``T_REC, CAMERA``; ``aia.lev1*`` are ``T_REC, WAVELNTH``."""

PrimeKeyValue = SupportsIndex | str | range | Sequence[SupportsIndex | str]
"""A prime-key constraint for :meth:`Query.build`: ``7302``, ``"7300-7310"``,
``range(7300, 7311)``, ``[171, 193]``; integers may be numpy's (anything with
``__index__``)."""

_SERIES = re.compile(r"[A-Za-z][A-Za-z0-9_]*\.[A-Za-z0-9_]+")
_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WHERE = re.compile(
    r"\s*(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op><=|>=|!=|<>|<|>|=)\s*"
    r"(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*")
_WHERE_HINT = "where clauses are KEY op number with op one of < <= > >= = != <>, e.g. LON_MIN>-70"


def known_primekeys(series: str) -> tuple[str, ...] | None:
    """The prime keys of a series from the built-in table, or ``None`` when not known."""
    lowered = series.lower()
    return next((keys for prefix, keys in KNOWN_PRIMEKEYS if lowered.startswith(prefix)), None)


@dataclass(frozen=True)
class Query:
    """One record set to download, parsed.

    Attributes
    ----------
    series
        The series name as written.
    segments
        The selected segments, or ``None`` for all of the series' segments.
    parsed
        The parsed record set (what the planner splits).
    """

    series: str
    segments: tuple[str, ...] | None
    parsed: RecordSet

    def __post_init__(self) -> None:
        _refuse_backwards_ranges(self.parsed)

    def recordset(self) -> str:
        """The whole DRMS record-set string (``ds``)."""
        return str(self.parsed)

    def canonical(self) -> str:
        """The record set with every number in one canonical form (see
        :func:`~asyncjsoc._recordset.canonical_recordset`): what identifies the selection
        in a pull's state, however its numbers were written."""
        return canonical_recordset(self.parsed)

    def identity(self) -> str:
        """:meth:`canonical` with the spellings DRMS does not tell apart folded (see
        :func:`~asyncjsoc._recordset.identity_recordset`): series and segment case, segment
        order, spaces in record-number lists. What a pull's state is keyed by."""
        return identity_recordset(self.parsed)

    def __str__(self) -> str:
        """Same as :meth:`recordset`."""
        return self.recordset()

    @property
    def time_range(self) -> Range | Span | None:
        """The first time range or span of a single-subset query (what a split cuts), if any."""
        if len(self.parsed.subsets) != 1:
            return None
        for f in self.parsed.filters:
            if isinstance(f, Select) and len(f.items) == 1:
                item = f.items[0]
                if isinstance(item, Range | Span) and is_time_item(item):
                    return item
        return None

    @property
    def n_subsets(self) -> int:
        """How many comma-separated subsets the record set has (one per HARP for job lists)."""
        return len(self.parsed.subsets)

    # -------------------------------------------------------------------------- constructors

    @classmethod
    def from_recordset(cls, text: str) -> Query:
        """A query from a DRMS record-set string.

        Parameters
        ----------
        text
            For example ``hmi.M_45s[2012.01.01_00:00:00_TAI/1h@12m]{magnetogram}``.

        Raises
        ------
        RecordSetSyntaxError
            With the position of the problem.
        InvalidInputError
            For an empty segment list ``{}`` (it selects no file).
        """
        parsed = parse_recordset(text)
        if any(subset.segments == () for subset in parsed.subsets):
            raise InvalidInputError(
                f"{text!r} asks for no segment ({{}}): there would be no file to download",
                hint="name the segments, e.g. {Br,Bp}, or leave the braces out for all of them")
        # A subset given twice selects the same records twice: the plan would count them
        # twice and the export list each file twice. It is kept once.
        # (Compared as DRMS reads them: {Br} and {br} are one, see identity_recordset.)
        seen: set[str] = set()
        kept: list[Subset] = []
        for sub in parsed.subsets:
            key = identity_recordset(RecordSet((sub,)))
            if key not in seen:
                seen.add(key)
                kept.append(sub)
        unique = tuple(kept)
        if len(unique) < len(parsed.subsets):
            parsed = RecordSet(unique)
        return cls(parsed.series, parsed.segments, parsed)

    @classmethod
    def build(
        cls,
        series: str,
        *,
        start: TimeLike,
        end: TimeLike,
        cadence: DurationLike | None = None,
        primekeys: Mapping[str, PrimeKeyValue] | None = None,
        segments: Sequence[str] | None = None,
        where: Sequence[str] | str | None = None,
        series_info: SeriesInfo | None = None,
    ) -> Query:
        """Assemble a record set from its parts.

        Parameters
        ----------
        series
            ``hmi.sharp_cea_720s``, ``aia.lev1_euv_12s``, ...
        start, end
            The time range, both ends included (JSOC strings, ``datetime`` or astropy
            ``Time``); written as TAI ``T_REC`` values.
        cadence
            Optional subsampling (``"96m"``, ``720``, ``12 * u.s``...).
        primekeys
            Other prime keys, e.g. ``{"HARPNUM": 7302}``, ``{"WAVELNTH": [171, 193]}``,
            ``{"HARPNUM": "7300-7310"}`` or ``range(7300, 7311)``.
        segments
            Segment names; ``None`` selects all of the series' segments.
        where
            Clauses ``KEY op number`` (``op`` in ``< <= > >= = != <>``), ANDed together.
        series_info
            When given, fixes the prime-key order and checks key and segment names.

        Returns
        -------
        Query
            e.g. ``hmi.sharp_cea_720s[7302][2018.09.08_00:00:00_TAI-2018.09.09_00:00:00_TAI@96m]
            [? LON_MIN>-70 ?]{Bp,Bt,Br}``.

        Raises
        ------
        InvalidInputError
            For a bad series name, time, cadence, key, value, segment or where clause, or
            ``start`` after ``end``.
        """
        if not isinstance(series, str) or _SERIES.fullmatch(series) is None:
            raise InvalidInputError(f"bad series name {series!r}",
                                    hint="series names look like hmi.sharp_cea_720s")
        first = to_tai_parts(start)
        last = to_tai_parts(end)
        if first > last:
            raise InvalidInputError(f"start {first} is after end {last}")
        step = None if cadence is None else parse_duration(cadence)
        time_item = Range(TimeValue(first), TimeValue(last), step)

        if primekeys is not None and not isinstance(primekeys, Mapping):
            raise InvalidInputError(f"primekeys must map prime keys to values, not "
                                    f"{primekeys!r}", hint="e.g. primekeys={'HARPNUM': 7302}")
        order, time_key = _primekey_order(series, series_info, bool(primekeys))
        given = {k.upper(): (k, v) for k, v in (primekeys or {}).items()}
        known = {k.upper() for k in order}
        for upper, (key, _) in given.items():
            if upper not in known:
                raise InvalidInputError(f"{key!r} is not a prime key of {series}",
                                        hint=f"its prime keys are {', '.join(order)}")
            if upper == time_key.upper():
                raise InvalidInputError(
                    f"{key} is the time key: give its range as --start/--end (start=/end= in "
                    "Python), not as a prime key value")
        filters: list[Filter] = []
        for key in order:
            if key.upper() == time_key.upper():
                filters.append(Select((time_item,)))
            elif key.upper() in given:
                name, value = given[key.upper()]
                filters.append(Select(_primekey_items(name, value)))
            else:
                filters.append(Skip())
        while filters and isinstance(filters[-1], Skip):
            filters.pop()
        clauses = _where_clauses(where, series_info)
        if clauses:
            filters.append(Where(" AND ".join(clauses)))
        segs = _check_segments(segments, series_info)
        parsed = RecordSet((Subset(series, tuple(filters), segs),))
        return cls(series, segs, parsed)

    @classmethod
    def from_job_lines(
        cls,
        lines: Iterable[str],
        *,
        series: str = "hmi.sharp_cea_720s",
        segments: Sequence[str] | None = None,
        source: str = "<jobs>",
    ) -> Query:
        """A query from job lines ``HARPNUM.T_REC:A`` (``7020.20170524_222400_TAI``).

        Blank lines and ``#`` comments are allowed; duplicates are dropped. The records are
        grouped by HARP into one subset each: ``series[harp][t1,t2,...]{segments}``.

        Raises
        ------
        JobFileError
            For a bad line, with its 1-based number.
        InvalidInputError
            For a bad series or segment name, or an empty list.
        """
        return cls._from_jobs(parse_job_lines(lines, source=source), series, segments)

    @classmethod
    def from_job_file(
        cls,
        path: str | PathLike[str],
        *,
        series: str = "hmi.sharp_cea_720s",
        segments: Sequence[str] | None = None,
    ) -> Query:
        """Like :meth:`from_job_lines`, reading the lines from ``path`` (blocking read)."""
        return cls._from_jobs(read_job_file(path), series, segments)

    @classmethod
    def _from_jobs(cls, jobs: JobList, series: str, segments: Sequence[str] | None) -> Query:
        """Group a parsed job list into one subset per HARP."""
        if not isinstance(series, str) or _SERIES.fullmatch(series) is None:
            raise InvalidInputError(f"bad series name {series!r}")
        segs = _check_segments(segments, None)
        subsets = tuple(
            Subset(series,
                   (Select((IntValue(harp),)), Select(tuple(TimeValue(t) for t in times))),
                   segs)
            for harp, times in jobs.items())
        return cls(series, segs, RecordSet(subsets))


def _primekey_order(series: str, info: SeriesInfo | None, has_others: bool
                    ) -> tuple[tuple[str, ...], str]:
    """The prime keys of ``series`` in order and the name of its time key."""
    if info is not None:
        time_key = info.time_primekey
        if time_key is None:
            raise InvalidInputError(f"{series} has no time prime key; write the record set "
                                    "yourself and use Query.from_recordset")
        return info.primekeys, time_key
    order = known_primekeys(series)
    if order is None:
        if has_others:
            raise InvalidInputError(
                f"the prime-key order of {series} is not known here",
                hint="pass series_info= (from the API) or use Query.from_recordset")
        return ("T_REC",), "T_REC"
    return order, "T_REC"


def _refuse_backwards_ranges(rs: RecordSet) -> None:
    """Refuse a range whose start is after its end: DRMS would quietly select nothing.

    Raises
    ------
    InvalidInputError
        Naming the range, with the order to write it in.
    """
    for subset in rs.subsets:
        for flt in subset.filters:
            for item in flt.items if isinstance(flt, Select) else ():
                if not isinstance(item, Range):
                    continue
                start, end = item.start, item.end
                backwards = False
                if isinstance(start, TimeValue) and isinstance(end, TimeValue):
                    backwards = bool(start.parts.to_time() > end.parts.to_time())
                elif isinstance(start, IntValue | NumberValue) and isinstance(
                        end, IntValue | NumberValue):
                    backwards = start.value > end.value
                if backwards:
                    raise InvalidInputError(
                        f"the range {item} in {str(rs)!r} runs backwards (its start is after "
                        "its end)", hint="write the earlier value first, e.g. [a-b] with a <= b")


def _primekey_items(key: str, value: PrimeKeyValue) -> tuple[Item, ...]:
    """The bracket items for one prime-key constraint."""
    if isinstance(value, bool):
        raise InvalidInputError(f"bad value {value!r} for {key}")
    if not isinstance(value, int | str | range) and callable(getattr(value, "tolist", None)):
        # numpy scalars and arrays, pandas Series: their Python equivalents
        value = value.tolist()  # type: ignore[union-attr]
    if isinstance(value, bool) or (isinstance(value, list) and not value):
        raise InvalidInputError(f"bad value {value!r} for {key}")
    if isinstance(value, SupportsIndex) and not isinstance(value, int):
        try:
            value = operator.index(value)
        except TypeError:
            raise InvalidInputError(f"bad value {value!r} for {key}") from None
    if isinstance(value, int):
        if value < 0:
            raise InvalidInputError(f"bad value {value!r} for {key}: negative")
        return (IntValue(value),)
    if isinstance(value, range):
        if value.step != 1 or len(value) == 0 or value.start < 0:
            raise InvalidInputError(f"bad range {value!r} for {key}: need step 1, not empty")
        if len(value) == 1:
            return (IntValue(value.start),)
        return (Range(IntValue(value.start), IntValue(value.stop - 1)),)
    if isinstance(value, str):
        if not value.strip():
            raise InvalidInputError(f"empty value for {key}")
        try:
            return parse_items(value)
        except RecordSetSyntaxError as exc:
            raise InvalidInputError(f"bad value {value!r} for {key}: {exc.message}",
                                    hint=exc.hint) from None
    if isinstance(value, Sequence) and value:
        items: list[Item] = []
        for v in value:
            if isinstance(v, SupportsIndex | str) and not isinstance(v, bool):
                items.extend(_primekey_items(key, v))
            else:
                raise InvalidInputError(f"bad value {v!r} in the list for {key}")
        return tuple(items)
    raise InvalidInputError(f"bad value {value!r} for {key}",
                            hint="use an int, a string like '7300-7310', a range or a list")


def _where_clauses(where: Sequence[str] | str | None, info: SeriesInfo | None
                   ) -> list[str]:
    """Validated and normalised ``KEY op number`` clauses."""
    if where is None:
        return []
    if not isinstance(where, str | Iterable):
        raise InvalidInputError(f"bad where clause {where!r}", hint=_WHERE_HINT)
    clauses = [where] if isinstance(where, str) else list(where)
    out: list[str] = []
    for clause in clauses:
        m = _WHERE.fullmatch(clause) if isinstance(clause, str) else None
        if m is None:
            raise InvalidInputError(f"bad where clause {clause!r}", hint=_WHERE_HINT)
        key = m.group("key")
        if info is not None and info.keyword(key) is None:
            raise InvalidInputError(f"{key!r} is not a keyword of {info.name}",
                                    hint=_WHERE_HINT)
        out.append(f"{key}{m.group('op')}{m.group('num')}")
    return out


def _check_segments(segments: Sequence[str] | None, info: SeriesInfo | None
                    ) -> tuple[str, ...] | None:
    """Validated segment names, duplicates dropped (DRMS segment names are case-insensitive:
    ``Br`` and ``br`` are one), order kept."""
    if segments is None:
        return None
    if isinstance(segments, str):
        segments = [s.strip() for s in segments.split(",")]
    names: list[str] = []
    for name in segments:
        if not isinstance(name, str) or _SEGMENT.fullmatch(name) is None:
            hint = segment_word_hint(name) if isinstance(name, str) else None
            raise InvalidInputError(f"bad segment name {name!r}", hint=hint)
        if info is not None and info.segment(name) is None:
            available = ", ".join(s.name for s in info.segments)
            raise InvalidInputError(f"{info.name} has no segment {name!r}",
                                    hint=f"its segments are {available}")
        if name.lower() not in (n.lower() for n in names):
            names.append(name)
    if not names:
        raise InvalidInputError("an empty segment list selects nothing; pass None for all")
    return tuple(names)
