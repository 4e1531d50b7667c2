"""Bad input through the CLI: one line on stderr, exit 2, no traceback, nothing written."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from anyio.from_thread import start_blocking_portal

from asyncjsoc.cli import EXIT_OK, EXIT_USAGE, main
from asyncjsoc.emulator import Emulator, Knobs, run_emulator

EMAIL = "alice@example.org"
PENDING = "pat@example.org"
UNKNOWN = "uma@example.org"
RS = "hmi.sharp_cea_720s[7302][2018.09.06_00:00:00_TAI]{Br}"
FAST = ("--poll-min", "0.02", "--rate-limit", "500", "--no-retry-wait", "--no-progress")


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    """One emulator for the module (every case here is refused before any export)."""
    knobs = Knobs(export_delay=0.05, file_size=4 * 2880, seed=1, pending_emails={PENDING},
                  unknown_emails={UNKNOWN})  # fmt: skip
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(
        run_emulator(knobs)
    ) as running:
        yield running


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ambient ASYNCJSOC_* settings."""
    for name in ("ASYNCJSOC_SERVER", "ASYNCJSOC_EMAILS", "CI"):
        monkeypatch.delenv(name, raising=False)


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with a digest of its bytes (directories as 'dir')."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        key = p.relative_to(root).as_posix()
        out[key] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def refused(argv: list[str], root: Path, capsys: pytest.CaptureFixture[str],
            *needles: str) -> str:  # fmt: skip
    """Run the CLI; assert exit 2, one stderr line with ``needles``, and ``root`` unchanged."""
    before = snapshot(root)
    code = main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == EXIT_USAGE, captured.err
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("asyncjsoc: error: ")
    assert "Traceback" not in captured.err
    assert captured.out == ""
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert snapshot(root) == before, "bad input must not write anything"
    return lines[0]


def fetch(emu: Emulator, out: Path, *selection: str, email: str = EMAIL) -> list[str]:
    """fetch argv against the emulator."""
    return ["fetch", *selection, "--server", emu.url, "--email", email, "--out", str(out), *FAST]


@pytest.mark.parametrize(
    ("selection", "needles"),
    [
        (["hmi.sharp_cea_720s[7302][2018.09.06"], ("position 24",)),
        (["hmi.sharp_cea_720s[7302]]"], ("position",)),
        (["hmi.sharp_cea_720s[7302]{Br"], ("position",)),
        (["hmi.nope[2018.09.06]"], ("hmi.nope",)),
        (["hmi.sharp_cea_720s[7302][2018.09.06_00:00_TAI]{Nope}"], ("Nope", "segments are")),
        (["hmi.sharp_cea_720s[7302][2018.09.07_00:00_TAI-2018.09.06_00:00_TAI]"],
         ("backwards",)),
        (["hmi.sharp_cea_720s[7310-7300][2018.09.06_00:00_TAI]"], ("backwards",)),
        (["--series", "hmi.sharp_cea_720s", "--start", "2018.09.07", "--end", "2018.09.06"],
         ("after end",)),
        (["--series", "hmi.sharp_cea_720s", "--start", "2018.09.06", "--end", "2018.09.07",
          "--cadence", "fast"], ("cadence", "fast")),
        (["--series", "hmi.sharp_cea_720s", "--start", "2018.09.06", "--end", "2018.09.07",
          "--cadence", "0m"], ("0m",)),
        (["--series", "hmi.sharp_cea_720s", "--start", "yesterday", "--end", "2018.09.07"],
         ("yesterday",)),
        ([RS, "--series", "hmi.m_45s"], ("--series",)),
        ([RS, "--start", "2018.09.06"], ("--start",)),
    ],
)
def test_bad_selection(emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                       selection: list[str], needles: tuple[str, ...]) -> None:  # fmt: skip
    """Malformed record sets, unknown series/segments, backwards ranges, bad cadences."""
    refused(fetch(emu, tmp_path / "out", *selection), tmp_path, capsys, *needles)


def test_job_file_bad_line_names_its_number(
    emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad job-file line is reported as path:line."""
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("# HARPs\n7302.20180906_000000_TAI\n\n7302.2018-09-06\n")
    refused(fetch(emu, tmp_path / "out", "--jobs", str(jobs)), tmp_path, capsys,
            "jobs.txt:4", "7302.2018-09-06")  # fmt: skip


@pytest.mark.parametrize(("email", "needles"), [
    (UNKNOWN, ("u***@example.org", "neither validated")),
    (PENDING, ("p***@example.org", "pending")),
    ("not-an-email", ("not an email address",)),
    ("a@b", ("not an email address",)),
])  # fmt: skip
def test_unusable_emails(emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                         email: str, needles: tuple[str, ...]) -> None:  # fmt: skip
    """Unregistered, pending and malformed addresses: one masked line, nothing written."""
    line = refused(fetch(emu, tmp_path / "out", RS, email=email), tmp_path, capsys, *needles)
    if "@example.org" in email:
        assert email not in line


def test_out_dir_under_a_regular_file(emu: Emulator, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """--out below a regular file cannot be created (works even as root)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    refused(fetch(emu, blocker / "out", RS), tmp_path, capsys, "cannot create --out")


def test_out_dir_that_is_a_regular_file(emu: Emulator, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """--out naming an existing file says so; the file is left as it was."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    refused(fetch(emu, blocker, RS), tmp_path, capsys, "is a file, not a directory")
    assert blocker.read_text() == "x"


def test_state_from_another_query_is_left_alone(
    emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second, different query into the same --out: exit 2, the state and files untouched."""
    out = tmp_path / "out"
    assert main(fetch(emu, out, RS)) == EXIT_OK
    capsys.readouterr()
    other = "hmi.sharp_cea_720s[7302][2018.09.06_00:12:00_TAI]{Br}"
    refused(fetch(emu, out, other), tmp_path, capsys, "different pull", "--state")


def test_out_dir_that_existed_keeps_no_state(
    emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing, empty --out stays empty when the server rejects the query."""
    out = tmp_path / "out"
    out.mkdir()
    refused(fetch(emu, out, "hmi.nope[2018.09.06]"), tmp_path, capsys, "hmi.nope")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("state", ["", " ", "{tmp}", "{tmp}/somedir/"])
def test_state_that_is_not_a_file_path(emu: Emulator, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str], state: str) -> None:
    """--state must name a file: an empty value or a directory is a usage error, at once."""
    before = snapshot(tmp_path)
    argv = [*fetch(emu, tmp_path / "out", RS), "--state", state.format(tmp=tmp_path)]
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--state" in err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_state_where_a_file_blocks_its_directory(
    emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A state file whose directory cannot be made: one line saying what is in the way and
    what to do; the output directory this run created is gone again."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    before = snapshot(tmp_path)
    code = main([*fetch(emu, tmp_path / "out", RS), "--state", str(blocker / "state.sqlite")])
    err = capsys.readouterr().err
    assert code != EXIT_OK
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "cannot create the state lock" in lines[0]
    assert "move it away" in lines[0]
    assert "Errno" not in lines[0]
    assert snapshot(tmp_path) == before
