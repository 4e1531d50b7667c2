"""``jsoc_fetch``: ``op=exp_request`` and ``op=exp_status`` (protocol §5, §6)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from typing import TYPE_CHECKING, Any

from asyncjsoc.emulator._hostile import hostile_dir, hostile_name, hostile_sums_path, pick, rate_hit
from asyncjsoc.emulator._state import Export, ExportRow, State

if TYPE_CHECKING:
    from asyncjsoc.emulator._catalog import Catalog, Record, Segment

__all__ = [
    "ID_RE",
    "FetchResult",
    "exp_request",
    "exp_status",
    "index_json",
    "index_txt",
    "missing",
    "offline",
]

ID_RE = re.compile(r"JSOC_[0-9]{8}_[0-9]+(_IN)?")
CONTACT = "jsoc_help@jsoc.stanford.edu"
_SEG_FILTER = re.compile(r"\{([^{}]*)\}\s*$")
"""A record-set spec's trailing segment filter, ``{seg,...}``."""
MB = 1024 * 1024

FetchResult = dict[str, Any] | str
"""A JSON object to print compactly, or a finished text body (index.json / index.txt)."""


def missing(state: State, record: Record, segment: Segment) -> bool:
    """Whether the file of ``record``/``segment`` is missing (seeded, stable per file)."""
    rate = state.knobs.missing_segment_rate
    if rate <= 0:
        return False
    key = f"{state.knobs.seed}|{record.series.name.lower()}|{record.recnum}|{segment.name}"
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


def offline(state: State, record: Record) -> bool:
    """Whether ``record``'s storage unit is offline (seeded, stable per record)."""
    if not record.online:
        return True
    key = f"{record.series.name.lower()}|{record.recnum}"
    return rate_hit(state.knobs.seed, "offline", key, state.knobs.offline_rate)


def _row_name(state: State, record: str, name: str, *, sums: bool) -> str:
    """``name``, or an unsafe one when the hostile-names knob picks this row."""
    kind = pick(state.knobs.seed, state.knobs.hostile_names, record)
    if kind is None:
        return name
    return hostile_sums_path(kind, name) if sums else hostile_name(kind, name)


def _err(status: int, message: str) -> dict[str, Any]:
    """An error answer of exp_request."""
    return {"status": status, "error": message}


def _limit(params: dict[str, str]) -> int | None:
    """The record limit from ``process=n=<N>[|...]`` or ``processing={"max_recs":N}``."""
    limit = 0
    m = re.match(r"\s*n\s*=\s*(-?\d+)", params.get("process", ""))
    if m:
        limit = int(m.group(1))
    if "processing" in params:
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            limit = int(json.loads(params["processing"]).get("max_recs", limit))
    return limit or None


