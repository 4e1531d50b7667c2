"""asyncjsoc benchmarks: every contender measured side by side, in one run, on loopback.

Usage::

    python benchmarks/run.py [--quick] [--scenario NAME ...] [--keep] [--results DIR]

Scenarios: export-bound, bandwidth, small-files, plan-scale, resume, politeness. The default
sizes are the real measurement: results go to ``benchmarks/results/<timestamp>.{json,md,png}``
and ``latest.*``, each scenario prints PASS/FAIL per target, and the exit status is 1 when a
target fails or a run is broken.

``--quick`` shrinks every scenario to a few seconds (the CI smoke, about a minute in all; every
contender still runs). Its targets are still checked and printed, but are indicative only: the
exit status is 1 only when a run is broken (a scenario crashed, a run failed that is not marked
as failing by design, or an installed contender could not run). Quick results go to
``benchmarks/results/quick/latest.*`` (git-ignored), never over the full results.

The emulator always runs in its own process (``_emu_launcher.py``), and each contender runs in
a fresh worker process (``_worker.py``), so CPU seconds and peak RSS belong to one contender.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import PYTHON, Workdir
from _report import NOT_INSTALLED, markdown, problems, write_all
from _scenarios import SCENARIOS, Ctx

HERE = Path(__file__).resolve().parent


def _probe(code: str) -> str:
    """Run ``code`` in a fresh interpreter; '' if it worked, else the last error line."""
    proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, cwd=HERE)
    if proc.returncode == 0:
        return ""
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


def _probe_module(module: str, code: str) -> str:
    """'' if ``code`` runs; "not installed: ..." if ``module`` is absent; else the error."""
    if importlib.util.find_spec(module) is None:
        return f"{NOT_INSTALLED}: no module {module!r} (pip install -e '.[bench]')"
    return _probe(code)


def _tool(name: str) -> str:
    """'' if the program is on PATH, else why not."""
    return "" if shutil.which(name) else f"{NOT_INSTALLED}: {name} not on PATH"


def availability() -> dict[str, str]:
    """Which contenders can run here; the value says why not ('' = usable).

    A reason starting with ``not installed`` means the contender is absent (skipped, not a
    failure); any other reason means it is installed but broken, which fails the run.
    """
    cli = shutil.which("asyncjsoc", path=os.path.dirname(PYTHON))
    fetch_help = ""
    if cli:
        proc = subprocess.run([cli, "fetch", "--help"], capture_output=True, text=True)
        fetch_help = "" if proc.returncode == 0 else "`asyncjsoc fetch` not available yet"
    lib = _probe("from _contenders import _asyncjsoc_api; _asyncjsoc_api()")
    parfive = _probe_module("parfive", "import parfive")
    return {
        "asyncjsoc": lib,
        "asyncjsoc-plan": lib,
        "asyncjsoc-cli": fetch_help if cli else "no asyncjsoc executable",
        "drms": _probe_module("drms", "import drms"),
        "sunpy": _probe_module("sunpy", "import sunpy.net.jsoc"),
        "parfive-default": parfive,
        "parfive-tuned": parfive,
        "parfive-sunpy": parfive,
        "raw-aiohttp": "",
        "curl": _tool("curl"),
        "aria2c": _tool("aria2c"),
    }


def versions() -> dict[str, str]:
    """Versions of the packages that matter for the numbers."""
    out = {}
    for dist in ("asyncjsoc", "aiohttp", "drms", "sunpy", "parfive"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "absent"
    for tool in ("curl", "aria2c"):
        if shutil.which(tool):
            first = subprocess.run([tool, "--version"], capture_output=True, text=True).stdout
            out[tool] = next((w for w in first.split() if w[:1].isdigit()), "?")
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios, print their tables and targets, write the results files."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, a few seconds per scenario (the CI smoke); targets "
                        "are indicative and only a broken run fails")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                        help="run only these (repeatable); default: all")
    parser.add_argument("--results", type=Path, default=None,
                        help="where the JSON/Markdown/PNG go (default: benchmarks/results, "
                        "or benchmarks/results/quick with --quick)")
    parser.add_argument("--keep", action="store_true", help="keep downloaded files")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="scratch directory for downloads (default: a temp dir)")
    args = parser.parse_args(argv)
    names = args.scenario or list(SCENARIOS)
    started = datetime.now()
    # Quick runs keep only latest.* in their own directory: they never replace the full results.
    stamp = None if args.quick else started.strftime("%Y%m%d-%H%M%S")
    results_dir = args.results or (HERE / "results" / "quick" if args.quick else HERE / "results")
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="asyncjsoc-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    avail = availability()
    ctx = Ctx(quick=args.quick, work=Workdir(scratch, keep=args.keep), available=avail)
    for name, why in avail.items():
        if why:
            print(f"contender {name} unavailable: {why}")
    results: dict[str, Any] = {
        "meta": {
            "started": started.isoformat(timespec="seconds"),
            "quick": args.quick,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} "
            f"{platform.release()}",
            "python": platform.python_version(),
            "versions": versions(),
            "unavailable": {k: v for k, v in avail.items() if v},
            "method_note": (
                "All numbers come from this one run, on this machine, against the asyncjsoc "
                "emulator on 127.0.0.1. The emulator runs in its own process; every contender "
                "runs in a fresh worker process whose CPU time (user+sys) and peak RSS are "
                "reported (for curl, aria2c and the asyncjsoc CLI: the tool's process). Wall "
                "times exclude interpreter start-up and imports, except for the CLI and the "
                "external tools, which are timed as a user would see them."
            ),
        },
        "scenarios": [],
    }
    t_all = time.perf_counter()
    try:
        for name in names:
            print(f"\n=== {name} ({'quick' if args.quick else 'full'}) ===", flush=True)
            t0 = time.perf_counter()
            try:
                sc = SCENARIOS[name](ctx)
            except Exception as exc:
                traceback.print_exc()
                sc = {"name": name, "title": name, "error": f"{type(exc).__name__}: {exc}",
                      "rows": [], "checks": [{"text": f"{name} ran", "pass": False}]}
            sc["elapsed_s"] = time.perf_counter() - t0
            results["scenarios"].append(sc)
            note = " (indicative at quick size)" if args.quick else ""
            for c in sc.get("checks", []):
                print(f"  {'PASS' if c['pass'] else 'FAIL'}  {c['text']}{note}")
            print(f"  ({sc['elapsed_s']:.1f} s)", flush=True)
    finally:
        results["meta"]["elapsed_s"] = time.perf_counter() - t_all
        if not args.keep and args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
        written = write_all(results, results_dir, stamp)
        print()
        print(markdown(results))
        print("written: " + ", ".join(str(p) for p in written))
    failed = sum(1 for s in results["scenarios"] for c in s.get("checks", []) if not c["pass"])
    broken = problems(results)
    print("time per scenario: " + ", ".join(
        f"{s['name']} {s['elapsed_s']:.1f} s" for s in results["scenarios"])
        + f"; total {results['meta']['elapsed_s']:.1f} s")
    for p in broken:
        print(f"BROKEN {p}")
    if args.quick:
        print(f"quick run: {'BROKEN' if broken else 'every run completed'}; {failed} target(s) "
              "FAIL at quick size (indicative only, not counted)")
        return 1 if broken else 0
    print(f"full run: {failed} target(s) FAIL; {len(broken)} broken run(s)")
    return 1 if failed or broken else 0


if __name__ == "__main__":
    sys.exit(main())
