"""Tests for asyncjsoc._store: the SQLite state store, its lock and its durability."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from asyncjsoc._models import Chunk, Plan, RemoteFile
from asyncjsoc._store import StateStore, StoredExport, default_state_path
from asyncjsoc.exceptions import (
    DiskError,
    InvalidInputError,
    StateError,
    StateLockedError,
    StateMismatchError,
)

pytestmark = pytest.mark.anyio

PLAN = Plan(
    series="hmi.sharp_cea_720s",
    chunks=(
        Chunk(index=0, recordset="hmi.sharp_cea_720s[7310][2018.09.30/1d]", n_records=120,
              n_files=1320),
        Chunk(index=1, recordset="hmi.sharp_cea_720s[7310][2018.10.01/1d]", n_records=120,
              n_files=1320),
    ),
    n_records=240,
    n_files=2640,
    estimated_bytes=123_456_789,
)


def _files(n: int, chunk: int = 0, prefix: str = "f") -> list[RemoteFile]:
    """``n`` distinct remote files."""
    return [RemoteFile(url=f"http://127.0.0.1/SUM1/D{i}/S00000/{prefix}{i}.fits",
                       relpath=f"{prefix}{i}.fits", record=f"rec[{i}]", request_id="JSOC_1",
                       expected_size=1000 + i)
            for i in range(chunk * n, chunk * n + n)]


async def test_default_location(tmp_path: Path) -> None:
    """The default store lives in <out>/.asyncjsoc/state.sqlite, with a lock file beside it."""
    async with StateStore.for_output(tmp_path) as store:
        assert store.path == default_state_path(tmp_path)
        assert store.path == tmp_path / ".asyncjsoc" / "state.sqlite"
        assert store.path.exists()
        assert (tmp_path / ".asyncjsoc" / "state.sqlite.lock").exists()
        with contextlib.closing(sqlite3.connect(store.path)) as conn:
            mode = conn.execute("PRAGMA journal_mode").fetchone()
    assert mode == ("wal",)


async def test_plan_round_trip(tmp_path: Path) -> None:
    """A saved plan comes back equal after closing and reopening."""
    async with StateStore.for_output(tmp_path, fingerprint="fp1") as store:
        assert await store.load_plan() is None
        await store.save_plan(PLAN)
    async with StateStore.for_output(tmp_path, fingerprint="fp1") as store:
        assert await store.load_plan() == PLAN
        assert await store.stored_fingerprint() == "fp1"
        assert await store.chunk_states() == {0: "planned", 1: "planned"}


async def test_save_plan_keeps_progress_of_unchanged_chunks(tmp_path: Path) -> None:
    """Saving a plan again keeps unchanged chunks' state and resets changed ones."""
    async with StateStore.for_output(tmp_path) as store:
        await store.save_plan(PLAN)
        await store.set_chunk_state(0, "done")
        await store.set_chunk_state(1, "ready")
        await store.record_export(StoredExport(chunk_index=1, request_id="JSOC_X"))
        changed = replace(PLAN, chunks=(PLAN.chunks[0], replace(PLAN.chunks[1], recordset="x")))
        await store.save_plan(changed)
        assert await store.chunk_states() == {0: "done", 1: "planned"}
        assert await store.export_for_chunk(1) is None
        await store.save_plan(replace(PLAN, chunks=PLAN.chunks[:1]))
        assert await store.chunk_states() == {0: "done"}
        with pytest.raises(StateError, match="chunk 5"):
            await store.set_chunk_state(5, "done")


async def test_fingerprint_mismatch_refused_then_reset(tmp_path: Path) -> None:
    """A different pull is refused with a hint; reset discards the old state."""
    async with StateStore.for_output(tmp_path, fingerprint="A") as store:
        await store.save_plan(PLAN)
        await store.add_files(0, _files(3))
    with pytest.raises(StateError, match="different pull") as info:
        async with StateStore.for_output(tmp_path, fingerprint="B"):
            pass
    assert info.value.hint
    async with StateStore.for_output(tmp_path, fingerprint="A") as store:
        assert await store.load_plan() == PLAN
        with pytest.raises(StateError, match="different pull"):
            await store.save_plan(PLAN, fingerprint="B")
    async with StateStore.for_output(tmp_path, fingerprint="B", reset=True) as store:
        assert await store.load_plan() is None
        assert (await store.summary()).files_total == 0
        assert await store.stored_fingerprint() == "B"


