"""Run one contender in this (fresh) process and write its measurements as JSON.

Usage: ``python benchmarks/_worker.py SPEC.json OUT.json``. The harness starts one worker per
contender run so CPU seconds and peak RSS belong to that contender alone; the emulator runs in
yet another process.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from pathlib import Path

from _contenders import CONTENDERS, EXTERNAL, PRELOAD
from _measure import machine_cpu_s, measure, process_cpu_s, tree_size


def main(spec_path: str, out_path: str) -> int:
    """Execute the spec'd contender, measure it, record files on disk."""
    spec = json.loads(Path(spec_path).read_text())
    name = spec["contender"]
    fn = CONTENDERS[name]
    # Imports happen before the clock starts: wall and CPU are the work, not start-up.
    for module in PRELOAD.get(name, ()):
        importlib.import_module(module)
    result: dict[str, object] = {"contender": name, "ok": True}
    # Write-back accounting: start from a clean page cache (nothing dirty from earlier runs),
    # and end with sync() so this run's bytes are on disk within the measurement, whoever
    # writes them back (this process in fsync, or the kernel's flusher threads later).
    os.sync()
    emulator_pid = spec.get("emulator_pid")
    machine0 = machine_cpu_s()
    emulator0 = process_cpu_s(emulator_pid) if emulator_pid else None
    with measure() as usage:
        try:
            result.update(fn(spec))
        except BaseException as exc:  # report, don't crash: the table shows the failure
            result["ok"] = False
            result["error"] = f"{type(exc).__name__}: {exc}"[:800]
            result["traceback"] = traceback.format_exc()[-2000:]
    os.sync()
    machine1 = machine_cpu_s()
    emulator1 = process_cpu_s(emulator_pid) if emulator_pid else None
    if None not in (machine0, machine1, emulator0, emulator1):
        # Everything the machine did during the run and the closing sync, except the
        # emulator's work: the client (or tool), the kernel threads writing its files back,
        # interrupts, and whatever else ran (keep the machine quiet).
        result["cpu_machine_s"] = (machine1 - machine0) - (emulator1 - emulator0)  # type: ignore[operator]
    if name in EXTERNAL:
        cpu, rss = usage.cpu_children_s, usage.rss_children_mb
    else:
        cpu = usage.cpu_self_s + usage.cpu_children_s
        rss = max(usage.rss_self_mb, usage.rss_children_mb)
    files, nbytes = tree_size(Path(spec["out"]))
    if result.get("returncode") not in (None, 0):
        result["ok"] = False
    if result.get("failed_files"):
        result["ok"] = False
    result.update(
        wall_s=usage.wall_s, cpu_s=cpu, peak_rss_mb=rss, files_on_disk=files, bytes_on_disk=nbytes
    )
    Path(out_path).write_text(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
