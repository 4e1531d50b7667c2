"""``jsoc_info``, the series lists and ``checkAddress.sh`` (protocol §2, §3, §4)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from asyncjsoc.emulator._fetch import offline
from asyncjsoc.emulator._state import State

if TYPE_CHECKING:
    from asyncjsoc.emulator._catalog import Catalog, Record, Segment, Series

__all__ = ["check_address", "jsoc_info", "show_series", "showextseries"]


def _split(value: str) -> list[str]:
    """A comma list without empty items."""
    return [v.strip() for v in value.split(",") if v.strip()]


def _special(record: Record, name: str, state: State) -> str | None:
    """The value of a ``*special*`` pseudo keyword, or None when ``name`` is not one."""
    low = name.lower()
    if low == "*recnum*":
        return str(record.recnum)
    if low == "*sunum*":
        return str(record.sunum)
    if low == "*size*":
        return str(sum(state.knobs.size_for(record.series.name, s.name)
                       for s in record.series.segments))  # fmt: skip
    if low == "*online*":
        return "N" if offline(state, record) else "Y"
    if low == "*retain*":
        return "2030.01.01_00:00:00_UTC"
    if low == "*archive*":
        return "1"
    if low == "*recdir*":
        return (
            record.segment_path(record.series.segments[0]).rsplit("/", 1)[0]
            if record.series.segments
            else ""
        )
    if low in ("*logdir*", "*dirmtime*"):
        return ""
    if low == "*spec*":
        return record.spec()
    return None


def _key_value(record: Record, name: str, state: State) -> str:
    """A keyword's string value, ``Invalid KeyLink`` for unknown names."""
    special = _special(record, name, state)
    if special is not None:
        return special
    try:
        return record.key(name)
    except KeyError:
        return "Invalid KeyLink"


def _seg_value(state: State, record: Record, seg: Segment | None) -> str:
    """A segment's SUMS path, ``NoDataDirectory`` when offline (``Knobs.offline_rate``, the
    same records ``url_quick`` finds offline), ``InvalidSegName`` if unknown."""
    if seg is None:
        return "InvalidSegName"
    if offline(state, record):
        return "NoDataDirectory"
    return record.segment_path(seg)


def _link_value(record: Record, series: Series, name: str) -> str:
    """The linked record's spec (same prime-key values in the target), ``Invalid_Link``."""
    link = next((ln for ln in series.links if ln.name.lower() == name.lower()), None)
    if link is None:
        return "Invalid_Link"
    spec = record.spec()
    return link.target + spec[len(series.name) :]


def jsoc_info(state: State, catalog: Catalog, params: dict[str, str]) -> dict[str, Any]:
    """Answer ``jsoc_info`` (series_struct, rs_list, rs_summary); errors are status 1."""
    from asyncjsoc.emulator._catalog import DsError

    op = params.get("op", "")
    ds = params.get("ds", "").strip()
    if op == "series_struct":
        m = re.match(r"\s*([A-Za-z0-9_.]+)", ds)
        series = catalog.find(m.group(1)) if m else None
        if series is None:
            return {"status": 1, "error": "series not found"}
        return series.series_struct()
    if op not in ("rs_list", "rs_summary"):
        return {"status": 1, "error": "Bad QUERY_STRING"}
    if not ds:
        return {"status": 1, "error": "Bad QUERY_STRING"}
    limit: int | None = None
    if params.get("n", "").strip():
        try:
            limit = int(params["n"]) or None
        except ValueError:
            return {"status": 1, "error": "Bad QUERY_STRING"}
    try:
        sel = catalog.select(ds, limit=limit)
    except DsError as exc:
        if exc.kind == "series":
            return {"status": 1, "error": "series not found"}
        return {"status": 1, "error": f"unable to open records: {exc.message}"}
    if op == "rs_summary":
        return {"count": sel.count(), "runtime": 0.01, "status": 0}
    return _rs_list(state, sel, params)


