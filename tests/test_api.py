"""Tests for the JSOC wire protocol layer: pure parsing, then calls against the emulator."""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from asyncjsoc._api import (
    FIRST_CONTACT_ATTEMPTS,
    JsocApi,
    _decode_body,
    _export_status,
    _raise_export_refusal,
    _series_info,
    mask_email,
    parse_pending_ids,
)
from asyncjsoc._http import TransportConfig, create_session
from asyncjsoc._models import ExportFile, ExportStatus
from asyncjsoc._ratelimit import TokenBucket
from asyncjsoc._retry import RetryPolicy
from asyncjsoc.emulator import Emulator, Knobs, run_emulator
from asyncjsoc.exceptions import (
    EmailNotRegisteredError,
    ExportExpiredError,
    ExportFailedError,
    ExportTooLargeError,
    HttpStatusError,
    IpBlockedError,
    OfflineDataError,
    PendingLimitError,
    ProtocolError,
    QueryError,
    TransportError,
)

#: The shared recordings live beside the repository (``../shared``), as on CI; override with
#: ASYNCJSOC_RECORDINGS.
RECORDINGS = Path(
    os.environ.get("ASYNCJSOC_RECORDINGS")
    or Path(__file__).resolve().parents[2] / "shared" / "jsoc-recordings"
)


@functools.cache
def _interactions() -> tuple[tuple[str, str, bytes], ...]:
    """(file, request URI, response body) of every recorded interaction, loaded once."""
    yaml = pytest.importorskip("yaml")
    if not RECORDINGS.is_dir():
        pytest.skip("recordings not available")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    out = []
    for path in sorted(RECORDINGS.glob("*.yaml")):
        for interaction in yaml.load(path.read_text(), Loader=loader)["interactions"]:
            raw = interaction["response"]["body"]["string"]
            data = raw.encode("latin-1") if isinstance(raw, str) else raw
            out.append((path.name, interaction["request"]["uri"], data))
    return tuple(out)


def recorded(fragment: str) -> list[dict[str, Any]]:
    """Decoded JSON bodies of recorded replies whose request URI contains ``fragment``."""
    bodies = [_decode_body(body, name) for name, uri, body in _interactions() if fragment in uri]
    assert bodies, f"no recording matches {fragment!r}"
    return bodies


# --- pure: helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "User x@y.org has 2 pending export requests (JSOC_20200410_003,JSOC_20200410_004); "
            "please wait until at least one request has completed before submitting a new one.",
            ("JSOC_20200410_003", "JSOC_20200410_004"),
        ),
        (
            "User x has 1 pending export requests (JSOC_20240101_1234_IN); please wait",
            ("JSOC_20240101_1234_IN",),
        ),
        (
            "User x has 2 pending export requests (JSOC_20200410_003, JSOC_20200410_003)",
            ("JSOC_20200410_003",),
        ),
        (
            "There are too many requests from x@y.org; please wait until one or more requests "
            "have completed before submitting a new one.",
            (),
        ),
        ("", ()),
    ],
)
def test_parse_pending_ids(message: str, expected: tuple[str, ...]) -> None:
    """Pending ids come out of both status-7 message forms."""
    assert parse_pending_ids(message) == expected


@pytest.mark.parametrize(
    ("email", "masked"),
    [("jane@example.org", "j***@example.org"), ("@x.org", "***@x.org"), ("nobody", "***")],
)
def test_mask_email(email: str, masked: str) -> None:
    """Only the first character of the local part survives."""
    assert mask_email(email) == masked


def test_decode_body_encodings_and_garbage() -> None:
    """UTF-8 and latin-1 bodies decode; HTML, lists and truncated JSON are ProtocolErrors."""
    assert _decode_body('{"note":"Ångström"}'.encode(), "t") == {"note": "Ångström"}
    assert _decode_body('{"note":"Ångström"}'.encode("latin-1"), "t") == {"note": "Ångström"}
    for bad in (b"<html>500</html>", b"[1, 2]", b'{"status": 0', b""):
        with pytest.raises(ProtocolError):
            _decode_body(bad, "t")


# --- pure: recorded real replies -------------------------------------------------------------