def _size_mb(nbytes: int) -> int:
    """Bytes as the server's MB figure: whole MiB rounded down, but at least 1 when anything
    is there (jsoc_fetch raises a size under 1 MiB to 1 MiB, then divides)."""
    return 0 if nbytes <= 0 else max(1, nbytes // MB)


def _series_of(ds: str) -> str:
    """The series name at the front of a record-set spec."""
    m = re.match(r"\s*([A-Za-z0-9_.]+)", ds)
    return m.group(1) if m else ds


def exp_request(
    state: State, catalog: Catalog, params: dict[str, str], ip: str, expand: Any
) -> FetchResult:
    """Answer ``op=exp_request`` with the server's order of checks (protocol §5)."""
    knobs = state.knobs
    notify = params.get("notify", "").strip()
    if not notify:
        return _err(4, "Email address for notification was not specfied. It is required.")
    code, msg = state.email_status(notify)
    if code != 2:
        return _err(4, f"Cannot process your request. {msg}")
    mine = state.pending(email=notify)
    if len(mine) >= knobs.max_pending_per_email:
        ids = ",".join(e.request_id for e in mine)
        text = (
            f"User {notify} has {len(mine)} pending export requests ({ids}); please wait until "
            "at least one request has completed before submitting a new one."
        )
        return state_refuse(state, notify, ip, text)
    # The server refuses when *more than* its limit (10) are pending from the IP (F:1582,
    # `count(*) ... > 10`), so one IP can hold one export beyond it.
    if len(state.pending(ip=ip)) > knobs.max_pending_per_ip:
        text = (
            f"There are too many requests from {notify}; please wait until one or more requests "
            "have completed before submitting a new one."
        )
        return state_refuse(state, notify, ip, text)

    sent = params.get("ds", "").strip()
    ds = sent
    seg = params.get("seg", "").strip()
    filt = _SEG_FILTER.search(ds)
    if seg:
        if filt is not None and filt.group(1).strip():
            return _err(4, "cannot provide both the `seg` argument, and a segment filter in "
                        "the `in` argument")  # fmt: skip
        ds = (ds[: filt.start()] if filt is not None else ds) + f"{{{seg}}}"
        filt = _SEG_FILTER.search(ds)
    if filt is not None and "**ALL**" in filt.group(1):
        ds = ds[: filt.start()]  # **ALL** anywhere in the list: every segment
    method = params.get("method", "url") or "url"
    protocol = params.get("protocol", "as-is") or "as-is"
    fmt = params.get("filenamefmt") or "{seriesname}.{recnum:%d}.{segment}"
    process = params.get("process", "")
    from asyncjsoc.emulator._catalog import DsError

    # These messages end in a newline, as jsoc_fetch's snprintf formats print them; a bad
    # query is quoted as it was sent.
    try:
        sel = catalog.select(ds, limit=_limit(params))
    except DsError as exc:
        if exc.kind == "series":
            return _err(4, f"Cannot export series '{_series_of(ds)}' - it does not exist.\n")
        if exc.kind == "mixed":
            return _err(4, "Cannot specify subsets of records from different series.\n")
        return _err(4, f"Bad record-set query '{sent}'.\n")
    nrec = sel.count()
    if nrec > knobs.max_records:
        return _err(4, f"Can not open RecordSet {nrec} is too many records in one request.")

    series = sel.series
    segments = tuple(sel.segments)
    nfiles = nrec * len(segments)
    size_mb = _size_mb(sum(knobs.size_for(series.name, s.name) for s in segments) * nrec)
    void = {"requestid": "VOID", "method": method, "protocol": protocol, "wait": 0, "status": 3,
            "count": nrec, "size": size_mb}  # fmt: skip
    if size_mb > knobs.size_cap_mb:
        return {**void, "error": f"Request exceeds max byte limit of {knobs.size_cap_mb}MB"}
    cap = knobs.file_cap(series.name)
    if cap is not None and nfiles > cap:
        return {**void, "error": f"Request exceeds max file limit of {cap} files"}

    records = list(sel)
    recnums = ",".join(str(r.recnum) for r in records)
    md5 = hashlib.md5(
        "|".join([recnums, fmt, process, protocol, method]).encode(), usedforsecurity=False
    ).hexdigest()
    old = state.duplicate(md5)
    if old is not None:
        return {"status": 2, "requestid": old.request_id, "method": old.method,
                "protocol": old.protocol, "wait": max(0, state.wait_of(old)),
                "rcount": old.rcount, "size": old.size_mb}  # fmt: skip

    quick = method == "url_quick" and protocol.lower() == "as-is"
    if quick and nfiles == 0:
        return _err(4, "There are no files in this RecordSet")
    if quick and all(not offline(state, r) for r in records):
        data = [
            {"record": rec, "filename": _row_name(state, rec, r.segment_path(s), sums=True)}
            for r in records
            for s in segments
            if not missing(state, r, s)
            for rec in [f"{r.spec()}{{{s.name}}}"]
        ]
        return {"rcount": nrec, "count": len(data), "size": size_mb, "dir": "", "data": data,
                "requestid": "", "method": method, "protocol": protocol, "wait": 0,
                "status": 0}  # fmt: skip

    if quick and params.get("o", "") not in ("", "0"):
        rid = state.new_request_id()
        return {"status": 25, "requestid": rid, "method": method, "protocol": protocol,
                "wait": 0, "error": "One or more data files are offline; please send a request "
                "for help to jsoc@sun.stanford.edu with the RequestID; " + rid}  # fmt: skip
    if state.chance(knobs.hash_error_rate):
        return _err(4, "Cant save new export-request hash.")
    rows = _rows(state, records, segments, fmt, protocol, expand)
    exp = state.add_export(
        email=notify, ip=ip, method=method, protocol=protocol,
        requestor=params.get("requestor", ""), rows=rows, rcount=nrec, size_mb=size_mb, md5=md5,
    )  # fmt: skip
    kind = pick(knobs.seed, knobs.hostile_dirs, exp.request_id)
    if kind is not None and (not knobs.hostile_exports or exp.number in knobs.hostile_exports):
        exp.dir_override = hostile_dir(kind, exp.dir)
    return {"status": 2, "requestid": exp.request_id, "method": method, "protocol": protocol,
            "wait": state.wait_of(exp), "rcount": nrec, "size": size_mb}  # fmt: skip


def state_refuse(state: State, email: str, ip: str, text: str) -> dict[str, Any]:
    """A status-7 answer, recorded in the audit."""
    from asyncjsoc.emulator._audit import Refusal

    state.audit.refusals.append(Refusal(state.clock.now(), email, ip, text))
    return _err(7, text)


def _rows(
    state: State,
    records: list[Record],
    segments: tuple[Segment, ...],
    fmt: str,
    protocol: str,
    expand: Any,
) -> list[ExportRow]:
    """The data rows of a new export (NoDataFile rows for missing as-is files)."""
    fits = protocol.lower().startswith("fits")
    rows: list[ExportRow] = []
    counter = 0
    for rec in records:
        for seg in segments:
            gone = missing(state, rec, seg)
            key = f"{rec.spec()}{{{seg.name}}}"
            if fits:
                if gone:
                    continue
                counter += 1
                name = _row_name(state, key, expand(fmt, rec, seg, counter), sums=False)
                rows.append(ExportRow(rec.spec(), name, (rec, seg)))
            elif gone:
                rows.append(ExportRow(key, "NoDataFile", None))
            else:
                counter += 1
                name = _row_name(state, key, expand(fmt, rec, seg, counter), sums=False)
                rows.append(ExportRow(key, name, (rec, seg)))
    return rows


def exp_status(state: State, params: dict[str, str]) -> FetchResult:
    """Answer ``op=exp_status`` (protocol §6)."""
    rid = params.get("requestid", "").strip()
    if not rid:
        return _err(4, "RequestID must be provided")
    if not ID_RE.fullmatch(rid):
        return _err(4, f"Bad RequestID '{rid}' provided.")
    exp = state.exports.get(rid)
    if exp is None:
        return _err(4, f"invalid export DRMS record for ID `%s`{rid}")
    exp.polls += 1
    head = {"requestid": rid, "method": exp.method, "protocol": exp.protocol}
    txt = params.get("format", "json").lower() == "txt"
    if exp.polls <= state.knobs.status6_polls:
        if txt:
            return _not_ready_txt(6, head, max(0.0, state.wait_seconds(exp)), exp.size_mb,
                                  "Request not found")  # fmt: skip
        return {"status": 6, **head, "wait": max(0, state.wait_of(exp)),
                "error": "Request not found"}  # fmt: skip
    phase = exp.phase(state.clock.now(), state.knobs.retention)
    if phase == "processing":
        if txt:
            return _not_ready_txt(1, head, state.wait_seconds(exp), exp.size_mb)
        return {"status": 1, **head, "wait": state.wait_of(exp), "rcount": 0,
                "size": exp.size_mb}  # fmt: skip
    if phase in ("failed", "expired"):
        # The server's status switch sets wait 999999 for 3, 4 and 5; rcount is only known
        # to exp_request, so a status call prints 0.
        code, error = ((4, exp.error) if phase == "failed" else
                       (5, "Request was completed but is now deleted, 7 day limit exceeded"))
        if txt:
            return _not_ready_txt(code, head, 999999.0, exp.size_mb, error)
        return {"status": code, **head, "wait": 999999, "rcount": 0, "size": exp.size_mb,
                "error": error, "contact": CONTACT}  # fmt: skip
    if txt:
        return index_txt(exp)
    return index_json(exp)


def _not_ready_txt(status: int, head: dict[str, str], wait: float, size_mb: int,
                   error: str | None = None) -> str:
    """The ``format=txt`` answer for an export that is not done: ``key=value`` lines, the
    wait unrounded (``%f``), an error quoted, and the contact line for statuses above 2."""
    lines = ["# JSOC Data Export Not Ready.", f"status={status}",
             f"requestid={head['requestid']}", f"method={head['method']}",
             f"protocol={head['protocol']}", f"wait={wait:f}", f"size={size_mb}"]  # fmt: skip
    if error is not None:
        lines.append(f'error="{error}"')
    if status > 2:
        lines.append(f"contact={CONTACT}")
    return "\n".join(lines) + "\n"


def _index_header(exp: Export) -> list[tuple[str, str]]:
    """The index header fields in the server's order, all strings."""
    fields = [("version", "0.5" if exp.is_fits else "1"), ("requestid", exp.request_id),
              ("method", exp.method), ("protocol", exp.protocol)]  # fmt: skip
    if not exp.is_fits:
        fields.append(("wait", "0"))
    fields += [("count", str(exp.count)), ("size", str(exp.size_mb))]
    if exp.is_fits:
        fields.append(("exptime", exp.exptime()))
    fields += [("dir", exp.dir), ("status", "0")]
    if exp.is_fits:
        fields.append(("keywords", "**IN FITS FILES**"))
    else:
        fields.append(("keywords", f"{exp.dir}/{exp.request_id}.keywords.txt"))
    if exp.is_tar:
        fields.append(("tarfile", f"{exp.dir}/{exp.request_id}.tar"))
    return fields


def _data_rows(exp: Export) -> list[tuple[str, str]]:
    """The index data rows, with the warning row when nothing was written."""
    rows = [(r.record, r.filename) for r in exp.rows]
    if exp.is_fits and not rows:
        warning = "warning=No FITS files were exported. The requested FITS files no longer exist."
        rows = [(warning, "")]
    return rows


def _q(text: str) -> str:
    """A JSON string literal with ``\\/`` escapes, as the server's C JSON writer prints it."""
    return json.dumps(text, ensure_ascii=False).replace("/", "\\/")


def index_json(exp: Export) -> str:
    """The export's ``index.json``: tab pretty-printed, every value a string (built once)."""
    if exp.index_json is not None:
        return exp.index_json
    lines = [f"\t{_q(k)}: {_q(v)}," for k, v in _index_header(exp)]
    rows = [
        f'{{\n\t\t"record": {_q(rec)},\n\t\t"filename": {_q(name)}\n\t}}'
        for rec, name in _data_rows(exp)
    ]
    data = "[" + ",\n\t".join(rows) + "]"
    exp.index_json = "{\n" + "\n".join(lines) + f'\n\t"data": {data}\n}}\n'
    return exp.index_json


_HTML_INTRO = (
    '<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01//EN" "http://www.w3.org/TR/html4/loose.dtd">'
    '<html><head title="JSOC Data Export Request Results Index">\n</head><body>\n'
    "<h2>JSOC Data Request Summary</h2>\n<table>\n"
)
_HTTP_SERVER = "https://jsoc1.stanford.edu"


def index_html(exp: Export) -> str:
    """The export's ``index.html`` as jsoc_export_make_index writes it: a table of the header
    fields, then one of the records with links to their files on the real JSOC's host (the
    program hard-codes it; as there, nothing is HTML-escaped). A tar export lists names only
    and links its tar."""
    out = [_HTML_INTRO]
    for name, value in _index_header(exp):
        if name == "tarfile":
            out.append(f'<tr><td>tarfile</td><td><a href="{_HTTP_SERVER}{value}">{value}</a>'
                       "</td></tr>\n")
        else:
            out.append(f"<tr><td><b>{name}</b></td><td>{value}</td></tr>\n")
    out.append("</table>\n<p><h2><b>Selected Data</b></h2><p>\n<table>\n")
    for rec, name in _data_rows(exp):
        if exp.is_tar:
            out.append(f"<tr><td>{rec}</td><td>{name}</td></tr>\n")
        else:
            out.append(f'<tr><td>{rec}</td><td><A HREF="{_HTTP_SERVER}{exp.dir}/{name}">{name}'
                       "</A></td></tr>\n")
    out.append("</table></body></html>\n")
    return "".join(out)


def index_txt(exp: Export) -> str:
    """The export's ``index.txt``: ``key=value`` lines, ``# DATA``, then record/filename rows."""
    head = [f"{k}={v}" for k, v in _index_header(exp)]
    rows = [f"{rec}\t{name}" for rec, name in _data_rows(exp)]
    return "\n".join(["# JSOC Export Index", *head, "# DATA", *rows]) + "\n"
