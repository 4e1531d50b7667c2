"""Tests for asyncjsoc._status and `asyncjsoc status`: where a pull stands, read-only."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from engine_helpers import emulator, fast_config

from asyncjsoc import Client
from asyncjsoc import _status as status_module
from asyncjsoc._status import FAILED_SHOWN, read_status
from asyncjsoc.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from asyncjsoc.exceptions import InvalidInputError, StateError

pytestmark = pytest.mark.anyio

LOCKS_LISTED = Path("/proc/locks").exists()  # where status can tell a run is active

RS = "hmi.sharp_cea_720s[7302][2018.09.06_00:00:00_TAI-2018.09.06_02:00:00_TAI]{Bp,Br}"


def _digest(path: Path) -> str:
    """The state database's bytes and its write-ahead log's, hashed (not the -shm index,
    where every SQLite reader, read-only ones included, marks what it reads)."""
    parts = [p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists()]
    return hashlib.sha256(b"".join(parts)).hexdigest()


async def test_status_of_a_complete_pull(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """After a full pull: complete, every file done with its bytes, nothing staged or failed;
    read while the pull's client still holds the store's lock, and without changing it."""
    out = tmp_path / "out"
    async with emulator() as emu, Client(fast_config(emu, max_files_per_export=4), out) as c:
        result = await c.fetch(RS)
        state = out / ".asyncjsoc" / "state.sqlite"
        before = _digest(state)
        status = read_status(out)  # the client holds the lock: reading needs none
        assert _digest(state) == before
        if LOCKS_LISTED:
            assert status.running_pid == os.getpid()
    assert read_status(out).running_pid is None
    assert result.ok
    assert result.plan is not None
    assert status.complete
    assert status.series == "hmi.sharp_cea_720s"
    assert (status.n_records, status.n_files) == (result.plan.n_records, result.plan.n_files)
    assert status.files == {"done": len(result.files)}
    assert status.bytes_done == sum(f.path.stat().st_size for f in result.files)
    assert status.chunks == {"done": len(result.plan.chunks)}
    assert len(result.plan.chunks) > 1
    assert status.staged == ()
    assert status.failed == ()
    assert main(["status", str(out)]) == EXIT_OK
    text = capsys.readouterr().out
    assert "complete  yes" in text
    assert f"{len(result.files)} done" in text


@pytest.mark.parametrize("batch", [5000, 1])
async def test_finished_files_gone_from_disk_make_the_pull_incomplete(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        batch: int) -> None:
    """A finished file deleted or changed since is named by ``status``, which no longer
    calls the pull complete; the rerun fetches exactly those files, and then it is."""
    monkeypatch.setattr(status_module, "_STAT_BATCH", batch)  # files read a batch at a time
    out = tmp_path / "out"
    async with emulator() as emu:
        async with Client(fast_config(emu), out) as c:
            result = await c.fetch(RS)
        deleted, cut = sorted(f.relpath for f in result.files)[:2]
        (out / deleted).unlink()
        with (out / cut).open("r+b") as f:
            f.truncate(100)
        status = read_status(out)
        assert status.gone == 2
        assert status.gone_examples == (deleted, cut)
        assert not status.complete
        assert main(["status", str(out)]) == EXIT_FAILED
        text = capsys.readouterr().out
        assert "gone      2 finished files are no longer on disk" in text
        assert f"            {deleted}\n" in text
        assert main(["status", str(out), "--json"]) == EXIT_FAILED
        assert json.loads(capsys.readouterr().out)["gone"] == {"files": 2,
                                                                "examples": [deleted, cut]}
        async with Client(fast_config(emu), out) as c:
            again = await c.fetch(RS)
    assert sorted(f.relpath for f in again.files if not f.reused) == [deleted, cut]
    status = read_status(out)
    assert (status.gone, status.complete) == (0, True)


async def test_status_of_a_finished_pull_creates_no_file(tmp_path: Path) -> None:
    """Once no run has the state open, reading it leaves the state directory as it was (no
    ``-wal``/``-shm`` files: the directory may be read-only media or someone else's)."""
    out = tmp_path / "out"
    async with emulator() as emu, Client(fast_config(emu), out) as c:
        result = await c.fetch(RS)
    state_dir = out / ".asyncjsoc"
    before = sorted(os.listdir(state_dir))
    assert not any(name.endswith(("-wal", "-shm")) for name in before)
    status = read_status(out)
    assert sorted(os.listdir(state_dir)) == before
    assert status.complete
    assert status.files == {"done": len(result.files)}


async def test_status_lists_failures_and_staged_exports(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A pull with failed files: not complete, the failures named with their errors, the
    exports of the unfinished chunks listed; the command exits 1 and says to rerun."""
    out = tmp_path / "out"
    async with (emulator(hostile_names={"dotdot": 0.4}) as emu,
                Client(fast_config(emu, max_files_per_export=3), out) as client):
        result = await client.fetch(RS)
    assert result.failed, "the knob picked no row: change the rate or seed"
    status = read_status(out)
    assert not status.complete
    assert status.files.get("done", 0) == len(result.files)
    # Refused names never get a file row: their chunks fail, with the count.
    failed_chunks = {f.request_id for f in result.failed}
    assert status.chunks.get("failed", 0) == len(failed_chunks) > 0
    assert len(status.failed_exports) == len(failed_chunks)
    assert all("file(s) failed" in error for _, _, error in status.failed_exports)
    assert {s.request_id for s in status.staged} == failed_chunks
    assert all(s.expires_at for s in status.staged)
    assert main(["status", str(out), "--json"]) == EXIT_FAILED
    doc = json.loads(capsys.readouterr().out)
    assert doc["complete"] is False
    assert len(doc["failed_exports"]) == len(failed_chunks)
    assert {s["requestid"] for s in doc["staged"]} == failed_chunks
    assert main(["status", str(out)]) == EXIT_FAILED
    text = capsys.readouterr().out
    assert f"failed    export {status.failed_exports[0][0] + 1} (" in text
    assert "run the same fetch command again" in text


async def test_a_failed_export_is_not_listed_as_reusable(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An export the JSOC failed (status 4) is a failed export, not one "being prepared at
    the JSOC" that a rerun could reuse (a rerun submits it again)."""
    out = tmp_path / "out"
    async with (emulator(export_failure_rate=1.0) as emu,
                Client(fast_config(emu), out) as client):
        result = await client.fetch(RS)
    assert result.failed
    status = read_status(out)
    assert status.chunks == {"failed": 1}
    assert len(status.failed_exports) == 1
    assert status.staged == ()
    assert main(["status", str(out)]) == EXIT_FAILED
    text = capsys.readouterr().out
    assert "being prepared" not in text
    assert "failed    export 1 (" in text


async def test_status_names_failed_files(tmp_path: Path) -> None:
    """Files that failed to download are listed by name with their error."""
    out = tmp_path / "out"
    async with (emulator(oversize_files={"padded": 1.0}) as emu,
                Client(fast_config(emu, max_files_per_export=4), out) as client):
        result = await client.fetch(RS)
    assert result.failed
    assert all(f.relpath for f in result.failed)
    status = read_status(out)
    assert status.files_failed == len(result.failed)
    assert len(result.failed) > FAILED_SHOWN  # the list is cut, the count is not
    assert len(status.failed) == FAILED_SHOWN
    assert {name for name, _ in status.failed} < {f.relpath for f in result.failed}
    assert all(error for _, error in status.failed)


def test_no_state_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A directory without a pull's state: InvalidInputError; the command, one line, exit 2."""
    with pytest.raises(InvalidInputError, match="no asyncjsoc state"):
        read_status(tmp_path)
    assert main(["status", str(tmp_path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no asyncjsoc state" in err
    assert "--out" in err
    assert not (tmp_path / ".asyncjsoc").exists()


@pytest.mark.parametrize("content", [b"not a database at all\n" * 20, b""])
def test_unreadable_state_is_not_an_unfinished_pull(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes) -> None:
    """A state file that cannot be read exits 2 (1 means "not finished"), one line, and is
    left as it was."""
    state = tmp_path / ".asyncjsoc" / "state.sqlite"
    state.parent.mkdir()
    state.write_bytes(content)
    with pytest.raises(StateError):
        read_status(tmp_path)
    assert main(["status", str(tmp_path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "state database" in err
    assert main(["status", str(tmp_path), "--json"]) == EXIT_USAGE
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    assert "state database" in doc["error"]
    assert state.read_bytes() == content


async def test_errors_are_shown_with_emails_masked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A JSOC refusal stored with a notify address in it is shown masked, text and JSON."""
    from asyncjsoc._models import Chunk, Plan
    from asyncjsoc._store import StateStore

    out = tmp_path / "out"
    plan = Plan(series="hmi.m_45s", n_records=1, n_files=1,
                chunks=(Chunk(index=0, recordset="hmi.m_45s[$]", n_records=1, n_files=1),))
    async with StateStore(out / ".asyncjsoc" / "state.sqlite") as store:
        await store.save_plan(plan)
        await store.set_chunk_state(
            0, "failed", error="User jane.doe@example.org has 1 pending export requests")
    assert main(["status", str(out)]) == EXIT_FAILED
    text = capsys.readouterr().out
    assert "jane.doe@example.org" not in text
    assert "j***@example.org has 1 pending" in text
    assert main(["status", str(out), "--json"]) == EXIT_FAILED
    doc = json.loads(capsys.readouterr().out)
    assert doc["failed_exports"][0]["error"].startswith("User j***@example.org")


@pytest.mark.skipif(not LOCKS_LISTED, reason="status tells a running pull from /proc/locks")
async def test_an_extract_sharing_the_lock_is_not_a_running_pull(tmp_path: Path) -> None:
    """`extract` holds the output lock shared while it unpacks: status does not call that
    a pull running now. A pull that ended erased its pid from the lock file."""
    import fcntl

    from asyncjsoc._paths import output_lock_path

    out = tmp_path / "out"
    async with emulator() as emu, Client(fast_config(emu), out) as c:
        assert (await c.fetch(RS)).ok
    lock = output_lock_path(out)
    assert lock.read_text() == ""
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # as extract holds it
        assert read_status(out).running_pid is None
    finally:
        os.close(fd)
