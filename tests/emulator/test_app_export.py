"""Emulator exports over loopback: exp_request checks in server order, lifecycle, index bodies."""

from __future__ import annotations

import io
import json
import re
import tarfile
from typing import Any
from urllib.parse import quote

import aiohttp
import anyio
import pytest

from asyncjsoc.emulator import Emulator

pytestmark = pytest.mark.anyio

M45 = "hmi.M_45s[2012.01.01_00:00:00_TAI/3m]"  # 4 records, one segment
AIA = "aia.lev1_euv_12s[2010-07-30T13:30:00Z/1m][193]"


async def fetch(emu: Emulator, *, raw: bool = False, **params: str) -> Any:
    """GET jsoc_fetch with ``params``; the JSON (or raw text) body."""
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{emu.url}/cgi-bin/ajax/jsoc_fetch?{query}") as r,
    ):
        assert r.status == 200
        text = (await r.read()).decode("latin-1")
    return text if raw else json.loads(text)


async def request(emu: Emulator, ds: str = M45, email: str = "a@b.org", **kw: str) -> Any:
    """An exp_request with drms-like defaults (url/fits)."""
    params = {"op": "exp_request", "format": "json", "ds": ds, "notify": email,
              "method": "url", "protocol": "fits", "requestor": "a"}  # fmt: skip
    params.update(kw)
    return await fetch(emu, raw=False, **params)


async def wait_done(emu: Emulator, rid: str) -> Any:
    """Poll exp_status until it leaves 1/6; the final body."""
    with anyio.fail_after(5):
        while True:
            body = await fetch(emu, op="exp_status", requestid=rid)
            if int(body["status"]) not in (1, 6):
                return body
            await anyio.sleep(0.02)


async def get(emu: Emulator, path: str) -> tuple[int, bytes]:
    """GET a file path; (HTTP status, body)."""
    async with aiohttp.ClientSession() as s, s.get(emu.url + path) as r:
        return r.status, await r.read()


async def test_email_checks_come_first(emulator: Emulator) -> None:
    """Empty and unregistered emails are status 4 with the server's texts."""
    empty = await request(emulator, email="", ds="garbage[")
    assert empty == {"status": 4, "error": "Email address for notification was not specfied. "
                     "It is required."}  # fmt: skip
    emulator.knobs.unknown_emails.add("u@b.org")
    unknown = await request(emulator, email="u@b.org", ds="garbage[")
    assert unknown["status"] == 4
    assert unknown["error"].startswith("Cannot process your request. ")


async def test_full_lifecycle_fits_index(emulator: Emulator) -> None:
    """2 → 1 → 0: index.json is tab-printed, all strings, \\/ escaped; files are served."""
    emulator.knobs.export_delay = 0.3
    first = await request(emulator)
    assert first["status"] == 2
    assert re.fullmatch(r"JSOC_\d{8}_\d{3,}", first["requestid"])
    assert first["rcount"] == 4
    assert first["size"] >= 1
    assert "count" not in first
    rid = first["requestid"]
    pending = await fetch(emulator, op="exp_status", requestid=rid)
    assert pending["status"] == 1
    assert pending["wait"] == 10
    raw = await wait_for_raw(emulator, rid)
    assert raw.startswith('{\n\t"version": "0.5",\n\t"requestid": ')
    assert '"status": "0"' in raw
    assert "\\/SUM" in raw
    assert raw.endswith("}]\n}\n")
    body = json.loads(raw)
    assert all(isinstance(body[k], str) for k in body if k != "data")
    assert body["count"] == "4"
    assert len(body["data"]) == 4
    assert body["data"][0]["record"] == "hmi.M_45s[2012.01.01_00:00:00_TAI][2]"
    assert body["data"][0]["filename"].endswith(".magnetogram.fits")
    status, data = await get(emulator, f"{body['dir']}/{body['data'][0]['filename']}")
    assert status == 200
    assert data == emulator.file_bytes(f"{body['dir']}/{body['data'][0]['filename']}")
    status, index = await get(emulator, f"{body['dir']}/index.json")
    assert status == 200
    assert index.decode() == raw
    # index.html as jsoc_export_make_index writes it: header table, then linked records
    status, page = await get(emulator, f"{body['dir']}/index.html")
    assert status == 200
    html = page.decode()
    assert html.startswith('<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01//EN"')
    assert f"<tr><td><b>requestid</b></td><td>{rid}</td></tr>" in html
    first_row = body["data"][0]
    link = f"https://jsoc1.stanford.edu{body['dir']}/{first_row['filename']}"
    assert (f"<tr><td>{first_row['record']}</td><td><A HREF=\"{link}\">"
            f"{first_row['filename']}</A></td></tr>") in html
    assert html.count("<A HREF=") == 4
    assert html.endswith("</table></body></html>\n")
    txt = await fetch(emulator, raw=True, op="exp_status", requestid=rid, format="txt")
    assert "status=0" in txt
    assert "# DATA" in txt
    assert "\t" in txt.split("# DATA")[1]


