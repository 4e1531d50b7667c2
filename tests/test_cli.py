"""The command line, run in-process with ``main(argv)`` against the emulator."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from anyio.from_thread import start_blocking_portal

from asyncjsoc import cli
from asyncjsoc.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main, url_tar_hint
from asyncjsoc.emulator import Emulator, Knobs, run_emulator

EMAIL = "alice@example.org"
EMAIL2 = "bob@example.org"
# Two HARP 7302 records (96 min apart) with three segments each: six small files.
RS = "hmi.sharp_cea_720s[7302][2018.09.06_00:00:00_TAI-2018.09.06_01:36:00_TAI@96m]{Bp,Bt,Br}"


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """The emulator on its own event loop in a thread, with fast exports and small files."""
    knobs = Knobs(export_delay=0.05, file_size=4 * 2880, seed=1)
    with start_blocking_portal() as portal:
        cm = portal.wrap_async_context_manager(run_emulator(knobs))
        with cm as emu:
            yield emu


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ambient ASYNCJSOC_* or CI settings leak into a test."""
    for name in ("ASYNCJSOC_SERVER", "ASYNCJSOC_EMAILS", "CI"):
        monkeypatch.delenv(name, raising=False)


def _fetch_args(emu: Emulator, out: Path, *extra: str) -> list[str]:
    """Common fetch options against the emulator."""
    return ["fetch", "--server", emu.url, "--email", EMAIL, "--out", str(out), *extra]


def _one_line_error(err: str, *needles: str) -> None:
    """stderr is exactly one 'asyncjsoc: error:' line containing every needle."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert "error:" in lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# --- usage errors (no server needed) -------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["fetch", RS, "--jobs", "x.txt", "--email", EMAIL, "--out", "o"],
         ("--jobs", "together")),
        (["fetch", RS, "--series", "hmi.m_45s", "--email", EMAIL, "--out", "o"],
         ("--series", "record set")),
        (["fetch", "--series", "hmi.sharp_cea_720s", "--start", "2018.09.06",
          "--email", EMAIL, "--out", "o"], ("--end",)),
        (["fetch", "--email", EMAIL, "--out", "o"], ("nothing selected", "--jobs FILE")),
        # An example address in a hint would be masked like a real one: a placeholder.
        (["fetch", RS, "--out", "o"], ("no notify email", "--email ADDRESS")),
        (["fetch", RS, "--email", EMAIL, "--out", "o", "--primekey", "HARPNUM"],
         ("KEY=VALUE",)),
        (["fetch", "--jobs", "does-not-exist.txt", "--email", EMAIL, "--out", "o"],
         ("does-not-exist.txt", "does not exist")),
        (["fetch", "--series", "hmi.sharp_cea_720s", "--start", "2018.09.06", "--end",
          "2018.09.07", "--primekey", "T_REC=2018.09.06", "--email", EMAIL, "--out", "o"],
         ("T_REC is the time key", "--start/--end")),
        (["fetch", "--series", "hmi.sharp_cea_720s", "--start", "2018.09.06", "--end",
          "2018.09.07", "--cadence", "12x", "--email", EMAIL, "--out", "o"],
         ("'12x'", "--cadence")),
        (["fetch", "--jobs", ".", "--email", EMAIL, "--out", "o"],
         ("job file '.'", "is not a regular file")),
        (["fetch", RS, "--email", EMAIL, "--out", "o", "--server", "jsoc.stanford.edu"],
         ("http(s) URL",)),
        (["check-email"], ("no address", "check-email ADDRESS")),
        (["fetch", RS, "--email", EMAIL, "--out", ""], ("--out", "an empty path")),
        (["fetch", RS, "--email", EMAIL, "--out", "o", "--connections", "100000"],
         ("connections must be at most 64",)),
        (["fetch", RS, "--email", EMAIL, "--out", "o", "--rate-limit", "1e-300"],
         ("requests_per_second must be at least",)),
        (["fetch", RS, "--email", EMAIL, "--out", "o", "--server", "http://[::1"],
         ("http(s) URL",)),
        (["fetch", RS, "--email", EMAIL, "--out", "o", "--server", "http://127.0.0.1:99999"],
         ("http(s) URL",)),
        (["fetch", RS, "--email", EMAIL, "--out", "o" * 5000], ("cannot use --out",)),
        (["fetch", "--series", "hmi.sharp_cea_720s", "--start", "2018.09.06", "--end",
          "2018.09.07", "--primekey", "HARPNUM=7302", "--primekey", "harpnum=7310",
          "--email", EMAIL, "--out", "o"], ("--primekey harpnum", "given twice")),
        (["fetch", "--series", "hmi.sharp_cea_720s", "--start", "2018.09.06", "--end",
          "2018.09.07", "--primekey", "HARPNUM=7310-7300", "--email", EMAIL, "--out", "o"],
         ("7310-7300", "runs backwards")),
    ],
)
def test_usage_errors_are_one_line_exit_2(
    argv: list[str], needles: tuple[str, ...], capsys: pytest.CaptureFixture[str],
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Conflicting or missing options give one clear line and exit code 2."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    _one_line_error(captured.err, *needles)


def test_argparse_errors_exit_2_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Unknown options and bad values are argparse errors: one line, exit 2."""
    assert main(["fetch", RS, "--connections", "zero", "--out", "o"]) == EXIT_USAGE
    _one_line_error(capsys.readouterr().err, "--connections", "not a whole number")
    assert main(["fetch", RS, "--out", "o", "--bogus"]) == EXIT_USAGE
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    assert main(["--help"]) == EXIT_OK