async def test_fingerprint_adopted_without_wiping(tmp_path: Path) -> None:
    """A store made without a fingerprint adopts the first one given and keeps its rows."""
    async with StateStore.for_output(tmp_path) as store:
        await store.save_plan(PLAN)
    async with StateStore.for_output(tmp_path) as store:
        await store.save_plan(PLAN, fingerprint="A")
        assert await store.stored_fingerprint() == "A"
        assert await store.load_plan() == PLAN


async def test_lock_refuses_second_opener_in_process(tmp_path: Path) -> None:
    """A second store on the same directory is refused while the first is open, naming
    this process's other client rather than "another run" with our own pid."""
    async with StateStore.for_output(tmp_path):
        with pytest.raises(StateLockedError, match=r"another Client in this process") as info:
            await StateStore.for_output(tmp_path).open()
        assert info.value.hint is not None
        assert "close it first" in info.value.hint
    async with StateStore.for_output(tmp_path) as again:
        assert await again.load_plan() is None


_HOLDER = textwrap.dedent("""
    import sys, anyio
    from pathlib import Path
    from asyncjsoc._store import StateStore

    async def main():
        async with StateStore.for_output(Path(sys.argv[1])):
            print("locked", flush=True)
            sys.stdin.readline()

    anyio.run(main)
""")


async def test_lock_refuses_across_processes(tmp_path: Path) -> None:
    """A store held by another process is refused, naming that process's pid."""
    async with await anyio.open_process([sys.executable, "-c", _HOLDER, str(tmp_path)]) as proc:
        assert proc.stdout is not None
        assert proc.stdin is not None
        assert (await proc.stdout.receive()).startswith(b"locked")
        with pytest.raises(StateLockedError, match=rf"\(pid {proc.pid}\)"):
            await StateStore.for_output(tmp_path).open()
        await proc.stdin.send(b"\n")
        assert await proc.wait() == 0
    async with StateStore.for_output(tmp_path):
        pass


_CRASHER = textwrap.dedent("""
    import os, sys, anyio
    from pathlib import Path
    from asyncjsoc._models import RemoteFile
    from asyncjsoc._store import StateStore

    async def main():
        store = StateStore.for_output(Path(sys.argv[1]))
        await store.open()
        files = [RemoteFile(url=f"http://h/{i}", relpath=f"{i}.fits", record=f"r{i}")
                 for i in range(100)]
        await store.add_files(0, files)
        await store.mark_done("7.fits", 777)
        os._exit(3)  # no close, no flush, no lock release: like a kill

    anyio.run(main)
""")


async def test_crash_keeps_committed_rows_and_frees_lock(tmp_path: Path) -> None:
    """After a process dies without closing, a reopen sees committed rows and the lock is free."""
    result = await anyio.run_process([sys.executable, "-c", _CRASHER, str(tmp_path)],
                                     check=False)
    assert result.returncode == 3, result.stderr
    async with StateStore.for_output(tmp_path) as store:
        assert await store.done_relpaths() == {"7.fits"}
        summary = await store.summary()
        assert summary.files == {"done": 1, "pending": 99}
        assert summary.bytes_done == 777