async def wait_for_raw(emu: Emulator, rid: str) -> str:
    """Poll until done; the raw status-0 body."""
    await wait_done(emu, rid)
    text: str = await fetch(emu, raw=True, op="exp_status", requestid=rid)
    return text


async def test_pending_limit_per_email_then_freed(emulator: Emulator) -> None:
    """A second export from the same email is 7 naming the pending id; freed on completion."""
    emulator.knobs.export_delay = 0.3
    first = await request(emulator)
    second = await request(emulator, ds="hmi.M_45s[2012.01.02_00:00:00_TAI]")
    assert second["status"] == 7
    assert second["error"] == (
        f"User a@b.org has 1 pending export requests ({first['requestid']}); please wait until "
        "at least one request has completed before submitting a new one."
    )
    quick = await request(emulator, ds="hmi.M_45s[2012.01.02_00:00:00_TAI]",
                          method="url_quick", protocol="as-is")  # fmt: skip
    assert quick["status"] == 7  # url_quick is refused while a slot is held
    other = await request(emulator, email="c@d.org", ds="hmi.M_45s[2012.01.02_00:00:00_TAI]")
    assert other["status"] == 2
    await wait_done(emulator, first["requestid"])
    third = await request(emulator, ds="hmi.M_45s[2012.01.02_00:00:00_TAI]")
    assert third["status"] == 2
    assert emulator.audit.max_pending_per_email() == {"a@b.org": 1, "c@d.org": 1}
    assert len(emulator.audit.status7()) == 2


async def test_pending_slot_times_out(emulator: Emulator) -> None:
    """A slot held past ``pending_timeout`` frees itself even while the export runs."""
    emulator.knobs.export_delay = 10_000
    await request(emulator)
    assert (await request(emulator, ds=AIA))["status"] == 7
    emulator.clock.advance(3601)
    assert (await request(emulator, ds=AIA))["status"] == 2


async def test_per_ip_limit(emulator: Emulator) -> None:
    """A request finding more than ``max_pending_per_ip`` pending exports from its IP gets 7
    "too many requests" (the server's ``> 10``: the IP holds one more than the limit)."""
    emulator.knobs.export_delay = 10_000
    emulator.knobs.max_pending_per_ip = 2
    for i in range(3):
        ds = f"hmi.M_45s[2012.01.0{i + 1}_00:00:00_TAI]"
        assert (await request(emulator, email=f"u{i}@b.org", ds=ds))["status"] == 2
    refused = await request(emulator, email="u9@b.org", ds=AIA)
    assert refused["status"] == 7
    assert refused["error"].startswith("There are too many requests from u9@b.org;")
    assert emulator.audit.max_pending_per_ip() == {"127.0.0.1": 3}


