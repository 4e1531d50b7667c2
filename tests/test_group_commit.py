"""Group commits: the store's mark_done batches, the downloader's shared directory fsyncs."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import aiohttp
import anyio
import anyio.lowlevel
import pytest
from engine_helpers import emulator

from asyncjsoc import _download
from asyncjsoc import _store as store_module
from asyncjsoc._download import Downloader, _DirSyncer
from asyncjsoc._models import Chunk, Plan, RemoteFile
from asyncjsoc._retry import RetryPolicy
from asyncjsoc._store import StateStore
from asyncjsoc.exceptions import StateError

pytestmark = pytest.mark.anyio

PLAN = Plan(series="hmi.M_45s", chunks=(Chunk(index=0, recordset="hmi.M_45s[$]", n_records=1,
                                              n_files=1),),
            n_records=1, n_files=1, estimated_bytes=0)


def _files(n: int) -> list[RemoteFile]:
    """``n`` distinct files of chunk 0."""
    return [RemoteFile(url=f"http://127.0.0.1/f{i}", relpath=f"f{i}.fits", record=f"r[{i}]")
            for i in range(n)]


async def _store(tmp_path: Path, n: int) -> StateStore:
    """An open store with a plan and ``n`` pending files."""
    store = StateStore(tmp_path / "state.sqlite")
    await store.open()
    await store.save_plan(PLAN)
    await store.add_files(0, _files(n))
    return store


async def test_concurrent_mark_done_share_transactions(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Fifty concurrent completions are committed in a few transactions, every one of them."""
    batches: list[int] = []
    real = StateStore._mark_done_rows.__func__  # type: ignore[attr-defined]

    def counting(cls: type[StateStore], conn: object, rows: list[object]) -> set[str]:
        """Record the batch size, then commit."""
        batches.append(len(rows))
        result: set[str] = real(cls, conn, rows)
        return result

    monkeypatch.setattr(StateStore, "_mark_done_rows", classmethod(counting))
    store = await _store(tmp_path, 50)
    try:
        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(store.mark_done, f"f{i}.fits", 100 + i)
        assert sum(batches) == 50
        assert len(batches) <= 3
        done = await store.done_files()
        assert {r.relpath: r.bytes for r in done} == {f"f{i}.fits": 100 + i for i in range(50)}
    finally:
        await store.close()


async def test_unknown_file_fails_only_its_own_caller(tmp_path: Path) -> None:
    """A relpath the store does not know raises for its caller; the batch still commits."""
    store = await _store(tmp_path, 3)
    errors: list[BaseException] = []

    async def mark(relpath: str) -> None:
        """mark_done, keeping the error."""
        try:
            await store.mark_done(relpath, 7)
        except StateError as exc:
            errors.append(exc)

    try:
        async with anyio.create_task_group() as tg:
            for relpath in ("f0.fits", "nope.fits", "f1.fits", "f2.fits"):
                tg.start_soon(mark, relpath)
        assert len(errors) == 1
        assert "nope.fits" in str(errors[0])
        assert await store.done_relpaths() == {"f0.fits", "f1.fits", "f2.fits"}
    finally:
        await store.close()


async def test_cancelled_waiters_are_committed_and_close_waits(tmp_path: Path) -> None:
    """Completions whose callers are cancelled while waiting are committed all the same."""
    store = await _store(tmp_path, 20)
    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(store.mark_done, f"f{i}.fits", 1)
        await anyio.lowlevel.checkpoint()  # all rows queued; the first caller is committing
        tg.cancel_scope.cancel()
    await store.close()
    async with StateStore(tmp_path / "state.sqlite") as again:
        assert await again.done_relpaths() == {f"f{i}.fits" for i in range(20)}


