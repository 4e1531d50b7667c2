"""Export file names: DRMS ``filenamefmt`` templates expanded for one record and segment."""

from __future__ import annotations

import re

from ._keyvals import aia_file_time
from ._model import Record, Segment

__all__ = ["default_filenamefmt", "expand_filenamefmt"]

_FIELD = re.compile(r"\{([^{}:]*)(?::([^{}]*))?\}")
_PRINTF = re.compile(r"%([-+ 0#]*)(\d*)(?:\.(\d+))?(?:ll|l|h)?([diouxXeEfgGs])")


def default_filenamefmt() -> str:
    """The server's default template, ``{seriesname}.{recnum:%d}.{segment}``."""
    return "{seriesname}.{recnum:%d}.{segment}"


def _printf(layout: str, value: str) -> str:
    """Apply a C printf layout (``%05d``, ``%lld``, ``%.2f``) to a value string."""
    m = _PRINTF.fullmatch(layout.strip())
    if m is None:
        return value
    flags, width, prec, conv = m.groups()
    spec = f"{flags.replace('#', '')}{width}{'.' + prec if prec else ''}"
    try:
        if conv in "diouxX":
            num = int(float.fromhex(value) if value.lower().startswith("0x") else float(value))
            return format(num, spec + ("d" if conv in "diu" else conv.replace("i", "d")))
        if conv in "eEfgG":
            return format(float(value), spec + conv)
    except ValueError:
        return value
    return format(value, spec)


def _time_layout(layout: str, value: str) -> str:
    """Time layouts: ``A`` drops ``.`` and ``:``; ``D`` turns ``.`` into ``@`` and drops ``:``."""
    letter = layout.strip()[:1].upper()
    if letter == "A":
        return value.replace(".", "").replace(":", "")
    if letter == "D":
        return value.replace(".", "@").replace(":", "")
    return value


def expand_filenamefmt(fmt: str, record: Record, segment: Segment, counter: int) -> str:
    """Expand a filenamefmt template for one record and segment.

    Parameters
    ----------
    fmt
        Template: literal text plus ``{key[:layout]}`` fields. Special keys are
        ``seriesname``, ``recnum`` (``%d``/``%lld``), ``segment`` (stored file name with
        extension) and ``#`` (the running ``counter``); other names are keywords.
    record, segment
        The record and segment being exported.
    counter
        Value for ``{#}``.

    Returns
    -------
    str
        The file name; unknown keywords expand to ``ERROR``.
    """

    def field(m: re.Match[str]) -> str:
        name, layout = m.group(1).strip(), m.group(2)
        low = name.lower()
        if low == "seriesname":
            return record.series.name
        if low == "recnum":
            return _printf(layout or "%d", str(record.recnum))
        if low == "segment":
            return segment.filename
        if name == "#":
            return _printf(layout or "%d", str(counter))
        kw = record.series.keyword(name)
        if kw is None:
            return "ERROR"
        if kw.name.upper() == "T_REC" and record.series.name.lower().startswith("aia."):
            value = aia_file_time(record)
        else:
            value = record.key(kw.name)
        if layout is None:
            return value
        if kw.type == "time":
            return _time_layout(layout, value)
        return _printf(layout, value)

    return _FIELD.sub(field, fmt)
