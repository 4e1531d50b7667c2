"""asyncjsoc benchmarks: every contender measured side by side, in one run, on loopback.

Usage::

    python benchmarks/run.py [--quick] [--scenario NAME ...] [--keep] [--results DIR]

Scenarios: export-bound, bandwidth, small-files, plan-scale, resume, politeness. ``--quick``
shrinks every scenario to a few seconds (a smoke run); the default sizes are the real
measurement. Results go to ``benchmarks/results/<timestamp>.{json,md,png}`` and ``latest.*``;
each scenario prints PASS/FAIL per target at the end.

The emulator always runs in its own process (``_emu_launcher.py``), and each contender runs in
a fresh worker process (``_worker.py``), so CPU seconds and peak RSS belong to one contender.
"""

from __future__ import annotations

import argparse
import importlib.metadata
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
from _report import markdown, write_all
from _scenarios import SCENARIOS, Ctx

HERE = Path(__file__).resolve().parent


def _probe(code: str) -> str:
    """Run ``code`` in a fresh interpreter; '' if it worked, else the last error line."""
    proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, cwd=HERE)
    if proc.returncode == 0:
        return ""
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


def availability() -> dict[str, str]:
    """Which contenders can run here; the value says why not ('' = usable)."""
    cli = shutil.which("asyncjsoc", path=os.path.dirname(PYTHON))
    fetch_help = ""
    if cli:
        proc = subprocess.run([cli, "fetch", "--help"], capture_output=True, text=True)
        fetch_help = "" if proc.returncode == 0 else "`asyncjsoc fetch` not available yet"
    lib = _probe("from _contenders import _asyncjsoc_api; _asyncjsoc_api()")
    return {
        "asyncjsoc": lib,
        "asyncjsoc-plan": lib,
        "asyncjsoc-cli": fetch_help if cli else "no asyncjsoc executable",
        "drms": _probe("import drms"),
        "sunpy": _probe("import sunpy.net.jsoc"),
        "parfive-default": _probe("import parfive"),
        "parfive-tuned": _probe("import parfive"),
        "parfive-sunpy": _probe("import parfive"),
        "raw-aiohttp": "",
        "curl": "" if shutil.which("curl") else "curl not on PATH",
        "aria2c": "" if shutil.which("aria2c") else "aria2c not on PATH",
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
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke)")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                        help="run only these (repeatable); default: all")
    parser.add_argument("--results", type=Path, default=HERE / "results",
                        help="where the JSON/Markdown/PNG go (default: benchmarks/results)")
    parser.add_argument("--keep", action="store_true", help="keep downloaded files")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="scratch directory for downloads (default: a temp dir)")
    args = parser.parse_args(argv)
    names = args.scenario or list(SCENARIOS)
    started = datetime.now()
    stamp = started.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
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
            for c in sc.get("checks", []):
                print(f"  {'PASS' if c['pass'] else 'FAIL'}  {c['text']}")
            print(f"  ({sc['elapsed_s']:.0f} s)", flush=True)
    finally:
        results["meta"]["elapsed_s"] = time.perf_counter() - t_all
        if not args.keep and args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
        written = write_all(results, args.results, stamp)
        print()
        print(markdown(results))
        print("written: " + ", ".join(str(p) for p in written))
    failed = sum(1 for s in results["scenarios"] for c in s.get("checks", []) if not c["pass"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
