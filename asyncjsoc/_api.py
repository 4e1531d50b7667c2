"""The JSOC wire protocol: CGI calls in, typed models out.

:class:`JsocApi` knows the JSOC's CGIs (``jsoc_info``, ``jsoc_fetch``, ``checkAddress.sh``,
``showextseries``), how they want their query strings, what their JSON replies look like and
what their status codes mean. It repairs the reply types (a finished export's ``index.json``
sends every value as a string) and turns refusals into :mod:`asyncjsoc.exceptions`.

It holds no policy beyond retrying a single call that failed in transit (network errors, HTTP
429/5xx), which is safe for every call here: reads are idempotent, and the JSOC deduplicates
identical ``exp_request`` calls for 24 hours. Deciding when to poll, split or wait is the
scheduler's job. The session (and with it the rate limiter) belongs to the caller.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, NoReturn
from urllib.parse import quote

import aiohttp
import anyio
from yarl import URL

from ._http import could_not_connect, is_retryable, map_transport_errors, raise_for_status
from ._models import (
    EmailStatus,
    ExportFile,
    ExportStatus,
    KeywordInfo,
    SegmentInfo,
    SeriesInfo,
)
from ._privacy import mask_email, mask_emails
from ._retry import RetryCallback, RetryPolicy, retrying
from .exceptions import (
    EmailNotRegisteredError,
    ExportExpiredError,
    ExportFailedError,
    ExportTooLargeError,
    OfflineDataError,
    PendingLimitError,
    ProtocolError,
    QueryError,
)

__all__ = [
    "MAX_BODY_BYTES",
    "JsocApi",
    "RsList",
    "mask_email",
    "parse_pending_ids",
]

_log = logging.getLogger("asyncjsoc.api")

MAX_BODY_BYTES = 64 * 1024 * 1024
"""Largest CGI reply read; anything longer is a :class:`ProtocolError`, not a memory hog."""

_MAX_GET_QUERY = 4000
"""Longer query strings are POSTed (the CGIs accept both); long URLs risk HTTP 414."""

_CGI = "/cgi-bin/ajax/"
_DEFAULT_RETRY = RetryPolicy()
FIRST_CONTACT_ATTEMPTS = 3
"""Attempts, the first included, for a call that cannot connect before the server has ever
answered this client: a wrong or unreachable ``--server`` fails in seconds, not after the
half minute of the full policy, and an unreachable host gets fewer requests."""
_REQUEST_ID = re.compile(r"JSOC_\d{8}_\d+(?:_IN)?")
_TRANSIENT_4 = ("Cant save new export-request hash",)
_EMAIL_REFUSALS = (
    "Cannot process your request",
    "Email address for notification was not specfied",
    "Email address for notification was not specified",
)


@dataclass(frozen=True, slots=True)
class RsList:
    """A ``jsoc_info op=rs_list`` answer: keyword and segment values per record.

    Attributes
    ----------
    keywords
        Keyword name → one string value per record, in record order (``"MISSING"`` for a
        missing value, ``"Invalid KeyLink"`` for an unknown keyword, as the server says).
    segments
        Segment name → one SUMS path per record (or ``"NoDataDirectory"``, ``"InvalidSegName"``).
    count
        Number of records.
    """

    keywords: dict[str, list[str]]
    segments: dict[str, list[str]]
    count: int


def parse_pending_ids(message: str) -> tuple[str, ...]:
    """The request ids a status-7 message names, in order, without duplicates.

    Parameters
    ----------
    message
        E.g. ``"User x has 2 pending export requests (JSOC_20200410_003,JSOC_20200410_004);
        please wait ..."``. The per-IP form names no ids.

    Returns
    -------
    tuple of str
        The ids, possibly empty.
    """
    start = message.find("(")
    end = message.find(")", start + 1)
    region = message[start + 1 : end] if 0 <= start < end else message
    return tuple(dict.fromkeys(_REQUEST_ID.findall(region)))


def _encode(pairs: Iterable[tuple[str, str]]) -> str:
    """Percent-encode ``key=value`` pairs (keys are ours and already safe)."""
    return "&".join(f"{key}={quote(value, safe='')}" for key, value in pairs)


def _decode_body(raw: bytes, what: str) -> dict[str, Any]:
    """Parse a CGI reply: UTF-8 if it is, else latin-1 (which never fails); a JSON object."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    try:
        body = json.loads(text)
    except (ValueError, RecursionError) as exc:
        snippet = text[:120].replace("\n", " ")
        raise ProtocolError(f"{what}: the reply is not JSON ({exc}): {snippet!r}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"{what}: the reply is JSON but not an object: {type(body).__name__}")
    return body


def _bad(what: str, field: str, value: object, expected: str) -> NoReturn:
    """Raise the ProtocolError for a field of the wrong type."""
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    raise ProtocolError(f"{what}: field {field!r} should be {expected}, got {shown}")


def _int(body: Mapping[str, Any], field: str, what: str, default: int | None = None) -> int:
    """An integer field that may arrive as a number or a numeric string."""
    value = body.get(field)
    if value is None:
        if default is None:
            raise ProtocolError(f"{what}: field {field!r} is missing")
        return default
    if isinstance(value, bool):
        _bad(what, field, value, "an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                _bad(what, field, value, "an integer")
            if number.is_integer():
                return int(number)
    _bad(what, field, value, "an integer")


def _opt_int(body: Mapping[str, Any], field: str, what: str) -> int | None:
    """Like :func:`_int` but ``None`` when absent or empty."""
    if body.get(field) in (None, ""):
        return None
    return _int(body, field, what)


def _opt_float(body: Mapping[str, Any], field: str, what: str) -> float | None:
    """A number field that may arrive as a string; ``None`` when absent or empty."""
    value = body.get(field)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        _bad(what, field, value, "a number")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    _bad(what, field, value, "a number")


def _opt_str(body: Mapping[str, Any], field: str, what: str) -> str | None:
    """A string field; ``None`` when absent."""
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        _bad(what, field, value, "a string")
    return value


def _str_list(value: object, field: str, what: str) -> list[str]:
    """A list of scalar values as strings (jsoc_info sends strings; numbers are tolerated)."""
    if not isinstance(value, list):
        _bad(what, field, value, "a list")
    out: list[str] = []
    for item in value:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, int | float) and not isinstance(item, bool):
            out.append(str(item))
        else:
            _bad(what, field, item, "a string")
    return out


def _dicts(body: Mapping[str, Any], field: str, what: str) -> list[Mapping[str, Any]]:
    """A list-of-objects field; an absent one is empty."""
    value = body.get(field)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        _bad(what, field, value, "a list of objects")
    return value


def _export_files(body: Mapping[str, Any], what: str) -> tuple[ExportFile, ...]:
    """The ``data`` rows of an export answer."""
    files = []
    for row in _dicts(body, "data", what):
        record = _opt_str(row, "record", what)
        filename = _opt_str(row, "filename", what)
        if record is None or filename is None:
            raise ProtocolError(f"{what}: a data row lacks record or filename: {dict(row)!r}")
        files.append(ExportFile(record=record, filename=filename))
    return tuple(files)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _export_dir(body: Mapping[str, Any], what: str) -> str | None:
    """The export's ``dir``: a clean absolute server path (``/SUM…``), or None when empty.

    File URLs are ``server + dir + "/" + filename``; a ``dir`` that is a URL, relative, or
    holds ``..``, backslashes or control characters is refused rather than requested.
    """
    value = _opt_str(body, "dir", what)
    if not value:
        return None
    parts = value.split("/")
    if (
        not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or _CONTROL.search(value)
        or any(p in (".", "..") for p in parts)
    ):
        shown = repr(value) if len(value) <= 120 else repr(value[:117] + "...")
        raise ProtocolError(f"{what}: refusing export dir {shown}: not a clean absolute path")
    return value


def _export_status(body: Mapping[str, Any], what: str) -> ExportStatus:
    """Build an :class:`ExportStatus` from any ``jsoc_fetch`` answer, repairing types."""
    request_id = _opt_str(body, "requestid", what) or _opt_str(body, "reqid", what)
    return ExportStatus(
        status=_int(body, "status", what),
        request_id=request_id or None,
        method=_opt_str(body, "method", what),
        protocol=_opt_str(body, "protocol", what),
        wait=_opt_float(body, "wait", what) or 0.0,
        rcount=_opt_int(body, "rcount", what),
        count=_opt_int(body, "count", what),
        size_mb=_opt_float(body, "size", what),
        dir=_export_dir(body, what),
        files=_export_files(body, what),
        tarfile=_opt_str(body, "tarfile", what) or None,
        error=_opt_str(body, "error", what),
    )


def _raise_export_refusal(status: ExportStatus, *, notify: str | None) -> NoReturn:
    """Raise the error that an export status other than 0/1/2/6/12 stands for."""
    code = status.status
    # Some of jsoc_fetch's messages end in a newline; errors are one line.
    message = (status.error or "").strip()
    rid = status.request_id if status.request_id not in (None, "VOID") else None
    said = f": {mask_emails(message)}" if message else ""
    if code == 7:
        per_ip = "too many requests from" in message
        raise PendingLimitError(
            f"the JSOC refused a new export (status 7, pending limit){said}",
            pending_ids=parse_pending_ids(message),
            per_ip=per_ip,
            server_message=message,
            hint=(
                "The JSOC allows one pending export per email and about 10 per IP address; "
                "wait for the pending ones to finish (or up to 60 minutes)."
            ),
        )
    if code == 3:
        raise ExportTooLargeError(
            f"the export is over the JSOC's size cap (status 3, {status.size_mb} MB, "
            f"{status.count} files){said}",
            status=3,
            server_message=message or None,
            request_id=rid,
            hint="split the record set into smaller time ranges",
        )
    if code == 5:
        raise ExportExpiredError(
            f"export {rid} has expired (status 5){said}",
            status=5,
            server_message=message or None,
            request_id=rid,
            hint="exports are kept for 7 days; request the data again",
        )
    if code == 25:
        found = _REQUEST_ID.findall(message)
        raise OfflineDataError(
            f"some data are offline (status 25){said}",
            status=25,
            server_message=message or None,
            request_id=rid or (found[-1] if found else None),
            hint="write to jsoc@sun.stanford.edu with the request id, as the JSOC asks",
        )
    if (
        code in (4, 6)
        and notify is not None
        and (code == 6 or any(message.startswith(p) or p in message for p in _EMAIL_REFUSALS))
    ):
        raise EmailNotRegisteredError(
            f"the JSOC refused the notify address {mask_email(notify)} (status {code}){said}",
            email=notify,
            status=code,
            server_message=message or None,
            hint="register it at http://jsoc.stanford.edu/ajax/register_email.html",
        )
    transient = code == 4 and any(m in message for m in _TRANSIENT_4)
    if code == 4:
        text = f"the JSOC refused or failed the export (status 4){said}"
    else:
        text = f"the JSOC answered an unexpected export status {code}{said}"
    raise ExportFailedError(
        text,
        status=code,
        server_message=message or None,
        request_id=rid,
        transient=transient,
        hint="a known transient JSOC error; send the request again" if transient else None,
    )


def _jsoc_info_refusal(body: Mapping[str, Any], what: str, subject: str) -> QueryError:
    """The QueryError for a jsoc_info answer whose status is not 0."""
    said = _opt_str(body, "error", what) or _opt_str(body, "errmsg", what) or ""
    message = said.strip() or "no message"
    lowered = message.lower()
    hint = "check the series name and the record-set syntax"
    if "keyword" in lowered:  # e.g. an unknown keyword in a [? ... ?] filter
        hint = "check the keyword names in the keyword filter ([? ... ?], --where)"
    elif "series" in lowered:
        hint = "check the series name (`asyncjsoc series REGEX` lists the known ones)"
    return QueryError(
        f"jsoc_info refused {subject}: {message}",
        status=_int(body, "status", what),
        server_message=message,
        hint=hint,
    )


class JsocApi:
    """Typed calls to the JSOC's CGIs over a caller-owned session.

    Parameters
    ----------
    session
        The HTTP session (see :func:`asyncjsoc._http.create_session`); not closed here.
    base_url
        Server root, e.g. ``"http://jsoc.stanford.edu"``.
    retry
        Retry policy for calls that fail in transit (network errors, HTTP 429/5xx). Until
        the server has answered this object once, a call that cannot connect at all is
        tried at most :data:`FIRST_CONTACT_ATTEMPTS` times (a wrong server fails fast);
        after that, the server is known to exist and the whole policy applies.
    on_retry
        Called as ``on_retry(attempt, exc, delay)`` before each retry; the default logs.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        retry: RetryPolicy = _DEFAULT_RETRY,
        on_retry: RetryCallback | None = None,
    ) -> None:
        base = base_url.rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self._session = session
        self._base = base
        self._retry = retry
        self._on_retry = on_retry
        self._answered = False
        self._series_cache: dict[str, SeriesInfo] = {}
        self._series_lock = anyio.Lock()

    @property
    def base_url(self) -> str:
        """The server root, without a trailing slash."""
        return self._base

    def _log_retry(self, attempt: int, exc: Exception, delay: float) -> None:
        """Default retry report: one log line per retry."""
        _log.info("retrying after %s (attempt %d failed, waiting %.1f s)", exc, attempt, delay)

    async def _read(self, response: aiohttp.ClientResponse, what: str) -> bytes:
        """The whole reply body, refusing anything longer than MAX_BODY_BYTES."""
        length = response.content_length
        if length is not None and length > MAX_BODY_BYTES:
            raise ProtocolError(f"{what}: reply of {length} bytes is over {MAX_BODY_BYTES}")
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.content.iter_chunked(1 << 16):
            total += len(chunk)
            if total > MAX_BODY_BYTES:
                raise ProtocolError(f"{what}: reply is over {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _call(self, cgi: str, query: str, what: str) -> dict[str, Any]:
        """One CGI call, retried per the policy; returns the decoded JSON object."""
        endpoint = f"{self._base}{_CGI}{cgi}"
        if len(query) <= _MAX_GET_QUERY:
            method, url, data = "GET", URL(f"{endpoint}?{query}", encoded=True), None
        else:
            method, url, data = "POST", URL(endpoint, encoded=True), query.encode("ascii")
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if data else None

        async def attempt() -> dict[str, Any]:
            with map_transport_errors(what):
                async with self._session.request(
                    method, url, data=data, headers=headers
                ) as response:
                    self._answered = True
                    raise_for_status(response, url=what)
                    raw = await self._read(response, what)
            return _decode_body(raw, what)

        unreached = 0

        def retry_on(exc: Exception) -> bool:
            nonlocal unreached
            if not is_retryable(exc):
                return False
            if self._answered or not could_not_connect(exc):
                return True
            unreached += 1
            return unreached < FIRST_CONTACT_ATTEMPTS

        return await retrying(
            attempt,
            self._retry,
            retry_on=retry_on,
            on_retry=self._on_retry or self._log_retry,
        )

    async def check_email(self, email: str) -> EmailStatus:
        """Ask ``checkAddress.sh`` whether ``email`` is registered (``checkonly=1``).

        The address is percent-encoded twice, as drms does; the server decodes it again.

        Parameters
        ----------
        email
            The notify address.

        Returns
        -------
        EmailStatus
            ``code`` 2 means registered; 3 pending; 4 unknown; negative for bad input.
        """
        what = f"checkAddress.sh ({mask_email(email)})"
        query = _encode([("address", quote(email, safe="")), ("checkonly", "1")])
        body = await self._call("checkAddress.sh", query, what)
        code = _int(body, "status", what)
        message = _opt_str(body, "msg", what) or ""
        _log.debug("email %s: status %d %s", mask_email(email), code, message)
        return EmailStatus(email=email, code=code, message=message)

    async def series_info(self, series: str) -> SeriesInfo:
        """What ``jsoc_info op=series_struct`` says about ``series`` (cached per instance).

        Parameters
        ----------
        series
            A series name, any case.

        Returns
        -------
        SeriesInfo
            Prime keys, keywords, segments and the step of slotted time keys.

        Raises
        ------
        QueryError
            The server does not know the series.
        """
        key = series.strip().lower()
        if key in self._series_cache:
            return self._series_cache[key]
        # One fetch per series even when several tasks ask at once.
        async with self._series_lock:
            if key in self._series_cache:
                return self._series_cache[key]
            what = f"jsoc_info series_struct {series}"
            query = _encode([("op", "series_struct"), ("ds", series.strip())])
            body = await self._call("jsoc_info", query, what)
            if _int(body, "status", what, default=0) != 0:
                raise _jsoc_info_refusal(body, what, f"series {series!r}")
            info = _series_info(body, series.strip(), what)
            self._series_cache[key] = info
            return info

    async def count(self, ds: str) -> int:
        """How many records ``ds`` selects (``jsoc_info op=rs_summary``).

        Parameters
        ----------
        ds
            A DRMS record-set string.

        Returns
        -------
        int
            The record count.

        Raises
        ------
        QueryError
            The server refused the record set.
        """
        what = "jsoc_info rs_summary"
        body = await self._call("jsoc_info", _encode([("op", "rs_summary"), ("ds", ds)]), what)
        if _int(body, "status", what, default=0) != 0:
            raise _jsoc_info_refusal(body, what, f"record set {ds!r}")
        return _int(body, "count", what)

    async def rs_list(
        self,
        ds: str,
        *,
        keys: Iterable[str] = (),
        segments: Iterable[str] = (),
        n: int | None = None,
    ) -> RsList:
        """Keyword values and segment paths of the records ``ds`` selects (``op=rs_list``).

        Parameters
        ----------
        ds
            A DRMS record-set string.
        keys
            Keyword names (or ``**ALL**``); none sends no ``key`` parameter.
        segments
            Segment names (or ``**ALL**``).
        n
            Record limit: ``+N`` first N, ``-N`` last N.

        Returns
        -------
        RsList
            Values as the server sent them (strings).

        Raises
        ------
        QueryError
            The server refused the record set.
        """
        what = "jsoc_info rs_list"
        pairs = [("op", "rs_list"), ("ds", ds)]
        keys, segments = tuple(keys), tuple(segments)
        if keys:
            pairs.append(("key", ",".join(keys)))
        if segments:
            pairs.append(("seg", ",".join(segments)))
        if n is not None:
            pairs.append(("n", str(int(n))))
        body = await self._call("jsoc_info", _encode(pairs), what)
        if _int(body, "status", what, default=0) != 0:
            raise _jsoc_info_refusal(body, what, f"record set {ds!r}")
        return RsList(
            keywords=_named_values(body, "keywords", what),
            segments=_named_values(body, "segments", what),
            count=_int(body, "count", what),
        )

    async def series_list(self, filter: str | None = None) -> list[str]:
        """Names of the series the server offers (``showextseries``), optionally filtered.

        Parameters
        ----------
        filter
            A regular expression the server matches against names (e.g. ``"^hmi\\."``).

        Returns
        -------
        list of str
            Series names as the server spells them.

        Raises
        ------
        QueryError
            The server reported an error.
        """
        what = "showextseries"
        pairs = [("dbhost", "hmidb2")]
        if filter:
            pairs.append(("filter", filter))
        body = await self._call("showextseries", _encode(pairs), what)
        error = body.get("errMsg")
        if error:
            raise QueryError(f"showextseries refused: {error}", server_message=str(error),
                             hint=f"the filter {filter!r} is a regular expression the server "
                             "matches against series names, e.g. 'sharp' or '^hmi\\.'"
                             if filter else None)
        names = body.get("seriesList")
        if not isinstance(names, list):
            _bad(what, "seriesList", names, "a list")
        out: list[str] = []
        for item in names:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, dict) and all(isinstance(k, str) for k in item):
                out.extend(item)
            else:
                _bad(what, "seriesList", item, "a series name")
        return out

    async def exp_request(
        self,
        ds: str,
        *,
        notify: str,
        method: str,
        protocol: str,
        filenamefmt: str | None = None,
    ) -> ExportStatus:
        """Ask ``jsoc_fetch`` for an export (``op=exp_request``).

        Safe to retry: the server answers an identical request within 24 h with the old id.

        Parameters
        ----------
        ds
            A DRMS record-set string (may end in ``{segments}``).
        notify
            A registered email address.
        method
            ``"url_quick"``, ``"url"`` or ``"url-tar"``.
        protocol
            ``"as-is"`` or ``"fits"`` (other JSOC protocol strings pass through).
        filenamefmt
            Server-side file name template; ``None`` leaves the server's default.

        Returns
        -------
        ExportStatus
            Status 0 (a ``url_quick`` answer with files), or 1/2/12 (staged; poll
            :meth:`exp_status` with ``request_id``).

        Raises
        ------
        PendingLimitError
            Status 7, with the pending ids the server named.
        ExportTooLargeError
            Status 3.
        EmailNotRegisteredError
            The server refused the notify address.
        ExportFailedError
            Status 4 (``transient`` set for the known transient failure) or unknown statuses.
        OfflineDataError
            Status 25.
        """
        what = f"jsoc_fetch exp_request (notify {mask_email(notify)})"
        pairs = [
            ("op", "exp_request"),
            ("format", "json"),
            ("ds", ds),
            ("notify", notify),
            ("method", method),
            ("protocol", protocol),
        ]
        if filenamefmt is not None:
            pairs.append(("filenamefmt", filenamefmt))
        # The record limit rides on the key "process=n" (protocol notes §1, §5); the server
        # decodes the whole pair before splitting at the first "=", so this is n=0: no limit.
        query = _encode(pairs) + "&process=n=0"
        body = await self._call("jsoc_fetch", query, what)
        status = _export_status(body, what)
        _log.debug(
            "exp_request %s: status %d id %s", mask_email(notify), status.status, status.request_id
        )
        if status.status in (0, 1, 2, 12) or (status.status == 6 and status.request_id):
            return status
        _raise_export_refusal(status, notify=notify)

    async def exp_status(self, request_id: str) -> ExportStatus:
        """The state of an export (``jsoc_fetch op=exp_status``).

        Parameters
        ----------
        request_id
            An id like ``JSOC_20200410_003``.

        Returns
        -------
        ExportStatus
            Status 0 (done, with ``files``, ``dir`` and maybe ``tarfile``), 1/2/12 (pending)
            or 6 (legacy "not visible yet"; callers treat it as pending a bounded number of
            times).

        Raises
        ------
        ExportTooLargeError
            Status 3.
        ExportFailedError
            Status 4 (failed, unknown id) or any unexpected status.
        ExportExpiredError
            Status 5.
        """
        what = f"jsoc_fetch exp_status {request_id}"
        query = _encode([("op", "exp_status"), ("requestid", request_id), ("format", "json")])
        body = await self._call("jsoc_fetch", query, what)
        status = _export_status(body, what)
        if status.request_id is None:
            status = _with_id(status, request_id)
        if status.status in (0, 1, 2, 6, 12):
            return status
        _raise_export_refusal(status, notify=None)

    def file_url(self, status: ExportStatus, f: ExportFile | None = None) -> str:
        """The URL of one exported file (or of the tar file of a ``url-tar`` export).

        Parameters
        ----------
        status
            A finished export (status 0).
        f
            One of ``status.files``; ignored when the export has a ``tarfile``.

        Returns
        -------
        str
            ``base + filename`` for ``url_quick`` answers (the filename is a SUMS path),
            ``base + dir + "/" + filename`` for staged exports, ``base + tarfile`` for tars.

        Raises
        ------
        ValueError
            The row names no file (``NoDataFile`` or an empty filename), or none was given.
        """
        if status.tarfile:
            return self._join(status.tarfile)
        if f is None:
            raise ValueError("file_url needs an ExportFile unless the export has a tarfile")
        if f.filename in ("", "NoDataFile"):
            raise ValueError(f"record {f.record!r} has no file ({f.filename or 'empty'})")
        if not status.dir:
            return self._join(f.filename)
        return self._join(f"{status.dir.rstrip('/')}/{f.filename}")

    def _join(self, path: str) -> str:
        """The server root plus a server path, percent-encoded where needed."""
        if not path.startswith("/"):
            path = "/" + path
        return self._base + quote(path, safe="/")


def _with_id(status: ExportStatus, request_id: str) -> ExportStatus:
    """``status`` with the request id filled in when the server left it out."""
    return replace(status, request_id=request_id)


def _named_values(body: Mapping[str, Any], field: str, what: str) -> dict[str, list[str]]:
    """rs_list's ``[{"name": ..., "values": [...]}]`` lists as a dict."""
    out: dict[str, list[str]] = {}
    for item in _dicts(body, field, what):
        name = _opt_str(item, "name", what)
        if name is None:
            raise ProtocolError(f"{what}: an entry of {field!r} has no name")
        out[name] = _str_list(item.get("values", []), f"{field}.{name}", what)
    return out


def _series_info(body: Mapping[str, Any], requested: str, what: str) -> SeriesInfo:
    """Build a SeriesInfo from a series_struct body."""
    primekeys = tuple(_str_list(body.get("primekeys", []), "primekeys", what))
    keywords = tuple(
        KeywordInfo(
            name=_req_str(k, "name", what),
            type=_opt_str(k, "type", what) or "",
            units=_opt_str(k, "units", what) or "",
            note=_opt_str(k, "note", what) or "",
        )
        for k in _dicts(body, "keywords", what)
    )
    segments = tuple(
        SegmentInfo(
            name=_req_str(s, "name", what),
            protocol=_opt_str(s, "protocol", what) or "",
            units=_opt_str(s, "units", what) or "",
            dims=_opt_str(s, "dims", what) or "",
            note=_opt_str(s, "note", what) or "",
        )
        for s in _dicts(body, "segments", what)
    )
    types = {k.name.lower(): k.type for k in keywords}
    time_steps: dict[str, float] = {}
    for info in _dicts(body, "primekeysinfo", what):
        name = _req_str(info, "name", what)
        slotted = info.get("slotted") in (1, "1", True)
        if not slotted or types.get(name.lower(), "time") != "time":
            continue
        step = _opt_float(info, "step", what)
        if step is not None and step > 0:
            time_steps[name] = step
    return SeriesInfo(
        name=_db_spelling(body, requested),
        primekeys=primekeys,
        keywords=keywords,
        segments=segments,
        time_steps=time_steps,
        note=_opt_str(body, "note", what) or "",
    )


def _req_str(item: Mapping[str, Any], field: str, what: str) -> str:
    """A string field that must be present."""
    value = _opt_str(item, field, what)
    if value is None:
        raise ProtocolError(f"{what}: an entry lacks {field!r}")
    return value


def _db_spelling(body: Mapping[str, Any], requested: str) -> str:
    """The series name as the database spells it (from Interval.FirstRecord), else as asked."""
    interval = body.get("Interval")
    if isinstance(interval, dict):
        first = interval.get("FirstRecord")
        if isinstance(first, str):
            name = first.split("[", 1)[0].strip()
            if name.lower() == requested.lower():
                return name
    return requested
