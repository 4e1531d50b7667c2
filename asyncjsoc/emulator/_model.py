"""Emulated DRMS series and records: structure, record numbering and SUMS locations.

Every record is a pure function of its series and prime-key values. Records are
numbered in DRMS order (``first_recnum`` + position), and a storage unit number
(sunum) encodes the series and record number, so SUMS paths invert statelessly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ._harps import HarpSchedule
from ._times import format_iso_utc, format_tai

__all__ = [
    "DsError",
    "Keyword",
    "Link",
    "PrimeKey",
    "Record",
    "Segment",
    "Series",
]

DsErrorKind = Literal["series", "syntax", "segment", "mixed"]


class DsError(ValueError):
    """A record-set specification the server rejects.

    Parameters
    ----------
    message
        The server-style error text.
    kind
        ``"series"`` (unknown series), ``"syntax"`` (bad query), ``"segment"``, or ``"mixed"``
        (subsets of different series).
    """

    def __init__(self, message: str, kind: DsErrorKind = "syntax") -> None:
        super().__init__(message)
        self.message = message
        self.kind: DsErrorKind = kind


@dataclass(frozen=True)
class Keyword:
    """One keyword of a series as jsoc_info describes it."""

    name: str
    type: str
    units: str
    note: str
    recscope: str
    defval: str
    linkinfo: str | None = None


@dataclass(frozen=True)
class Segment:
    """One data segment; ``filename`` is the stored file name with its extension."""

    name: str
    protocol: str
    type: str
    units: str | None
    dims: str | None
    note: str
    filename: str


@dataclass(frozen=True)
class Link:
    """A link from a series to another series."""

    name: str
    target: str
    kind: str
    note: str


@dataclass(frozen=True)
class PrimeKey:
    """A user-facing prime key: a slotted time, a small integer set, or HARPNUM."""

    name: str
    kind: Literal["slot", "int", "harp"]
    epoch: float = 0.0
    step: float = 0.0
    utc: bool = False
    values: tuple[int, ...] = ()

    def slot_of(self, t: float) -> int:
        """Slot index holding TAI time ``t`` (nearest slot, halves round up)."""
        return math.floor((t - self.epoch) / self.step + 0.5)

    def slot_time(self, i: int) -> float:
        """TAI time of slot ``i``."""
        return self.epoch + i * self.step

    def format(self, value: int) -> str:
        """The jsoc_info string for a prime-key value."""
        if self.kind != "slot":
            return str(value)
        t = self.slot_time(value)
        return format_iso_utc(t) if self.utc else format_tai(t)


@dataclass(eq=False)
class Series:
    """A DRMS series: its structure (as series_struct shows it) and its record layout."""

    name: str
    note: str
    pkeys: tuple[PrimeKey, ...]
    keywords: tuple[Keyword, ...]
    segments: tuple[Segment, ...]
    links: tuple[Link, ...]
    meta: dict[str, Any]
    first_recnum: int
    sunum_base: int
    slot_lo: int
    slot_hi: int
    harps: HarpSchedule | None = None
    _kw_index: dict[str, Keyword] = field(init=False, repr=False)
    _seg_index: dict[str, Segment] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._kw_index = {}
        for k in self.keywords:
            self._kw_index.setdefault(k.name.lower(), k)
        self._seg_index = {s.name.lower(): s for s in self.segments}

    # -- structure -------------------------------------------------------------
    @property
    def primekeys(self) -> tuple[str, ...]:
        """User-facing prime-key names in order."""
        return tuple(p.name for p in self.pkeys)

    @property
    def unitsize(self) -> int:
        """Records per storage unit."""
        return int(self.meta.get("unitsize", 1))

    @property
    def time_key(self) -> PrimeKey:
        """The slotted time prime key."""
        return next(p for p in self.pkeys if p.kind == "slot")

    def keyword(self, name: str) -> Keyword | None:
        """Keyword by name (case-insensitive)."""
        return self._kw_index.get(name.lower())

    def segment(self, name: str) -> Segment | None:
        """Segment by name (case-insensitive)."""
        return self._seg_index.get(name.lower())

    def segment_by_filename(self, filename: str) -> Segment | None:
        """Segment whose stored file name is ``filename``."""
        return next((s for s in self.segments if s.filename == filename), None)

    def series_struct(self) -> dict[str, Any]:
        """The full ``jsoc_info?op=series_struct`` JSON body (status 0)."""
        total = self.count()
        first = self.record_at(0).spec() if total else "NA"
        last = self.record_at(total - 1).spec() if total else "NA"
        m = self.meta
        body: dict[str, Any] = {
            "note": self.note,
            "retention": m["retention"],
            "stagingretention": m["stagingretention"],
            "unitsize": m["unitsize"],
            "archive": m["archive"],
            "tapegroup": m["tapegroup"],
            "primekeys": list(self.primekeys),
            "primekeysinfo": [_pk_info(p) for p in self.pkeys],
            "dbindex": list(self.primekeys),
            "keywords": [_kw_json(k) for k in self.keywords],
            "segments": [
                {
                    "name": s.name,
                    "type": s.type,
                    "units": s.units,
                    "protocol": s.protocol,
                    "dims": s.dims,
                    "note": s.note,
                }
                for s in self.segments
            ],
            "links": [
                {"name": ln.name, "target": ln.target, "kind": ln.kind, "note": ln.note}
                for ln in self.links
            ],
            "Interval": {
                "FirstRecord": first,
                "FirstRecnum": self.first_recnum if total else "NA",
                "LastRecord": last,
                "LastRecnum": self.first_recnum + total - 1 if total else "NA",
                "MaxRecnum": self.first_recnum + total - 1 if total else "NA",
            },
            "runtime": 0.05,
            "status": 0,
        }
        return body

    # -- record layout -----------------------------------------------------------
    def count(self) -> int:
        """Number of records in the series."""
        if self.harps is not None:
            return self.harps.prefix[-1]
        return (self.slot_hi - self.slot_lo + 1) * self._nvals()

    def _nvals(self) -> int:
        """Number of values of the non-time prime key (1 when there is none)."""
        return max((len(p.values) for p in self.pkeys if p.kind == "int"), default=1)

    def record_at(self, pos: int) -> Record:
        """The record at 0-based position ``pos`` in DRMS order."""
        if not 0 <= pos < self.count():
            raise IndexError(pos)
        if self.harps is not None:
            h = self.harps.harp_of_position(pos)
            slot = self.harps.starts[h - 1] + pos - self.harps.prefix[h - 1]
            return Record(self, self.first_recnum + pos, (h, slot))
        nv = self._nvals()
        slot = self.slot_lo + pos // nv
        vals = tuple(slot if p.kind == "slot" else p.values[pos % nv] for p in self.pkeys)
        return Record(self, self.first_recnum + pos, vals)

    def position(self, values: tuple[int, ...]) -> int | None:
        """Position of the record with these prime-key values, or None if absent."""
        if self.harps is not None:
            h, slot = values
            if not 1 <= h <= self.harps.max_harp:
                return None
            s, e = self.harps.window(h)
            return self.harps.prefix[h - 1] + slot - s if s <= slot <= e else None
        pos = 0
        for p, v in zip(self.pkeys, values, strict=True):
            if p.kind == "slot":
                if not self.slot_lo <= v <= self.slot_hi:
                    return None
                pos += (v - self.slot_lo) * self._nvals()
            else:
                if v not in p.values:
                    return None
                pos += p.values.index(v)
        return pos

    def record(self, values: tuple[int, ...]) -> Record | None:
        """The record with these prime-key values (slot indices for times), or None."""
        pos = self.position(values)
        return None if pos is None else Record(self, self.first_recnum + pos, values)

    def record_by_recnum(self, recnum: int) -> Record | None:
        """The record with this record number, or None."""
        pos = recnum - self.first_recnum
        return self.record_at(pos) if 0 <= pos < self.count() else None


@dataclass(frozen=True, slots=True)
class Record:
    """One record of a series, identified by its prime-key values (slot indices for times)."""

    series: Series
    recnum: int
    values: tuple[int, ...]

    @property
    def sunum(self) -> int:
        """Storage unit number (encodes the series and record number)."""
        return self.series.sunum_base + self.recnum // self.series.unitsize

    @property
    def slot(self) -> int:
        """Slot of the record inside its storage unit."""
        return self.recnum % self.series.unitsize

    @property
    def online(self) -> bool:
        """Whether the record's storage unit is on disk (always, in the emulator)."""
        return True

    @property
    def sum_dir(self) -> str:
        """The storage unit directory, ``/SUM<n>/D<sunum>``."""
        return f"/SUM{self.sunum % 97 + 1}/D{self.sunum}"

    def value(self, name: str) -> int:
        """Raw prime-key value (slot index for times) by prime-key name."""
        for p, v in zip(self.series.pkeys, self.values, strict=True):
            if p.name.lower() == name.lower():
                return v
        raise KeyError(name)

    def t_rec(self) -> float:
        """TAI time of the record's time slot."""
        tk = self.series.time_key
        return tk.slot_time(self.value(tk.name))

    def key(self, name: str) -> str:
        """The jsoc_info string value of a keyword (KeyError if the series lacks it)."""
        from ._keyvals import key_value

        return key_value(self, name)

    def spec(self) -> str:
        """Record specification in DB spelling, e.g. ``hmi.M_45s[2012.01.01_00:00:45_TAI][2]``."""
        parts = "".join(
            f"[{p.format(v)}]" for p, v in zip(self.series.pkeys, self.values, strict=True)
        )
        return self.series.name + parts

    def segment_path(self, seg: Segment) -> str:
        """SUMS path of a segment file, ``/SUM<n>/D<sunum>/S<slot:05d>/<filename>``."""
        return f"{self.sum_dir}/S{self.slot:05d}/{seg.filename}"


def _pk_info(p: PrimeKey) -> dict[str, Any]:
    """primekeysinfo entry of a prime key."""
    if p.kind == "slot":
        step = f"{p.step:.6f}" if p.utc else f"{p.step:.1f}"
        return {"name": p.name, "slotted": 1, "step": step}
    return {"name": p.name, "slotted": 0}


def _kw_json(k: Keyword) -> dict[str, Any]:
    """series_struct entry of a keyword."""
    out: dict[str, Any] = {"name": k.name}
    if k.linkinfo is not None:
        out["linkinfo"] = k.linkinfo
    out.update(type=k.type, recscope=k.recscope, defval=k.defval, units=k.units, note=k.note)
    return out