def test_recorded_index_json_types_are_repaired() -> None:
    """A finished export's all-string index.json becomes numbers."""
    body = recorded("exp_status&requestid=JSOC_20200410_003")[0]
    assert body["status"] == "0"
    status = _export_status(body, "t")
    assert status.status == 0
    assert status.done
    assert status.request_id == "JSOC_20200410_003"
    assert (status.count, status.size_mb, status.wait) == (1, 15.0, 0.0)
    assert status.dir == "/SUM66/D1278070722/S00000"
    assert status.files == (
        ExportFile(
            record="hmi.M_45s[2012.01.01_01:01:30_TAI][2]",
            filename="hmi.m_45s.20120101_010130_TAI.2.magnetogram.fits",
        ),
    )


def test_recorded_aia_export_has_302_files() -> None:
    """The 151-record AIA export lists two files per record."""
    status = _export_status(recorded("requestid=JSOC_20200410_166")[0], "t")
    assert (status.count, len(status.files)) == (302, 302)


def test_recorded_quick_and_staged_requests() -> None:
    """url_quick answers carry SUMS paths and no id; staged ones an id and no files."""
    quick = _export_status(recorded("method=url_quick")[0], "t")
    assert (quick.status, quick.request_id, quick.dir, quick.rcount) == (0, None, None, 1)
    assert quick.files[0].filename == "/SUM41/D280342572/S00010/magnetogram.fits"
    staged = _export_status(recorded("exp_request&format=json&ds=hmi.M_45s")[0], "t")
    assert staged.status == 2
    assert staged.pending
    assert staged.request_id is not None
    assert staged.request_id.startswith("JSOC_20200410_")
    assert staged.files == ()


@pytest.mark.parametrize(
    ("series", "name", "primekeys", "steps"),
    [
        ("hmi.m_45s", "hmi.M_45s", ("T_REC", "CAMERA"), {"T_REC": 45.0}),
        ("aia.lev1_euv_12s", "aia.lev1_euv_12s", ("T_REC", "WAVELNTH"), {"T_REC": 12.0}),
        ("hmi.sharp_cea_720s", "hmi.sharp_cea_720s", ("HARPNUM", "T_REC"), {"T_REC": 720.0}),
    ],
)
def test_recorded_series_struct(
    series: str, name: str, primekeys: tuple[str, ...], steps: dict[str, float]
) -> None:
    """series_struct bodies become SeriesInfo with the DB spelling and time steps."""
    info = _series_info(recorded(f"series_struct&ds={series}")[0], series, "t")
    assert info.name == name
    assert info.primekeys == primekeys
    assert info.time_steps == steps
    assert info.time_primekey == "T_REC"
    assert info.keywords
    assert info.segments


def test_recorded_sharp_segments() -> None:
    """The SHARP CEA series lists Br and bitmap among its segments."""
    info = _series_info(recorded("series_struct&ds=hmi.sharp_cea_720s")[0], "x", "t")
    names = {s.name for s in info.segments}
    assert {"Br", "Bp", "Bt", "bitmap", "magnetogram"} <= names
    br = info.segment("br")
    assert br is not None
    assert br.protocol


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "zero"}, "status"),
        ({"status": 2, "wait": "soon"}, "wait"),
        ({"status": 2, "requestid": 17}, "requestid"),
        ({"status": 0, "data": {"record": "x"}}, "data"),
        ({"status": 0, "data": [{"record": "x"}]}, "record or filename"),
        ({"status": True}, "status"),
        ({}, "status"),
    ],
)
def test_wrong_types_are_protocol_errors(body: dict[str, Any], field: str) -> None:
    """Values of the wrong type are refused with the field named."""
    with pytest.raises(ProtocolError, match=field):
        _export_status(body, "t")


# --- pure: status mapping --------------------------------------------------------------------


def _refuse(body: dict[str, Any], notify: str | None = "me@x.org") -> Exception:
    """The exception _raise_export_refusal raises for ``body``."""
    with pytest.raises(Exception) as info:  # noqa: PT011
        _raise_export_refusal(_export_status(body, "t"), notify=notify)
    return info.value


