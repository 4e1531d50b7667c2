"""Smoke test of the benchmark harness: emulator process, one worker, the result writers.

No performance is asserted here (timed unit tests lie); the numbers live in benchmarks/.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

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
    assert row["cpu_s"] >= 0
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