async def test_parse_and_series_errors(emulator: Emulator) -> None:
    """Unknown series, bad syntax, seg= plus {} and too many records are 4 with messages."""
    unknown = await request(emulator, ds="hmi.nothing[2012.01.01]")
    assert unknown == {
        "status": 4,
        "error": "Cannot export series 'hmi.nothing' - it does not exist.\n",
    }
    bad = await request(emulator, ds="hmi.M_45s[2012.01.01_00:00:00_TAI")
    assert bad == {"status": 4,
                   "error": "Bad record-set query 'hmi.M_45s[2012.01.01_00:00:00_TAI'.\n"}
    both = await request(emulator, ds="hmi.M_45s[2012.01.01_00:00:00_TAI]{magnetogram}",
                         seg="magnetogram")  # fmt: skip
    assert both == {"status": 4, "error": "cannot provide both the `seg` argument, and a "
                    "segment filter in the `in` argument"}  # fmt: skip
    # an empty {} beside seg= is no conflict (jsoc_fetch 2022)
    empty = await request(emulator, ds="hmi.M_45s[2012.01.01_00:00:00_TAI]{}",
                          seg="magnetogram", email="e@b.org")  # fmt: skip
    assert empty["status"] == 2
    # **ALL** anywhere in the segment list means every segment
    every = await request(emulator, ds="hmi.sharp_cea_720s[7302][2018.09.08_14:24_TAI]"
                          "{Br,**ALL**}", email="s@b.org")  # fmt: skip
    sharp = emulator.catalog.find("hmi.sharp_cea_720s")
    assert sharp is not None
    assert len(emulator.state.exports[every["requestid"]].rows) == len(sharp.segments) > 3
    nothing = await request(emulator, ds="{magnetogram}")
    assert nothing == {"status": 4, "error": "Bad record-set query '{magnetogram}'.\n"}
    mixed = await request(emulator, ds="hmi.M_45s[2012.01.01_00:00:00_TAI],"
                          "hmi.V_45s[2012.01.01_00:00:00_TAI]", email="m@b.org")  # fmt: skip
    assert mixed == {"status": 4,
                     "error": "Cannot specify subsets of records from different series.\n"}
    emulator.knobs.max_records = 3
    many = await request(emulator)
    assert many["status"] == 4
    assert "too many records" in many["error"]


async def test_size_and_file_caps(emulator: Emulator) -> None:
    """Over the size cap or the per-series file cap → 3 with requestid VOID."""
    emulator.knobs.file_size = 600 * 1024 * 1024
    big = await request(emulator, ds="hmi.M_45s[2012.01.01_00:00:00_TAI/3h]")
    assert big["status"] == 3
    assert big["requestid"] == "VOID"
    assert big["error"] == "Request exceeds max byte limit of 100000MB"
    assert big["size"] > 100000
    emulator.knobs.file_size = 1000
    emulator.knobs.file_caps = {"hmi.": 100}
    files = await request(emulator, ds="hmi.M_45s[2012.01.01_00:00:00_TAI/3h]")
    assert files["status"] == 3
    assert files["requestid"] == "VOID"
    assert files["error"] == "Request exceeds max file limit of 100 files"
    assert emulator.state.exports == {}


async def test_aia_file_names_print_the_observation_second_not_the_slot(
    emulator: Emulator,
) -> None:
    """As recorded in 2020: slot 13:30:02Z of 193 Å is exported as ...T133009Z..., and 335 Å
    three seconds after its slot, while the index records keep the slot."""
    emulator.knobs.export_delay = 0.0
    fmt = "aia.lev1_euv_12s.{T_REC:A}.{WAVELNTH}.{segment}"
    first = await request(emulator, ds="aia.lev1_euv_12s[2010-07-30T13:30:02Z][193,335]{image}",
                          filenamefmt=fmt)
    body = await wait_done(emulator, first["requestid"])
    rows = [(row["record"], row["filename"]) for row in body["data"]]
    assert rows == [
        ("aia.lev1_euv_12s[2010-07-30T13:30:02Z][193]",
         "aia.lev1_euv_12s.2010-07-30T133009Z.193.image_lev1.fits"),
        ("aia.lev1_euv_12s[2010-07-30T13:30:02Z][335]",
         "aia.lev1_euv_12s.2010-07-30T133005Z.335.image_lev1.fits"),
    ]