def test_status_7_per_email_and_per_ip() -> None:
    """7 becomes PendingLimitError with ids (per email) or per_ip=True."""
    err = _refuse(
        {
            "status": 7,
            "error": "User me@x.org has 1 pending export requests "
            "(JSOC_20260101_007); please wait until at least one request has completed",
        }
    )
    assert isinstance(err, PendingLimitError)
    assert (err.pending_ids, err.per_ip, err.status) == (("JSOC_20260101_007",), False, 7)
    err = _refuse({"status": 7, "error": "There are too many requests from me@x.org; wait"})
    assert isinstance(err, PendingLimitError)
    assert (err.pending_ids, err.per_ip) == ((), True)


def test_status_3_4_5_25_and_unknown() -> None:
    """Each refusal status maps to its own error class."""
    err = _refuse(
        {
            "status": 3,
            "requestid": "VOID",
            "size": 200000,
            "count": 9,
            "error": "Request exceeds max byte limit of 100000MB",
        }
    )
    assert isinstance(err, ExportTooLargeError)
    assert err.request_id is None
    assert err.server_message == "Request exceeds max byte limit of 100000MB"
    err = _refuse({"status": 4, "error": "Cant save new export-request hash."})
    assert isinstance(err, ExportFailedError)
    assert err.transient
    err = _refuse({"status": 4, "error": "Bad record-set query 'x['.\n"})
    assert isinstance(err, ExportFailedError)
    assert not err.transient
    assert err.server_message == "Bad record-set query 'x['."  # the server's newline dropped
    assert "\n" not in str(err)
    err = _refuse({"status": 5, "requestid": "JSOC_20260101_001", "error": "7 day limit"})
    assert isinstance(err, ExportExpiredError)
    assert err.request_id == "JSOC_20260101_001"
    err = _refuse(
        {
            "status": 25,
            "error": "One or more data files are offline; please send "
            "a request for help to jsoc@sun.stanford.edu; JSOC_20260101_002",
        }
    )
    assert isinstance(err, OfflineDataError)
    assert err.request_id == "JSOC_20260101_002"
    assert "jsoc@sun.stanford.edu" in str(err)
    # A user's address at Stanford is a user's address: masked like any other.
    err = _refuse({"status": 4, "error": "Export for jane.doe@stanford.edu failed; ask "
                   "jsoc_help@jsoc.stanford.edu"})
    assert "jane.doe@stanford.edu" not in str(err)
    assert "j***@stanford.edu" in str(err)
    assert "jsoc_help@jsoc.stanford.edu" in str(err)
    err = _refuse({"status": 42})
    assert type(err) is ExportFailedError
    assert not err.transient


@pytest.mark.parametrize(
    "message",
    [
        "Cannot process your request. email address has been neither validated nor registered",
        "Email address for notification was not specfied. It is required.",
    ],
)
def test_email_refusals(message: str) -> None:
    """Email refusals name the (full) address on the error but mask it in the text."""
    err = _refuse({"status": 4, "error": message}, notify="jane@example.org")
    assert isinstance(err, EmailNotRegisteredError)
    assert err.email == "jane@example.org"
    assert "jane@" not in str(err)
    assert "j***@example.org" in str(err)


def test_email_text_on_exp_status_is_plain_failure() -> None:
    """Without a notify address (exp_status) the same text is an ordinary export failure."""
    err = _refuse({"status": 4, "error": "Cannot process your request."}, notify=None)
    assert type(err) is ExportFailedError


# --- pure: file URLs -------------------------------------------------------------------------


class _NoSession:
    """Stands in for the session where no request is made (file_url is pure)."""


def _api(base: str = "http://jsoc.example/") -> JsocApi:
    """A JsocApi whose session is never used."""
    return JsocApi(_NoSession(), base)  # type: ignore[arg-type]


