"""Emulator static files over loopback: FITS validity, Range/If-Range, file faults, speed."""

from __future__ import annotations

import io
import time
import warnings

import aiohttp
import anyio
import pytest
from astropy.io import fits
from multidict import CIMultiDict

from asyncjsoc.emulator import Emulator

pytestmark = pytest.mark.anyio


async def sums_path(emu: Emulator, ds: str = "hmi.M_45s[2012.01.01_00:00:45_TAI]") -> str:
    """The SUMS path of the first magnetogram of ``ds`` (via rs_list)."""
    url = f"{emu.url}/cgi-bin/ajax/jsoc_info"
    params = {"op": "rs_list", "ds": ds, "seg": "magnetogram"}
    async with aiohttp.ClientSession() as s, s.get(url, params=params) as r:
        body = await r.json(content_type=None)
    path: str = body["segments"][0]["values"][0]
    return path


async def get(
    emu: Emulator, path: str, headers: dict[str, str] | None = None
) -> tuple[int, CIMultiDict[str], bytes]:
    """GET a path; (status, headers, body)."""
    async with aiohttp.ClientSession() as s, s.get(emu.url + path, headers=headers) as r:
        return r.status, CIMultiDict(r.headers), await r.read()


async def test_fits_file_is_valid_and_matches_file_bytes(emulator: Emulator) -> None:
    """A SUMS file is valid FITS with correct CHECKSUM/DATASUM and the record's keywords."""
    path = await sums_path(emulator)
    status, headers, body = await get(emulator, path)
    assert status == 200
    assert body == emulator.file_bytes(path) == emulator.file_bytes(emulator.url + path)
    assert int(headers["Content-Length"]) == len(body)
    assert len(body) % 2880 == 0
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["ETag"].startswith('"')
    assert headers["Last-Modified"].endswith("GMT")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fits.open(io.BytesIO(body), checksum=True) as hdul:
            hdul.verify("exception")
            assert hdul[0].header["T_REC"] == "2012.01.01_00:00:45_TAI"
            assert "DATASUM" in hdul[0].header


async def test_file_size_knob_and_determinism(emulator: Emulator) -> None:
    """Sizes follow the knobs (per series too); equal inputs give equal bytes."""
    path = await sums_path(emulator)
    small = emulator.file_bytes(path)
    emulator.knobs.file_sizes["hmi.m_45s:magnetogram"] = 3_000_000
    big = emulator.file_bytes(path)
    assert len(small) < 20_000
    assert 3_000_000 <= len(big) < 3_010_000
    assert emulator.file_bytes(path) == big
    other = await sums_path(emulator, "hmi.M_45s[2012.01.01_00:01:30_TAI]")
    assert emulator.file_bytes(other) != big


async def test_ranges_if_range_and_416(emulator: Emulator) -> None:
    """206 with Content-Range, suffix ranges, If-Range honoured, 416 beyond the end, HEAD."""
    path = await sums_path(emulator)
    full = emulator.file_bytes(path)
    size = len(full)
    status, headers, body = await get(emulator, path, {"Range": "bytes=100-199"})
    assert status == 206
    assert body == full[100:200]
    assert headers["Content-Range"] == f"bytes 100-199/{size}"
    status, _, body = await get(emulator, path, {"Range": "bytes=-10"})
    assert status == 206
    assert body == full[-10:]
    status, h416, _ = await get(emulator, path, {"Range": f"bytes={size}-"})
    assert status == 416
    assert h416["Content-Range"] == f"bytes */{size}"
    etag = headers["ETag"]
    status, _, body = await get(emulator, path, {"Range": "bytes=5-", "If-Range": etag})
    assert status == 206
    assert body == full[5:]
    status, _, body = await get(emulator, path, {"Range": "bytes=5-", "If-Range": '"stale"'})
    assert status == 200
    assert body == full
    lm = headers["Last-Modified"]
    status, _, body = await get(emulator, path, {"Range": "bytes=7-", "If-Range": lm})
    assert status == 206
    assert body == full[7:]
    async with aiohttp.ClientSession() as s, s.head(emulator.url + path) as r:
        assert r.status == 200
        assert int(r.headers["Content-Length"]) == size
    assert emulator.audit.ranges(path)[:2] == ["bytes=100-199", "bytes=-10"]


async def test_not_found(emulator: Emulator) -> None:
    """Unknown paths and missing segments are 404."""
    assert (await get(emulator, "/SUM1/D1/S00000/nothing.fits"))[0] == 404
    path = await sums_path(emulator)
    emulator.knobs.missing_segment_rate = 1.0
    assert (await get(emulator, path))[0] == 404
    with pytest.raises(KeyError):
        emulator.file_bytes(path)