async def test_files_lifecycle(tmp_path: Path) -> None:
    """Files go pending → partial → done/failed; add_files is idempotent and keeps state."""
    files = _files(5)
    async with StateStore.for_output(tmp_path) as store:
        await store.save_plan(PLAN)
        await store.add_files(0, files)
        await store.add_files(0, files)
        assert (await store.summary()).files == {"pending": 5}
        await store.mark_partial("f1.fits", 10)
        await store.mark_done("f2.fits", 1002, etag='"abc"')
        await store.mark_failed("f3.fits", "HTTP 500")
        # a re-export gives new URLs; state and bytes stay
        moved = [replace(f, url=f.url.replace("SUM1", "SUM9"), request_id="JSOC_2")
                 for f in files]
        await store.add_files(0, moved)
        done = await store.file_state("f2.fits")
        assert done is not None
        assert (done.state, done.bytes, done.etag) == ("done", 1002, '"abc"')
        assert done.url.startswith("http://127.0.0.1/SUM9/")
        assert done.remote() == moved[2]
        failed = await store.file_state("f3.fits")
        assert failed is not None
        assert (failed.state, failed.error) == ("failed", "HTTP 500")
        assert await store.file_state("nope") is None
        assert await store.done_relpaths() == {"f2.fits"}
        pending = await store.pending_files(0)
        assert [f.relpath for f in pending] == ["f0.fits", "f1.fits", "f3.fits", "f4.fits"]
        assert await store.pending_files(1) == []
        await store.mark_pending("f2.fits")
        assert await store.done_relpaths() == set()
        summary = await store.summary()
        assert summary.files == {"pending": 3, "partial": 1, "failed": 1}
        assert summary.chunks == {"planned": 2}
        with pytest.raises(StateError, match="not a known file"):
            await store.mark_done("ghost.fits", 1)


async def test_a_full_disk_is_a_disk_error_with_a_hint(tmp_path: Path) -> None:
    """SQLite's "database or disk is full" (here: the database may not grow) surfaces as a
    DiskError naming the state file and what to do, never as a raw sqlite3 error; the
    completions it could not record are kept for the next try."""
    async with StateStore.for_output(tmp_path) as store:
        await store.save_plan(PLAN)
        await store.add_files(0, _files(3))
        conn = store._conn  # the database may not grow past its pages now
        assert conn is not None
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(DiskError, match=r"state database .* full") as full:
            await store.add_files(1, _files(2000, chunk=1, prefix="g"))
        assert full.value.hint is not None
        assert "free some space" in full.value.hint
        conn.execute("PRAGMA max_page_count = 1073741823")
        await store.add_files(1, _files(2000, chunk=1, prefix="g"))
        assert (await store.summary()).files == {"pending": 2003}


async def test_completions_survive_an_operation_cancelled_before_it_ran(
        tmp_path: Path) -> None:
    """Completions kept by record_done are committed by the next operation; when that
    operation is cancelled before its worker thread starts, close still commits them (they
    were dropped, and a status after a cancelled pull showed reported files as pending)."""
    files = _files(4)
    async with StateStore.for_output(tmp_path) as store:
        await store.save_plan(PLAN)
        await store.add_files(0, files)
        for f in files[:3]:
            await store.record_done(f.relpath, 1000)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await store.set_chunk_state(0, "ready")
        assert scope.cancelled_caught
    async with StateStore.for_output(tmp_path) as store:
        assert await store.done_relpaths() == {f.relpath for f in files[:3]}


async def test_close_releases_the_lock_through_repeated_asyncio_cancels(
        tmp_path: Path) -> None:
    """asyncio's own Task.cancel(), called on every turn of the loop, gets through anyio's
    shield; close still commits the completions and releases the lock, so a new store (a
    rerun in the same Jupyter kernel) can open the directory."""
    import asyncio

    files = _files(50)
    store = StateStore.for_output(tmp_path)
    await store.open()
    await store.save_plan(PLAN)
    await store.add_files(0, files)
    for f in files:
        await store.record_done(f.relpath, 1000)
    loop = asyncio.get_running_loop()
    closing = asyncio.ensure_future(store.close())
    cancels = 0

    def hammer() -> None:
        nonlocal cancels
        if not closing.done():
            closing.cancel()
            cancels += 1
            loop.call_soon(hammer)

    loop.call_soon(hammer)
    await asyncio.wait([closing])
    assert cancels >= 1
    async with StateStore.for_output(tmp_path) as again:
        assert await again.done_relpaths() == {f.relpath for f in files}