async def test_size_is_whole_mib_rounded_down_but_at_least_one(emulator: Emulator) -> None:
    """As jsoc_fetch: a size under 1 MiB becomes 1, others are divided down (3.8 MiB → 3)."""
    emulator.knobs.file_size = 1_000_000  # four records: about 3.8 MiB
    body = await request(emulator)
    assert body["size"] == 3
    emulator.knobs.file_size = 2 * 2880
    one = await request(emulator, email="b@b.org", ds="hmi.M_45s[2012.01.01_00:00:00_TAI]")
    assert one["size"] == 1


async def test_wait_counts_down_to_a_fixed_estimate_in_whole_seconds(emulator: Emulator) -> None:
    """As the server: wait = request + 10 s - now, rounded, whatever the export takes, and
    negative once the estimate has passed while the export is still processing."""
    emulator.knobs.export_delay = 100.0
    first = await request(emulator)
    assert first["wait"] == 10
    rid = first["requestid"]
    waits = []
    # Quarter-second offsets from the rounding edges leave room for real time passing
    # between the calls, while still telling round() from int() (6.75 -> 7).
    for step in (3.25, 3.0, 7.0, 50.0):
        emulator.clock.advance(step)
        body = await fetch(emulator, op="exp_status", requestid=rid)
        assert body["status"] == 1
        waits.append(body["wait"])
    assert waits == [7, 4, -3, -53]
    assert all(type(w) is int for w in waits)
    again = await request(emulator, email="b@b.org")  # a duplicate: the old id
    assert (again["requestid"], again["wait"]) == (rid, 0)


async def test_an_ideal_server_counts_down_the_true_time_left(emulator: Emulator) -> None:
    """With eta_seconds None, wait is export_delay counted down, decimals kept."""
    emulator.knobs.eta_seconds = None
    emulator.knobs.export_delay = 30.0
    first = await request(emulator)
    assert 29.0 < first["wait"] <= 30.0
    emulator.clock.advance(12.5)
    body = await fetch(emulator, op="exp_status", requestid=first["requestid"])
    assert 16.5 < body["wait"] <= 17.5
    assert body["wait"] != round(body["wait"])


async def test_duplicate_returns_same_id_within_24h(emulator: Emulator) -> None:
    """An identical request returns the old id with status 2; after 24 h a new id."""
    first = await request(emulator)
    await wait_done(emulator, first["requestid"])
    emulator.clock.advance(11)  # past the estimate: max(0, EstTime - now) is 0
    again = await request(emulator)
    assert again["status"] == 2
    assert again["requestid"] == first["requestid"]
    assert again["wait"] == 0
    emulator.clock.advance(86401)
    fresh = await request(emulator)
    assert fresh["requestid"] != first["requestid"]


async def test_an_expired_export_is_not_handed_out_as_a_duplicate(emulator: Emulator) -> None:
    """With retention shorter than the 24 h window, an identical request after expiry gets a
    new export, not the old id that answers only status 5."""
    emulator.knobs.retention = 60.0
    first = await request(emulator)
    await wait_done(emulator, first["requestid"])
    emulator.clock.advance(30)
    assert (await request(emulator))["requestid"] == first["requestid"]  # still served
    emulator.clock.advance(61)
    gone = await fetch(emulator, op="exp_status", requestid=first["requestid"])
    assert gone["status"] == 5
    fresh = await request(emulator)
    assert fresh["requestid"] != first["requestid"]
    assert fresh["status"] == 2


