"""The real drms client (0.9) runs its whole workflow against the emulator, in a worker thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import drms
import pytest

from asyncjsoc.emulator import Emulator

pytestmark = pytest.mark.anyio

EMAIL = "fidelity@example.org"
M45 = "hmi.M_45s[2012.01.01_00:00:00_TAI/3m]"


def drms_client(emu: Emulator, email: str | None = EMAIL) -> Any:
    """A drms.Client pointed at the emulator (JSOC-style CGI set)."""
    config = drms.ServerConfig(
        name="asyncjsoc-emulator",
        cgi_baseurl=f"{emu.url}/cgi-bin/ajax/",
        cgi_show_series="show_series",
        cgi_jsoc_info="jsoc_info",
        cgi_jsoc_fetch="jsoc_fetch",
        cgi_check_address="checkAddress.sh",
        cgi_show_series_wrapper="showextseries",
        show_series_wrapper_dbhost="hmidb2",
        http_download_baseurl=f"{emu.url}/",
    )
    return drms.Client(server=config, email=email)


async def test_drms_metadata_calls(emulator: Emulator) -> None:
    """check_email, series, info, pkeys and query (keys, segments, links) work through drms."""
    emulator.knobs.unknown_emails.add("nobody@example.org")

    def run() -> dict[str, Any]:
        c = drms_client(emulator)
        keys, segs = c.query(M45, key="T_REC, CAR_ROT, QUALITY", seg="magnetogram")
        links = c.info("hmi.sharp_cea_720s").links
        link_res = c.query("hmi.sharp_cea_720s[7300]", link=list(links.index)[:1], n=2)
        return {
            "ok": c.check_email(EMAIL),
            "unknown": c.check_email("nobody@example.org"),
            "series": c.series(r"hmi\.m_45s"),
            "pkeys": c.pkeys("hmi.m_45s"),
            "info": c.info("hmi.M_45s"),
            "keys": keys,
            "segs": segs,
            "links": link_res,
        }

    got = await anyio.to_thread.run_sync(run)
    assert got["ok"] is True
    assert got["unknown"] is False
    assert got["series"] == ["hmi.M_45s"]
    assert got["pkeys"] == ["T_REC", "CAMERA"]
    assert "magnetogram" in got["info"].segments.index
    assert list(got["keys"].T_REC) == [
        f"2012.01.01_00:0{m}:{s}_TAI"
        for m, s in (("0", "00"), ("0", "45"), ("1", "30"), ("2", "15"))
    ]
    assert got["keys"].CAR_ROT.dtype.kind in "if"  # numeric conversion from series_struct types
    path = got["segs"].magnetogram[0]
    assert emulator.file_bytes(path)[:6] == b"SIMPLE"
    assert len(got["links"]) == 2
    assert all(v.startswith("hmi.") for v in got["links"].iloc[:, 0])


async def test_drms_exports_and_downloads(emulator: Emulator, tmp_path: Path) -> None:
    """url/fits, url_quick/as-is and url-tar exports wait, download, and match file_bytes."""
    emulator.knobs.export_delay = 0.1

    def run() -> dict[str, Any]:
        c = drms_client(emulator)
        out: dict[str, Any] = {}
        fits = c.export(M45, method="url", protocol="fits")
        fits.wait(sleep=0.05)
        (tmp_path / "fits").mkdir()
        out["fits"] = (fits, fits.download(tmp_path / "fits"))
        quick = c.export("hmi.M_45s[2012.01.01_00:00:45_TAI]", method="url_quick")
        (tmp_path / "quick").mkdir()
        out["quick"] = (quick, quick.download(tmp_path / "quick"))
        tar = c.export("hmi.M_45s[2012.01.01_01:00:00_TAI/2m]", method="url-tar",
                       protocol="fits")  # fmt: skip
        tar.wait(sleep=0.05)
        (tmp_path / "tar").mkdir()
        out["tar"] = (tar, tar.download(tmp_path / "tar"))
        out["bytes"] = {
            row.url: Path(row.download).read_bytes()
            for key in ("fits", "quick", "tar")
            for _, row in out[key][1].iterrows()
        }
        return out

    got = await anyio.to_thread.run_sync(run)
    fits, fits_dl = got["fits"]
    assert fits.status == 0
    assert fits.id.startswith("JSOC_")
    assert len(fits_dl) == 4
    assert fits_dl.download.notna().all()
    for _, row in fits_dl.iterrows():
        assert got["bytes"][row.url] == emulator.file_bytes(row.url)
        assert str(row.download).rsplit("/", 1)[1].startswith("hmi.m_45s.20120101_0")
    quick, quick_dl = got["quick"]
    assert quick.id is None
    assert quick.status == 0
    assert len(quick_dl) == 1
    assert got["bytes"][quick_dl.url[0]] == emulator.file_bytes(quick_dl.url[0])
    tar, tar_dl = got["tar"]
    assert tar.tarfile is not None
    assert len(tar_dl) == 1
    assert tar_dl.url[0].endswith(".tar")
    assert got["bytes"][tar_dl.url[0]] == emulator.file_bytes(tar_dl.url[0])
    assert emulator.audit.refetched() == []


async def test_drms_second_export_is_refused_with_7(emulator: Emulator) -> None:
    """While one export is pending, drms's next export from the same email fails with 7."""
    emulator.knobs.export_delay = 30

    def run() -> tuple[Any, Any, str]:
        c = drms_client(emulator)
        first = c.export(M45, method="url", protocol="fits")
        second = c.export("hmi.M_45s[2012.02.01_00:00:00_TAI]", method="url", protocol="fits")
        with pytest.raises(drms.DrmsExportError) as info:
            second.wait(sleep=0.01)
        return first, second, str(info.value)

    first, second, message = await anyio.to_thread.run_sync(run)
    assert first.status == 2
    assert second.status == 7
    assert f"({first.id})" in message
    assert message.endswith("[status=7]")
    assert len(emulator.audit.status7()) == 1