def test_file_urls() -> None:
    """Quick exports use SUMS paths, staged ones dir + name, tars the tarfile."""
    api = _api()
    quick = ExportStatus(status=0, request_id=None, dir=None)
    f = ExportFile(record="r", filename="/SUM41/D280342572/S00010/magnetogram.fits")
    assert api.file_url(quick, f) == "http://jsoc.example/SUM41/D280342572/S00010/magnetogram.fits"
    staged = ExportStatus(status=0, request_id="JSOC_1", dir="/SUM66/D1/S00000")
    g = ExportFile(record="r", filename="hmi.m_45s.20120101_010130_TAI.2.magnetogram.fits")
    assert api.file_url(staged, g) == (
        "http://jsoc.example/SUM66/D1/S00000/hmi.m_45s.20120101_010130_TAI.2.magnetogram.fits"
    )
    odd = ExportFile(record="r", filename="a b#c.fits")
    assert api.file_url(staged, odd).endswith("/S00000/a%20b%23c.fits")
    tar = ExportStatus(
        status=0, request_id="JSOC_2", dir="/SUM1/D2/S00000", tarfile="/SUM1/D2/S00000/JSOC_2.tar"
    )
    assert api.file_url(tar) == "http://jsoc.example/SUM1/D2/S00000/JSOC_2.tar"
    for missing in ("NoDataFile", ""):
        with pytest.raises(ValueError, match="no file"):
            api.file_url(staged, ExportFile(record="r", filename=missing))


def test_base_url_must_be_http() -> None:
    """Only http(s) base URLs are accepted."""
    with pytest.raises(ValueError, match="base_url"):
        _api("ftp://jsoc")


def test_recorded_escaped_slashes_decode() -> None:
    """The real index.json escapes slashes (``\\/``); decoding gives plain paths."""
    raw = next(body for _, uri, body in _interactions() if "requestid=JSOC_20200410_212" in uri)
    assert b"\\/SUM66" in raw
    assert _export_status(_decode_body(raw, "t"), "t").dir == "/SUM66/D1278296123/S00000"


# --- against the emulator --------------------------------------------------------------------

EMAIL = "jane@example.org"
HOUR = "hmi.M_45s[2012.01.01_00:00:00_TAI/1h]"
FEW = "hmi.M_45s[2012.01.01_00:00:00_TAI/3m]"


@dataclass
class Rig:
    """An emulator plus a JsocApi talking to it through a real session and bucket."""

    emu: Emulator
    api: JsocApi
    bucket: TokenBucket
    session: aiohttp.ClientSession
    retries: list[tuple[int, Exception, float]]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    """An emulator whose exports finish only when a test moves its clock, and an API client."""
    knobs = Knobs(time_scale=1.0, export_delay=5.0)
    bucket = TokenBucket(1000.0, 100)
    retries: list[tuple[int, Exception, float]] = []
    async with (
        run_emulator(knobs) as emu,
        create_session(TransportConfig(), bucket) as session,
    ):
        api = JsocApi(
            session,
            emu.url,
            retry=RetryPolicy.no_wait(attempts=4),
            on_retry=lambda n, exc, delay: retries.append((n, exc, delay)),
        )
        yield Rig(emu, api, bucket, session, retries)


async def wait_done(rig: Rig, request_id: str) -> ExportStatus:
    """Poll exp_status (moving the emulator clock) until the export leaves pending."""
    for _ in range(20):
        status = await rig.api.exp_status(request_id)
        if not status.pending and status.status != 6:
            return status
        rig.emu.clock.advance(2.0)
    raise AssertionError(f"{request_id} never finished")


@pytest.mark.anyio
async def test_emulator_check_email_codes(rig: Rig) -> None:
    """Registered, pending, unknown and malformed addresses give 2, 3, 4, -2."""
    rig.emu.knobs.pending_emails = {"wait@example.org"}
    rig.emu.knobs.unknown_emails = {"who@example.org"}
    results = [
        await rig.api.check_email(e)
        for e in (EMAIL, "wait@example.org", "who@example.org", "not-an-address")
    ]
    assert [r.code for r in results] == [2, 3, 4, -2]
    assert [r.registered for r in results] == [True, False, False, False]
    assert results[0].email == EMAIL
    entry = rig.emu.audit.requests("checkAddress.sh")[0]
    # Decoded once by the server's CGI parser, the address still holds %40: sent twice-encoded.
    assert entry.params == {"address": "jane%40example.org", "checkonly": "1"}


@pytest.mark.anyio
async def test_emulator_series_info_cached(rig: Rig) -> None:
    """series_info parses the struct, keeps the DB spelling and asks the server once."""
    info = await rig.api.series_info("hmi.m_45s")
    again = await rig.api.series_info("HMI.M_45S")
    assert again is info
    assert info.name == "hmi.M_45s"
    assert info.primekeys == ("T_REC", "CAMERA")
    assert info.time_steps == {"T_REC": 45.0}
    assert info.segment("magnetogram") is not None
    assert rig.emu.audit.count("jsoc_info/series_struct") == 1
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(rig.api.series_info, "aia.lev1_euv_12s")
    assert rig.emu.audit.count("jsoc_info/series_struct") == 2
    sharp = await rig.api.series_info("hmi.sharp_cea_720s")
    assert sharp.primekeys == ("HARPNUM", "T_REC")
    assert sharp.time_steps == {"T_REC": 720.0}


