"""Emulator CGIs over loopback: jsoc_info, series lists, checkAddress, query decoding quirks."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from asyncjsoc.emulator import Emulator

pytestmark = pytest.mark.anyio

SHARP = "hmi.sharp_cea_720s"


async def cgi(emu: Emulator, name: str, query: str, *, post: bool = False) -> Any:
    """Call a CGI with a raw query string; return the decoded JSON body."""
    url = f"{emu.url}/cgi-bin/ajax/{name}"
    async with aiohttp.ClientSession() as s:
        if post:
            hdrs = {"Content-Type": "application/x-www-form-urlencoded"}
            async with s.post(url, data=query.encode(), headers=hdrs) as r:
                assert r.status == 200
                return json.loads((await r.read()).decode("latin-1"))
        async with s.get(f"{url}?{query}") as r:
            assert r.status == 200
            assert r.content_type == "application/json"
            return json.loads((await r.read()).decode("latin-1"))


async def test_series_struct_known_and_unknown(emulator: Emulator) -> None:
    """series_struct gives the series structure; an unknown series is status 1."""
    body = await cgi(emulator, "jsoc_info", "op=series_struct&ds=hmi.m_45s")
    assert body["status"] == 0
    assert body["primekeys"] == ["T_REC", "CAMERA"]
    assert any(s["name"] == "magnetogram" for s in body["segments"])
    bad = await cgi(emulator, "jsoc_info", "op=series_struct&ds=hmi.nope")
    assert bad["status"] == 1
    assert bad["error"]


async def test_rs_list_keys_segments_links_recinfo(emulator: Emulator) -> None:
    """rs_list returns string values, SUMS paths, error markers and recinfo with R=1."""
    ds = "hmi.M_45s%5B2012.01.01_00%3A00%3A34_TAI-2012.01.01_00%3A01%3A19_TAI%5D"
    body = await cgi(
        emulator, "jsoc_info",
        f"op=rs_list&ds={ds}&key=T_REC%2CCAR_ROT%2CNOSUCHKEY%2C%2Arecnum%2A"
        "&seg=magnetogram%2Cnoseg&R=1",
    )  # fmt: skip
    assert body["status"] == 0
    assert body["count"] == 2
    keys = {k["name"]: k["values"] for k in body["keywords"]}
    assert keys["T_REC"] == ["2012.01.01_00:00:45_TAI", "2012.01.01_00:01:30_TAI"]
    assert keys["NOSUCHKEY"] == ["Invalid KeyLink"] * 2
    assert all(isinstance(v, str) for vals in keys.values() for v in vals)
    segs = {s["name"]: s["values"] for s in body["segments"]}
    assert all(
        p.startswith("/SUM") and p.endswith("/magnetogram.fits") for p in segs["magnetogram"]
    )
    assert segs["noseg"] == ["InvalidSegName"] * 2
    magnetogram = next(s for s in body["segments"] if s["name"] == "magnetogram")
    assert (magnetogram["dims"], magnetogram["cparms"]) == (["4096x4096"] * 2,
                                                             ["compress Rice"] * 2)
    assert (magnetogram["bzeros"], magnetogram["bscales"]) == (["0"] * 2, ["0.1"] * 2)
    assert [r["name"] for r in body["recinfo"]] == [
        "hmi.M_45s[2012.01.01_00:00:45_TAI][2]",
        "hmi.M_45s[2012.01.01_00:01:30_TAI][2]",
    ]
    # the SUMS path in rs_list is served
    assert emulator.file_bytes(segs["magnetogram"][0])[:6] == b"SIMPLE"


async def test_rs_list_links_and_n_and_summary(emulator: Emulator) -> None:
    """Links resolve to target records, n limits, rs_summary counts, unknown link marked."""
    ds = f"{SHARP}[7302][2018.09.06_00:00_TAI-2018.09.06_02:00_TAI]"
    info = await cgi(emulator, "jsoc_info", f"op=series_struct&ds={SHARP}")
    link = info["links"][0]["name"] if info["links"] else "MHARP"
    body = await cgi(emulator, "jsoc_info", f"op=rs_list&ds={ds}&key=T_REC&link={link},NOLINK&n=-2")
    assert body["status"] == 0
    assert body["count"] == len(body["keywords"][0]["values"]) == 2  # the last 2 (n=-2)
    links = {ln["name"]: ln["values"] for ln in body["links"]}
    assert links["NOLINK"] == ["Invalid_Link"] * body["count"]
    summary = await cgi(emulator, "jsoc_info", f"op=rs_summary&ds={ds}")
    assert summary["status"] == 0
    assert summary["count"] >= body["count"]
    bad = await cgi(emulator, "jsoc_info", "op=rs_list&ds=no.such_series[1]&key=T_REC")
    assert bad["status"] == 1


async def test_rs_list_of_nothing_is_the_count_alone(emulator: Emulator) -> None:
    """An rs_list that selects no record answers count 0 and nothing else (the server's
    ``nrecs == 0`` branch): no keywords, segments or links lists."""
    body = await cgi(emulator, "jsoc_info",
                     "op=rs_list&ds=hmi.M_45s[2030.01.01_00:00:00_TAI]&key=T_REC&seg=**ALL**")
    assert body == {"count": 0, "runtime": body["runtime"], "status": 0}


async def test_rs_list_all_keywords_leaves_out_the_slot_index(emulator: Emulator) -> None:
    """key=**ALL** lists every keyword but the internal slot index ones (T_REC_index)."""
    body = await cgi(emulator, "jsoc_info",
                     "op=rs_list&ds=hmi.M_45s[2012.01.01_00:00:00_TAI][2]&key=**ALL**")
    names = [k["name"] for k in body["keywords"]]
    assert "T_REC" in names
    assert "CAMERA" in names
    assert not [n for n in names if n.endswith("_index")]
    info = await cgi(emulator, "jsoc_info", "op=series_struct&ds=hmi.M_45s")
    assert len(names) == len(info["keywords"]) - 1  # all of series_struct's but T_REC_index


async def test_series_lists(emulator: Emulator) -> None:
    """showextseries (plain, filtered, info=1) and show_series list catalog series."""
    full = await cgi(emulator, "showextseries", "dbhost=hmidb2")
    assert full["errMsg"] is None
    assert "hmi.M_45s" in full["seriesList"]
    only = await cgi(emulator, "showextseries", "dbhost=hmidb2&filter=sharp_cea")
    assert only["seriesList"]
    assert all("sharp_cea" in n for n in only["seriesList"])
    info = await cgi(emulator, "showextseries", "dbhost=hmidb2&filter=m_45s&info=1")
    assert all(isinstance(next(iter(it.values()))["description"], str) for it in info["seriesList"])
    plain = await cgi(emulator, "show_series", "filter=M_45s")
    assert plain["status"] == 0
    assert plain["n"] == len(plain["names"]) >= 1
    assert plain["names"][0]["primekeys"] == "T_REC, CAMERA"
    # no match is valid JSON; a filter that is not a regex gets the server's unquoted error
    assert await cgi(emulator, "show_series", "filter=no_such_series_at_all") == {
        "status": 0, "names": [], "n": 0}
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{emulator.url}/cgi-bin/ajax/show_series?filter=%5Bbroken") as r,
    ):
        assert await r.text() == '{"status":1,"errmsg":Series filter format error}\n'
    assert emulator.audit.requests("show_series")[-1].status == 1


@pytest.mark.parametrize(
    ("address", "knob", "status"),
    [
        ("me%2540x.org", None, 2),
        ("", None, -2),
        ("not-an-address", None, -2),
        ("p%2540x.org", "pending_emails", 3),
        ("u%2540x.org", "unknown_emails", 4),
        ("e%2540x.org", "expired_emails", 4),
    ],
)
async def test_check_address_codes(
    emulator: Emulator, address: str, knob: str | None, status: int
) -> None:
    """checkAddress answers 2/-2/3/4 with a msg; the double-encoded address is unquoted again."""
    if knob is not None:
        getattr(emulator.knobs, knob).add(address.replace("%2540", "@"))
    body = await cgi(emulator, "checkAddress.sh", f"address={address}&checkonly=1")
    assert body["status"] == status
    assert body["msg"]
    if knob == "expired_emails":
        assert "expired" in body["msg"]


async def test_check_address_without_checkonly_starts_a_registration(emulator: Emulator) -> None:
    """Without checkonly=1: an unknown address gets 1 (registration sent), then 3 (pending);
    a registered one still 2; with checkonly=1 (or 01) another unknown one stays 4."""
    emulator.knobs.unknown_emails.update({"u@x.org", "w@x.org"})
    assert (await cgi(emulator, "checkAddress.sh", "address=w%2540x.org&checkonly=1"))[
        "status"] == 4
    started = await cgi(emulator, "checkAddress.sh", "address=u%2540x.org&checkonly=0")
    assert started["status"] == 1
    assert started["msg"].startswith("Your email address has not been registered for use "
                                     "with the export system - starting registration")
    assert (await cgi(emulator, "checkAddress.sh", "address=u%2540x.org&checkonly=1"))[
        "status"] == 3
    assert (await cgi(emulator, "checkAddress.sh", "address=w%2540x.org&checkonly=01"))[
        "status"] == 4
    assert (await cgi(emulator, "checkAddress.sh", "address=me%2540x.org"))["status"] == 2


async def test_query_decoding_quirks_post_and_unknown_params(emulator: Emulator) -> None:
    """``process%3Dn=1`` limits records, unknown params are ignored, POST works like GET."""
    ds = "hmi.M_45s%5B2012.01.01_00%3A00%3A00_TAI%2F10m%5D"
    q = (f"op=exp_request&ds={ds}&notify=a%40b.org&method=url_quick&protocol=as-is"
         "&process%3Dn=1&requester=a&bogus=1")  # fmt: skip
    body = await cgi(emulator, "jsoc_fetch", q, post=True)
    assert body["status"] == 0
    assert body["rcount"] == 1
    params = emulator.audit.requests("jsoc_fetch/exp_request")[-1].params
    assert params["process"] == "n=1"
    assert emulator.audit.requests("jsoc_fetch/exp_request")[-1].method == "POST"


async def test_compact_json_escapes_slashes(emulator: Emulator) -> None:
    """The C JSON writer's ``\\/`` escapes and latin-1 bodies are reproduced."""
    ds = "hmi.M_45s%5B2012.01.01_00%3A00%3A45_TAI%5D"
    url = f"{emulator.url}/cgi-bin/ajax/jsoc_info?op=rs_list&ds={ds}&seg=magnetogram"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        raw = await r.read()
    assert b'"\\/SUM' in raw
    assert raw.endswith(b"\n")
    raw.decode("latin-1")
