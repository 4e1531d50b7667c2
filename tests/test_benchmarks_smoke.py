"""Smoke test of the benchmark harness: emulator process, one worker, the result writers.

No performance is asserted here (timed unit tests lie); the numbers live in benchmarks/.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the benchmark scripts' modules importable."""
    monkeypatch.syspath_prepend(str(BENCH))


@pytest.mark.usefixtures("bench_modules")
def test_harness_runs_a_contender_and_writes_results(tmp_path: Path) -> None:
    """A raw-aiohttp run against a separate emulator process lands every byte and is audited."""
    from _harness import Emulator, Workdir, stage_urls
    from _report import write_all
    from _scenarios import EMAILS, Ctx, hmi_query

    ctx = Ctx(quick=True, work=Workdir(tmp_path / "work"), available={}, log=lambda _: None)
    ctx.work.root.mkdir()
    with Emulator({"file_size": 2880 * 4, "seed": 9}) as emu:
        pairs = stage_urls(emu, [hmi_query(0, 4)["ds"]], EMAILS[0])
        assert len(pairs) == 4
        urls = tmp_path / "urls.json"
        urls.write_text(json.dumps(pairs))
        row = ctx.run("raw", "raw-aiohttp", emu, urls_file=str(urls), connections=2,
                      expect_files=4)
    assert row["ok"], row
    assert row["files_on_disk"] == 4
    assert row["bytes_on_disk"] == 4 * 2880 * 4
    assert row["audit"]["file_gets"] == 4
    assert row["audit"]["bytes_sent"] == row["bytes_on_disk"]
    assert row["cpu_s"] > 0
    assert row["peak_rss_mb"] > 0

    results = {
        "meta": {"started": "now", "quick": True, "machine": "test", "python": sys.version,
                 "versions": {}, "method_note": "smoke"},
        "scenarios": [{"name": "smoke", "title": "smoke", "rows": [row],
                       "columns": [("label", "contender", ""), ("wall_s", "s", ".2f")],
                       "checks": [{"text": "ran", "pass": True}]}],
    }
    written = write_all(results, tmp_path / "results", "stamp")
    md = (tmp_path / "results" / "latest.md").read_text()
    assert "| raw |" in md
    assert "PASS" in md
    assert json.loads((tmp_path / "results" / "stamp.json").read_text())["scenarios"]
    # The chart needs matplotlib, which only the `bench` extra installs.
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert (tmp_path / "results" / "latest.png" in written) is has_matplotlib


