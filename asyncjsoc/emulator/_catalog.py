"""The emulator's catalog: built-in series, record-set selection and SUMS path lookup.

This is the facade the emulator's HTTP layer uses; it re-exports the model types.
"""

from __future__ import annotations

import re

from ._builtin import SUNUM_BLOCK, builtin_series
from ._dsparse import parse_ds
from ._filenamefmt import default_filenamefmt, expand_filenamefmt
from ._model import DsError, Keyword, Link, PrimeKey, Record, Segment, Series
from ._select import Selection

__all__ = [
    "Catalog",
    "DsError",
    "Keyword",
    "Link",
    "PrimeKey",
    "Record",
    "Segment",
    "Selection",
    "Series",
    "default_filenamefmt",
    "expand_filenamefmt",
]

_SUMS_PATH = re.compile(r"^/SUM(\d+)/D(\d+)/S(\d{5})/([^/]+)$")


class Catalog:
    """All series the emulator serves, with DRMS record-set selection."""

    def __init__(self) -> None:
        self._series: tuple[Series, ...] = builtin_series()
        self._by_name = {s.name.lower(): s for s in self._series}
        self._by_block = {s.sunum_base // SUNUM_BLOCK: s for s in self._series}

    def find(self, name: str) -> Series | None:
        """Series by name, case-insensitively (None when unknown)."""
        return self._by_name.get(name.strip().lower())

    def names(self) -> list[str]:
        """DB spellings of every series name, sorted."""
        return sorted(s.name for s in self._series)

    def select(self, ds: str, *, limit: int | None = None) -> Selection:
        """Records named by a record-set specification.

        Parameters
        ----------
        ds
            DRMS record-set specification (comma-separated subsets of one series).
        limit
            ``+N`` keeps the first N records, ``-N`` the last N; None or 0 keeps all.

        Raises
        ------
        DsError
            Unknown series (kind ``"series"``), bad syntax (``"syntax"``) or an unknown
            segment (``"segment"``).
        """
        return Selection(parse_ds(self.find, ds), limit)

    def resolve_sums_path(self, path: str) -> tuple[Record, Segment] | None:
        """The record and segment a SUMS file path names (inverse of ``segment_path``)."""
        m = _SUMS_PATH.match(path.split("?", 1)[0])
        if m is None:
            return None
        sunum, slot, filename = int(m.group(2)), int(m.group(3)), m.group(4)
        series = self._by_block.get(sunum // SUNUM_BLOCK)
        if series is None or slot >= series.unitsize:
            return None
        recnum = (sunum - series.sunum_base) * series.unitsize + slot
        record = series.record_by_recnum(recnum)
        seg = series.segment_by_filename(filename)
        if record is None or seg is None or record.segment_path(seg) != path.split("?", 1)[0]:
            return None
        return record, seg
