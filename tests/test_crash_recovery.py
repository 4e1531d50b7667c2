"""``kill -9`` at random moments, several times in a row, then a run to the end.

The emulator and the CLI run as real processes on a real port, as a user would run them. The
CLI is killed with SIGKILL at seeded points: while it plans, while its exports are pending,
mid-download, and just after a file took its final name. What each kill left behind is
snapshotted (final files on disk, the emulator's audit over ``GET /_emulator/audit``, the
export ids the state store had recorded); after the last, undisturbed run the whole pull must
be complete and byte-identical, and no later run may have fetched a finished file again or
asked again for an export whose id was already recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from asyncjsoc.emulator import Emulator, Knobs

EXE = str(Path(sys.executable).with_name("asyncjsoc"))
SEED = int(os.environ.get("ASYNCJSOC_CRASH_SEED", "20240611"))
EMAILS = ("alice@example.org", "bob@example.org")
# Twelve records 45 s apart, one segment: 12 files, 4 exports of 3.
RS = "hmi.M_45s[2012.01.01_00:00:00_TAI/540s]{magnetogram}"
N_FILES = 12
FILE_SIZE = 20 * 2880
EMULATOR_FLAGS = {
    "--seed": "5",
    # Real time (time scale 1): the server's `wait` hint is in its own seconds.
    "--export-delay": "0.3",
    "--file-size": str(FILE_SIZE),
    "--bandwidth": "400000",  # about 0.15 s per file
    "--cgi-delay": "0.02",  # so planning takes long enough to be interrupted
}
PHASES = ("planning", "pending", "download", "rename", "anytime")

pytestmark = pytest.mark.skipif(not os.path.exists(EXE), reason="asyncjsoc script not installed")


def _env() -> dict[str, str]:
    """The child's environment: no ambient asyncjsoc settings, no CI switches."""
    return {k: v for k, v in os.environ.items()
            if k not in ("CI", "ASYNCJSOC_SERVER", "ASYNCJSOC_EMAILS")}


@pytest.fixture
def server() -> Iterator[str]:
    """``asyncjsoc emulator`` as a separate process; yields its URL."""
    argv = [EXE, "emulator", "--port", "0"]
    for flag, value in EMULATOR_FLAGS.items():
        argv += [flag, value]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def audit(url: str) -> dict[str, Any]:
    """The emulator's audit, as JSON over HTTP."""
    with urllib.request.urlopen(f"{url}/_emulator/audit", timeout=10) as resp:
        doc: dict[str, Any] = json.load(resp)
    return doc


def final_files(out: Path) -> dict[str, int]:
    """Files with their final names under ``out`` → size."""
    return {p.name: p.stat().st_size for p in out.glob("*.fits")}


def part_files(out: Path) -> list[str]:
    """Names of partial downloads under ``out``."""
    return sorted(p.name for p in out.glob("*.part*"))


