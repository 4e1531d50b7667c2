"""Local file names for exported records: the default ``filenamefmt``, names for
``url_quick`` files, the digest-suffixed name of a record whose name is already taken, and
the segments an export's files hold.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from asyncjsoc._models import ExportFile, SeriesInfo
from asyncjsoc._paths import safe_relpath
from asyncjsoc._recordset import parse_recordset
from asyncjsoc.exceptions import InvalidInputError

__all__ = ["default_filenamefmt", "disambiguated_relpath", "quick_relpath", "stray_segments"]


def default_filenamefmt(info: SeriesInfo) -> str:
    """A readable ``filenamefmt``: the series, its prime keys (times as ``:A``), the segment.

    ``hmi.sharp_cea_720s`` gives ``hmi.sharp_cea_720s.{HARPNUM}.{T_REC:A}.{segment}``, so
    files are named like ``hmi.sharp_cea_720s.7310.20180930_092400_TAI.Br.fits``.
    """
    parts = [info.name.lower()]
    for key in info.primekeys:
        keyword = info.keyword(key)
        parts.append(f"{{{key}:A}}" if keyword is not None and keyword.type == "time"
                     else f"{{{key}}}")
    if not info.primekeys:
        parts.append("{recnum:%lld}")
    parts.append("{segment}")
    return ".".join(parts)


_KEY_VALUE = re.compile(r"\[([^\]]*)\]")
_RECORD = re.compile(r"^(?P<series>[^\[{]+)(?P<keys>(?:\[[^\]]*\])*)(?:\{(?P<segment>[^}]*)\})?$")


def quick_relpath(record: str, filename: str) -> str:
    """The local name of a ``url_quick`` file, made like :func:`default_filenamefmt` names.

    A quick export answers with SUMS paths (``/SUM41/D…/S00010/magnetogram.fits``) whose
    last part repeats across records, so the name comes from the record:
    ``hmi.M_45s[2012.01.01_01:01:30_TAI][2]{magnetogram}`` becomes
    ``hmi.m_45s.20120101_010130_TAI.2.magnetogram.fits``.

    Raises
    ------
    UnsafePathError
        If no safe name can be made.
    """
    stored = filename.rsplit("/", 1)[-1]
    match = _RECORD.match(record.strip())
    if match is None:
        return safe_relpath(stored)
    values = _KEY_VALUE.findall(match["keys"])
    cleaned = [v.replace(".", "").replace(":", "").replace("/", "_") for v in values if v]
    return safe_relpath(".".join([match["series"].strip().lower(), *cleaned, stored]))


def disambiguated_relpath(relpath: str, record: str) -> str:
    """``relpath`` with a digest of ``record`` before its extension, for a name clash.

    When a ``filenamefmt`` gives records of different exports the same name (it lacks a
    prime key, say), the record registered first keeps the name and each later one gets
    ``.<8 hex digits of SHA-1(record)>`` before the extension:
    ``hmi.M_45s.magnetogram.fits`` → ``hmi.M_45s.magnetogram.1a2b3c4d.fits``. The digest
    depends only on the record, so a rerun gives the same name.
    """
    digest = hashlib.sha1(record.encode("utf-8"), usedforsecurity=False).hexdigest()[:8]
    head, slash, name = relpath.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    renamed = f"{stem}.{digest}.{ext}" if dot and stem else f"{name}.{digest}"
    return safe_relpath(head + slash + renamed)


_SEGMENT_OF_RECORD = re.compile(r"\{([^{}]*)\}\s*$")


def missing_segments(ds: str, files: Iterable[ExportFile], filenamefmt: str) -> list[str]:
    """Segments ``ds`` asked for of which an export holds not one file (lower case).

    The other half of :func:`stray_segments`: asking for ``{Br,Bp}`` after ``{Br}`` gets the
    ``Br`` export back, with no ``Bp`` file at all. A segment a record lacks still has its
    row (``NoDataFile``), so a segment with no row is a handed-back export. Only decided
    when every subset asks for the same segments and every file's segment can be told;
    otherwise nothing is reported, so this never refuses a good export.
    """
    try:
        subsets = parse_recordset(ds).subsets
    except InvalidInputError:
        return []
    asked = {frozenset(s.lower() for s in subset.segments or ()) for subset in subsets}
    if len(asked) != 1:
        return []
    (wanted,) = asked
    if not wanted:  # all segments
        return []
    by_name = filenamefmt.endswith("{segment}")
    seen: set[str] = set()
    rows = 0
    for f in files:
        rows += 1
        match = _SEGMENT_OF_RECORD.search(f.record)
        if match is not None:
            seen.add(match.group(1).strip().lower())
            continue
        if not by_name:
            return []
        found = _segments_in_name(f.filename, wanted)
        if len(found) != 1:
            return []  # cannot tell (NoDataFile, or two candidates)
        seen.add(found[0])
    if not rows:
        return []
    return sorted(wanted - seen)


def stray_segments(ds: str, files: Iterable[ExportFile], filenamefmt: str) -> list[str]:
    """Files of an export that hold a segment ``ds`` did not ask for (their names).

    Within 24 hours the JSOC answers a request for records it exported before with the old
    export (protocol doc §5: its duplicate check compares record numbers, filenamefmt,
    process, protocol and method, not segments), so asking for ``{Bp}`` after ``{Br}`` gets
    the ``Br`` files. A file's segment is read from its record (``...{Br}``: as-is exports)
    or, when ``filenamefmt`` ends in ``{segment}`` (the default does), from its name: the
    segment's stored file name starts with the segment name (``Br.fits``,
    ``image_lev1.fits`` for ``image``). Files whose segment cannot be told are taken as
    asked for, so this never refuses a good export; it may miss a stray one.
    """
    try:
        subsets = parse_recordset(ds).subsets
    except InvalidInputError:
        return []
    wanted: set[str] = set()
    for subset in subsets:
        if not subset.segments:  # all segments
            return []
        wanted.update(s.lower() for s in subset.segments)
    by_name = filenamefmt.endswith("{segment}")
    stray: list[str] = []
    for f in files:
        match = _SEGMENT_OF_RECORD.search(f.record)
        if match is not None:
            if match.group(1).strip().lower() not in wanted:
                stray.append(f.filename)
        elif by_name and not _segments_in_name(f.filename, wanted):
            stray.append(f.filename)
    return stray


def _segments_in_name(filename: str, segments: Iterable[str]) -> list[str]:
    """Which of ``segments`` (lower case) an exported file's name says it holds: its
    segment's stored file name starts with the segment name (``.Br.fits``,
    ``.image_lev1.fits`` for ``image``)."""
    name = "." + filename.rsplit("/", 1)[-1].lower()
    return [s for s in segments if f".{s}." in name or f".{s}_" in name]
