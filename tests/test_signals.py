"""SIGINT / SIGTERM leave a consistent state that the rerun resumes; one run per directory.

tests/test_cli_pty.py checks the exit codes in a terminal and that finished files are kept;
here the CLI runs behind pipes and the checks go further: the state store agrees with the
disk after the signal, every ``.part`` file is resumed with an HTTP Range from exactly its
size (per the emulator's audit), and a second concurrent run on the same directory is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal

from asyncjsoc.emulator import Emulator, Knobs, run_emulator

EXE = str(Path(sys.executable).with_name("asyncjsoc"))
EMAIL = "carol@example.org"
# Six records 45 s apart, one segment: 6 files of 1.15 MB (over the client's 1 MiB read size:
# smaller bodies take a one-shot path that is never resumed).
RS = "hmi.M_45s[2012.01.01_00:00:00_TAI/270s]{magnetogram}"
N_FILES = 6
FILE_SIZE = 400 * 2880

pytestmark = pytest.mark.skipif(not os.path.exists(EXE), reason="asyncjsoc script not installed")


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """The emulator on its own event loop in a thread; files trickle in at 2 MB/s."""
    knobs = Knobs(export_delay=0.05, file_size=FILE_SIZE, bandwidth=2_000_000, seed=9)
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(
        run_emulator(knobs)
    ) as emu:
        yield emu


def _env() -> dict[str, str]:
    """The child's environment without ambient asyncjsoc settings."""
    return {k: v for k, v in os.environ.items()
            if k not in ("CI", "ASYNCJSOC_SERVER", "ASYNCJSOC_EMAILS")}


def _argv(emu: Emulator, out: Path) -> list[str]:
    """The fetch command: one connection, fast polls, plain log lines."""
    return [EXE, "fetch", RS, "--server", emu.url, "--email", EMAIL, "--out", str(out),
            "--connections", "1", "--poll-min", "0.05", "--rate-limit", "200",
            "--no-progress"]


