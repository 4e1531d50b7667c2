"""The download retry budget counts attempts that get nowhere, not attempts that moved on."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from engine_helpers import emulator

from asyncjsoc._download import PROGRESS_ROUNDS, Downloader
from asyncjsoc._http import TransportConfig, create_session
from asyncjsoc._models import RemoteFile
from asyncjsoc._retry import RetryPolicy
from asyncjsoc.emulator import Emulator
from asyncjsoc.exceptions import ExportExpiredError, HttpStatusError

pytestmark = pytest.mark.anyio

# 100 KiB at 1 MB/s: a cut transfer leaves a prefix on disk.
TRICKLE = {"file_size": 36 * 2880, "bandwidth": 1_000_000}


def _path(emu: Emulator) -> str:
    """URL path of one file the emulator serves."""
    sel = emu.catalog.select("hmi.M_45s[2012.01.01_00:00:45_TAI]{magnetogram}")
    return str(next(iter(sel)).segment_path(sel.segments[0]))


async def test_a_cut_that_made_progress_does_not_use_up_the_budget(tmp_path: Path) -> None:
    """One attempt allowed, the first transfer cut mid-file: a new round resumes and finishes."""
    async with emulator(drop_rate=1.0, **TRICKLE) as emu:
        path = _path(emu)

        async def heal() -> None:
            # The emulator has no event for "a transfer began": look every millisecond.
            while path not in emu.audit.file_stats or not emu.audit.file_stats[path].bytes_sent:  # noqa: ASYNC110
                await anyio.sleep(0.001)
            emu.knobs.drop_rate = 0.0  # the first GET is already doomed; the next is clean

        remote = RemoteFile(url=emu.url + path, relpath="m.fits", record="r")
        async with create_session(TransportConfig(requests_per_second=0)) as session, \
                anyio.create_task_group() as tg:
            tg.start_soon(heal)
            downloader = Downloader(session, chunk_size=1 << 14, retry=RetryPolicy.no_wait(1))
            outcome = await downloader.download(remote, tmp_path / "m.fits")
        assert outcome.attempts == 2
        assert outcome.resumed_from > 0
        assert (tmp_path / "m.fits").read_bytes() == emu.file_bytes(path)
        assert emu.audit.file_stats[path].ranges[-1] is not None


async def test_no_progress_ends_after_the_budget(tmp_path: Path) -> None:
    """A file that never arrives is not retried round after round: a 404 is asked for once,
    and a file answered 429 every time gets the retry budget (2 attempts), not
    ``PROGRESS_ROUNDS`` more rounds of it (no byte came, so nothing moved)."""
    assert PROGRESS_ROUNDS >= 1
    async with emulator(retry_after=0.0) as emu:
        gone = "/SUM1/D1/S00000/none.fits"
        sel = emu.catalog.select("hmi.M_45s[2012.01.01_00:00:45_TAI]{magnetogram}")
        refused = next(iter(sel)).segment_path(sel.segments[0])
        async with create_session(TransportConfig(requests_per_second=0)) as session:
            downloader = Downloader(session, retry=RetryPolicy.no_wait(2))
            with pytest.raises(ExportExpiredError):
                await downloader.download(RemoteFile(url=emu.url + gone, relpath="n.fits",
                                                     record="r"), tmp_path / "n.fits")
            emu.knobs.http429_rate = 1.0
            with pytest.raises(HttpStatusError):
                await downloader.download(RemoteFile(url=emu.url + refused, relpath="m.fits",
                                                     record="r"), tmp_path / "m.fits")
        asked = [e.path for e in emu.audit.entries if e.op == "file"]
        assert (asked.count(gone), asked.count(refused)) == (1, 2)
        assert not (tmp_path / "n.fits").exists()
        assert not (tmp_path / "m.fits").exists()
