"""ClientConfig.extract_tars: url-tar exports unpacked as they arrive, resumably."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from engine_helpers import QUERY, emulator, fast_config, fast_knobs

from asyncjsoc import Client, ClientConfig, PullResult
from asyncjsoc import _resume as resume_module
from asyncjsoc._paths import PART_SUFFIX, SIDECAR_SUFFIX
from asyncjsoc._status import read_status
from asyncjsoc.emulator import Emulator, run_emulator
from asyncjsoc.events import (
    Event,
    ExportExpired,
    ExportReady,
    FileDone,
    FileProgress,
    TarUnpacked,
)
from asyncjsoc.exceptions import (
    FileBusyError,
    IntegrityError,
    InvalidInputError,
    UnsafePathError,
)

pytestmark = pytest.mark.anyio

# Six records, two segments: 12 files, in exports of at most 4 (three tars).
RS = "hmi.sharp_cea_720s[7302][2018.09.06_00:00:00_TAI-2018.09.06_01:00:00_TAI]{Bp,Br}"
TAR: dict[str, Any] = {"method": "url-tar", "max_files_per_export": 4}


def _tree(out: Path) -> dict[str, bytes]:
    """Every data file under ``out`` (asyncjsoc's state left out) and its bytes."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".asyncjsoc" not in p.parts}


def _file_gets(emu: Emulator) -> int:
    """File GETs the emulator served so far."""
    return len([e for e in emu.audit.entries if e.op == "file"])


def _exported_recordsets(emu: Emulator) -> list[str]:
    """The ``ds`` of every exp_request the emulator saw, in order."""
    return [e.params.get("ds", "") for e in emu.audit.entries
            if e.op == "jsoc_fetch/exp_request"]


def _leftover_parts(out: Path) -> list[str]:
    """Part files and resume sidecars under ``out``."""
    return sorted(p.name for p in out.rglob("*")
                  if p.name.endswith((PART_SUFFIX, SIDECAR_SUFFIX)))


async def _pull(emu: Emulator, out: Path, *, events: list[Event] | None = None,
                **config: object) -> PullResult:
    reporter = events.append if events is not None else None
    async with Client(fast_config(emu, **config), out, reporter=reporter) as client:
        return await client.fetch(RS)


async def test_tars_are_unpacked_as_they_arrive_and_deleted(tmp_path: Path) -> None:
    """Each tar's files land in the output directory, byte for byte those of a url pull;
    the tars are gone; each result names its files."""
    events: list[Event] = []
    async with emulator() as emu:
        plain = await _pull(emu, tmp_path / "plain", max_files_per_export=4)
        result = await _pull(emu, tmp_path / "out", events=events, extract_tars=True,
                             **TAR)
    assert plain.ok
    assert result.ok
    assert len(result.files) == 3
    expected = _tree(tmp_path / "plain")
    assert len(expected) == 12
    assert _tree(tmp_path / "out") == expected
    members = [m for f in result.files for m in f.members]
    assert sorted(m.name for m in members) == sorted(expected)
    assert all(not f.path.exists() for f in result.files)
    status = read_status(tmp_path / "out")
    assert status.complete
    assert (status.unpacked_tars, status.unpacked_files) == (3, 12)
    unpacked = [e for e in events if isinstance(e, TarUnpacked)]
    assert sorted(e.relpath for e in unpacked) == sorted(f.relpath for f in result.files)
    assert [(e.files, e.new) for e in unpacked] == [(4, 4)] * 3


async def test_a_rerun_fetches_and_unpacks_nothing(tmp_path: Path) -> None:
    """The store remembers what was unpacked: a rerun sends no file GET, keeps every file
    and reports the tars as reused, with their files."""
    out = tmp_path / "out"
    async with emulator() as emu:
        first = await _pull(emu, out, extract_tars=True, **TAR)
        before, gets = _tree(out), _file_gets(emu)
        again = await _pull(emu, out, extract_tars=True, **TAR)
        assert _file_gets(emu) == gets
    assert again.ok
    assert again.files == ()
    assert {f.relpath: f.members for f in again.reused} == {
        f.relpath: f.members for f in first.files}
    assert _tree(out) == before


async def test_tars_left_by_an_earlier_run_are_unpacked(tmp_path: Path) -> None:
    """Tars on disk from a run without extraction (or one stopped before unpacking) are
    unpacked and deleted by a run with it, without fetching anything; a tar back on disk
    after it was unpacked (a run stopped before deleting it) is deleted."""
    out = tmp_path / "out"
    async with emulator() as emu:
        first = await _pull(emu, out, **TAR)
        tars = {f.path: f.path.read_bytes() for f in first.files}
        gets = _file_gets(emu)
        second = await _pull(emu, out, extract_tars=True, **TAR)
        assert _file_gets(emu) == gets
        unpacked = _tree(out)
        assert len(unpacked) == 12
        assert not any(path.exists() for path in tars)
        assert all(f.members for f in second.reused)
        stray, body = next(iter(tars.items()))
        stray.write_bytes(body)
        await _pull(emu, out, extract_tars=True, **TAR)
        assert _file_gets(emu) == gets
    assert not stray.exists()
    assert _tree(out) == unpacked


async def test_a_tar_that_cannot_be_unpacked_fails(tmp_path: Path) -> None:
    """A tar whose members have unsafe names fails as a file: nothing is written outside
    the output directory, no tar is left, and the store counts it as failed."""
    out = tmp_path / "out"
    async with emulator(hostile_names={"dotdot": 1.0}) as emu:
        result = await _pull(emu, out, extract_tars=True, **TAR)
    assert not result.ok
    assert len(result.failed) == 3
    assert all(isinstance(f.error, UnsafePathError) for f in result.failed)
    assert _tree(out) == {}
    assert not any(tmp_path.glob("*.fits"))  # noqa: ASYNC240 (a tiny test tree)
    assert read_status(out).files_failed == 3


def test_extract_tars_needs_url_tar() -> None:
    """extract_tars with another method is refused with the fix."""
    with pytest.raises(InvalidInputError, match="url-tar"):
        ClientConfig(extract_tars=True)


async def test_members_of_two_tars_sharing_a_name_are_never_lost_silently(
        tmp_path: Path) -> None:
    """A filenamefmt without the time key names every record's file alike: the first tar's
    file is kept, each later tar fails with the fix in its hint, and no file on disk is
    taken for another record's (before: same size, so "already unpacked", ok=True)."""
    out = tmp_path / "out"
    rs = "hmi.M_45s[2012.01.01_00:00:00_TAI/3m]{magnetogram}"  # 4 records
    async with emulator() as emu, Client(fast_config(
            emu, method="url-tar", max_files_per_export=1, extract_tars=True,
            filenamefmt="hmi.M_45s.{CAMERA}.{segment}"), out) as client:
        result = await client.fetch(rs)
    assert not result.ok
    assert len(result.files) == 1
    assert len(result.failed) == 3
    assert all("filenamefmt" in (f.error.hint or "") for f in result.failed)
    assert list(_tree(out)) == ["hmi.M_45s.2.magnetogram.fits"]


async def test_a_tar_corrupted_in_transit_never_gets_its_name(tmp_path: Path) -> None:
    """Without --extract, a url-tar export damaged in transit (one byte flipped) is checked
    like any download (its headers and FITS members) and never kept under its name; once
    the transfers are clean, a rerun fetches it and it is byte for byte the server's."""
    out = tmp_path / "out"
    async with emulator(corrupt_rate=1.0) as emu:
        first = await _pull(emu, out, **TAR)
        assert first.files == ()
        assert len(first.failed) == 3
        assert all(isinstance(f.error, IntegrityError) for f in first.failed)
        assert not list(out.glob("*.tar"))
        emu.knobs.corrupt_rate = 0.0
        again = await _pull(emu, out, **TAR)
    assert again.ok
    assert len(again.files) == 3
    for f in again.files:
        assert f.url is not None
        assert f.path.read_bytes() == emu.file_bytes(f.url)


async def test_unpacked_files_gone_or_changed_are_unpacked_again(tmp_path: Path) -> None:
    """After an --extract pull, a member deleted and another cut short are noticed by the
    rerun: their tar is fetched and unpacked again (that tar only), the two files come back
    byte for byte, the others are kept, and only then does the pull report success."""
    out = tmp_path / "out"
    async with emulator() as emu:
        plain = await _pull(emu, tmp_path / "plain", max_files_per_export=4)
        first = await _pull(emu, out, extract_tars=True, **TAR)
        assert first.ok
        expected = _tree(tmp_path / "plain")
        assert _tree(out) == expected
        tar = first.files[0]
        deleted, cut = tar.members[:2]
        deleted.unlink()
        with cut.open("r+b") as f:
            f.truncate(100)
        status = read_status(out)
        assert (status.gone, status.complete) == (1, False)
        assert status.gone_examples == (f"{tar.relpath} (files unpacked from it)",)
        gets = _file_gets(emu)
        again = await _pull(emu, out, extract_tars=True, **TAR)
        assert _file_gets(emu) == gets + 1
    assert plain.ok
    assert again.ok
    assert _tree(out) == expected
    fetched = [f for f in again.files if not f.reused]
    assert [f.relpath for f in fetched] == [tar.relpath]
    assert read_status(out).complete


async def test_unpacked_files_are_checked_after_a_run_without_checksums(
        tmp_path: Path) -> None:
    """A run with checksums off leaves the finished files to be checked by the next run
    that has them on: an unpacked file damaged in place (same size) is caught then, and
    its tar fetched and unpacked again."""
    out = tmp_path / "out"
    async with emulator() as emu:
        plain = await _pull(emu, tmp_path / "plain", max_files_per_export=4)
        first = await _pull(emu, out, extract_tars=True, **TAR)
        assert first.ok
        member = first.files[1].members[0]
        data = bytearray(member.read_bytes())
        data[-10] ^= 0xFF
        member.write_bytes(bytes(data))
        blind = await _pull(emu, out, extract_tars=True, verify_checksums=False, **TAR)
        assert blind.ok
        assert all(f.reused for f in blind.files)  # nothing checked what is on disk
        gets = _file_gets(emu)
        checked = await _pull(emu, out, extract_tars=True, **TAR)
        assert _file_gets(emu) == gets + 1
    assert plain.ok
    assert checked.ok
    assert [f.relpath for f in checked.files if not f.reused] == [first.files[1].relpath]
    assert _tree(out) == _tree(tmp_path / "plain")


# QUERY's eight records in one export: a 3.5 MB tar (more than a body read whole), sent
# slowly enough to stop a pull in the middle of it.
BIG_SLOW_TAR: dict[str, Any] = {"file_size": 150 * 2880, "bandwidth": 2_000_000}


async def _stop_mid_tar(config: ClientConfig, out: Path) -> None:
    """A pull of ``QUERY`` cancelled once the first bytes of its tar are in the part file."""
    with anyio.CancelScope() as scope:

        def stop_mid_tar(event: Event) -> None:
            if isinstance(event, FileProgress) and event.bytes_done > 0:
                scope.cancel()

        async with Client(config, out, reporter=stop_mid_tar) as client:
            await client.fetch(QUERY)
    assert any(name.endswith(".tar" + PART_SUFFIX) for name in _leftover_parts(out))


@pytest.mark.parametrize(("extract", "xattrs"), [(False, True), (True, True), (False, False)],
                         ids=["tar", "extract", "tar-sidecar"])
async def test_a_tar_whose_export_expired_between_runs_is_exported_again_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extract: bool, xattrs: bool) -> None:
    """A pull stopped mid-tar, its export expired before the rerun: the rerun requests the
    chunk's record set again (before: a record set made of the lost tar's request id, which
    the JSOC refuses with status 4), completes, and leaves no part file or resume sidecar
    of the lost tar behind (it comes back under the new export's name), nor its row."""
    if not xattrs:
        monkeypatch.setattr(resume_module, "_xattrs", False)
    out = tmp_path / "out"
    async with emulator(**BIG_SLOW_TAR) as emu:
        config = fast_config(emu, method="url-tar", extract_tars=extract)
        await _stop_mid_tar(config, out)
        emu.clock.advance(8 * 86400)
        events: list[Event] = []
        async with Client(config, out, reporter=events.append) as client:
            result = await client.fetch(QUERY)
        assert result.ok, result.failed
        assert any(isinstance(e, ExportExpired) for e in events)
        assert result.plan is not None
        recordset = result.plan.chunks[0].recordset
        assert _exported_recordsets(emu) == [recordset, recordset]
        assert _leftover_parts(out) == []
        assert read_status(out).files == {"done": 1}
        if extract:
            assert len(_tree(out)) == 8
        else:
            assert [f.relpath for f in result.files] == list(_tree(out))
            assert _tree(out)[result.files[0].relpath] == emu.file_bytes(result.files[0].url)


