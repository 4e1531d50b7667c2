"""Batched publishing of small files: order of durability, sharing, errors, cancellation."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import anyio
import anyio.lowlevel
import pytest
from engine_helpers import emulator

from asyncjsoc._download import Downloader, meta_path, part_path
from asyncjsoc._durable import BatchPublisher, load_syncfs
from asyncjsoc._models import RemoteFile
from asyncjsoc._retry import RetryPolicy

pytestmark = pytest.mark.anyio


class RecordingBarrier:
    """A ``syncfs`` that notes which final and part files exist at each call."""

    def __init__(self, out: Path, fail_on: int | None = None) -> None:
        self.out = out
        self.fail_on = fail_on
        self.calls: list[tuple[set[str], set[str]]] = []

    def __call__(self, fd: int) -> None:
        names = {p.name for p in self.out.iterdir()}
        self.calls.append(({n for n in names if n.endswith(".part")},
                           {n for n in names if not n.endswith((".part", ".meta"))}))
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise OSError(5, "syncfs: Input/output error")
        os.fsync(fd)


def _targets(out: Path, n: int) -> list[tuple[Path, Path, Path, bytes]]:
    """``n`` (part, dest, meta, body) tuples in ``out``."""
    found = []
    for i in range(n):
        dest = out / f"f{i}.fits"
        found.append((part_path(dest), dest, meta_path(dest), f"body {i}".encode() * 100))
    return found


async def test_concurrent_files_share_batches_and_parts_are_synced_before_renames(
        tmp_path: Path) -> None:
    """Forty files in a few batches; each batch syncs its parts before any rename."""
    barrier = RecordingBarrier(tmp_path)
    publisher = BatchPublisher(syncfs=barrier)
    targets = _targets(tmp_path, 40)
    targets[3][2].write_text("stale sidecar")
    async with anyio.create_task_group() as tg:
        for part, dest, meta, body in targets:
            tg.start_soon(publisher.publish, part, dest, meta, body)
    for part, dest, meta, body in targets:
        assert dest.read_bytes() == body
        assert not part.exists()
        assert not meta.exists()
    assert 2 <= publisher.batches <= 5
    assert len(barrier.calls) == 2 * publisher.batches
    finals_before: set[str] = set()
    for (parts_1, finals_1), (parts_2, finals_2) in zip(barrier.calls[::2], barrier.calls[1::2],
                                                        strict=True):
        # First barrier: this batch's parts are written, none renamed yet.
        assert parts_1
        assert finals_1 == finals_before
        # Second barrier: all of them renamed.
        assert not parts_2
        assert finals_2 == finals_1 | {p[:-len(".part")] for p in parts_1}
        finals_before = finals_2


async def test_a_failed_data_barrier_renames_nothing(tmp_path: Path) -> None:
    """When a batch's first sync fails, each of its callers gets the error; none is renamed."""
    # The first caller leads a batch of itself; the other four queue behind it and form the
    # second batch, whose first barrier (the third call) fails.
    publisher = BatchPublisher(syncfs=RecordingBarrier(tmp_path, fail_on=3))
    targets = _targets(tmp_path, 5)
    failed: dict[str, OSError] = {}

    async def one(part: Path, dest: Path, meta: Path, body: bytes) -> None:
        try:
            await publisher.publish(part, dest, meta, body)
        except OSError as exc:
            failed[dest.name] = exc

    async with anyio.create_task_group() as tg:
        for target in targets:
            tg.start_soon(one, *target)
    assert publisher.batches == 2
    assert sorted(failed) == [f"f{i}.fits" for i in range(1, 5)]
    assert all(exc.errno == 5 for exc in failed.values())
    assert targets[0][1].exists()
    assert not any(dest.exists() for _, dest, _, _ in targets[1:])


async def test_a_write_error_fails_only_its_file(tmp_path: Path) -> None:
    """A part that cannot be written fails its caller; the rest of the batch is published."""
    publisher = BatchPublisher(syncfs=RecordingBarrier(tmp_path))
    good = _targets(tmp_path, 3)
    bad_dest = tmp_path / "missing-dir" / "x.fits"
    outcome: dict[str, BaseException | None] = {}

    async def one(part: Path, dest: Path, meta: Path, body: bytes) -> None:
        try:
            await publisher.publish(part, dest, meta, body)
            outcome[dest.name] = None
        except OSError as exc:
            outcome[dest.name] = exc

    async with anyio.create_task_group() as tg:
        for target in [*good, (part_path(bad_dest), bad_dest, meta_path(bad_dest), b"x")]:
            tg.start_soon(one, *target)
    assert isinstance(outcome.pop("x.fits"), FileNotFoundError)
    assert outcome == {dest.name: None for _, dest, _, _ in good}
    assert all(dest.read_bytes() == body for _, dest, _, body in good)