@pytest.mark.anyio
async def test_emulator_unknown_series_is_query_error(rig: Rig) -> None:
    """An unknown series is a QueryError with the server's text and a hint."""
    with pytest.raises(QueryError) as info:
        await rig.api.series_info("hmi.no_such_series")
    assert info.value.status == 1
    assert info.value.server_message
    assert info.value.hint
    assert "series name" in info.value.hint
    with pytest.raises(QueryError):
        await rig.api.count("hmi.no_such_series[2012.01.01]")


@pytest.mark.anyio
async def test_emulator_unknown_keyword_hint_names_the_filter(rig: Rig) -> None:
    """A filter on a keyword the series lacks points at the filter, not at the series name
    (the server's message says 'not a keyword of series ...')."""
    with pytest.raises(QueryError) as info:
        await rig.api.count("hmi.sharp_cea_720s[][2018.09.25_00:00:00_TAI/1h][? NOSUCHKEY>3 ?]")
    assert "NOSUCHKEY" in (info.value.server_message or "")
    assert info.value.hint is not None
    assert "keyword filter" in info.value.hint


@pytest.mark.anyio
async def test_emulator_count_and_rs_list(rig: Rig) -> None:
    """rs_summary counts 80 records in an hour of 45 s data; rs_list returns strings."""
    assert await rig.api.count(HOUR) == 80
    listing = await rig.api.rs_list(HOUR, keys=["T_REC", "CAR_ROT"], segments=["magnetogram"], n=3)
    assert listing.count == 3
    assert listing.keywords["T_REC"] == [
        "2012.01.01_00:00:00_TAI",
        "2012.01.01_00:00:45_TAI",
        "2012.01.01_00:01:30_TAI",
    ]
    assert all(isinstance(v, str) for v in listing.keywords["CAR_ROT"])
    assert all(p.startswith("/SUM") for p in listing.segments["magnetogram"])
    entry = rig.emu.audit.requests("jsoc_info/rs_list")[0]
    assert entry.params["key"] == "T_REC,CAR_ROT"
    assert entry.params["n"] == "3"
    # A record set with no record: the server sends the count alone, which reads as empty.
    nothing = await rig.api.rs_list("hmi.M_45s[2030.01.01_00:00:00_TAI]", keys=["T_REC"])
    assert (nothing.count, nothing.keywords, nothing.segments) == (0, {}, {})


@pytest.mark.anyio
async def test_emulator_series_list(rig: Rig) -> None:
    """showextseries filters by regex."""
    names = await rig.api.series_list(r"^hmi\.")
    assert "hmi.M_45s" in names
    assert "hmi.sharp_cea_720s" in names
    assert all(n.lower().startswith("hmi.") for n in names)


@pytest.mark.anyio
async def test_emulator_series_list_bad_filter_says_it_is_a_regex(rig: Rig) -> None:
    """A filter the server cannot use is a QueryError whose hint says what a filter is."""
    with pytest.raises(QueryError, match="showextseries refused") as info:
        await rig.api.series_list("[")
    assert info.value.hint is not None
    assert "'['" in info.value.hint
    assert "regular expression" in info.value.hint


@pytest.mark.anyio
async def test_emulator_long_query_is_posted(rig: Rig) -> None:
    """A record set too long for a URL goes as a POST body and still works."""
    times = [f"2012.01.01_{h:02d}:{m:02d}:00_TAI" for h in range(10) for m in range(0, 60, 3)]
    ds = ",".join(f"hmi.M_45s[{t}]" for t in times)
    assert len(ds) > 4000
    assert await rig.api.count(ds) == len(times)
    assert rig.emu.audit.requests("jsoc_info/rs_summary")[-1].method == "POST"