def test_version_names_asyncjsoc_aiohttp_and_python(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints one line with the versions a bug report needs, exit 0."""
    import platform

    import aiohttp

    import asyncjsoc

    assert main(["--version"]) == EXIT_OK
    out = capsys.readouterr().out
    assert out == (f"asyncjsoc {asyncjsoc.__version__} (aiohttp {aiohttp.__version__}, "
                   f"Python {platform.python_version()})\n")


def test_malformed_recordset_names_position(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A record set that does not parse is reported with its position, exit 2."""
    assert main(["fetch", "hmi.sharp_cea_720s[7302", "--email", EMAIL,
                 "--out", str(tmp_path)]) == EXIT_USAGE
    _one_line_error(capsys.readouterr().err, "position")


def test_bad_job_line_names_line_number(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A bad job-file line is reported with its number, exit 2."""
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("7302.20180906_000000_TAI\nnot a job line\n")
    assert main(["fetch", "--jobs", str(jobs), "--email", EMAIL,
                 "--out", str(tmp_path / "o")]) == EXIT_USAGE
    _one_line_error(capsys.readouterr().err, "jobs.txt:2")


def test_unwritable_out(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """An --out that cannot be created (a file is in the way) is one line, exit 2."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["fetch", RS, "--email", EMAIL, "--out", str(blocker / "sub")]) == EXIT_USAGE
    _one_line_error(capsys.readouterr().err, "--out", "writ")


def test_bad_email_is_masked(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A malformed address is refused in one line, masked like any other."""
    assert main(["fetch", RS, "--email", "not-an-address", "--out", str(tmp_path)]) == EXIT_USAGE
    _one_line_error(capsys.readouterr().err, "email")
    assert main(["fetch", RS, "--email", "secret@localhost", "--out", str(tmp_path)]) \
        == EXIT_USAGE
    err = capsys.readouterr().err
    _one_line_error(err, "email", "@localhost")
    assert "secret" not in err


# --- against the emulator ------------------------------------------------------------------

FAST = ("--poll-min", "0.02", "--rate-limit", "500", "--no-retry-wait")


def _files(out: Path) -> list[str]:
    """Finished data files under ``out`` (state files left out), sorted."""
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*.fits")
                  if ".asyncjsoc" not in p.parts)


def _json(out: str) -> dict[str, Any]:
    """stdout must be exactly one JSON object."""
    doc = json.loads(out)
    assert isinstance(doc, dict)
    return doc


def test_fetch_recordset_json_shape(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record-set fetch exits 0, writes the files, and --json has the documented shape."""
    out = tmp_path / "out"
    argv = _fetch_args(emulator, out, RS, "--email", EMAIL2, "--max-files-per-export", "3",
                       "--json", *FAST)
    assert main(argv) == EXIT_OK
    captured = capsys.readouterr()
    doc = _json(captured.out)
    assert set(doc) == {"ok", "files", "failed", "exports"}
    assert doc["ok"] is True
    assert doc["failed"] == []
    assert sorted(f["path"] for f in doc["files"]) == _files(out)
    assert len(doc["files"]) == 6
    for f in doc["files"]:
        assert f["bytes"] == (out / f["path"]).stat().st_size
        (served,) = [k for k in emulator.audit.file_stats if k.endswith("/" + f["path"])]
        assert (out / f["path"]).read_bytes() == emulator.file_bytes(served)
        assert f["record"].startswith("hmi.sharp_cea_720s[7302][2018.09.06_")
    assert len(doc["exports"]) == 2
    # Emails are masked in the document too (it often ends up in logs), unless --debug.
    assert {e["email"] for e in doc["exports"]} == {"a***@example.org", "b***@example.org"}
    assert all(e["requestid"].startswith("JSOC_") and e["status"] == 0 for e in doc["exports"])
    # Each address is asked about once: the check before planning serves the pull too.
    # (The address travels encoded twice, as drms sends it; the audit undoes one.)
    asked = [unquote(e.params["address"]) for e in emulator.audit.requests("checkAddress.sh")]
    assert sorted(asked) == sorted([EMAIL, EMAIL2])
    # Human output went to stderr only, with masked addresses.
    assert "a***@example.org" in captured.err
    assert EMAIL not in captured.err

    # A rerun finds everything done: exit 0, no file written again.
    stamps = {n: (out / n).stat().st_mtime_ns for n in _files(out)}
    assert main(argv) == EXIT_OK
    again = _json(capsys.readouterr().out)
    assert again["ok"] is True
    assert again["failed"] == []
    assert {n: (out / n).stat().st_mtime_ns for n in _files(out)} == stamps


def test_fetch_job_file(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--jobs with --segments fetches exactly the listed records' segments."""
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("# two SHARP records\n7302.20180906_000000_TAI\n7302.20180906_013600_TAI\n")
    out = tmp_path / "out"
    assert main(_fetch_args(emulator, out, "--jobs", str(jobs), "--segments", "Br",
                            "--json", *FAST)) == EXIT_OK
    doc = _json(capsys.readouterr().out)
    assert _files(out) == [
        "hmi.sharp_cea_720s.7302.20180906_000000_TAI.Br.fits",
        "hmi.sharp_cea_720s.7302.20180906_013600_TAI.Br.fits",
    ]
    assert len(doc["files"]) == 2


def test_fetch_built_query(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--series/--start/--end/--cadence/--primekey/--segments build the expected pull."""
    out = tmp_path / "out"
    assert main(_fetch_args(
        emulator, out, "--series", "hmi.sharp_cea_720s", "--start", "2018.09.06_00:00:00_TAI",
        "--end", "2018.09.06_03:12:00_TAI", "--cadence", "96m", "--primekey", "HARPNUM=7302",
        "--segments", "Bp,Br", *FAST)) == EXIT_OK
    capsys.readouterr()
    # 00:00, 01:36 and 03:12 (both ends included, every 96 min) x 2 segments, HARP 7302
    assert _files(out) == sorted(
        f"hmi.sharp_cea_720s.7302.20180906_{t}_TAI.{seg}.fits"
        for t in ("000000", "013600", "031200") for seg in ("Bp", "Br"))


def test_plan_json_and_text(emulator: Emulator, capsys: pytest.CaptureFixture[str],
                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """plan counts records and files and exports nothing; it writes no state anywhere."""
    monkeypatch.chdir(tmp_path)
    argv = ["plan", RS, "--server", emulator.url, "--max-files-per-export", "3"]
    assert main([*argv, "--json"]) == EXIT_OK
    doc = _json(capsys.readouterr().out)
    (plan,) = doc["plans"]
    assert plan["records"] == 2
    assert plan["files"] == 6
    assert len(plan["chunks"]) == 2
    assert sum(c["files"] for c in plan["chunks"]) == 6
    assert main(argv) == EXIT_OK
    text = capsys.readouterr().out
    assert "records:  2" in text
    assert "files:    6" in text
    assert list(tmp_path.iterdir()) == []
    assert not [e for e in emulator.audit.entries if e.op == "jsoc_fetch/exp_request"]


def test_plan_sends_an_index_step_as_written(emulator: Emulator,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """``[7300-7310@2]`` (every 2nd HARP number, DRMS's skip) reaches the server as written
    and is counted there; it was sent as ``@2s`` and refused."""
    rs = "hmi.sharp_cea_720s[7300-7310@2][2018.09.08_00:00_TAI/2h]{Br}"
    assert main(["plan", rs, "--server", emulator.url, "--json"]) == EXIT_OK
    (plan,) = _json(capsys.readouterr().out)["plans"]
    sent = {e.params.get("ds") for e in emulator.audit.entries if e.op == "jsoc_info/rs_summary"}
    assert sent
    assert all("[7300-7310@2]" in ds for ds in sent if ds)
    assert plan["records"] > 0


@pytest.mark.parametrize("rs", ["hmi.M_45s[#13300000-#13300002]",
                                "hmi.M_45s[:#4994397-#4994398]"])
def test_plan_reads_drms_index_forms(emulator: Emulator, capsys: pytest.CaptureFixture[str],
                                     rs: str) -> None:
    """Slot indices and record numbers with '#' are planned (the server counts them)."""
    assert main(["plan", rs, "--server", emulator.url, "--json"]) == EXIT_OK
    (plan,) = _json(capsys.readouterr().out)["plans"]
    assert plan["records"] >= 2


@pytest.mark.parametrize("rs", ["hmi.sharp_cea_720s[7302][#1125720-#1125840]{Br}",
                                "hmi.M_45s[:#12147285-#12147400]"])
def test_an_index_range_over_the_cap_says_what_to_do(
        emulator: Emulator, capsys: pytest.CaptureFixture[str], rs: str) -> None:
    """Slot-index and record-number ranges are not cut: over the cap, the hint says so
    (it said to add a time range, which the slot range already is)."""
    assert main(["plan", rs, "--server", emulator.url, "--max-files-per-export", "50"]) \
        == EXIT_USAGE
    err = capsys.readouterr().err
    assert "nothing left to split along" in err
    assert "slot indices (#n) and record numbers ([:#n]) are not cut" in err


def test_plan_and_fetch_say_when_the_query_matches_nothing(
    emulator: Emulator, capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    """A query that matches no records (a HARP number with no data) still exits 0, and both
    commands say so and what to check, instead of only counting zeros."""
    empty = "hmi.sharp_cea_720s[99999][2018.09.06_00:00:00_TAI/3h]"
    assert main(["plan", empty, "--server", emulator.url]) == EXIT_OK
    text = capsys.readouterr().out
    assert "records:  0" in text
    assert "size:     nothing to fetch" in text
    assert "estimated" not in text
    assert "matches no records" in text
    out = tmp_path / "out"
    assert main(_fetch_args(emulator, out, empty, "--no-progress", *FAST)) == EXIT_OK
    err = capsys.readouterr().err
    assert "matches no records" in err
    assert _files(out) == []
    assert not [e for e in emulator.audit.entries if e.op == "jsoc_fetch/exp_request"]


def test_check_email(emulator: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    """check-email exits 0 only when every address is registered; output is masked."""
    emulator.knobs.unknown_emails.add("nobody@example.org")
    assert main(["check-email", EMAIL, "--server", emulator.url]) == EXIT_OK
    assert capsys.readouterr().out == "a***@example.org: registered\n"
    assert main(["check-email", EMAIL, "nobody@example.org", "--server", emulator.url]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "a***@example.org: registered"
    assert out[1].startswith("n***@example.org: NOT registered")
    assert "register_email" in out[1]


def test_env_vars_supply_server_and_emails(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ASYNCJSOC_SERVER and ASYNCJSOC_EMAILS (comma-separated) are the defaults."""
    monkeypatch.setenv("ASYNCJSOC_SERVER", emulator.url)
    monkeypatch.setenv("ASYNCJSOC_EMAILS", f"{EMAIL}, {EMAIL2}")
    assert main(["check-email"]) == EXIT_OK
    assert capsys.readouterr().out.count("registered") == 2
    out = tmp_path / "out"
    assert main(["fetch", RS, "--out", str(out), "--json", *FAST]) == EXIT_OK
    assert len(_json(capsys.readouterr().out)["files"]) == 6


def test_failed_export_exits_1_with_reason(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """When the JSOC fails the export, exit 1 and the summary and JSON say which and why."""
    emulator.knobs.export_failure_rate = 1.0
    assert main(_fetch_args(emulator, tmp_path / "out", RS, "--json", *FAST)) == EXIT_FAILED
    captured = capsys.readouterr()
    doc = _json(captured.out)
    assert doc["ok"] is False
    assert doc["files"] == []
    assert doc["failed"]
    assert all(f["error"] for f in doc["failed"])
    assert "FAILED" in captured.err
    assert "rerun the same command" in captured.err
    assert "Traceback" not in captured.err


def test_unknown_series_one_line(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown series is one line, exit 2; with --json stdout holds the one object, the
    error in it."""
    code = main(_fetch_args(emulator, tmp_path / "out", "hmi.no_such_series[2018.09.06]",
                            "--json", *FAST))
    captured = capsys.readouterr()
    assert code == EXIT_USAGE
    _one_line_error(_last_line(captured.err), "hmi.no_such_series")
    doc = json.loads(captured.out)
    assert doc["ok"] is False
    assert "hmi.no_such_series" in doc["error"]


def test_debug_shows_the_traceback_and_keeps_the_exit_code(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--debug adds the traceback; the exit code stays that of the error (2 for bad input)."""
    code = main(_fetch_args(emulator, tmp_path / "out", "hmi.no_such_series[2018.09.06]",
                            "--debug", *FAST))
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert "Traceback" in err
    assert "hmi.no_such_series" in err.splitlines()[-1]


def test_a_huge_argument_gives_a_short_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An error quoting a 100 kB argument is cut to a readable line."""
    assert main(["plan", "a" * 100_000, "--server", "http://127.0.0.1:1"]) == EXIT_USAGE
    err = capsys.readouterr().err
    _one_line_error(err)
    assert len(err) < 1000


def _last_line(err: str) -> str:
    """The last non-empty line (plain progress lines may come before the error)."""
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.strip()][-1]


def test_unregistered_email_one_line(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unregistered notify address stops the fetch with one masked line, exit 2."""
    emulator.knobs.unknown_emails.add(EMAIL)
    code = main(_fetch_args(emulator, tmp_path / "out", RS, *FAST))
    captured = capsys.readouterr()
    assert code == EXIT_USAGE, captured.err
    last = _last_line(captured.err)
    assert "error:" in last
    assert "a***@example.org" in last
    assert EMAIL not in captured.err


def test_unreachable_server_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                     ) -> None:
    """Nothing listening on --server: one line naming the server, exit 1, no traceback."""
    code = main(["plan", RS, "--server", "http://127.0.0.1:9", "--no-retry-wait"])
    captured = capsys.readouterr()
    assert code == EXIT_FAILED
    _one_line_error(captured.err, "127.0.0.1:9")


def test_unreachable_server_leaves_no_empty_output_tree(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """fetch into a new --out against a server that is not there: exit 1, and the
    directories it made for the pull are gone again; an --out that was there stays."""
    out = tmp_path / "new" / "out"
    args = ["fetch", RS, "--server", "http://127.0.0.1:9", "--no-retry-wait",
            "--email", EMAIL, "--no-progress"]
    assert main([*args, "--out", str(out)]) == EXIT_FAILED
    _one_line_error(capsys.readouterr().err, "127.0.0.1:9")
    assert list(tmp_path.iterdir()) == []
    existing = tmp_path / "existing"
    existing.mkdir()
    assert main([*args, "--out", str(existing)]) == EXIT_FAILED
    assert existing.is_dir()
    # A state a run left stays for its rerun, with the tree that holds it.
    kept = tmp_path / "kept"
    state = kept / ".asyncjsoc" / "state.sqlite"
    state.parent.mkdir(parents=True)
    state.write_bytes(b"")
    assert main([*args, "--out", str(kept / "sub"), "--state", str(state)]) == EXIT_FAILED
    assert state.is_file()


def test_series_lists_names(emulator: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    """series REGEX prints matching names, one per line (the hint for unknown series)."""
    assert main(["series", "^hmi.sharp", "--server", emulator.url]) == EXIT_OK
    names = capsys.readouterr().out.split()
    assert "hmi.sharp_cea_720s" in names
    assert all(n.lower().startswith("hmi.sharp") for n in names)
    # No match: says so on stderr (before: exit 1 and no word), nothing on stdout.
    assert main(["series", "^zzzz", "--server", emulator.url]) == EXIT_FAILED
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no series matches '^zzzz'" in captured.err


def test_check_email_json_is_masked(emulator: Emulator,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """--json masks addresses like the text output (both in full only with --debug)."""
    assert main(["check-email", EMAIL, "--server", emulator.url, "--json"]) == EXIT_OK
    out = capsys.readouterr().out
    assert EMAIL not in out
    assert json.loads(out)["emails"][0]["email"] == "a***@example.org"
    assert main(["check-email", EMAIL, "--server", emulator.url, "--json",
                 "--debug"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["emails"][0]["email"] == EMAIL


def test_demo_quick_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo runs its own emulator and pulls SHARP Bp/Bt/Br; --json is one object."""
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--no-progress", "--json", "--out", str(out)]) == EXIT_OK
    captured = capsys.readouterr()
    doc = _json(captured.out)
    assert doc["ok"] is True
    assert sorted(f["path"] for f in doc["files"]) == _files(out)
    assert {p.rsplit(".", 2)[-2] for p in _files(out)} == {"Bp", "Bt", "Br"}
    assert len({e["email"] for e in doc["exports"]}) == 2
    assert "real JSOC" in captured.err


def test_state_option_and_tar_method(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--state puts the state file where asked; --method url-tar fetches one tar per export."""
    out = tmp_path / "out"
    state = tmp_path / "elsewhere" / "state.sqlite"
    assert main(_fetch_args(emulator, out, RS, "--method", "url-tar", "--state", str(state),
                            "--json", *FAST)) == EXIT_OK
    doc = _json(capsys.readouterr().out)
    assert state.is_file()
    assert not (out / ".asyncjsoc" / "state.sqlite").exists()
    assert [f["path"].endswith(".tar") for f in doc["files"]] == [True]


@pytest.mark.parametrize(
    ("n_files", "method", "rate", "expected"),
    [
        (20_000, "url", 5.0, "20,000 files take at least 1 h 7 min of file requests at 5 "
                             "requests/s"),
        (3_000, "url_quick", 5.0, "3,000 files take at least 10 min"),
        (2_999, "url", 5.0, None),  # just under 10 minutes of requests
        (20_000, "url-tar", 5.0, None),  # already one request per export
        (20_000, "url", 0.0, None),  # no rate limit
        (20_000, "url", float("inf"), None),
        (20_000, "url", 40.0, None),  # 8 min 20 s at this rate
    ],
)
def test_url_tar_hint_when_file_requests_alone_take_long(
        n_files: int, method: str, rate: float, expected: str | None) -> None:
    hint = url_tar_hint(n_files, method, rate)
    if expected is None:
        assert hint is None
    else:
        assert hint is not None
        assert expected in hint
        assert "--method url-tar --extract" in hint


@pytest.mark.parametrize("method", ["url", "url-tar"])
def test_fetch_shows_the_url_tar_hint_once_unless_tar(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, method: str,
) -> None:
    """A plan whose file requests take long at the rate limit gets one hint line on stderr."""
    monkeypatch.setattr(cli, "SLOW_REQUESTS_S", 0.01)  # 6 files at 500/s: 0.012 s
    out = tmp_path / "out"
    assert main(_fetch_args(emulator, out, RS, "--method", method, *FAST)) == EXIT_OK
    hints = [line for line in capsys.readouterr().err.splitlines() if "hint:" in line]
    if method == "url-tar":
        assert hints == []
    else:
        assert len(hints) == 1
        assert "6 files take at least 0 min of file requests at 500 requests/s" in hints[0]


@pytest.mark.parametrize("method", ["url", "url-tar"])
def test_plan_text_shows_the_url_tar_hint(
    emulator: Emulator, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    method: str,
) -> None:
    monkeypatch.setattr(cli, "SLOW_REQUESTS_S", 0.01)  # 6 files at 500/s: 0.012 s
    argv = ["plan", RS, "--server", emulator.url, "--rate-limit", "500", "--method", method]
    assert main(argv) == EXIT_OK
    hints = [line for line in capsys.readouterr().out.splitlines() if line.startswith("hint:")]
    if method == "url-tar":
        assert hints == []
    else:
        assert hints == ["hint:     6 files take at least 0 min of file requests at 500 "
                         "requests/s; --method url-tar --extract fetches one tar per export "
                         "instead (what JSOC staff ask of bulk users)"]


def test_different_query_same_out_is_one_line(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second, different pull into the same --out is refused with a command-line hint."""
    out = tmp_path / "out"
    assert main(_fetch_args(emulator, out, RS, *FAST)) == EXIT_OK
    capsys.readouterr()
    other = "hmi.sharp_cea_720s[7302][2018.09.06_00:00:00_TAI]{Br}"
    assert main(_fetch_args(emulator, out, other, *FAST)) == EXIT_USAGE
    last = _last_line(capsys.readouterr().err)
    assert "different pull" in last
    assert "--state" in last


@pytest.mark.parametrize("no_fsync", [False, True])
def test_no_fsync_option_reaches_the_downloads(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, no_fsync: bool,
) -> None:
    """--no-fsync: the same files, byte for byte, and not one fsync or syncfs; without it,
    some."""
    from asyncjsoc import _durable

    calls: list[int] = []
    real_fsync = os.fsync
    real_load_syncfs = _durable.load_syncfs

    def counting_fsync(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    def counting_load_syncfs() -> _durable.SyncFs | None:
        syncfs = real_load_syncfs()
        if syncfs is None:
            return None
        found = syncfs

        def counting_syncfs(fd: int) -> None:
            calls.append(fd)
            found(fd)

        return counting_syncfs

    monkeypatch.setattr(os, "fsync", counting_fsync)
    monkeypatch.setattr(_durable, "load_syncfs", counting_load_syncfs)
    out = tmp_path / "out"
    extra = ("--no-fsync",) if no_fsync else ()
    assert main(_fetch_args(emulator, out, RS, "--json", *extra, *FAST)) == EXIT_OK
    doc = _json(capsys.readouterr().out)
    assert len(doc["files"]) == 6
    for f in doc["files"]:
        (served,) = [k for k in emulator.audit.file_stats if k.endswith("/" + f["path"])]
        assert (out / f["path"]).read_bytes() == emulator.file_bytes(served)
    assert (len(calls) == 0) is no_fsync


def test_no_checksums_option_skips_the_checksums(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every transfer arrives with one byte flipped: the default run refuses the files (exit 1,
    none under its final name); with --no-checksums they are kept (exit 0), as sent."""
    emulator.knobs.corrupt_rate = 1.0
    out = tmp_path / "checked"
    assert main(_fetch_args(emulator, out, RS, "--json", *FAST)) == EXIT_FAILED
    doc = _json(capsys.readouterr().out)
    assert (len(doc["files"]), len(doc["failed"])) == (0, 6)
    assert _files(out) == []

    out = tmp_path / "unchecked"
    assert main(_fetch_args(emulator, out, RS, "--json", "--no-checksums", *FAST)) == EXIT_OK
    doc = _json(capsys.readouterr().out)
    assert len(doc["files"]) == 6
    for f in doc["files"]:
        (served,) = [k for k in emulator.audit.file_stats if k.endswith("/" + f["path"])]
        kept = (out / f["path"]).read_bytes()
        assert len(kept) == len(emulator.file_bytes(served))
        assert kept != emulator.file_bytes(served)


# --- url-tar unpacking ---------------------------------------------------------------------


def test_url_tar_extract_unpacks_the_same_files_as_url(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fetch --method url-tar --extract leaves in --out the files a url pull gives, byte for
    byte, and deletes the tar; --json lists those files; a rerun fetches and unpacks
    nothing again."""
    from asyncjsoc._verify import check_fits_bytes

    plain = tmp_path / "plain"
    assert main(_fetch_args(emulator, plain, RS, *FAST)) == EXIT_OK
    out = tmp_path / "out"
    argv = _fetch_args(emulator, out, RS, "--method", "url-tar", "--extract", "--json", *FAST)
    assert main(argv) == EXIT_OK
    captured = capsys.readouterr()
    doc = _json(captured.out)
    expected = _files(plain)
    assert len(expected) == 6
    assert _files(out) == expected
    assert sorted(f["path"] for f in doc["files"]) == expected
    assert {f["tar"] for f in doc["files"]} == {f"{doc['exports'][0]['requestid']}.tar"}
    for name in expected:
        body = (out / name).read_bytes()
        assert body == (plain / name).read_bytes()
        assert check_fits_bytes(name, body) is True
    assert not list(out.glob("*.tar"))
    assert "unpacked: 6 files from 1 tar file(s)" in captured.err
    gets = len([e for e in emulator.audit.entries if e.op == "file"])
    assert main(argv) == EXIT_OK
    rerun = capsys.readouterr()
    again = _json(rerun.out)
    assert "unpacked:" not in rerun.err  # nothing was unpacked this time
    assert "1 already present, 0 failed (of 1 planned)" in rerun.err  # one tar, not 6 files
    assert sorted(f["path"] for f in again["files"]) == expected
    assert len([e for e in emulator.audit.entries if e.op == "file"]) == gets
    assert _files(out) == expected


def test_extract_needs_url_tar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--extract with another method is a usage error naming the fix; nothing is created."""
    out = tmp_path / "out"
    assert main(["fetch", RS, "--email", EMAIL, "--out", str(out), "--extract"]) == EXIT_USAGE
    _one_line_error(capsys.readouterr().err, "--extract", "--method url-tar")
    assert not out.exists()


def test_extract_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`asyncjsoc extract` unpacks good tars into --out and reports each; a tar with an
    unsafe member is one error line (exit 1) and the good ones are still unpacked."""
    import io
    import tarfile

    def make(path: Path, members: dict[str, bytes]) -> Path:
        with tarfile.open(path, "w") as tar:
            for name, body in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
        return path

    good = make(tmp_path / "JSOC_1.tar", {"a.txt": b"a", "b/c.txt": b"c"})
    bad = make(tmp_path / "JSOC_2.tar", {"../escape.txt": b"x"})
    out = tmp_path / "out"
    assert main(["extract", str(good), "--out", str(out), "--json"]) == EXIT_OK
    doc = _json(capsys.readouterr().out)
    assert doc["ok"] is True
    assert doc["extracted"][0]["new"] == 2
    assert (out / "b" / "c.txt").read_bytes() == b"c"
    assert main(["extract", str(bad), str(good), "--out", str(out), "--remove"]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "error: cannot extract" in err
    assert "JSOC_2.tar" in err
    assert "'..' component" in err
    assert "extracted JSOC_1.tar: 2 files (2 already there), tar removed" in err
    assert bad.exists()
    assert not good.exists()
    assert not (tmp_path / "escape.txt").exists()


def test_extract_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A directory stands for every tar in it; one without tars is a usage error."""
    import io
    import tarfile

    pulled = tmp_path / "pulled"
    pulled.mkdir()
    for n in (1, 2):
        with tarfile.open(pulled / f"JSOC_{n}.tar", "w") as tar:
            info = tarfile.TarInfo(f"file{n}.txt")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    assert main(["extract", str(pulled)]) == EXIT_OK
    assert sorted(p.name for p in pulled.iterdir()) == [
        "JSOC_1.tar", "JSOC_2.tar", "file1.txt", "file2.txt"]
    capsys.readouterr()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["extract", str(empty)]) == EXIT_USAGE
    _one_line_error(capsys.readouterr().err, "no .tar file", "empty")
    assert main(["extract", str(tmp_path / "missing.tar")]) == EXIT_USAGE
    _one_line_error(capsys.readouterr().err, "no such file or directory", "missing.tar")


def test_quick_export_counts_in_the_closing_line(emulator: Emulator, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """An as-is pull answered at once (url_quick: no request id) is still one export in the
    closing log line, as in the summary table."""
    out = tmp_path / "out"
    args = _fetch_args(emulator, out, RS, "--protocol", "as-is", "--no-progress", *FAST)
    assert main(args) == EXIT_OK
    err = capsys.readouterr().err
    assert [e.params.get("method") for e in emulator.audit.entries
            if e.op == "jsoc_fetch/exp_request"] == ["url_quick"]
    assert "from 1 export(s)" in err


def test_a_run_that_loses_the_lock_to_one_started_at_once_removes_nothing(
        emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Two fetches started at the same moment on a new --out: the one that finds the lock
    taken exits 2 and leaves the other's state, lock and directory alone (it took them for
    its own leftovers, as they did not exist when it started, and deleted them)."""
    from asyncjsoc._store import lock_path, take_lock

    out = tmp_path / "out"
    state = out / ".asyncjsoc" / "state.sqlite"
    real_out_dir = cli._out_dir
    held: list[int] = []

    def the_other_run_takes_the_lock_meanwhile(path: Path) -> Path:
        made = real_out_dir(path)
        held.append(take_lock(lock_path(state), str(out)))
        state.write_bytes(b"the other run's state")
        return made

    monkeypatch.setattr(cli, "_out_dir", the_other_run_takes_the_lock_meanwhile)
    try:
        assert main(_fetch_args(emulator, out, RS, "--no-progress", *FAST)) == EXIT_USAGE
        assert "is using" in capsys.readouterr().err  # (held here: "another Client")
        assert state.read_bytes() == b"the other run's state"
        assert lock_path(state).exists()
    finally:
        for fd in held:
            os.close(fd)


def test_the_write_check_of_out_uses_a_name_of_its_own(tmp_path: Path) -> None:
    """Each run checks that --out is writable with a probe file of its own name, so two runs
    starting at once never delete each other's probe ("cannot write into --out")."""
    out = tmp_path / "out"
    (out / ".asyncjsoc-write-test").mkdir(parents=True)  # in the way of a fixed probe name
    assert cli._out_dir(out) == out
    assert sorted(p.name for p in out.iterdir()) == [".asyncjsoc-write-test"]


def test_extract_beside_another_process_pull_says_so_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`extract DIR` into the output directory of another process's running pull: one
    error line for all its tars (not one per tar), nothing unpacked, exit 2 (as `fetch`
    exits into a directory another run uses)."""
    import io
    import tarfile

    from engine_helpers import output_locked_elsewhere

    pulled = tmp_path / "pulled"
    pulled.mkdir()
    for n in (1, 2, 3):
        with tarfile.open(pulled / f"JSOC_{n}.tar", "w") as tar:
            info = tarfile.TarInfo(f"file{n}.txt")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with output_locked_elsewhere(pulled):
        assert main(["extract", str(pulled), "--json"]) == EXIT_USAGE  # as fetch would
    out, err = capsys.readouterr()
    assert err.count("pull is writing into") == 1
    assert len(json.loads(out)["extracted"]) == 3
    assert sorted(p.name for p in pulled.iterdir()) == [
        ".asyncjsoc", "JSOC_1.tar", "JSOC_2.tar", "JSOC_3.tar"]