def _rs_list(state: State, sel: Any, params: dict[str, str]) -> dict[str, Any]:
    """The ``rs_list`` body."""
    series = sel.series
    records = list(sel)
    if not records:
        # jsoc_info answers an empty record set with the count alone (its ``nrecs == 0``
        # branch): no keywords, segments or links lists at all.
        return {"count": 0, "runtime": 0.01, "status": 0}
    keys = _split(params.get("key", ""))
    if any(k.upper() == "**ALL**" for k in keys):
        # The slot index keywords (T_REC_index...) are internal: **ALL** lists the others
        # (a recorded **ALL** of hmi.sharp_cea_720s has 176 keywords, none of them *_index).
        keys = [k.name for k in series.keywords if k.recscope != "index"]
    keys = [k for k in keys if k.upper() != "**NONE**"]
    segs = _split(params.get("seg", ""))
    if any(s.upper() == "**ALL**" for s in segs):
        segs = [s.name for s in sel.segments]
    segs = [s for s in segs if s.upper() != "**NONE**"]
    links = _split(params.get("link", ""))
    if any(ln.upper() == "**ALL**" for ln in links):
        links = [ln.name for ln in series.links]
    links = [ln for ln in links if ln.upper() != "**NONE**"]
    body: dict[str, Any] = {}
    if params.get("R", "") == "1":
        body["recinfo"] = [{"name": r.spec(), "online": 0} for r in records]
    body["keywords"] = [
        {"name": k, "values": [_key_value(r, k, state) for r in records]} for k in keys
    ]
    segments = []
    for name in segs:
        seg = series.segment(name)
        entry: dict[str, Any] = {
            "name": name,
            "values": [_seg_value(state, r, seg) for r in records],
        }
        if seg is not None:
            entry["dims"] = [seg.dims or "" for _ in records]
            entry["cparms"] = ["compress Rice" for _ in records]
            bzero, bscale = _scaling(series, seg.name)
            entry["bzeros"] = [bzero for _ in records]
            entry["bscales"] = [bscale for _ in records]
        segments.append(entry)
    body["segments"] = segments
    body["links"] = [
        {"name": ln, "values": [_link_value(r, series, ln) for r in records]} for ln in links
    ]
    body["count"] = len(records)
    body["runtime"] = 0.01
    body["status"] = 0
    return body


def _matching(catalog: Catalog, pattern: str | None) -> list[Series] | None:
    """Series whose name matches the regex ``pattern`` (None when the regex is bad)."""
    out = []
    try:
        rx = re.compile(pattern or "", re.IGNORECASE)
    except re.error:
        return None
    for name in catalog.names():
        if rx.search(name):
            series = catalog.find(name)
            if series is not None:
                out.append(series)
    return out


def showextseries(catalog: Catalog, params: dict[str, str]) -> dict[str, Any]:
    """Answer ``showextseries`` (``{"errMsg":null,"seriesList":[...]}``)."""
    found = _matching(catalog, params.get("filter"))
    if found is None:
        return {"errMsg": "invalid filter", "seriesList": []}
    if params.get("info", "") == "1":
        return {"seriesList": [{s.name: {"description": s.note}} for s in found]}
    return {"errMsg": None, "seriesList": [s.name for s in found]}


SHOW_SERIES_BAD_FILTER = '{"status":1,"errmsg":Series filter format error}\n'
"""show_series's answer to a filter that is not a regex: its C source prints the message
unquoted, so the body is not JSON. (No match at all is valid JSON: an empty ``names``.)"""


def show_series(catalog: Catalog, params: dict[str, str]) -> dict[str, Any] | str:
    """Answer ``show_series`` (``{"status":0,"names":[...],"n":N}``), or the raw broken body
    :data:`SHOW_SERIES_BAD_FILTER` for a bad filter."""
    found = _matching(catalog, params.get("filter"))
    if found is None:
        return SHOW_SERIES_BAD_FILTER
    names = [{"name": s.name, "primekeys": ", ".join(s.primekeys), "note": s.note} for s in found]
    return {"status": 0, "names": names, "n": len(names)}


def _scaling(series: Series, segment: str) -> tuple[str, str]:
    """A segment's bzero and bscale as rs_list prints them: the series' ``<seg>_bzero`` and
    ``<seg>_bscale`` keywords where it has them (hmi.M_45s magnetogram: 0 and 0.1, as
    recorded), else 0 and 1."""
    zero = series.keyword(f"{segment}_bzero")
    scale = series.keyword(f"{segment}_bscale")
    return (zero.defval if zero is not None else "0", scale.defval if scale is not None else "1")


def check_address(state: State, params: dict[str, str]) -> dict[str, Any]:
    """Answer ``checkAddress.sh``; the address is URL-unquoted once more, as the server does.

    Without ``checkonly=1`` (checkAddress.py tests ``int(checkonly) == 1``) an unregistered
    (or lapsed) address starts a registration: status 1 with checkAddress.py's message, and
    from then on status 3 (pending), as the address awaits its confirmation reply (§4).
    """
    address = unquote(params.get("address", "")).strip()
    code, msg = state.email_status(address)
    if code == 4 and not _is_one(params.get("checkonly", "")):
        state.start_registration(address)
        return {"msg": "Your email address has not been registered for use with the export "
                "system - starting registration process. You will receive an email address "
                "from user jsoc. Please reply to this email message within 15 minutes without "
                "modifying the body.", "status": 1}  # fmt: skip
    return {"msg": msg, "status": code}


def _is_one(text: str) -> bool:
    """Whether ``text`` is an integer equal to 1 (``"1"``, ``"01"``), as Python's int() reads."""
    try:
        return int(text) == 1
    except ValueError:
        return False
