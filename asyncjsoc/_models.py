"""Immutable values shared across asyncjsoc's modules.

These are plain frozen dataclasses; they carry no behaviour that talks to the network or disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Chunk",
    "EmailStatus",
    "ExportFile",
    "ExportMethod",
    "ExportProtocol",
    "ExportStatus",
    "KeywordInfo",
    "Plan",
    "RemoteFile",
    "SegmentInfo",
    "SeriesInfo",
]

ExportMethod = Literal["url_quick", "url", "url-tar"]
"""How the JSOC stages an export: ``url_quick`` (immediate for online as-is data), ``url``
(one file per segment), ``url-tar`` (one tar file)."""

ExportProtocol = Literal["as-is", "fits"]
"""``as-is`` ships the stored files; ``fits`` writes FITS files with the keywords in the header."""


@dataclass(frozen=True, slots=True)
class KeywordInfo:
    """One keyword of a series, from ``series_struct``."""

    name: str
    type: str
    units: str = ""
    note: str = ""


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """One segment of a series, from ``series_struct``."""

    name: str
    protocol: str = ""
    units: str = ""
    dims: str = ""
    note: str = ""


@dataclass(frozen=True, slots=True)
class SeriesInfo:
    """What ``series_struct`` says about a series, in typed form.

    ``primekeys`` are the user-facing names in declared order (``T_REC``, not ``T_REC_index``);
    ``time_steps`` maps each slotted time prime key to its step in seconds.
    """

    name: str
    primekeys: tuple[str, ...]
    keywords: tuple[KeywordInfo, ...]
    segments: tuple[SegmentInfo, ...]
    time_steps: dict[str, float] = field(default_factory=dict)
    note: str = ""

    def keyword(self, name: str) -> KeywordInfo | None:
        """The keyword called ``name`` (case-insensitive), or ``None``."""
        lowered = name.lower()
        return next((k for k in self.keywords if k.name.lower() == lowered), None)

    def segment(self, name: str) -> SegmentInfo | None:
        """The segment called ``name`` (case-insensitive), or ``None``."""
        lowered = name.lower()
        return next((s for s in self.segments if s.name.lower() == lowered), None)

    @property
    def time_primekey(self) -> str | None:
        """The first prime key of type ``time``, if the series has one."""
        for pk in self.primekeys:
            kw = self.keyword(pk)
            if kw is not None and kw.type == "time":
                return kw.name
        return None


@dataclass(frozen=True, slots=True)
class EmailStatus:
    """The registration state of one notify address (``checkAddress.sh``).

    ``code`` is the server's: 2 registered, 3 pending, 4 unknown, negative for bad input or
    server trouble.
    """

    email: str
    code: int
    message: str

    @property
    def registered(self) -> bool:
        """Only code 2 means the address can be used for exports."""
        return self.code == 2


@dataclass(frozen=True, slots=True)
class ExportFile:
    """One data row of an export: the record it belongs to and the file name the server gave.

    For staged exports ``filename`` is relative to the export ``dir``; for a ``url_quick``
    answer it is an absolute SUMS path. ``NoDataFile`` rows are kept so callers can report them.
    """

    record: str
    filename: str


@dataclass(frozen=True, slots=True)
class ExportStatus:
    """One answer of ``exp_request`` or ``exp_status``, with types repaired.

    The JSOC sends every value of a finished export's index as a string; this model holds them
    as numbers. ``files`` is empty until ``status == 0``.
    """

    status: int
    request_id: str | None
    method: str | None = None
    protocol: str | None = None
    wait: float = 0.0
    rcount: int | None = None
    count: int | None = None
    size_mb: float | None = None
    dir: str | None = None
    files: tuple[ExportFile, ...] = ()
    tarfile: str | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        """The export is finished and its files can be fetched."""
        return self.status == 0

    @property
    def pending(self) -> bool:
        """The server is still working (1 and 2; also 12, test mode; 6 is handled by callers)."""
        return self.status in (1, 2, 12)


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """A file to fetch: its URL, where it goes (relative to the output dir) and its record."""

    url: str
    relpath: str
    record: str
    request_id: str | None = None
    expected_size: int | None = None


@dataclass(frozen=True, slots=True)
class Chunk:
    """One export request's worth of a plan: a record set and what it is expected to select."""

    index: int
    recordset: str
    n_records: int
    n_files: int


@dataclass(frozen=True, slots=True)
class Plan:
    """A query split into chunks, each under the per-request caps. Computed without exporting."""

    series: str
    chunks: tuple[Chunk, ...]
    n_records: int
    n_files: int
    estimated_bytes: int | None = None