async def test_the_part_of_a_tar_known_expired_goes_when_its_chunk_is_exported_again(
        tmp_path: Path) -> None:
    """A rerun after the stored export's lifetime exports the chunk anew without trying the
    old tar; the old tar's part file and row go once the new tar is known."""
    out = tmp_path / "out"
    async with emulator(**BIG_SLOW_TAR) as emu:
        config = fast_config(emu, method="url-tar")
        await _stop_mid_tar(config, out)
        emu.clock.advance(8 * 86400)
        with sqlite3.connect(out / ".asyncjsoc" / "state.sqlite") as conn:
            conn.execute("UPDATE exports SET expires_at = 0")  # as 7 days later
        conn.close()
        async with Client(config, out) as client:
            result = await client.fetch(QUERY)
        assert result.ok, result.failed
        assert result.plan is not None
        recordset = result.plan.chunks[0].recordset
        assert _exported_recordsets(emu) == [recordset, recordset]
        assert _leftover_parts(out) == []
        assert read_status(out).files == {"done": 1}
        assert list(_tree(out)) == [result.files[0].relpath]


async def test_a_tar_whose_export_expired_before_its_download_is_exported_again_whole(
        tmp_path: Path) -> None:
    """The export expires between staging and the tar's GET (a 404): the one re-export
    asks for the chunk's record set, and the pull completes."""
    async with emulator() as emu:
        expired_once: list[bool] = []

        def expire_first_export(event: Event) -> None:
            if isinstance(event, ExportReady) and not expired_once:
                expired_once.append(True)
                emu.clock.advance(8 * 86400)

        events: list[Event] = []

        def reporter(event: Event) -> None:
            events.append(event)
            expire_first_export(event)

        async with Client(fast_config(emu, method="url-tar"), tmp_path / "out",
                          reporter=reporter) as client:
            result = await client.fetch(QUERY)
        assert result.ok, result.failed
        assert sum(isinstance(e, ExportExpired) for e in events) == 1
        assert result.plan is not None
        recordset = result.plan.chunks[0].recordset
        assert _exported_recordsets(emu) == [recordset, recordset]
        assert len(result.files) == 1
        assert len(result.exports) == 2