async def test_ignore_range_fault(emulator: Emulator) -> None:
    """With ignore_range_rate=1 a Range request gets 200 and the whole body."""
    path = await sums_path(emulator)
    emulator.knobs.ignore_range_rate = 1.0
    status, headers, body = await get(emulator, path, {"Range": "bytes=10-"})
    assert status == 200
    assert body == emulator.file_bytes(path)
    assert "Content-Range" not in headers


@pytest.mark.parametrize("knob", ["drop_rate", "truncate_rate"])
async def test_cut_transfers(emulator: Emulator, knob: str) -> None:
    """Dropped and truncated transfers end early despite Content-Length; audit counts bytes."""
    emulator.knobs.file_size = 2_000_000
    path = await sums_path(emulator)
    size = len(emulator.file_bytes(path))
    setattr(emulator.knobs, knob, 1.0)
    async with aiohttp.ClientSession() as s, s.get(emulator.url + path) as r:
        assert r.status == 200
        assert r.content_length == size
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    stats = emulator.audit.file_stats[path]
    assert stats.gets == 1
    assert stats.complete == 0
    assert stats.bytes_sent < size


async def test_bandwidth_and_first_byte_delay(emulator: Emulator) -> None:
    """A per-transfer bandwidth cap and a slow first byte slow the transfer down."""
    emulator.knobs.file_size = 100_000
    path = await sums_path(emulator)
    size = len(emulator.file_bytes(path))
    emulator.knobs.bandwidth = size * 4  # about 0.25 s
    emulator.knobs.first_byte_delay = 0.1
    t0 = time.monotonic()
    status, _, body = await get(emulator, path)
    elapsed = time.monotonic() - t0
    assert status == 200
    assert len(body) == size
    assert elapsed >= 0.3


async def test_a_float_bandwidth_is_a_bandwidth(emulator: Emulator) -> None:
    """``bandwidth=2e6`` (a float, as Python users write it) serves the whole file."""
    emulator.knobs.file_size = 50_000
    path = await sums_path(emulator)
    emulator.knobs.bandwidth = 2e6  # type: ignore[assignment]
    status, _, body = await get(emulator, path)
    assert status == 200
    assert body == emulator.file_bytes(path)


async def test_audit_counts_complete_fetches(emulator: Emulator) -> None:
    """Two whole GETs of one file show up as a refetch; a tail range completes too."""
    path = await sums_path(emulator)
    await get(emulator, path)
    assert emulator.audit.refetched() == []
    await get(emulator, path, {"Range": "bytes=100-"})
    assert emulator.audit.refetched() == [path]
    assert emulator.audit.file_gets(path) == 2
    assert emulator.audit.bytes_sent(path) == 2 * len(emulator.file_bytes(path)) - 100


async def test_serves_fast(emulator: Emulator) -> None:
    """A cached 64 MB file streams from memory on loopback, far faster than any WAN link.

    Measured at about 1 GB/s here (the bandwidth benchmark has the real numbers); the bound
    only catches a server that builds bodies byte by byte, with room for a loaded machine.
    """
    emulator.knobs.file_size = 64 * 1024 * 1024
    path = await sums_path(emulator)
    emulator.file_bytes(path)  # warm the cache
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as s, s.get(emulator.url + path) as r:
        n = 0
        async for chunk in r.content.iter_chunked(1 << 20):
            n += len(chunk)
    rate = n / (time.monotonic() - t0) / 1e6
    assert n >= 64 * 1024 * 1024
    assert rate > 30, f"{rate:.0f} MB/s"


async def test_hold_files_keeps_gets_waiting_until_released(emulator: Emulator) -> None:
    """Held file GETs get no headers until release; CGI calls are not held."""
    path = await sums_path(emulator)  # a CGI call, answered while files are held below
    emulator.hold_files()
    answers: list[int] = []

    async def fetch() -> None:
        status, _, body = await get(emulator, path)
        assert body == emulator.file_bytes(path)
        answers.append(status)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(fetch)
            tg.start_soon(fetch)
            await emulator.wait_files_held(2)
            assert await sums_path(emulator) == path
            assert answers == []
            emulator.release_files()
    assert answers == [200, 200]
    assert emulator.files_held == 0


async def test_a_client_hanging_up_mid_file_is_not_logged_as_an_error(
        emulator: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    """A client that closes its connection mid-body (a cancelled download) is routine: the
    emulator logs no 'Error handling request' traceback for it."""
    import logging

    emulator.knobs.file_size = 4 << 20
    emulator.knobs.bandwidth = 2_000_000  # ~2 s for the file: the hang-up comes mid-body
    path = await sums_path(emulator)
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    async with aiohttp.ClientSession() as s, s.get(emulator.url + path) as r:
        await r.content.readexactly(64 * 1024)
        r.connection.transport.abort()  # type: ignore[union-attr]
    stats = emulator.audit.file_stats[path]
    with anyio.fail_after(10):
        await emulator.wait_files_sent()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    assert stats.complete == 0