@pytest.mark.anyio
async def test_emulator_staged_export_lifecycle(rig: Rig) -> None:
    """exp_request → 2, exp_status → 0 with files whose URLs serve the emulator's bytes."""
    request = await rig.api.exp_request(
        FEW, notify=EMAIL, method="url", protocol="fits",
        filenamefmt="hmi.m_45s.{T_REC:A}.{CAMERA}.{segment}",
    )  # fmt: skip
    assert request.status == 2
    assert request.request_id is not None
    assert (request.rcount, request.files) == (4, ())
    entry = rig.emu.audit.requests("jsoc_fetch/exp_request")[0]
    assert entry.params["process"] == "n=0"
    assert entry.params["format"] == "json"
    done = await wait_done(rig, request.request_id)
    assert done.status == 0
    assert done.request_id == request.request_id
    assert done.count == 4
    assert len(done.files) == 4
    assert done.files[0].filename == "hmi.m_45s.20120101_000000_TAI.2.magnetogram.fits"
    url = rig.api.file_url(done, done.files[0])
    assert url.startswith(f"{rig.emu.url}{done.dir}/")
    async with rig.session.get(url) as resp:
        assert resp.status == 200
        assert await resp.read() == rig.emu.file_bytes(url)
    # The server deduplicates: asking again gives the same id (so retrying is safe).
    again = await rig.api.exp_request(
        FEW, notify=EMAIL, method="url", protocol="fits",
        filenamefmt="hmi.m_45s.{T_REC:A}.{CAMERA}.{segment}",
    )  # fmt: skip
    assert again.request_id == request.request_id


@pytest.mark.anyio
async def test_emulator_quick_export(rig: Rig) -> None:
    """url_quick + as-is answers at once with SUMS paths and no request id."""
    quick = await rig.api.exp_request(FEW, notify=EMAIL, method="url_quick", protocol="as-is")
    assert (quick.status, quick.request_id, quick.dir) == (0, None, None)
    assert len(quick.files) == 4
    url = rig.api.file_url(quick, quick.files[0])
    assert url == rig.emu.url + quick.files[0].filename
    async with rig.session.get(url) as resp:
        assert await resp.read() == rig.emu.file_bytes(url)


@pytest.mark.anyio
async def test_emulator_tar_export(rig: Rig) -> None:
    """url-tar exports point file_url at the tar file."""
    request = await rig.api.exp_request(FEW, notify=EMAIL, method="url-tar", protocol="fits")
    assert request.request_id is not None
    done = await wait_done(rig, request.request_id)
    assert done.tarfile is not None
    assert done.tarfile.endswith(f"{request.request_id}.tar")
    url = rig.api.file_url(done)
    async with rig.session.get(url) as resp:
        assert resp.status == 200
        assert (await resp.read())[:100] == rig.emu.file_bytes(url)[:100]


@pytest.mark.anyio
async def test_emulator_status_7_names_pending_id(rig: Rig) -> None:
    """A second export for a busy email is PendingLimitError naming the first id."""
    first = await rig.api.exp_request(FEW, notify=EMAIL, method="url", protocol="fits")
    with pytest.raises(PendingLimitError) as info:
        await rig.api.exp_request(HOUR, notify=EMAIL, method="url", protocol="fits")
    assert info.value.pending_ids == (first.request_id,)
    assert not info.value.per_ip
    assert EMAIL not in str(info.value)
    assert "j***@example.org" in str(info.value)
    assert info.value.server_message is not None
    assert EMAIL in info.value.server_message


@pytest.mark.anyio
async def test_emulator_status_7_per_ip(rig: Rig) -> None:
    """Over the per-IP pending limit the error is marked per_ip."""
    rig.emu.knobs.max_pending_per_ip = 0  # "more than 0 pending": the second is refused
    await rig.api.exp_request(FEW, notify=EMAIL, method="url", protocol="fits")
    with pytest.raises(PendingLimitError) as info:
        await rig.api.exp_request(FEW, notify="bob@example.org", method="url", protocol="fits")
    assert info.value.per_ip
    assert info.value.pending_ids == ()