_HOLD_PART = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""
"""Another process unpacking a file (argv[1] is its part file): it holds it until killed."""


async def test_a_tar_whose_member_another_process_unpacks_is_kept(tmp_path: Path) -> None:
    """With --extract, a member another process is unpacking at that moment fails the tar
    for this run, but the verified tar is kept: the next run unpacks it without fetching
    it again (one ranged GET of a byte checks its size)."""
    out = tmp_path / "out"
    async with emulator() as emu:
        plain = await _pull(emu, tmp_path / "plain", max_files_per_export=4)
        first_member = sorted(_tree(tmp_path / "plain"))[0]
        part = out / (first_member + ".part")
        part.parent.mkdir(parents=True)
        async with await anyio.open_process(
                [sys.executable, "-c", _HOLD_PART, str(part)]) as holder:
            try:
                assert holder.stdout is not None
                lines = BufferedByteReceiveStream(holder.stdout)  # a pipe may split a line
                assert await lines.receive_until(b"\n", 100) == b"held"
                first = await _pull(emu, out, extract_tars=True, **TAR)
            finally:
                holder.kill()
        assert [type(f.error) for f in first.failed] == [FileBusyError]
        seen = len(emu.audit.entries)
        again = await _pull(emu, out, extract_tars=True, **TAR)
        # Not fetched again: only its size asked for (a tar found without a record).
        assert [e.range for e in emu.audit.entries[seen:] if e.op == "file"] == ["bytes=0-0"]
    assert plain.ok
    assert again.ok
    assert _tree(out) == _tree(tmp_path / "plain")