async def test_url_quick_as_is_immediate(emulator: Emulator) -> None:
    """url_quick + as-is answers at once with SUMS paths, no id, and takes no slot."""
    body = await request(emulator, method="url_quick", protocol="as-is")
    assert body["status"] == 0
    assert body["requestid"] == ""
    assert body["dir"] == ""
    assert body["rcount"] == 4
    assert body["count"] == 4
    assert body["data"][0]["record"].endswith("{magnetogram}")
    assert body["data"][0]["filename"].startswith("/SUM")
    assert emulator.state.pending(email="a@b.org") == []
    status, data = await get(emulator, body["data"][0]["filename"])
    assert status == 200
    assert data == emulator.file_bytes(body["data"][0]["filename"])


async def test_as_is_url_tar_and_missing_segments(emulator: Emulator) -> None:
    """as-is index is version 1 with {seg}, NoDataFile rows; url-tar serves a real tar only."""
    emulator.knobs.missing_segment_rate = 0.5
    first = await request(emulator, method="url-tar", protocol="as-is",
                          ds="hmi.M_45s[2012.01.01_00:00:00_TAI/10m]")  # fmt: skip
    body = await wait_done(emulator, first["requestid"])
    assert body["version"] == "1"
    assert body["wait"] == "0"
    assert "exptime" not in body
    assert body["tarfile"] == f"{body['dir']}/{first['requestid']}.tar"
    names = [d["filename"] for d in body["data"]]
    assert "NoDataFile" in names
    assert any(n != "NoDataFile" for n in names)
    assert all(d["record"].endswith("{magnetogram}") for d in body["data"])
    status, tar_bytes = await get(emulator, body["tarfile"])
    assert status == 200
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = tar.getnames()
        first_member = tar.extractfile(members[0])
        assert first_member is not None
        content = first_member.read()
    assert members == [n for n in names if n != "NoDataFile"]
    sums = next(d for d in body["data"] if d["filename"] == members[0])["record"]
    assert content[:6] == b"SIMPLE"
    assert sums
    status, _ = await get(emulator, f"{body['dir']}/{members[0]}")
    assert status == 404  # only the tar is in the directory
    status, page = await get(emulator, f"{body['dir']}/index.html")
    assert status == 200
    html = page.decode()
    tar_link = f"https://jsoc1.stanford.edu{body['tarfile']}"
    assert f'<tr><td>tarfile</td><td><a href="{tar_link}">{body["tarfile"]}</a></td></tr>' in html
    assert "<A HREF=" not in html  # a tar export's records are names, not links
    assert f"<tr><td>{body['data'][0]['record']}</td><td>{names[0]}</td></tr>" in html


async def test_fits_export_with_nothing_written_has_warning_row(emulator: Emulator) -> None:
    """A FITS export whose files are all missing lists the warning= row."""
    emulator.knobs.missing_segment_rate = 1.0
    first = await request(emulator)
    body = await wait_done(emulator, first["requestid"])
    assert body["count"] == "0"
    warning = "warning=No FITS files were exported. The requested FITS files no longer exist."
    assert body["data"] == [{"record": warning, "filename": ""}]


async def test_exp_status_errors_and_expiry(emulator: Emulator) -> None:
    """Bad/unknown ids → 4 (literal %s bug); after retention → 5 and the files 404."""
    assert (await fetch(emulator, op="exp_status"))["error"] == "RequestID must be provided"
    bad = await fetch(emulator, op="exp_status", requestid="nope")
    assert bad == {"status": 4, "error": "Bad RequestID 'nope' provided."}
    unknown = await fetch(emulator, op="exp_status", requestid="JSOC_20990101_001")
    assert unknown["error"] == "invalid export DRMS record for ID `%s`JSOC_20990101_001"
    first = await request(emulator)
    body = await wait_done(emulator, first["requestid"])
    path = f"{body['dir']}/{body['data'][0]['filename']}"
    assert (await get(emulator, path))[0] == 200
    emulator.clock.advance(7 * 86400 + 1)
    gone = await fetch(emulator, op="exp_status", requestid=first["requestid"])
    assert gone == {"status": 5, "requestid": first["requestid"], "method": "url",
                    "protocol": "fits", "wait": 999999, "rcount": 0, "size": first["size"],
                    "error": "Request was completed but is now deleted, 7 day limit exceeded",
                    "contact": "jsoc_help@jsoc.stanford.edu"}  # fmt: skip
    assert list(gone) == ["status", "requestid", "method", "protocol", "wait", "rcount",
                          "size", "error", "contact"]  # fmt: skip
    assert (await get(emulator, path))[0] == 404
    text = await fetch(emulator, raw=True, op="exp_status", requestid=first["requestid"],
                       format="txt")
    assert text == (f"# JSOC Data Export Not Ready.\nstatus=5\nrequestid={first['requestid']}\n"
                    f"method=url\nprotocol=fits\nwait=999999.000000\nsize={first['size']}\n"
                    'error="Request was completed but is now deleted, 7 day limit exceeded"\n'
                    "contact=jsoc_help@jsoc.stanford.edu\n")