@pytest.mark.anyio
async def test_emulator_status_3_too_large(rig: Rig) -> None:
    """Over the size cap: ExportTooLargeError, and no slot is taken."""
    rig.emu.knobs.size_cap_mb = 1
    with pytest.raises(ExportTooLargeError) as info:
        await rig.api.exp_request(HOUR, notify=EMAIL, method="url", protocol="fits")
    assert info.value.status == 3
    assert info.value.request_id is None
    assert info.value.server_message is not None
    assert "100000" not in info.value.server_message
    ok = await rig.api.exp_request(FEW, notify=EMAIL, method="url", protocol="fits")
    assert ok.status == 2


@pytest.mark.anyio
async def test_emulator_transient_4_and_email_refusal(rig: Rig) -> None:
    """The hash error is a transient ExportFailedError; unknown emails are refused."""
    rig.emu.knobs.hash_error_rate = 1.0
    with pytest.raises(ExportFailedError) as info:
        await rig.api.exp_request(FEW, notify=EMAIL, method="url", protocol="fits")
    assert info.value.transient
    rig.emu.knobs.hash_error_rate = 0.0
    rig.emu.knobs.unknown_emails = {"who@example.org"}
    with pytest.raises(EmailNotRegisteredError) as refused:
        await rig.api.exp_request(FEW, notify="who@example.org", method="url", protocol="fits")
    assert refused.value.email == "who@example.org"
    with pytest.raises(EmailNotRegisteredError):
        await rig.api.exp_request(FEW, notify="", method="url", protocol="fits")


@pytest.mark.anyio
async def test_emulator_failed_expired_unknown_and_status_6(rig: Rig) -> None:
    """Status 6 is returned; failures, unknown ids and expiry raise their errors."""
    rig.emu.knobs.status6_polls = 1
    first = await rig.api.exp_request(FEW, notify=EMAIL, method="url", protocol="fits")
    assert first.request_id is not None
    assert (await rig.api.exp_status(first.request_id)).status == 6
    await wait_done(rig, first.request_id)
    rig.emu.clock.advance(8 * 86400)
    with pytest.raises(ExportExpiredError) as expired:
        await rig.api.exp_status(first.request_id)
    assert expired.value.request_id == first.request_id
    rig.emu.knobs.status6_polls = 0
    rig.emu.knobs.export_failure_rate = 1.0
    second = await rig.api.exp_request(HOUR, notify=EMAIL, method="url", protocol="fits")
    assert second.request_id is not None
    rig.emu.clock.advance(6.0)
    with pytest.raises(ExportFailedError) as failed:
        await rig.api.exp_status(second.request_id)
    assert failed.value.status == 4
    assert failed.value.request_id == second.request_id
    with pytest.raises(ExportFailedError):
        await rig.api.exp_status("JSOC_20000101_999")


@pytest.mark.anyio
async def test_emulator_http_500_is_retried(rig: Rig) -> None:
    """A 500 is retried per the policy, every attempt paying the bucket."""
    rig.emu.knobs.http500_rate = 1.0

    def heal(n: int, exc: Exception, delay: float) -> None:
        rig.retries.append((n, exc, delay))
        rig.emu.knobs.http500_rate = 0.0

    api = JsocApi(rig.session, rig.emu.url, retry=RetryPolicy.no_wait(), on_retry=heal)
    assert await api.count(FEW) == 4
    statuses = [e.http_status for e in rig.emu.audit.entries]
    assert statuses == [500, 200]
    assert isinstance(rig.retries[0][1], HttpStatusError)
    assert rig.bucket.statistics().requests_granted == len(rig.emu.audit.entries)


@pytest.mark.anyio
async def test_emulator_retries_run_out(rig: Rig) -> None:
    """When every attempt fails, the last HttpStatusError propagates after `attempts` tries."""
    rig.emu.knobs.http500_rate = 1.0
    with pytest.raises(HttpStatusError) as info:
        await rig.api.count(FEW)
    assert info.value.status == 500
    assert [e.http_status for e in rig.emu.audit.entries] == [500] * 4
    assert [n for n, _, _ in rig.retries] == [1, 2, 3]