@pytest.mark.parametrize("extract", [False, True], ids=["tar", "extract"])
async def test_a_request_id_handed_out_again_never_passes_for_a_done_tar(
        tmp_path: Path, extract: bool) -> None:
    """A server that hands out a request id again (restarted with its counter reset, at the
    same address) gives a later export's tar the name of a tar already done: that tar gets
    a name of its own, and every record arrives (it passed for done, and its records were
    silently never fetched)."""
    out = tmp_path / "out"
    config = {"extract_tars": extract, "max_pending_exports": 1, **TAR}
    async with emulator() as emu:
        plain = await _pull(emu, tmp_path / "plain", max_files_per_export=4)
    async with run_emulator(fast_knobs()) as first_server:
        port = int(first_server.url.rsplit(":", 1)[1])
        with anyio.CancelScope() as scope:
            def stop_after_the_first_tar(event: Event) -> None:
                if isinstance(event, TarUnpacked | FileDone) and event.relpath.endswith(".tar"):
                    scope.cancel()

            async with Client(fast_config(first_server, **config), out,
                              reporter=stop_after_the_first_tar) as client:
                await client.fetch(RS)
        assert scope.cancelled_caught
    async with run_emulator(fast_knobs(), port=port) as restarted:  # ids from _001 again
        again = await _pull(restarted, out, **config)
    assert plain.ok
    assert again.ok
    if extract:
        assert _tree(out) == _tree(tmp_path / "plain")
    else:
        assert len(again.all_files) == 3
        assert len({f.relpath for f in again.all_files}) == 3
    assert read_status(out).complete


