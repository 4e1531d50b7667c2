"""The real executable in a real pseudo-terminal (pexpect) and behind pipes.

The emulator runs in this process on a thread of its own; ``asyncjsoc`` runs as a separate
process pointed at it with ``--server``, exactly as a user would run it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from anyio.from_thread import start_blocking_portal

from asyncjsoc.emulator import Emulator, Knobs, run_emulator

EXE = str(Path(sys.executable).with_name("asyncjsoc"))
EMAIL = "alice@example.org"
EMAIL2 = "bob@example.org"
# HARP 7302, 4 records 96 min apart, three segments: 12 files.
RS = "hmi.sharp_cea_720s[7302][2018.09.06_00:00:00_TAI-2018.09.06_04:48:00_TAI@96m]{Bp,Bt,Br}"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

pytestmark = pytest.mark.skipif(not os.path.exists(EXE), reason="asyncjsoc script not installed")


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """The emulator on its own event loop in a thread."""
    knobs = Knobs(export_delay=0.05, file_size=4 * 2880, seed=3)
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(
        run_emulator(knobs)
    ) as emu:
        yield emu


def _env(**extra: str) -> dict[str, str]:
    """A clean environment for the child: a real terminal type, no CI, no ambient config."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CI", "ASYNCJSOC_SERVER", "ASYNCJSOC_EMAILS", "NO_COLOR")}
    env.update({"TERM": "xterm-256color", "COLUMNS": "140", "LINES": "40"})
    env.update(extra)
    return env


def _fetch_argv(emu: Emulator, out: Path, *extra: str) -> list[str]:
    """fetch options against the emulator with two export slots and small exports."""
    return ["fetch", RS, "--server", emu.url, "--email", EMAIL, "--email", EMAIL2,
            "--out", str(out), "--max-files-per-export", "3", "--poll-min", "0.05",
            "--rate-limit", "200", *extra]


def _files(out: Path) -> dict[str, tuple[int, int]]:
    """Finished data files under ``out`` → (inode, mtime_ns); state and .part files left out."""
    found: dict[str, tuple[int, int]] = {}
    for p in out.rglob("*.fits"):
        if ".asyncjsoc" not in p.parts:
            st = p.stat()
            found[p.relative_to(out).as_posix()] = (st.st_ino, st.st_mtime_ns)
    return found


def _spawn(argv: list[str], **env: str) -> pexpect.spawn:
    """Start the executable in a pseudo-terminal of 40x140."""
    return pexpect.spawn(EXE, argv, env=_env(**env), dimensions=(40, 140), timeout=30,
                         encoding="utf-8", codec_errors="replace")


def test_live_display_in_a_terminal(emulator: Emulator, tmp_path: Path) -> None:
    """In a tty the rich display shows waiting, exports, slots, bars and a summary table."""
    emulator.knobs.export_delay = 1.0  # long enough to be seen waiting on the JSOC
    emulator.knobs.bandwidth = 100_000  # and downloads slow enough to be seen moving
    child = _spawn(_fetch_argv(emulator, tmp_path / "out"))
    child.expect("waiting for JSOC")
    child.expect(r"JSOC_\d{8}_\d+")
    child.expect("email slots")
    child.expect(r"a\*\*\*@example\.org")
    child.expect("↓")  # a per-file download bar
    child.expect("asyncjsoc summary")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    seen = ANSI.sub("", child.before or "")
    assert "alice@" not in seen
    assert len(_files(tmp_path / "out")) == 12


