"""Emulator: status 1 while staging, 416 past the end, offline data, keywords.txt, hostile knobs."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp
import anyio
import pytest

from asyncjsoc.emulator import Emulator
from asyncjsoc.emulator._hostile import ESCAPE_DIR

pytestmark = pytest.mark.anyio

M45 = "hmi.M_45s[2012.01.01_00:00:00_TAI/3m]"  # 4 records, one segment
SHARP = "hmi.sharp_cea_720s[7302][2018.09.06_00:00:00_TAI/1h]{Br,Bp}"  # 5 records


async def cgi(emu: Emulator, name: str, **params: str) -> tuple[int, bytes]:
    """GET a CGI; (HTTP status, raw body)."""
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    async with aiohttp.ClientSession() as s, s.get(f"{emu.url}/cgi-bin/ajax/{name}?{query}") as r:
        return r.status, await r.read()


async def fetch(emu: Emulator, **params: str) -> Any:
    """jsoc_fetch as JSON."""
    status, body = await cgi(emu, "jsoc_fetch", **params)
    assert status == 200
    return json.loads(body)


async def request(emu: Emulator, ds: str = M45, **kw: str) -> Any:
    """An exp_request (url/fits unless overridden)."""
    params = {"op": "exp_request", "ds": ds, "notify": "a@b.org", "method": "url",
              "protocol": "fits"}  # fmt: skip
    params.update(kw)
    return await fetch(emu, **params)


async def done(emu: Emulator, rid: str) -> Any:
    """Poll exp_status until it is no longer 1."""
    with anyio.fail_after(5):
        while True:
            body = await fetch(emu, op="exp_status", requestid=rid)
            if int(body["status"]) != 1:
                return body
            await anyio.sleep(0.02)


async def get(emu: Emulator, path: str, headers: dict[str, str] | None = None,
              ) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """GET a path without following redirects; (status, headers, body)."""
    async with (
        aiohttp.ClientSession() as s,
        s.get(emu.url + path, headers=headers, allow_redirects=False) as r,
    ):
        return r.status, dict(r.headers), await r.read()


async def test_exp_status_reports_1_while_staging(emulator: Emulator) -> None:
    """A queued export is status 1 in exp_status (2 only in exp_request), protocol §6 shape."""
    emulator.knobs.export_delay = 100.0
    first = await request(emulator)
    assert first["status"] == 2
    body = await fetch(emulator, op="exp_status", requestid=first["requestid"])
    assert body["status"] == 1
    assert set(body) == {"status", "requestid", "method", "protocol", "wait", "rcount", "size"}
    assert body["rcount"] == 0
    assert body["requestid"] == first["requestid"]


async def test_range_starting_at_the_size_is_416(emulator: Emulator) -> None:
    """bytes=SIZE- and ranges wholly past the end get 416 with ``bytes */SIZE``."""
    path = "/SUM41/D280342572/S00010/magnetogram.fits"
    rows = (await request(emulator, method="url_quick", protocol="as-is"))["data"]
    path = rows[0]["filename"]
    size = len(emulator.file_bytes(path))
    for rng in (f"bytes={size}-", f"bytes={size}-{size + 10}", f"bytes={size + 5}-3"):
        status, headers, _ = await get(emulator, path, {"Range": rng})
        assert status == 416, rng
        assert headers["Content-Range"] == f"bytes */{size}"


async def test_rs_list_and_url_quick_agree_on_which_records_are_offline(
    emulator: Emulator,
) -> None:
    """offline_rate: rs_list's *online* is N exactly where its segment path is
    NoDataDirectory, and url_quick answers at once for the online records only."""
    emulator.knobs.offline_rate = 0.5
    status, raw = await cgi(emulator, "jsoc_info", op="rs_list",
                            ds="hmi.M_45s[2012.01.01_00:00:00_TAI/15m]", key="*online*",
                            seg="magnetogram")  # fmt: skip
    assert status == 200
    body = json.loads(raw)
    online = body["keywords"][0]["values"]
    paths = body["segments"][0]["values"]
    assert len(online) == 20
    assert set(online) == {"Y", "N"}
    assert [p == "NoDataDirectory" for p in paths] == [o == "N" for o in online]
    times = [f"2012.01.01_00:{45 * i // 60:02d}:{45 * i % 60:02d}_TAI" for i in range(20)]
    up = times[online.index("Y")]
    down = times[online.index("N")]
    quick = await request(emulator, ds=f"hmi.M_45s[{up}]", method="url_quick",
                          protocol="as-is")  # fmt: skip
    assert (quick["status"], quick["data"][0]["filename"]) == (0, paths[online.index("Y")])
    staged = await request(emulator, ds=f"hmi.M_45s[{down}]", method="url_quick",
                           protocol="as-is", notify="c@d.org")  # fmt: skip
    assert staged["status"] == 2
    # and an offline storage unit's files are not on disk: its SUMS path is a 404
    (offline_record,) = emulator.catalog.select(f"hmi.M_45s[{down}]")
    segment = offline_record.series.segments[0]
    assert (await get(emulator, offline_record.segment_path(segment), {}))[0] == 404
    assert (await get(emulator, paths[online.index("Y")], {}))[0] == 200


async def test_offline_records_turn_url_quick_into_a_staged_export(emulator: Emulator) -> None:
    """Offline SUs: url_quick gets an id and status 2, then an as-is index; 'o' flag gives 25."""
    emulator.knobs.offline_rate = 1.0
    staged = await request(emulator, method="url_quick", protocol="as-is")
    assert staged["status"] == 2
    assert staged["requestid"].startswith("JSOC_")
    assert "data" not in staged
    index = await done(emulator, staged["requestid"])
    assert index["status"] == "0"
    assert index["method"] == "url_quick"
    assert len(index["data"]) == 4
    # Other record sets: an identical request would be answered as a duplicate (same id).
    flagged = await request(emulator, ds="hmi.M_45s[2012.01.01_00:00:00_TAI/2m]",
                            method="url_quick", protocol="as-is", o="1")  # fmt: skip
    assert flagged["status"] == 25
    assert "offline" in flagged["error"]
    assert flagged["requestid"] in flagged["error"]
    emulator.knobs.offline_rate = 0.0
    quick = await request(emulator, ds="hmi.M_45s[2012.01.01_00:00:00_TAI/1m]",
                          method="url_quick", protocol="as-is")  # fmt: skip
    assert quick["status"] == 0
    assert quick["requestid"] == ""


async def test_as_is_export_serves_keywords_txt(emulator: Emulator) -> None:
    """The keywords file index.json names exists and has KEY=value lines per record."""
    first = await request(emulator, protocol="as-is")
    index = await done(emulator, first["requestid"])
    status, _, body = await get(emulator, index["keywords"])
    assert status == 200
    text = body.decode()
    assert text.count("# hmi.M_45s[") == 4
    assert "T_REC=2012.01.01_00:00:00_TAI" in text.replace(" ", "")
    second = await request(emulator, ds=M45[:-3] + "2m]")
    assert second["status"] == 2, second
    fits = await done(emulator, second["requestid"])
    assert fits["keywords"] == "**IN FITS FILES**"


async def test_hostile_names_pick_stable_rows(emulator: Emulator) -> None:
    """hostile_names replaces a seeded subset of rows, the same subset for every request."""
    emulator.knobs.hostile_names = {"dotdot": 0.5}
    first = await request(emulator, ds=SHARP)
    index = await done(emulator, first["requestid"])
    bad = [r for r in index["data"] if ".." in r["filename"]]
    assert 0 < len(bad) < len(index["data"])
    assert all(r["filename"].endswith(".fits") and ESCAPE_DIR in r["filename"] for r in bad)
    quick = await request(emulator, ds=SHARP, method="url_quick", protocol="as-is")
    qbad = {r["record"] for r in quick["data"] if ".." in r["filename"]}
    assert qbad == {r["record"] + "{" + r["filename"].rsplit(".", 2)[-2] + "}" for r in bad}
    emulator.knobs.hostile_names = {"nul": 1.0, "backslash": 1.0}
    again = await request(emulator, ds=SHARP + "[]", method="url_quick", protocol="as-is")
    assert all("\\" in r["filename"] for r in again["data"])  # "backslash" sorts first


async def test_hostile_dir_and_broken_cgi_bodies(emulator: Emulator) -> None:
    """hostile_dirs rewrites ``dir``; hostile_cgi breaks the chosen op for chosen exports."""
    emulator.knobs.hostile_dirs = {"url": 1.0}
    index = await done(emulator, (await request(emulator))["requestid"])
    assert index["dir"].startswith("http://127.0.0.2:1/SUM")
    emulator.knobs.hostile_dirs = {}
    second = await request(emulator, ds="hmi.M_45s[2012.01.01_00:00:00_TAI/2m]")
    emulator.knobs.hostile_cgi = {"exp_status": "status-abc"}
    emulator.knobs.hostile_exports = {2}
    assert (await fetch(emulator, op="exp_status", requestid=second["requestid"]))[
        "status"
    ] == "abc"
    assert (await fetch(emulator, op="exp_status", requestid=index["requestid"]))[
        "status"
    ] == "0"
    for kind in ("html", "truncated", "array", "status-null", "status-list"):
        emulator.knobs.hostile_cgi = {"series_struct": kind}
        status, body = await cgi(emulator, "jsoc_info", op="series_struct", ds="hmi.M_45s")
        assert status == 200
        if kind in ("html", "truncated"):
            with pytest.raises(json.JSONDecodeError):
                json.loads(body)
        else:
            doc = json.loads(body)
            assert isinstance(doc, list) or doc["status"] in (None, [0])


async def test_huge_body_is_streamed(emulator: Emulator) -> None:
    """A 'huge' answer is exactly huge_body_bytes of valid JSON, with or without length."""
    emulator.knobs.huge_body_bytes = 3 * 1024 * 1024
    for kind, chunked in (("huge", True), ("huge-length", False)):
        emulator.knobs.hostile_cgi = {"checkAddress": kind}
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{emulator.url}/cgi-bin/ajax/checkAddress.sh?address=a@b.org") as r,
        ):
            body = await r.read()
            assert (r.content_length is None) == chunked
        assert len(body) == 3 * 1024 * 1024
        assert json.loads(body)["status"] == 0


async def test_redirects_and_oversized_files(emulator: Emulator) -> None:
    """redirect_rate answers 302 (off-host or same-host); oversize_files appends junk."""
    rows = (await request(emulator, method="url_quick", protocol="as-is"))["data"]
    path = rows[0]["filename"]
    real = emulator.file_bytes(path)
    emulator.knobs.redirect_rate = 1.0
    status, headers, _ = await get(emulator, path)
    assert status == 302
    assert headers["Location"] == f"http://127.0.0.2:1{path}?redirected=1"
    emulator.knobs.redirect_to = ""
    status, headers, _ = await get(emulator, path)
    assert status == 302
    assert headers["Location"] == f"{path}?redirected=1"
    status, _, body = await get(emulator, headers["Location"])
    assert status == 200
    assert body == real
    emulator.knobs.redirect_rate = 0.0
    for kind in ("padded", "chunked"):
        emulator.knobs.oversize_files = {kind: 1.0}
        status, headers, body = await get(emulator, path)
        assert status == 200
        assert body == real + b"J" * emulator.knobs.oversize_bytes
        assert ("Content-Length" in headers) == (kind == "padded")