@pytest.mark.usefixtures("bench_modules")
def test_expected_failures_and_broken_runs() -> None:
    """A run failing by design (with its expected error) is healthy; anything else is broken."""
    from _report import markdown, problems
    from _scenarios import derive

    cap = ("over the file cap", "max file limit")
    refused = {"ok": False, "error": "DrmsExportError: Request exceeds max file limit of 5"}
    assert derive("fido", refused, None, cap)["status"] == "FAILED (expected)"
    other = {"ok": False, "error": "ConnectionRefusedError: [Errno 111]"}
    assert derive("fido", other, None, cap)["status"] == "FAILED"
    assert derive("fido", {"ok": True}, None, cap)["status"] == "ok"
    short = derive("aj", {"ok": True, "files_on_disk": 3}, 4)
    assert short["status"] == "FAILED"

    def run(rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """A one-scenario results dict."""
        meta = {"started": "now", "quick": True, "machine": "test", "python": "3",
                "versions": {}, "method_note": "smoke",
                "unavailable": {"curl": "not installed: curl not on PATH",
                                "sunpy": "ImportError: broken", "asyncjsoc-cli": "no exe"}}
        sc = {"name": "s", "title": "s", "rows": rows, "checks": [{"text": "t", "pass": False}]}
        return {"meta": meta, "scenarios": [sc | extra]}

    skipped = {"status": "skipped", "ok": None}
    healthy = run([derive("fido", refused, None, cap), {"label": "a", "status": "ok"},
                   skipped | {"label": "curl", "contender": "curl"}])
    assert problems(healthy) == []
    assert "indicative at quick size" in markdown(healthy)
    assert len(problems(run([derive("fido", other, None, cap)]))) == 1
    assert len(problems(run([short]))) == 1
    assert len(problems(run([skipped | {"label": "f", "contender": "sunpy"}]))) == 1
    assert len(problems(run([skipped | {"label": "c", "contender": "asyncjsoc-cli"}]))) == 1
    assert len(problems(run([], error="RuntimeError: emulator did not start"))) == 1


@pytest.mark.usefixtures("bench_modules")
def test_workdir_defers_removal_to_the_end_of_a_block(tmp_path: Path) -> None:
    """Outside a deferred block a run's output goes at once; inside, only when the block ends."""
    from _harness import Workdir

    work = Workdir(tmp_path / "work")
    first = work.fresh("a")
    work.clean(first)
    assert not first.exists()
    with work.deferred():
        kept = [work.fresh(name) for name in ("b", "c")]
        for path in kept:
            (path / "f.fits").write_bytes(b"x")
            work.clean(path)
        assert all((path / "f.fits").exists() for path in kept)
    assert not any(path.exists() for path in kept)
    assert work.pending is None


@pytest.mark.usefixtures("bench_modules")
def test_a_repeated_row_is_its_median_run_with_the_median_cpu() -> None:
    """The row of a repeated contender: its median-speed run, with CPU per unit of work
    replaced by the median over all runs (not the CPU of the median-speed run)."""
    from _scenarios import _median_run

    runs: list[dict[str, Any]] = [
        {"ok": True, "mb_s": 900.0, "cpu_s_per_gb": 1.5, "label": "a"},
        {"ok": True, "mb_s": 700.0, "cpu_s_per_gb": 1.0, "label": "b"},
        {"ok": True, "mb_s": 1100.0, "cpu_s_per_gb": 0.9, "label": "c"},
        {"ok": True, "mb_s": 800.0, "cpu_s_per_gb": 1.2, "label": "d"},
        {"ok": True, "mb_s": 1000.0, "cpu_s_per_gb": 0.8, "label": "e"},
    ]
    row = _median_run(runs, also="cpu_s_per_gb")
    assert row["label"] == "a"
    assert row["mb_s"] == 900.0
    assert row["cpu_s_per_gb"] == 1.0  # median of 1.5, 1.0, 0.9, 1.2, 0.8; run a had 1.5
    assert row["mb_s_runs"] == [900.0, 700.0, 1100.0, 800.0, 1000.0]
    assert row["cpu_s_per_gb_runs"] == [1.5, 1.0, 0.9, 1.2, 0.8]
    assert runs[0]["cpu_s_per_gb"] == 1.5  # the runs themselves are left as measured
    failed: list[dict[str, Any]] = [*runs, {"ok": False, "mb_s": None, "label": "f"}]
    assert _median_run(failed, also="cpu_s_per_gb")["label"] == "f"
    both = _median_run([r | {"machine_cpu_s_per_gb": 2 * r["cpu_s_per_gb"] + 1} for r in runs],
                       also=("cpu_s_per_gb", "machine_cpu_s_per_gb"))
    assert both["label"] == "a"
    assert both["cpu_s_per_gb"] == 1.0
    assert both["machine_cpu_s_per_gb"] == 3.0  # median of 4.0, 3.0, 2.8, 3.4, 2.6


@pytest.mark.usefixtures("bench_modules")
def test_the_cpu_checked_contenders_run_more_rounds_among_themselves(tmp_path: Path) -> None:
    """``more_of`` contenders run ``more_rounds`` rounds beyond ``repeats``, the others do
    not; every round after the first is shuffled; each row is the median over its runs."""
    from _scenarios import _download_rows

    urls = tmp_path / "urls.json"
    urls.write_text(json.dumps([["http://x/a", "a"], ["http://x/b", "b"]]))
    calls: list[str] = []

    class RecordingCtx:
        """Records each run and gives it a CPU per GB by its order."""

        def run(self, label: str, contender: str, emu: object, **fields: Any) -> dict[str, Any]:
            calls.append(label)
            return {"ok": True, "label": label, "mb_s": 100.0 + len(calls),
                    "cpu_s_per_gb": float(len(calls))}

    class FakeEmulator:
        def __init__(self) -> None:
            self.knobs = {"file_size": 1}

    names = ["asyncjsoc", "raw-aiohttp", "drms (serial)", "parfive-default"]
    rows = _download_rows(RecordingCtx(), FakeEmulator(), urls, {"ds": "x"},  # type: ignore[arg-type]
                          conns=2, suffix="", contenders=names, repeats=2, more_rounds=3,
                          more_of=("asyncjsoc", "drms (serial)", "not running here"))
    counts = {name: calls.count(name) for name in names}
    assert counts == {"asyncjsoc": 5, "raw-aiohttp": 2, "drms (serial)": 5,
                      "parfive-default": 2}
    assert calls[:4] == names  # the first round in the given order
    assert set(calls[8:]) == {"asyncjsoc", "drms (serial)"}  # the extra rounds
    by_label = {r["label"]: r for r in rows}
    aj = by_label["asyncjsoc"]
    order = [i + 1 for i, label in enumerate(calls) if label == "asyncjsoc"]  # run numbers
    assert aj["cpu_s_per_gb_runs"] == [float(i) for i in order]
    assert aj["cpu_s_per_gb"] == float(order[2])  # the median over all five runs
    # MB/s is compared over the rounds every contender ran: the row is one of those two runs.
    assert aj["mb_s_runs"] == [100.0 + order[0], 100.0 + order[1]]
    assert aj["mb_s"] == 100.0 + order[0]
    assert len(by_label["raw-aiohttp"]["cpu_s_per_gb_runs"]) == 2


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads /proc (Linux)")
@pytest.mark.usefixtures("bench_modules")
def test_machine_and_process_cpu_readers_see_this_process_work() -> None:
    """The write-back accounting reads /proc: busy CPU of the machine and of one process
    both grow by at least what this process spends spinning."""
    import os
    import resource

    from _measure import machine_cpu_s, process_cpu_s

    machine0, mine0 = machine_cpu_s(), process_cpu_s(os.getpid())
    assert machine0 is not None
    assert mine0 is not None
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    spent = 0.0
    while spent < 0.3:  # spin until the kernel has charged 0.3 s of CPU to us
        ru = resource.getrusage(resource.RUSAGE_SELF)
        spent = (ru.ru_utime + ru.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    machine1, mine1 = machine_cpu_s(), process_cpu_s(os.getpid())
    assert machine1 is not None
    assert mine1 is not None
    # /proc counts in clock ticks (10 ms at 100 Hz): allow two ticks of rounding each way.
    assert mine1 - mine0 >= spent - 0.02
    assert machine1 - machine0 >= spent - 0.02
    assert process_cpu_s(2**22 + 12345) is None  # no such process


@pytest.mark.usefixtures("bench_modules")
def test_request_budget_floor_follows_the_token_bucket() -> None:
    """The export-bound floor, against schedules worked out by hand."""
    from _scenarios import asyncjsoc_budget, request_budget_floor

    # One export: it and its poll use 2 of 10 tokens (refilled while it runs); 9 of the 20
    # GETs leave at once, the other 11 one per 0.2 s.
    assert request_budget_floor(1, 20, 1, 1.0, 5.0, 10) == pytest.approx(3.2)
    # 1 token/s, burst 2, two emails: exports at 0 and 0; polls at 10 and 10; the next two
    # exports go before the two GETs (11, 12; GETs 13, 14); they finish at 21 and 22, each
    # poll then its GET: 21, 21, 22, 23.
    assert request_budget_floor(4, 1, 2, 10.0, 1.0, 2) == pytest.approx(23.0)
    # The export-bound scenario's shape at asyncjsoc's default budget: two waves of 8 s, then
    # 3 polls + 15 GETs from a full bucket of 10, the last 8 at 5/s.
    rate, burst = asyncjsoc_budget()
    assert (rate, burst) == (5.0, 10)
    assert request_budget_floor(6, 5, 3, 8.0, rate, burst) == pytest.approx(17.6)
    # A budget that never binds leaves the export waves alone.
    assert request_budget_floor(6, 5, 3, 8.0, 1e6, 1000) == pytest.approx(16.0)