def store_rows(out: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of the state store, read-only (the writer is dead or done)."""
    db = out / ".asyncjsoc" / "state.sqlite"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # killed before the schema was written
        return []
    finally:
        conn.close()


@dataclass
class Snapshot:
    """What one kill left behind."""

    phase: str
    killed_at: float
    """Wall time once the killed client was reaped; the emulator's clock runs at wall speed,
    so requests that *arrived* later (audit ``time``) came from later runs. The audit lists
    requests in completion order, so a count of entries would misplace a dead client's
    stragglers."""
    final: set[str]
    recorded: dict[str, str]
    """Record set of each chunk → the export id the store had for it."""


def fetch_argv(url: str, out: Path) -> list[str]:
    """The CLI command of the pull."""
    argv = [EXE, "fetch", RS, "--server", url, "--out", str(out), "--max-files-per-export",
            "3", "--poll-min", "0.05", "--rate-limit", "200", "--no-progress"]
    for email in EMAILS:
        argv += ["--email", email]
    return argv


def _phase_reached(phase: str, url: str, out: Path, start_final: int) -> Callable[[], bool]:
    """A predicate telling when the pull has reached ``phase``."""

    def ops() -> list[tuple[str, int | None]]:
        return [(e["op"], e["status"]) for e in audit(url)["requests"]]

    base = len(audit(url)["requests"])

    def planning() -> bool:
        return any(op.startswith("jsoc_info") for op, _ in ops()[base:])

    def pending() -> bool:
        return any(op == "jsoc_fetch/exp_request" and st == 2 for op, st in ops()[base:])

    def download() -> bool:
        # Files this small are read whole and written in batches, so a .part lives only
        # for an instant; under CPU load a poll could miss every one and let the pull
        # finish (seen once: the test then had too few kills). A file GET answered since
        # this run started marks the phase too: the other files are still in flight.
        return (any(p.endswith(".part") for p in part_files(out))
                or any(op == "file" for op, _ in ops()[base:]))

    def rename() -> bool:
        return len(final_files(out)) > start_final

    return {"planning": planning, "pending": pending, "download": download,
            "rename": rename, "anytime": lambda: True}[phase]


def run_and_kill(url: str, out: Path, phase: str, rng: random.Random) -> bool:
    """Start the CLI, SIGKILL it once ``phase`` is reached (plus a seeded jitter).

    Returns False if the pull finished before the kill landed.
    """
    start_final = len(final_files(out))
    reached = _phase_reached(phase, url, out, start_final)
    proc = subprocess.Popen(fetch_argv(url, out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_env())
    try:
        deadline = time.monotonic() + 20
        while not reached():
            if proc.poll() is not None:
                return False
            assert time.monotonic() < deadline, f"phase {phase} never came"
            time.sleep(0.005)
        time.sleep(rng.uniform(0.5, 2.0) if phase == "anytime" else rng.uniform(0.0, 0.03))
        if proc.poll() is not None:
            return False
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=20)
    return proc.returncode == -signal.SIGKILL


def expected_bytes(emu: Emulator, record: str, relpath: str) -> bytes:
    """The bytes the emulator serves for ``record``'s file (its stored SUMS copy is the same)."""
    selection = emu.catalog.select(record)
    rec = next(iter(selection))
    seg = next(s for s in selection.segments if relpath.endswith(f".{s.name}.fits"))
    return emu.file_bytes(rec.segment_path(seg))


def test_repeated_sigkill_then_resume_is_complete_and_wastes_nothing(
    server: str, tmp_path: Path
) -> None:
    """Five SIGKILLs at seeded moments, then a clean run: complete, identical, no waste."""
    rng = random.Random(SEED)
    out = tmp_path / "out"
    phases = ["planning", "pending", "download", "rename", rng.choice(PHASES)]
    snapshots: list[Snapshot] = []
    for phase in phases:
        killed = run_and_kill(server, out, phase, rng)
        killed_at = time.time()
        if not killed:
            break
        time.sleep(0.05)  # let the server finish answering the dead client's last request
        chunk_ids = store_rows(out, "SELECT c.recordset, e.request_id FROM chunks c "
                                    "JOIN exports e ON e.chunk_idx = c.idx "
                                    "WHERE e.request_id IS NOT NULL")
        snapshots.append(Snapshot(phase, killed_at,
                                  set(final_files(out)), dict(chunk_ids)))
    assert len(snapshots) >= 4, [s.phase for s in snapshots]

    done = subprocess.run(fetch_argv(server, out), env=_env(), capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr

    # Complete and byte-identical, nothing partial left.
    emu = Emulator(Knobs(seed=5, file_size=FILE_SIZE))
    rows = store_rows(out, "SELECT relpath, record, state, bytes FROM files")
    assert len(rows) == N_FILES
    assert part_files(out) == []
    on_disk = final_files(out)
    assert set(on_disk) == {r[0] for r in rows}
    for relpath, record, state, nbytes in rows:
        assert state == "done"
        data = (out / relpath).read_bytes()
        assert len(data) == nbytes == on_disk[relpath]
        want = expected_bytes(emu, record, relpath)
        assert hashlib.sha256(data).digest() == hashlib.sha256(want).digest(), relpath
    assert {s for (s,) in store_rows(out, "SELECT state FROM chunks")} == {"done"}

    doc = audit(server)
    entries = doc["requests"]
    for snap in snapshots:
        later = [e for e in entries if e["time"] > snap.killed_at]
        # No finished file fetched again by a later run.
        again = [e["path"] for e in later
                 if e["op"] == "file" and urlsplit(e["path"]).path.rsplit("/", 1)[-1]
                 in snap.final]
        assert again == [], f"after the kill while {snap.phase}: {again}"
        # No recorded, still valid export asked for again.
        asked = [e["params"].get("ds") for e in later if e["op"] == "jsoc_fetch/exp_request"]
        repeated = [ds for ds in asked if ds in snap.recorded]
        assert repeated == [], f"after the kill while {snap.phase}: {repeated}"
    # A re-request of an export whose id was never recorded gets the same id back: the
    # server never staged more exports than there are chunks.
    chunks = store_rows(out, "SELECT count(*) FROM chunks")[0][0]
    assert len({span["request_id"] for span in doc["pending"]}) <= chunks
    # A second complete body only for files a kill caught in flight (sent, not yet final).
    refetched = {p.rsplit("/", 1)[-1] for p, st in doc["files"].items() if st["complete"] > 1}
    in_flight: set[str] = set()
    for snap in snapshots:
        fetched = {e["path"].rsplit("/", 1)[-1] for e in entries
                   if e["op"] == "file" and e["time"] <= snap.killed_at}
        in_flight |= fetched - snap.final
    assert refetched <= in_flight, refetched - in_flight
    assert all(n <= 1 for n in doc["max_pending_per_email"].values())