async def test_exports_round_trip(tmp_path: Path) -> None:
    """An export record comes back as stored, can be replaced and forgotten."""
    export = StoredExport(chunk_index=0, request_id="JSOC_20260101_001", email="a@b.c",
                          method="url", protocol="fits", status=1, dir=None,
                          submitted_at=1000.0, ready_at=None, expires_at=None)
    async with StateStore.for_output(tmp_path) as store:
        await store.save_plan(PLAN)
        assert await store.export_for_chunk(0) is None
        await store.record_export(export)
        ready = replace(export, status=0, dir="/SUM5/D9/S00000", ready_at=1100.0,
                        expires_at=1100.0 + 7 * 86400)
        await store.record_export(ready)
    async with StateStore.for_output(tmp_path) as store:
        assert await store.export_for_chunk(0) == ready
        await store.forget_export(0)
        assert await store.export_for_chunk(0) is None


async def test_closed_store_refuses_work(tmp_path: Path) -> None:
    """Using a store before opening or after closing is an error; close is idempotent."""
    store = StateStore.for_output(tmp_path)
    with pytest.raises(StateError, match="not open"):
        await store.load_plan()
    async with store:
        pass
    await store.close()
    with pytest.raises(StateError, match="not open"):
        await store.done_relpaths()
    with pytest.raises(RuntimeError):
        await store.open()


async def test_corrupt_database_is_a_state_error(tmp_path: Path) -> None:
    """A file that is not SQLite gives a StateError with a hint, and releases the lock."""
    path = default_state_path(tmp_path)
    path.parent.mkdir()
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="unusable") as info:
        await StateStore(path).open()
    assert info.value.hint
    path.unlink()
    async with StateStore(path):
        pass


async def test_many_files_batch(tmp_path: Path) -> None:
    """Tens of thousands of rows go in one call and are counted right."""
    async with StateStore.for_output(tmp_path) as store:
        await store.add_files(0, _files(20_000))
        await store.add_files(1, _files(20_000, chunk=1))
        assert (await store.summary()).files == {"pending": 40_000}
        assert len(await store.pending_files(1)) == 20_000


async def test_done_files_and_records_of(tmp_path: Path) -> None:
    """done_files lists finished rows (per chunk or all); records_of maps known relpaths."""
    async with StateStore.for_output(tmp_path) as store:
        await store.save_plan(PLAN)
        await store.add_files(0, _files(3, 0))
        await store.add_files(1, _files(3, 1))
        await store.mark_done("f1.fits", 11)
        await store.mark_done("f4.fits", 44)
        assert [(f.relpath, f.bytes, f.record) for f in await store.done_files()] == [
            ("f1.fits", 11, "rec[1]"), ("f4.fits", 44, "rec[4]")]
        assert [f.relpath for f in await store.done_files(1)] == ["f4.fits"]
        assert await store.done_files(5) == []
        names = [f"f{i}.fits" for i in range(600)]
        assert await store.records_of(names) == {f"f{i}.fits": f"rec[{i}]" for i in range(6)}


async def test_mismatch_is_a_dedicated_error_with_a_hint(tmp_path: Path) -> None:
    """A different fingerprint raises StateMismatchError early; reset lets it through."""
    async with StateStore.for_output(tmp_path) as store:
        await store.save_plan(PLAN, "fp1")
        await store.check_fingerprint("fp1")
        with pytest.raises(StateMismatchError) as caught:
            await store.check_fingerprint("fp2")
        assert isinstance(caught.value, StateError)
        assert caught.value.hint is not None
        assert "reset" in caught.value.hint
        with pytest.raises(StateMismatchError):
            await store.save_plan(PLAN, "fp2")
    async with StateStore.for_output(tmp_path, reset=True) as store:
        await store.check_fingerprint("fp2")
        await store.save_plan(PLAN, "fp2")
        assert await store.stored_fingerprint() == "fp2"


async def test_a_state_path_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    """A directory (or /dev/null) as the state file: refused before any lock or journal is
    made next to it."""
    where = tmp_path / "dir"
    where.mkdir()
    with pytest.raises(InvalidInputError, match="not a regular file"):
        await StateStore(where).open()
    assert sorted(os.listdir(tmp_path)) == ["dir"]
    assert os.listdir(where) == []