def _committed_done(path: Path) -> set[str]:
    """The files a second connection sees as done (what is committed, not what is kept)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {r for (r,) in conn.execute("SELECT relpath FROM files WHERE state = 'done'")}


async def test_record_done_is_kept_until_a_threshold_or_another_operation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """record_done commits nothing by itself below the thresholds; any other operation of the
    store commits the kept rows first (so it reads them), and the row threshold commits them."""
    monkeypatch.setattr(store_module, "DEFERRED_ROWS", 5)
    monkeypatch.setattr(store_module, "DEFERRED_SECONDS", 3600.0)
    store = await _store(tmp_path, 12)
    try:
        for i in range(3):
            await store.record_done(f"f{i}.fits", 10 + i)
        assert _committed_done(store.path) == set()
        record = await store.file_state("f1.fits")  # reads see the kept rows
        assert record is not None
        assert (record.state, record.bytes) == ("done", 11)
        assert _committed_done(store.path) == {"f0.fits", "f1.fits", "f2.fits"}
        for i in range(3, 7):
            await store.record_done(f"f{i}.fits", 1)
        assert _committed_done(store.path) == {f"f{i}.fits" for i in range(3)}
        await store.record_done("f7.fits", 1)  # the fifth kept row: all five are committed
        assert _committed_done(store.path) == {f"f{i}.fits" for i in range(8)}
        await store.record_done("f8.fits", 1)
        await store.mark_pending("f8.fits")  # committed after the kept row, so it wins
        assert (await store.summary()).files == {"done": 8, "pending": 4}
    finally:
        await store.close()


async def test_record_done_commits_when_old_and_on_close(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With an age limit of zero every record_done commits; close commits what is kept."""
    monkeypatch.setattr(store_module, "DEFERRED_SECONDS", 0.0)
    store = await _store(tmp_path, 4)
    try:
        await store.record_done("f0.fits", 5)
        assert _committed_done(store.path) == {"f0.fits"}
        monkeypatch.setattr(store_module, "DEFERRED_SECONDS", 3600.0)
        await store.record_done("f1.fits", 5)
        await store.record_done("f2.fits", 5)
        assert _committed_done(store.path) == {"f0.fits"}
    finally:
        await store.close()
    assert _committed_done(tmp_path / "state.sqlite") == {"f0.fits", "f1.fits", "f2.fits"}


async def test_record_done_of_an_unknown_file_fails_the_committing_operation(
        tmp_path: Path) -> None:
    """A kept completion naming no file of the pull is reported, not dropped silently."""
    store = await _store(tmp_path, 2)
    try:
        await store.record_done("f0.fits", 1)
        await store.record_done("ghost.fits", 1)
        with pytest.raises(StateError, match=r"ghost\.fits"):
            await store.flush()
        assert await store.done_relpaths() == {"f0.fits"}
    finally:
        await store.close()


async def test_dir_syncer_shares_fsyncs_and_never_returns_early(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Concurrent syncs of one directory share fsyncs; each waits for one begun after it."""
    started: list[int] = []
    calls = 0

    def fake_fsync(directory: Path) -> None:
        """Count the fsync and note how many sync calls had been made when it began."""
        started.append(calls)

    monkeypatch.setattr(_download, "_fsync_dir", fake_fsync)
    syncer = _DirSyncer()
    finished: list[int] = []

    async def one(k: int) -> None:
        """One sync call, numbered."""
        nonlocal calls
        calls += 1
        await syncer.sync(tmp_path)
        finished.append(k)
        # This call's fsync began after the call: some fsync started with calls >= k.
        assert any(s >= k for s in started)

    async with anyio.create_task_group() as tg:
        for k in range(1, 31):
            tg.start_soon(one, k)
    assert sorted(finished) == list(range(1, 31))
    assert 1 <= len(started) <= 3


async def test_small_and_streamed_files_leave_only_final_names(tmp_path: Path) -> None:
    """The one-hop small-file path and the streamed path both leave no part or sidecar."""
    async with emulator(file_size=3 * 2880) as emu, aiohttp.ClientSession() as session:
        sel = emu.catalog.select("hmi.M_45s[2012.01.01_00:00:45_TAI/3m]{magnetogram}")
        paths = [rec.segment_path(sel.segments[0]) for rec in sel]
        for chunk_size, sub in ((1 << 20, "small"), (2880, "streamed")):
            dl = Downloader(session, chunk_size=chunk_size, retry=RetryPolicy.no_wait(2))
            for i, path in enumerate(paths):
                remote = RemoteFile(url=emu.url + path, relpath=f"{i}.fits", record="r")
                dest = tmp_path / sub / remote.relpath
                outcome = await dl.download(remote, dest)
                assert dest.read_bytes() == emu.file_bytes(path)
                assert outcome.bytes == 3 * 2880
            assert sorted(p.name for p in (tmp_path / sub).iterdir()) == sorted(
                f"{i}.fits" for i in range(len(paths)))
