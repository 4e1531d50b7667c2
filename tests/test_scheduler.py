"""Scheduler pieces: polling policy, file names, and a pull's export bookkeeping."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_helpers import QUERY, emulator, fast_config, fetch_with_files_held

from asyncjsoc._client import Client, PullResult
from asyncjsoc._events import Event, ExportSubmitted, ExportWaiting, FileDone
from asyncjsoc._models import ExportFile, ExportStatus, KeywordInfo, SeriesInfo
from asyncjsoc._naming import (
    default_filenamefmt,
    disambiguated_relpath,
    missing_segments,
    quick_relpath,
    stray_segments,
)
from asyncjsoc._polling import wait_export_ready
from asyncjsoc._scheduler import is_expiry
from asyncjsoc.exceptions import (
    ExportExpiredError,
    ExportFailedError,
    HttpStatusError,
    UnsafePathError,
)

pytestmark = pytest.mark.anyio


class ScriptedStatus:
    """An exp_status stand-in answering a fixed sequence of statuses."""

    def __init__(self, *statuses: ExportStatus) -> None:
        self.statuses = list(statuses)
        self.calls = 0

    async def exp_status(self, request_id: str) -> ExportStatus:
        """The next scripted answer."""
        self.calls += 1
        return self.statuses.pop(0)


def _status(code: int, wait: float = 0.0) -> ExportStatus:
    """An ExportStatus for request JSOC_20200101_001."""
    return ExportStatus(status=code, request_id="JSOC_20200101_001", wait=wait)


async def test_wait_polls_until_done_within_bounds() -> None:
    """Pending answers are polled again, each pause within [poll_min, poll_max]."""
    api = ScriptedStatus(_status(1, wait=5.0), _status(2), _status(0))
    events: list[Event] = []
    final = await wait_export_ready(api, _status(2, wait=0.001), poll_min=0.001,
                                    poll_max=0.01, reporter=events.append)
    assert final.done
    assert api.calls == 3
    waits = [e for e in events if isinstance(e, ExportWaiting)]
    assert len(waits) == 3
    assert all(0.001 <= e.next_poll <= 0.01 for e in waits)
    assert waits[1].eta == 5.0


async def test_wait_counts_status6_a_bounded_number_of_times() -> None:
    """Legacy status 6 is pending up to status6_retries times, then an error."""
    ok = ScriptedStatus(_status(6), _status(6), _status(0))
    assert (await wait_export_ready(ok, _status(2), poll_min=0, poll_max=0.001,
                                    status6_retries=2)).done
    bad = ScriptedStatus(_status(6), _status(6), _status(6))
    with pytest.raises(ExportFailedError, match="status 6"):
        await wait_export_ready(bad, _status(2), poll_min=0, poll_max=0.001,
                                status6_retries=2)


async def test_wait_refuses_unexpected_status() -> None:
    """A status that is neither pending nor done is an error naming it."""
    with pytest.raises(ExportFailedError, match="99"):
        await wait_export_ready(ScriptedStatus(), _status(99), poll_min=0, poll_max=0.001)


async def test_done_status_returns_without_polling() -> None:
    """An already finished export is returned at once."""
    api = ScriptedStatus()
    assert (await wait_export_ready(api, _status(0))).done
    assert api.calls == 0


def test_default_filenamefmt_uses_primekeys() -> None:
    """Prime keys in order, time keys with :A, then the segment."""
    info = SeriesInfo(
        name="hmi.sharp_cea_720s", primekeys=("HARPNUM", "T_REC"),
        keywords=(KeywordInfo("HARPNUM", "int"), KeywordInfo("T_REC", "time")), segments=(),
    )
    assert default_filenamefmt(info) == "hmi.sharp_cea_720s.{HARPNUM}.{T_REC:A}.{segment}"
    bare = SeriesInfo(name="su_x.thing", primekeys=(), keywords=(), segments=())
    assert default_filenamefmt(bare) == "su_x.thing.{recnum:%lld}.{segment}"


def test_quick_relpath_names_files_by_record() -> None:
    """url_quick SUMS paths become record-based names like the staged ones."""
    name = quick_relpath("hmi.M_45s[2012.01.01_01:01:30_TAI][2]{magnetogram}",
                         "/SUM41/D280342572/S00010/magnetogram.fits")
    assert name == "hmi.m_45s.20120101_010130_TAI.2.magnetogram.fits"
    aia = quick_relpath("aia.lev1_euv_12s[2010-07-30T13:30:09Z][193]{image_lev1}",
                        "/SUM1/D2/S00000/image_lev1.fits")
    assert aia == "aia.lev1_euv_12s.2010-07-30T133009Z.193.image_lev1.fits"
    with pytest.raises(UnsafePathError):
        quick_relpath("x[\x00]{y}", "/SUM1/D1/S0/y.fits")


def test_is_expiry() -> None:
    """Status 5 and HTTP 404/410 mean expired; other errors do not."""
    assert is_expiry(ExportExpiredError("gone"))
    assert is_expiry(HttpStatusError("nf", status=404))
    assert not is_expiry(HttpStatusError("oops", status=500))
    assert not is_expiry(ExportFailedError("no"))


async def test_statistics_after_a_pull(tmp_path: Path) -> None:
    """The scheduler's and pool's statistics add up after a pull."""
    async with emulator() as emu:
        config = fast_config(emu, "a@example.org", "b@example.org", max_files_per_export=3)
        async with Client(config, tmp_path) as client, client.pull(QUERY) as pull:
            n = 0
            async for _ in pull:
                n += 1
            stats = pull.scheduler.statistics()
            pool = pull.emails.statistics()
    assert n == 8
    assert stats.chunks_done == stats.chunks_total == len(pull.plan.chunks)
    assert stats.chunks_open == 0
    assert stats.exports_staging == 0
    assert stats.exports_submitted == stats.chunks_total
    assert pool.busy == {"a@example.org": False, "b@example.org": False}
    assert pool.ip_borrowed == 0


def test_disambiguated_relpath_is_stable_and_keeps_the_extension() -> None:
    """The digest goes before the extension and depends only on the record."""
    a = disambiguated_relpath("hmi.M_45s.magnetogram.fits", "hmi.M_45s[2012.01.01][2]")
    assert a.startswith("hmi.M_45s.magnetogram.")
    assert a.endswith(".fits")
    assert len(a) == len("hmi.M_45s.magnetogram.fits") + 9
    assert a == disambiguated_relpath("hmi.M_45s.magnetogram.fits", "hmi.M_45s[2012.01.01][2]")
    assert a != disambiguated_relpath("hmi.M_45s.magnetogram.fits", "hmi.M_45s[2012.01.01][3]")
    assert disambiguated_relpath("sub/noext", "r").startswith("sub/noext.")


async def test_a_freed_email_exports_again_while_earlier_chunks_download(
        tmp_path: Path) -> None:
    """A chunk stops counting against the lookahead once its files are queued.

    One email and single-file chunks whose downloads the emulator holds until the last of
    the 8 exports is submitted: were a chunk's export to wait for an earlier chunk's file
    (as chunk 3 once waited for chunk 1's), the pull would hang and time out.
    """
    events: list[Event] = []
    async with emulator() as emu:
        config = fast_config(emu, max_files_per_export=1, connections=4)

        def report(event: Event) -> None:
            events.append(event)
            if sum(isinstance(e, ExportSubmitted) for e in events) == 8:
                emu.release_files()

        result = await fetch_with_files_held(emu, config, tmp_path, report)
    assert len(result.files) == 8
    assert not result.failed
    kinds = [type(e).__name__ for e in events if isinstance(e, ExportSubmitted | FileDone)]
    assert kinds.count("ExportSubmitted") == 8
    assert kinds.index("FileDone") > kinds.index("ExportSubmitted") + 4, kinds


SHARP_FMT = "hmi.sharp_cea_720s.{HARPNUM}.{T_REC:A}.{segment}"


def test_stray_segments_are_told_by_record_or_by_name() -> None:
    """Segments come from an as-is record's {seg}, or from a name made by a filenamefmt
    ending in {segment} (the segment's file name starts with the segment's name)."""
    ds = "hmi.sharp_cea_720s[7302][2018.09.08_00:00_TAI]{Bp,Bt}"
    good = ExportFile("hmi.sharp_cea_720s[7302][2018.09.08_00:00:00_TAI]",
                      "hmi.sharp_cea_720s.7302.20180908_000000_TAI.Bp.fits")
    wrong = ExportFile("hmi.sharp_cea_720s[7302][2018.09.08_00:00:00_TAI]",
                       "hmi.sharp_cea_720s.7302.20180908_000000_TAI.Br.fits")
    assert stray_segments(ds, [good], SHARP_FMT) == []
    assert stray_segments(ds, [good, wrong], SHARP_FMT) == [wrong.filename]
    # As-is rows name their segment; quick answers give SUMS paths.
    quick = ExportFile("hmi.M_45s[2012.01.01_01:01:30_TAI][2]{magnetogram}",
                       "/SUM41/D280342572/S00010/magnetogram.fits")
    assert stray_segments("hmi.M_45s[2012.01.01_01:01:30_TAI]{Magnetogram}", [quick], "") == []
    assert stray_segments("hmi.M_45s[2012.01.01_01:01:30_TAI]{other}", [quick], "") == [
        quick.filename]
    # AIA's image segment is stored as image_lev1.fits.
    aia = ExportFile("aia.lev1_euv_12s[2014-01-01T00:00:01Z][171]",
                     "aia.lev1_euv_12s.2014-01-01T000001Z.171.image_lev1.fits")
    aia_fmt = "aia.lev1_euv_12s.{T_REC:A}.{WAVELNTH}.{segment}"
    assert stray_segments("aia.lev1_euv_12s[2014-01-01T00:00:01Z][171]{image}", [aia],
                          aia_fmt) == []
    # Undecidable: every segment asked for, or a user filenamefmt without {segment} last.
    assert stray_segments("hmi.sharp_cea_720s[7302][2018.09.08_00:00_TAI]", [wrong],
                          SHARP_FMT) == []
    assert stray_segments(ds, [wrong], "{HARPNUM}.{segment}.x") == []


async def _after_an_export_of_br(tmp_path: Path,
                                 segments: str) -> tuple[PullResult, PullResult]:
    """Fetch a few SHARP records' {Br} into ``a``, then the same records' ``segments``
    into ``b`` within the emulator's 24 h: the two results."""
    records = "hmi.sharp_cea_720s[7302][2018.09.08_00:00_TAI/1h@12m]"
    async with emulator() as emu:
        async with Client(fast_config(emu), tmp_path / "a") as client:
            first = await client.fetch(records + "{Br}")
        async with Client(fast_config(emu), tmp_path / "b") as client:
            second = await client.fetch(records + segments)
    return first, second


async def test_an_earlier_export_of_other_segments_is_never_taken(tmp_path: Path) -> None:
    """The JSOC's duplicate check ignores segments: {Bp,Bt} asked within 24 h of {Br} for
    the same records gets the {Br} export back. Its files are not taken: the chunk fails
    with the reason, and nothing lands in the output directory (before: the Br files,
    exit 0)."""
    first, second = await _after_an_export_of_br(tmp_path, "{Bp,Bt}")
    assert first.ok
    assert not second.ok
    assert second.files == ()
    assert second.failed
    error = second.failed[0].error
    assert "did not ask for" in error.message
    assert first.exports[0] in error.message
    assert not list((tmp_path / "b").rglob("*.fits"))


def test_missing_segments_are_told_only_when_every_file_says_its_segment() -> None:
    """A segment asked for with no file at all is reported; NoDataFile rows, mixed subsets,
    all segments, or names that cannot be told report nothing (never refuse a good one)."""
    ds = "hmi.sharp_cea_720s[7302][2018.09.08_00:00_TAI]{Br,Bp}"
    br = ExportFile("hmi.sharp_cea_720s[7302][2018.09.08_00:00:00_TAI]",
                    "hmi.sharp_cea_720s.7302.20180908_000000_TAI.Br.fits")
    bp = ExportFile("hmi.sharp_cea_720s[7302][2018.09.08_00:00:00_TAI]",
                    "hmi.sharp_cea_720s.7302.20180908_000000_TAI.Bp.fits")
    nodata = ExportFile("hmi.sharp_cea_720s[7302][2018.09.08_00:00:00_TAI]", "NoDataFile")
    assert missing_segments(ds, [br], SHARP_FMT) == ["bp"]
    assert missing_segments(ds, [br, bp], SHARP_FMT) == []
    assert missing_segments(ds, [br, nodata], SHARP_FMT) == []
    assert missing_segments(ds, [], SHARP_FMT) == []
    assert missing_segments("hmi.sharp_cea_720s[7302][2018.09.08_00:00_TAI]", [br],
                            SHARP_FMT) == []
    assert missing_segments(ds + ",hmi.sharp_cea_720s[7303][2018.09.08_00:00_TAI]{Br}", [br],
                            SHARP_FMT) == []
    assert missing_segments(ds, [br], "{HARPNUM}.{segment}.x") == []


async def test_an_earlier_export_of_fewer_segments_is_never_taken(tmp_path: Path) -> None:
    """{Br,Bp} asked within 24 h of {Br} for the same records gets the {Br} export back,
    with no Bp file: the chunk fails with the reason (before: the Br files only, exit 0)."""
    first, second = await _after_an_export_of_br(tmp_path, "{Br,Bp}")
    assert first.ok
    assert not second.ok
    assert second.files == ()
    error = second.failed[0].error
    assert "holds no file of segments this request asked for (bp)" in error.message
    assert first.exports[0] in error.message
    assert "a day after" in (error.hint or "")
    assert not list((tmp_path / "b").rglob("*.fits"))