async def test_fsync_fallback_publishes_without_syncfs(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """With no syncfs, each part and each directory is fsynced, parts before renames."""
    synced: list[str] = []
    real_fsync = os.fsync

    def noting_fsync(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        synced.append("dir" if path.is_dir() else path.name)
        real_fsync(fd)

    monkeypatch.setattr("asyncjsoc._durable.os.fsync", noting_fsync)
    publisher = BatchPublisher(syncfs=None)
    targets = _targets(tmp_path, 4)
    async with anyio.create_task_group() as tg:
        for target in targets:
            tg.start_soon(publisher.publish, *target)
    assert all(dest.read_bytes() == body for _, dest, _, body in targets)
    parts = [p for p in synced if p != "dir"]
    assert sorted(parts) == sorted(part.name for part, _, _, _ in targets)
    assert synced[-1] == "dir"
    assert synced.count("dir") == publisher.batches


async def test_a_caller_cancelled_while_queued_writes_nothing(tmp_path: Path) -> None:
    """Cancelled before its body is taken into a batch: no part, no final file."""
    publisher = BatchPublisher(syncfs=RecordingBarrier(tmp_path))
    (first, second) = _targets(tmp_path, 2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(publisher.publish, *first)
        await anyio.lowlevel.checkpoint()  # the first caller leads a batch of itself
        with anyio.CancelScope() as scope:
            scope.cancel()
            await publisher.publish(*second)
    assert first[1].exists()
    assert not second[0].exists()
    assert not second[1].exists()
    assert publisher.batches == 1


def test_load_syncfs_needs_a_kernel_that_reports_errors(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    """syncfs is used on Linux 5.8+ only (before, it did not report write-back errors)."""
    monkeypatch.setattr("asyncjsoc._durable.sys.platform", "linux")
    monkeypatch.setattr("asyncjsoc._durable.platform.release", lambda: "5.4.0-150-generic")
    assert load_syncfs() is None
    monkeypatch.setattr("asyncjsoc._durable.platform.release", lambda: "5.8.0")
    syncfs = load_syncfs()
    if not hasattr(os, "sched_getaffinity"):  # not a Linux C library underneath
        pytest.skip("syncfs is Linux-only")
    assert syncfs is not None
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        syncfs(fd)
        with pytest.raises(OSError, match="syncfs"):
            syncfs(-1)
    finally:
        os.close(fd)
    monkeypatch.setattr("asyncjsoc._durable.sys.platform", "darwin")
    assert load_syncfs() is None


async def test_downloader_publishes_small_files_in_batches(tmp_path: Path) -> None:
    """Small bodies fetched at once over loopback share batches, and arrive intact."""
    async with emulator(file_size=2 * 2880) as emu, aiohttp.ClientSession() as session:
        sel = emu.catalog.select("hmi.M_45s[2012.01.01_00:00:45_TAI/30m]{magnetogram}")
        paths = [rec.segment_path(sel.segments[0]) for rec in sel]
        dl = Downloader(session, verify_checksums=False, retry=RetryPolicy.no_wait(2),
                        publisher=BatchPublisher(syncfs=RecordingBarrier(tmp_path)))
        async with anyio.create_task_group() as tg:
            for i, path in enumerate(paths):
                remote = RemoteFile(url=emu.url + path, relpath=f"f{i}.fits", record=str(i))
                tg.start_soon(dl.download_into, remote, tmp_path)
        for i, path in enumerate(paths):
            assert (tmp_path / f"f{i}.fits").read_bytes() == emu.file_bytes(path)
        assert 1 <= dl.publisher.batches < len(paths)
    assert sorted(os.listdir(tmp_path)) == sorted(
        f"f{i}.fits" for i in range(len(paths)))


def test_streamed_writes_put_every_piece_in_order_appending_or_not(tmp_path: Path) -> None:
    """Pieces (empty ones too) land in order; a resume appends after what is there."""
    from asyncjsoc import _download

    path = tmp_path / "f.part"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        assert _download._write_pieces(fd, [b"0123456789"]) == 10
        assert _download._write_pieces(fd, [b"ab", b"", b"cde"]) == 5
        assert _download._write_pieces(fd, []) == 0
    finally:
        os.close(fd)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        assert _download._write_pieces(fd, [b"xyz"]) == 3
    finally:
        os.close(fd)
    assert path.read_bytes() == b"0123456789abcdexyz"


class FsyncCounter:
    """Counts ``os.fsync`` calls (the per-file and per-directory barriers)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fsyncs = 0
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            self.fsyncs += 1
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("fsync", [True, False])
async def test_fsync_off_skips_every_barrier_and_files_still_arrive_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool) -> None:
    """``fsync=False``: no fsync or syncfs on any path; files are complete.

    The three paths: streamed (large body), whole bodies verified in memory then published
    in batches, whole bodies published in batches. With ``fsync=True`` each path syncs (the
    control).
    """
    counter = FsyncCounter(monkeypatch)
    barrier = RecordingBarrier(tmp_path / "small")
    verified_barrier = RecordingBarrier(tmp_path / "verified")
    async with emulator(file_size=8 * 2880) as emu, aiohttp.ClientSession() as session:
        sel = emu.catalog.select("hmi.M_45s[2012.01.01_00:00:45_TAI/5m]{magnetogram}")
        paths = [rec.segment_path(sel.segments[0]) for rec in sel]
        (tmp_path / "small").mkdir()
        (tmp_path / "verified").mkdir()
        setups = [  # (directory, downloader)
            ("streamed", Downloader(session, chunk_size=2880, verify_checksums=False,
                                    retry=RetryPolicy.no_wait(2), fsync=fsync)),
            ("verified", Downloader(session, verify_checksums=True, retry=RetryPolicy.no_wait(2),
                                    publisher=BatchPublisher(syncfs=verified_barrier,
                                                             fsync=fsync),
                                    fsync=fsync)),
            ("small", Downloader(session, verify_checksums=False, retry=RetryPolicy.no_wait(2),
                                 publisher=BatchPublisher(syncfs=barrier, fsync=fsync),
                                 fsync=fsync)),
        ]
        for name, dl in setups:
            async with anyio.create_task_group() as tg:
                for i, path in enumerate(paths):
                    remote = RemoteFile(url=emu.url + path, relpath=f"f{i}.fits", record=str(i))
                    tg.start_soon(dl.download_into, remote, tmp_path / name)
            for i, path in enumerate(paths):
                assert (tmp_path / name / f"f{i}.fits").read_bytes() == emu.file_bytes(path)
            assert sorted(os.listdir(tmp_path / name)) == sorted(
                f"f{i}.fits" for i in range(len(paths)))
        assert Downloader(session, fsync=fsync).publisher.fsync is fsync
    if fsync:
        # Every streamed file, plus its directory; the batches sync through their barrier.
        assert counter.fsyncs >= len(paths) + 1
        assert barrier.calls
        assert verified_barrier.calls
    else:
        assert (counter.fsyncs, barrier.calls, verified_barrier.calls) == (0, [], [])


@pytest.mark.parametrize("inline_io", [True, False])
async def test_streamed_writes_inline_or_in_threads_give_the_whole_file_in_order(
        tmp_path: Path, inline_io: bool) -> None:
    """Written inline piece by piece or in worker-thread batches, a streamed file arrives
    byte for byte and its progress climbs to its size."""
    async with emulator(file_size=64 * 2880) as emu, aiohttp.ClientSession() as session:
        sel = emu.catalog.select("hmi.M_45s[2012.01.01_00:00:45_TAI]{magnetogram}")
        path = next(iter(sel)).segment_path(sel.segments[0])
        progress: list[int] = []
        dl = Downloader(session, chunk_size=4096, verify_checksums=False,
                        retry=RetryPolicy.no_wait(2), inline_io=inline_io)
        remote = RemoteFile(url=emu.url + path, relpath="f.fits", record="r")
        await dl.download_into(remote, tmp_path, on_progress=lambda d, t: progress.append(d))
        body = emu.file_bytes(path)
        assert (tmp_path / "f.fits").read_bytes() == body
    assert progress == sorted(progress)
    assert progress[-1] == len(body)