async def test_a_pending_export_in_txt_format_is_not_ready_with_its_unrounded_wait(
    emulator: Emulator,
) -> None:
    """format=txt of a pending export: the server's 'Not Ready' lines, wait printed %f."""
    emulator.knobs.export_delay = 100.0
    first = await request(emulator)
    emulator.clock.advance(2.25)
    text = await fetch(emulator, raw=True, op="exp_status", requestid=first["requestid"],
                       format="txt")
    lines = text.splitlines()
    assert lines[:5] == ["# JSOC Data Export Not Ready.", "status=1",
                         f"requestid={first['requestid']}", "method=url", "protocol=fits"]
    assert re.fullmatch(r"wait=\d+\.\d{6}", lines[5]), lines[5]
    assert 7.6 < float(lines[5][5:]) <= 7.75
    assert lines[6:] == [f"size={first['size']}"]
    assert text.endswith("\n")


async def test_fault_status6_hash_error_and_failure(emulator: Emulator) -> None:
    """Legacy 6 for the first polls, transient hash error, and export failure → 4."""
    emulator.knobs.status6_polls = 2
    first = await request(emulator)
    polls = [(await fetch(emulator, op="exp_status", requestid=first["requestid"]))["status"]]
    text = await fetch(emulator, raw=True, op="exp_status", requestid=first["requestid"],
                       format="txt")  # fmt: skip
    assert polls == [6]
    assert text.splitlines()[:2] == ["# JSOC Data Export Not Ready.", "status=6"]
    assert 'error="Request not found"' in text
    await wait_done(emulator, first["requestid"])
    emulator.knobs.hash_error_rate = 1.0
    err = await request(emulator, email="x@y.org", ds="hmi.M_45s[2013.01.01_00:00:00_TAI]")
    assert err == {"status": 4, "error": "Cant save new export-request hash."}
    emulator.knobs.hash_error_rate = 0.0
    emulator.knobs.export_failure_rate = 1.0
    emulator.knobs.status6_polls = 0
    doomed = await request(emulator, email="x@y.org", ds="hmi.M_45s[2014.01.01_00:00:00_TAI]")
    failed = await wait_done(emulator, doomed["requestid"])
    assert failed["status"] == 4
    assert failed["error"]
    assert failed["contact"]
    assert (failed["wait"], failed["rcount"], failed["size"]) == (999999, 0, doomed["size"])
    # the slot is freed when the export fails
    assert (await request(emulator, email="x@y.org", ds=AIA))["status"] == 2


async def test_request_ids_count_per_day(emulator: Emulator) -> None:
    """Ids are JSOC_<UTC date>_NNN counting up within the day."""
    a = await request(emulator, email="p@q.org")
    b = await request(emulator, email="r@q.org", ds=AIA)
    day = emulator.clock.utcnow().strftime("%Y%m%d")
    assert a["requestid"] == f"JSOC_{day}_001"
    assert b["requestid"] == f"JSOC_{day}_002"