@pytest.mark.parametrize("kind", ["someone's database", "a text file", "one byte"])
async def test_a_state_path_holding_something_else_is_left_unchanged(
        tmp_path: Path, kind: str) -> None:
    """An existing file that is not an asyncjsoc state file is refused and left as it was:
    not converted (tables, WAL mode), no lock file left beside it; even a file shorter than
    SQLite's header, which SQLite would take for an empty database."""
    path = tmp_path / "other.db"
    if kind == "a text file":
        path.write_text("my notes\n")
    elif kind == "one byte":
        path.write_bytes(b"x")
    else:
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE papers (title TEXT)")
        conn.commit()
        conn.close()
    before = path.read_bytes()
    with pytest.raises(InvalidInputError, match="left unchanged"):
        await StateStore(path).open()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["other.db"]


async def test_unpacked_members_keep_the_older_form_and_their_sizes(tmp_path: Path) -> None:
    """An unpacked tar's members stay a JSON list of names (what older versions read); their
    sizes live beside them and come back with them. A record without sizes (older version,
    or sizes for another member list) reads as unknown sizes."""
    import json

    async with StateStore.for_output(tmp_path, fingerprint="fp1") as store:
        await store.save_plan(PLAN)
        await store.mark_unpacked("a.tar", ["x.fits", "y.fits"], [10, 20])
        await store.mark_unpacked("b.tar", ["z.fits"])
        assert await store.unpacked() == {"a.tar": (("x.fits", 10), ("y.fits", 20)),
                                          "b.tar": (("z.fits", None),)}
        path = store.path
    with contextlib.closing(sqlite3.connect(path)) as conn:
        members = dict(conn.execute("SELECT relpath, members FROM unpacked"))
        assert json.loads(members["a.tar"]) == ["x.fits", "y.fits"]
        with conn:  # an older version unpacking a.tar again, into another member list
            conn.execute("UPDATE unpacked SET members = ? WHERE relpath = 'a.tar'",
                         (json.dumps(["x.fits"]),))
    async with StateStore.for_output(tmp_path, fingerprint="fp1") as store:
        assert (await store.unpacked())["a.tar"] == (("x.fits", None),)
        await store.forget_unpacked("a.tar")
        assert set(await store.unpacked()) == {"b.tar"}


async def test_an_empty_state_file_is_taken(tmp_path: Path) -> None:
    """An empty file at ``state_path`` (a first run killed before SQLite's first write) is
    filled as a state store, not refused."""
    path = tmp_path / "state.db"
    path.write_bytes(b"")
    async with StateStore(path, fingerprint="fp1") as store:
        await store.save_plan(PLAN)
    assert path.read_bytes().startswith(b"SQLite format 3\x00")


def test_the_output_lock_is_the_default_state_lock(tmp_path: Path) -> None:
    """extract shares the lock a pull holds: both name the same file."""
    from asyncjsoc._paths import output_lock_path
    from asyncjsoc._store import default_state_path, lock_path

    assert output_lock_path(tmp_path) == lock_path(default_state_path(tmp_path))


def test_a_lock_whose_pid_cannot_be_written_is_not_kept(tmp_path: Path) -> None:
    """Writing the pid into the lock file fails (a full disk; here a file-size limit): a
    StateError, and the lock is released, not held for the life of the process."""
    import subprocess
    import sys
    import textwrap

    lock = tmp_path / "state.sqlite.lock"
    code = textwrap.dedent(f"""
        import fcntl, os, resource, signal
        from pathlib import Path
        from asyncjsoc._store import take_lock
        from asyncjsoc.exceptions import StateError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        try:
            take_lock(Path({str(lock)!r}), "out")
        except StateError as exc:
            print("StateError:", exc.message)
        fd = os.open({str(lock)!r}, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again: no BlockingIOError
        print("free")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    first, second = done.stdout.splitlines()
    assert first.startswith(f"StateError: cannot write to the state lock {lock}")
    assert second == "free"