async def test_a_sound_tar_of_another_export_under_a_tar_name_is_not_kept(
        tmp_path: Path) -> None:
    """A tar found under its name without a record may be another export's (a copy, ids
    handed out again by a restarted server): its contents check out, so its size is also
    compared with the server's, and the wrong one is fetched again."""
    seven = RS.replace("01:00:00_TAI]", "01:12:00_TAI]")  # 14 files: tars of 2, 4, 4, 4
    source, copy = tmp_path / "source", tmp_path / "copy"
    async with emulator() as emu, Client(fast_config(emu, **TAR), source) as client:
        first = await client.fetch(seven)
    sizes = {f.relpath: f.bytes for f in first.files}
    small = min(sizes, key=lambda name: sizes[name])
    big = max(sizes, key=lambda name: sizes[name])
    assert sizes[small] < sizes[big]
    copy.mkdir()
    (copy / small).write_bytes((source / big).read_bytes())  # a sound tar, the wrong one
    async with emulator() as emu:  # a new server: the same request ids again
        async with Client(fast_config(emu, **TAR), copy) as client:
            again = await client.fetch(seven)
        assert again.ok
        for f in again.all_files:
            assert f.path.read_bytes() == emu.file_bytes(f.url)
    assert small in {f.relpath for f in again.files if not f.reused}
