"""Tests for the JSOC wire protocol layer: pure parsing, then calls against the emulator."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from asyncjsoc._api import (
    JsocApi,
    _decode_body,
    _export_status,
    _raise_export_refusal,
    _series_info,
    mask_email,
    parse_pending_ids,
)
from asyncjsoc._models import ExportFile, ExportStatus
from asyncjsoc.exceptions import (
    EmailNotRegisteredError,
    ExportExpiredError,
    ExportFailedError,
    ExportTooLargeError,
    OfflineDataError,
    PendingLimitError,
    ProtocolError,
)

RECORDINGS = Path("/work/shared/jsoc-recordings")


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
    err = _refuse({"status": 4, "error": "Bad record-set query 'x['."})
    assert isinstance(err, ExportFailedError)
    assert not err.transient
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


def test_recorded_bodies_roundtrip_json() -> None:
    """The recorded index.json uses escaped slashes, which decode to plain paths."""
    body = recorded("requestid=JSOC_20200410_212")[0]
    assert "\\/" not in json.dumps(body["dir"]).replace("\\\\", "")