@pytest.mark.anyio
@pytest.mark.parametrize("knob", ["http503_rate", "http429_rate"])
async def test_emulator_retry_after_is_honoured(rig: Rig, knob: str) -> None:
    """503/429 with Retry-After: the retry waits at least that long and the bucket pauses."""
    setattr(rig.emu.knobs, knob, 1.0)
    rig.emu.knobs.retry_after = 1.0
    delays: list[float] = []

    def heal(n: int, exc: Exception, delay: float) -> None:
        delays.append(delay)
        setattr(rig.emu.knobs, knob, 0.0)

    api = JsocApi(rig.session, rig.emu.url, retry=RetryPolicy.no_wait(), on_retry=heal)
    start = anyio.current_time()
    assert (await api.check_email(EMAIL)).registered
    assert anyio.current_time() - start >= 1.0
    assert delays == [1.0]
    assert rig.bucket.statistics().pauses == 1


@pytest.mark.anyio
async def test_emulator_ip_block_pauses_bucket(rig: Rig) -> None:
    """Over the request budget the server answers 403 + Retry-After: IpBlockedError, paused."""
    rig.emu.knobs.rate_budget = 2
    rig.emu.knobs.block_seconds = 600.0
    assert (await rig.api.check_email(EMAIL)).registered
    assert await rig.api.count(FEW) == 4
    with pytest.raises(IpBlockedError) as info:
        await rig.api.count(FEW)
    assert info.value.retry_after is not None
    assert info.value.retry_after >= 1.0
    assert EMAIL not in str(info.value)
    stats = rig.bucket.statistics()
    assert stats.pauses == 1
    assert stats.paused_until is not None
    assert not rig.bucket.try_acquire()
    # Not retried: one 403 reached the server.
    assert [e.http_status for e in rig.emu.audit.entries] == [200, 200, 403]
    assert rig.retries == []


@pytest.mark.anyio
async def test_emulator_logs_never_hold_full_email(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """Even at DEBUG, with retries and refusals, log lines show only masked addresses."""
    caplog.set_level(logging.DEBUG, logger="asyncjsoc")
    rig.emu.knobs.http500_rate = 1.0

    def heal(n: int, exc: Exception, delay: float) -> None:
        logging.getLogger("asyncjsoc.test").info("retry: %s", exc)
        rig.emu.knobs.http500_rate = 0.0

    api = JsocApi(rig.session, rig.emu.url, retry=RetryPolicy.no_wait(), on_retry=heal)
    await api.check_email(EMAIL)
    rig.emu.knobs.http500_rate = 1.0
    first = await api.exp_request(FEW, notify=EMAIL, method="url", protocol="fits")
    assert first.status == 2
    with pytest.raises(PendingLimitError) as info:
        await api.exp_request(HOUR, notify=EMAIL, method="url", protocol="fits")
    logging.getLogger("asyncjsoc.test").info("error: %s", info.value)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert EMAIL not in text
    # The library's own lines (not only this test's) name the address, masked.
    library = [r.getMessage() for r in caplog.records
               if r.name.startswith("asyncjsoc.") and r.name != "asyncjsoc.test"]
    assert any("j***@example.org" in line for line in library)


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.anyio
async def test_unreachable_server_fails_after_few_attempts() -> None:
    """A server that has never answered is given FIRST_CONTACT_ATTEMPTS tries, not the
    whole policy: a wrong --server fails in seconds."""
    retries: list[int] = []
    async with create_session(TransportConfig(), TokenBucket(1000.0, 100)) as session:
        api = JsocApi(session, f"http://127.0.0.1:{_closed_port()}",
                      retry=RetryPolicy.no_wait(attempts=6),
                      on_retry=lambda n, exc, delay: retries.append(n))
        with pytest.raises(TransportError, match="Cannot connect"):
            await api.count(FEW)
    assert retries == list(range(1, FIRST_CONTACT_ATTEMPTS))


@pytest.mark.anyio
async def test_server_gone_after_answering_gets_the_whole_policy() -> None:
    """Once the server has answered, losing it (a restart, a network blip) is retried with
    the whole policy: a long pull does not give up after three quick tries."""
    retries: list[int] = []
    async with create_session(TransportConfig(), TokenBucket(1000.0, 100)) as session:
        async with run_emulator(Knobs()) as emu:
            api = JsocApi(session, emu.url, retry=RetryPolicy.no_wait(attempts=6),
                          on_retry=lambda n, exc, delay: retries.append(n))
            assert await api.count(FEW) == 4
        with pytest.raises(TransportError):
            await api.count(FEW)
    assert retries == [1, 2, 3, 4, 5]