def test_plain_log_when_piped(emulator: Emulator, tmp_path: Path) -> None:
    """Without a terminal: timestamped plain lines on stderr, no escape codes, empty stdout."""
    proc = subprocess.run([EXE, *_fetch_argv(emulator, tmp_path / "out")], env=_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert "\x1b[" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines
    assert all(re.match(r"\d\d:\d\d:\d\d |  ", line) for line in lines), lines
    assert any("submitted" in line for line in lines)
    assert any("[12/12]" in line for line in lines)
    assert "alice@" not in proc.stderr
    assert len(_files(tmp_path / "out")) == 12


def test_json_stdout_is_one_object_even_in_a_terminal(emulator: Emulator, tmp_path: Path
                                                      ) -> None:
    """--json with stdout piped and stderr a tty: the live display goes to the terminal and
    stdout holds exactly one JSON object."""
    master, slave = pty.openpty()
    shown: list[bytes] = []

    def drain() -> None:
        """Read the terminal side until the child closes it (EIO), so it never blocks."""
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            shown.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run([EXE, *_fetch_argv(emulator, tmp_path / "out", "--json")],
                              env=_env(), stdout=subprocess.PIPE, stderr=slave, text=True,
                              timeout=60, check=False)
    finally:
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
    terminal = ANSI.sub("", b"".join(shown).decode(errors="replace"))
    assert proc.returncode == 0, terminal
    assert "asyncjsoc summary" in terminal
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True
    assert len(doc["files"]) == 12
    assert doc["failed"] == []


def _interrupt_midway(emulator: Emulator, out: Path, sig: signal.Signals) -> int:
    """Start a slow pull, send ``sig`` once some files are done; returns the exit code."""
    emulator.knobs.bandwidth = 40_000  # about 0.3 s per file: the pull takes seconds
    child = _spawn(_fetch_argv(emulator, out, "--connections", "1"))
    deadline = time.monotonic() + 20
    while len(_files(out)) < 2:
        assert time.monotonic() < deadline, "no file arrived"
        time.sleep(0.05)
    child.kill(sig)
    child.expect(pexpect.EOF)
    child.close()
    assert "interrupted" in ANSI.sub("", child.before or "")
    assert child.signalstatus is None  # it exited by itself, it was not killed
    code: int = child.exitstatus
    return code


def test_ctrl_c_exits_130_and_rerun_resumes(emulator: Emulator, tmp_path: Path) -> None:
    """SIGINT mid-pull exits 130; the rerun completes and leaves finished files untouched."""
    out = tmp_path / "out"
    assert _interrupt_midway(emulator, out, signal.SIGINT) == 130
    before = _files(out)
    assert 2 <= len(before) < 12
    emulator.knobs.bandwidth = None
    proc = subprocess.run([EXE, *_fetch_argv(emulator, out)], env=_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    after = _files(out)
    assert len(after) == 12
    for name, ident in before.items():
        assert after[name] == ident, f"{name} was downloaded again"


def test_sigterm_exits_143(emulator: Emulator, tmp_path: Path) -> None:
    """SIGTERM mid-pull exits 143 after saving state: the store lists as done exactly the
    files on disk (test_signals checks the part files and the resume)."""
    out = tmp_path / "out"
    assert _interrupt_midway(emulator, out, signal.SIGTERM) == 143
    with contextlib.closing(sqlite3.connect(out / ".asyncjsoc" / "state.sqlite")) as db:
        done = {r for (r,) in db.execute("SELECT relpath FROM files WHERE state = 'done'")}
    assert done
    assert done == set(_files(out))


def test_demo_quick_in_a_terminal(tmp_path: Path) -> None:
    """The demo pulls from its in-process emulator with the live display and exits 0."""
    child = _spawn(["demo", "--quick", "--out", str(tmp_path / "demo")])
    child.expect("asyncjsoc demo")
    child.expect("asyncjsoc summary")
    child.expect("real JSOC")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert _files(tmp_path / "demo")


def _limit_file_size() -> None:
    """In the child: no file may grow past 1 MiB (writes beyond fail with EFBIG, like ENOSPC)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def test_a_disk_that_refuses_writes_stops_the_pull_with_one_clear_error(
        emulator: Emulator, tmp_path: Path) -> None:
    """A local write error is reported as such (not as a network error), then resumed."""
    emulator.knobs.file_size = 700 * 2880  # ~2 MB: streamed, and over the child's file limit
    out = tmp_path / "out"
    proc = subprocess.run([EXE, *_fetch_argv(emulator, out)], env=_env(), capture_output=True,
                          text=True, timeout=60, check=False, preexec_fn=_limit_file_size)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "cannot write" in proc.stderr
    assert "network" not in proc.stderr
    assert "free some space" in proc.stderr
    assert _files(out) == {}  # nothing half-written under a final name
    assert emulator.audit.count("file") <= 4  # it stopped at once instead of trying every file
    proc = subprocess.run([EXE, *_fetch_argv(emulator, out)], env=_env(), capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert len(_files(out)) == 12