def _store(out: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of the state store, read-only."""
    conn = sqlite3.connect(f"file:{out / '.asyncjsoc' / 'state.sqlite'}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _wait_for(predicate: Any, proc: subprocess.Popen[str], what: str) -> None:
    """Poll ``predicate`` until true; fail if the process ends first or 20 s pass."""
    deadline = time.monotonic() + 20
    while not predicate():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.01)


def _interrupt(argv: list[str], ready: Any, what: str) -> tuple[int, str, str]:
    """Run ``argv``, send SIGINT once ``ready()`` holds; its exit code, stdout, stderr."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    try:
        _wait_for(ready, proc, what)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, stdout, stderr


def _parts(out: Path) -> dict[str, int]:
    """Partial downloads: final name → bytes in its ``.part`` file."""
    return {p.name.removesuffix(".part"): p.stat().st_size for p in out.glob("*.part")}


def _check_store_matches_disk(out: Path) -> None:
    """The store says done exactly for the complete files on disk; the rest is resumable."""
    rows = _store(out, "SELECT relpath, state, bytes FROM files")
    finals = {p.name: p.stat().st_size for p in out.glob("*.fits")}
    done = {r: b for r, state, b in rows if state == "done"}
    assert done == finals, "store and disk disagree about finished files"
    for relpath, size in _parts(out).items():
        state = next(s for r, s, _ in rows if r == relpath)
        assert state != "done", relpath
        assert size < FILE_SIZE + 2880, relpath
    for (state,) in _store(out, "SELECT state FROM chunks"):
        assert state in ("planned", "exporting", "ready"), state


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_state_and_rerun_resumes_parts_with_range(
    emulator: Emulator, tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    """A signal mid-file: exit 130/143, store consistent, the .part resumed from its size."""
    out = tmp_path / "out"
    proc = subprocess.Popen([*_argv(emulator, out), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    try:
        # Some files done and the next one part-way: a prefix has trickled in, and at 2 MB/s
        # the rest of it takes over 0.25 s more, so the signal lands before it completes
        # even on a loaded machine. (Waiting a fixed time instead sometimes let the file
        # finish first under load, leaving no partial bytes to resume.)
        _wait_for(lambda: len(list(out.glob("*.fits"))) >= 1
                  and any(0 < size < FILE_SIZE // 2 for size in _parts(out).values()),
                  proc, "partial download")
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, stderr
    assert "interrupted" in stderr.lower() or "terminated" in stderr.lower(), stderr
    # With --json, stdout still holds one object saying so (a script parses it).
    doc = json.loads(stdout)
    assert (doc["ok"], doc["interrupted"]) == (False, True)
    assert doc["files_done"] >= 1
    _check_store_matches_disk(out)
    parts = {name: size for name, size in _parts(out).items() if size > 0}
    assert parts, "the signal left no partial bytes to resume"
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("*.fits")}
    n_before = len(emulator.audit.entries)

    emulator.knobs.bandwidth = None
    rerun = subprocess.run(_argv(emulator, out), capture_output=True, text=True, env=_env(),
                           timeout=60, check=False)
    assert rerun.returncode == 0, rerun.stderr
    later = [e for e in emulator.audit.entries[n_before:] if e.op == "file"]
    for name, size in parts.items():
        gets = [e for e in later if e.path.endswith("/" + name)]
        assert gets, f"{name} was not fetched"
        assert gets[0].range == f"bytes={size}-", (name, gets[0].range)
        assert gets[0].http_status == 206
    for name in finished:
        assert not any(e.path.endswith("/" + name) for e in later), f"{name} fetched again"
        assert (out / name).stat().st_mtime_ns == finished[name]
    # Everything complete and identical to what the server serves.
    rows = _store(out, "SELECT relpath, url, state FROM files")
    assert len(rows) == N_FILES
    assert {s for _, _, s in rows} == {"done"}
    assert list(out.glob("*.part*")) == []
    for relpath, url, _ in rows:
        data = (out / relpath).read_bytes()
        assert hashlib.sha256(data).digest() == hashlib.sha256(emulator.file_bytes(url)).digest()


def test_second_concurrent_run_is_refused(emulator: Emulator, tmp_path: Path) -> None:
    """While one run owns the directory, another exits 2 with one clear line; no harm done."""
    out = tmp_path / "out"
    first = subprocess.Popen(_argv(emulator, out), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=_env())
    try:
        _wait_for(lambda: any(e.op == "file" for e in emulator.audit.entries), first,
                  "download")
        n_before = len(emulator.audit.entries)
        second = subprocess.run(_argv(emulator, out), capture_output=True, text=True,
                                env=_env(), timeout=60, check=False)
        assert first.poll() is None, "the first run should still be going"
        emulator.knobs.bandwidth = None
        _, first_err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert lines[0].startswith("asyncjsoc: error: another asyncjsoc run is using"), lines[0]
    assert str(first.pid) in lines[0]
    assert second.stdout == ""
    # The refused run planned and exported nothing: the first one was past planning and
    # exporting, so any such call after this point would be the second run's. (Its email
    # check may come first: the store, and with it the lock, opens with the pull.)
    later = {e.op for e in emulator.audit.entries[n_before:]}
    assert later <= {"file", "checkAddress.sh"}, later
    assert first.returncode == 0, first_err
    assert len(list(out.glob("*.fits"))) == N_FILES
    assert list(out.glob("*.part*")) == []


_TWO_SIGNALS = """
import os, signal, sys
import anyio
from asyncjsoc.cli import _run

async def work() -> int:
    os.kill(os.getpid(), signal.SIGINT)  # the first: cancels this work
    try:
        await anyio.sleep(30)
    finally:
        with anyio.CancelScope(shield=True):  # saving the state, as fetch does
            os.kill(os.getpid(), signal.SIGINT)  # the second, in the middle of that
            await anyio.sleep(0.1)
            print("state saved", flush=True)
    return 0

sys.exit(_run(work))
"""


def test_a_second_signal_while_stopping_does_not_break_the_shutdown() -> None:
    """A second SIGINT arriving while the first one's shutdown saves the state is held, not
    raised as KeyboardInterrupt inside it: the shutdown finishes and the exit code is 130."""
    done = subprocess.run([sys.executable, "-c", _TWO_SIGNALS], capture_output=True,
                          text=True, timeout=60)
    assert done.stdout == "state saved\n"
    assert done.returncode == 130
    assert "Traceback" not in done.stderr
    assert "already stopping" in done.stderr


def test_an_interrupted_plan_still_prints_its_json(emulator: Emulator) -> None:
    """`plan --json` stopped by Ctrl-C prints one object saying so (and a line on stderr),
    like fetch: a script reading stdout is not left with nothing."""
    emulator.knobs.cgi_delay = 0.5  # each CGI answer takes 0.5 s: the plan is mid-way below
    returncode, stdout, stderr = _interrupt(
        [EXE, "plan", RS, "--server", emulator.url, "--json"],
        lambda: len(emulator.audit.entries) >= 1, "a planning request")
    assert returncode == 130, stderr
    assert "interrupted: the plan was not finished" in stderr
    doc = json.loads(stdout)
    assert (doc["ok"], doc["interrupted"]) == (False, True)


def test_a_fetch_interrupted_before_its_state_exists_does_not_claim_it_was_saved(
        tmp_path: Path) -> None:
    """Ctrl-C while the server has not answered the first request, before any state was
    written: the closing line does not say 'state saved' (status would find none)."""
    import socket

    out = tmp_path / "out"
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        silent.settimeout(20)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        proc = subprocess.Popen([EXE, "fetch", RS, "--server", url, "--email", EMAIL,
                                 "--out", str(out), "--no-progress"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=_env())
        try:
            conn, _ = silent.accept()  # the client's first request is on its way
            with conn:
                proc.send_signal(signal.SIGINT)
                _, stderr = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 130, stderr
    assert not (out / ".asyncjsoc" / "state.sqlite").exists()
    assert "nothing was started yet" in stderr
    assert "state saved" not in stderr


def test_an_interrupted_extract_stops_between_members_and_says_so(tmp_path: Path) -> None:
    """Ctrl-C during `extract`: it stops at the next member (it went on to the end of the
    tar, then exited 130 after printing success), says how far it got, and --json prints
    its object."""
    import io
    import tarfile

    body = b"\0" * 20_000
    tar_path = tmp_path / "JSOC_20240101_001.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i in range(3000):
            info = tarfile.TarInfo(f"f{i:04d}.bin")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    out = tmp_path / "out"
    returncode, stdout, stderr = _interrupt(
        [EXE, "extract", str(tar_path), "--out", str(out), "--json"],
        lambda: out.exists() and any(out.glob("*.bin")), "a first member")
    assert returncode == 130, stderr
    assert "interrupted: 0 of 1 tar(s) unpacked" in stderr
    assert "extracted" not in stderr
    assert json.loads(stdout)["interrupted"] is True
    assert 0 < len(list(out.glob("*.bin"))) < 3000
    assert not list(out.glob("*.part"))
