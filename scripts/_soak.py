"""A long, seeded soak: thousands of files through every emulator fault, the client killed often.

The emulator runs in this process (on a thread of its own, so its knobs, clock and audit are at
hand); ``asyncjsoc fetch`` runs as a child process, exactly as a user runs it, and is killed at
seeded moments (mostly SIGKILL, sometimes SIGINT or SIGTERM), then started again. Once, while
the client is down, a week passes (every export expires); a run that ends with failed exports
is rerun "the next day" (the JSOC answers a repeat of a failed request with the same failure
for 24 h). After the disturbed phase, runs go on undisturbed until the pull completes.

The report (stdout, and ``--report FILE``) gives files, bytes, retries, the faults the server
served, and what was lost or corrupted, which must be nothing: the exit status is 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from asyncjsoc.emulator import Emulator, Knobs, run_emulator

EXE = str(Path(sys.executable).with_name("asyncjsoc"))
SERIES = "aia.lev1_euv_12s"
START = "2012.01.01_00:00:00_TAI"
EMAILS = ("soak1@example.org", "soak2@example.org", "soak3@example.org")
# Images just over the client's 1 MiB read size stream into .part files and are resumed after
# a cut; the small spike files take the one-shot path.
IMAGE_SIZE = 370 * 2880
SPIKES_SIZE = 8 * 2880
BURST = 10
WINDOW = 10.0


@dataclass
class Kill:
    """One interruption: the signal, and what was final on disk and in the audit then."""

    signal: str
    at: float
    """Emulator time just after the client died."""
    final: set[str]


@dataclass
class Runs:
    """Every client run and how it ended."""

    codes: Counter[str] = field(default_factory=Counter)
    kills: list[Kill] = field(default_factory=list)
    week_jumps: int = 0
    day_jumps: int = 0


def recordset(emu: Emulator, n_files: int) -> str:
    """An AIA record set with at least ``n_files`` files (two segments per record)."""
    seconds = max(12, int(n_files / 2 / 35 * 60))
    while True:
        ds = f"{SERIES}[{START}/{seconds}s]{{image,spikes}}"
        if emu.catalog.select(ds).count() * 2 >= n_files:
            return ds
        seconds += 12


def make_knobs(seed: int, rate: float, connections: int) -> Knobs:
    """Every fault on at a rate a pull of thousands of files meets many times."""
    return Knobs(
        seed=seed, export_delay=0.5, status6_polls=1, hash_error_rate=0.05,
        export_failure_rate=0.03, http500_rate=0.01, http503_rate=0.001, http429_rate=0.001,
        retry_after=1.0, drop_rate=0.02, truncate_rate=0.02, ignore_range_rate=0.3,
        bandwidth=8_000_000, max_connections=connections, first_byte_delay=0.002,
        cgi_delay=0.005,
        file_sizes={f"{SERIES}:image": IMAGE_SIZE, f"{SERIES}:spikes": SPIKES_SIZE},
        # A budget the client at its configured pace always keeps, even when a restarted
        # client spends a fresh burst in the same window as the killed one.
        rate_budget=int(2 * BURST + rate * WINDOW + 5), rate_window=WINDOW, block_seconds=60.0,
    )  # fmt: skip


def fetch_argv(url: str, ds: str, out: Path, rate: float, connections: int) -> list[str]:
    """The CLI command of the pull."""
    argv = [EXE, "fetch", ds, "--server", url, "--out", str(out), "--max-files-per-export",
            "100", "--rate-limit", str(rate), "--connections", str(connections),
            "--poll-min", "0.2", "--no-progress"]
    for email in EMAILS:
        argv += ["--email", email]
    return argv


def final_names(out: Path) -> set[str]:
    """Finished files in ``out`` (partial ones and the state directory left out)."""
    return {p.name for p in out.glob("*.fits")}


def store_rows(out: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of the pull's state store, read-only."""
    db = out / ".asyncjsoc" / "state.sqlite"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def expected(emu: Emulator, url: str, record: str, relpath: str) -> bytes:
    """What the server serves for a file; for an export gone since, the record's SUMS copy."""
    try:
        return emu.file_bytes(url)
    except KeyError:
        pass
    selection = emu.catalog.select(record)
    rec = next(iter(selection))
    seg = next(s for s in selection.segments
               if relpath.endswith((f".{s.name}.fits", s.filename)))
    return emu.file_bytes(rec.segment_path(seg))


def run_client(argv: list[str], log: Path, deadline: float | None,
               rng: random.Random) -> tuple[str, subprocess.Popen[bytes]]:
    """Run the CLI once; interrupt it at ``deadline`` if it is still going. Returns how it ended."""
    with log.open("ab") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=sink)
        try:
            if deadline is None:
                proc.wait()
                return f"exit {proc.returncode}", proc
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc.poll() is not None:
                return f"exit {proc.returncode}", proc
            sig = rng.choices([signal.SIGKILL, signal.SIGINT, signal.SIGTERM], [8, 1, 1])[0]
            proc.send_signal(sig)
            proc.wait(timeout=60)
            return sig.name, proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def soak(args: argparse.Namespace, portal: BlockingPortal, emu: Emulator, out: Path,
         log: Path) -> tuple[Runs, str, float]:
    """The disturbed phase, then undisturbed runs until the pull is complete."""
    rng = random.Random(args.seed)
    ds = recordset(emu, args.files)
    argv = fetch_argv(emu.url, ds, out, args.rate_limit, args.connections)
    runs = Runs()
    t0 = time.monotonic()
    disturbed_until = t0 + args.minutes * 60 * 0.7
    week_at = t0 + args.minutes * 60 * rng.uniform(0.2, 0.5)
    complete = False
    for _ in range(500):
        now = time.monotonic()
        deadline = now + rng.uniform(4.0, 20.0) if now < disturbed_until else None
        how, _proc = run_client(argv, log, deadline, rng)
        runs.codes[how] += 1
        if not how.startswith("exit"):
            runs.kills.append(Kill(how, portal.call(emu.clock.now), final_names(out)))
            if runs.week_jumps == 0 and time.monotonic() >= week_at:
                portal.call(emu.clock.advance, emu.knobs.retention + 1.0)
                runs.week_jumps += 1
            continue
        if how == "exit 0":
            complete = True
            break
        if how == "exit 1":  # some exports failed for good: rerun the next day
            portal.call(emu.clock.advance, 86400.0 + 1.0)
            runs.day_jumps += 1
            continue
        break  # a usage error or a crash: stop and report it
    if not complete:
        runs.codes["INCOMPLETE"] += 1
    return runs, ds, time.monotonic() - t0


def check(emu: Emulator, portal: BlockingPortal, out: Path, runs: Runs, ds: str,
          elapsed: float, args: argparse.Namespace) -> tuple[list[str], bool]:
    """The report lines, and whether everything holds."""
    n_expected = emu.catalog.select(ds).count() * 2
    rows = store_rows(out, "SELECT relpath, url, record, state FROM files")
    on_disk = final_names(out)
    partial = sorted(p.name for p in out.glob("*.part*"))
    corrupted, nbytes = [], 0
    for relpath, url, record, _state in rows:
        path = out / relpath
        if not path.is_file():
            continue
        data = path.read_bytes()
        nbytes += len(data)
        want = portal.call(expected, emu, url, record, relpath)
        if hashlib.sha256(data).digest() != hashlib.sha256(want).digest():
            corrupted.append(relpath)
    known = {r[0] for r in rows}
    missing = n_expected - len(on_disk & known)

    def audit() -> dict[str, Any]:
        a = emu.audit
        entries = list(a.entries)
        return {
            "entries": entries,
            "files": {p: (s.gets, s.complete) for p, s in a.file_stats.items()},
            "per_email": a.max_pending_per_email(), "per_ip": a.max_pending_per_ip(),
            "blocks": len(a.blocks), "status7": len(a.status7()),
            "exports": len({s.request_id for s in a.pending}),
        }  # fmt: skip

    doc = portal.call(audit)
    entries = doc["entries"]
    by_status = Counter(e.http_status for e in entries)
    gets = [e for e in entries if e.op == "file"]
    answered = [e for e in gets if e.http_status in (200, 206)]
    completes = sum(c for _, c in doc["files"].values())
    ignored = sum(1 for e in gets if e.range and e.http_status == 200)
    ranged = sum(1 for e in gets if e.range)
    status6 = sum(1 for e in entries if e.op.endswith("exp_status") and e.status == 6)
    hash4 = sum(1 for e in entries if e.op.endswith("exp_request") and e.status == 4)
    fail4 = sum(1 for e in entries if e.op.endswith("exp_status") and e.status == 4)
    expired404 = sum(1 for e in gets if e.http_status == 404)
    retried = sum(1 for e in entries if e.http_status in (403, 429, 500, 503))
    # A finished file fetched again after it had its final name: must never happen. (Audit
    # entries are stamped with the time the request arrived; the dead client's own last
    # requests arrived before it died.)
    first_final: dict[str, float] = {}
    for kill in runs.kills:
        for name in kill.final:
            first_final.setdefault(name, kill.at)
    again = [e for e in gets
             if e.time > first_final.get(e.path.rsplit("/", 1)[-1], float("inf"))]
    max_email = max(doc["per_email"].values(), default=0)
    max_ip = max(doc["per_ip"].values(), default=0)
    complete = "INCOMPLETE" not in runs.codes
    ok = (complete and not corrupted and missing == 0 and not partial and not again
          and max_email <= 1 and doc["blocks"] == 0)
    runs_text = ", ".join(f"{k} x{v}" for k, v in sorted(runs.codes.items()))
    lines = [
        f"asyncjsoc soak: seed {args.seed}, {n_expected} files requested, "
        f"{elapsed / 60:.1f} min wall",
        f"  query            {ds}",
        f"  client           asyncjsoc fetch, --rate-limit {args.rate_limit:g}, "
        f"--connections {args.connections}, {len(EMAILS)} emails, 100 files per export",
        f"  runs             {sum(runs.codes.values())} ({runs_text}); "
        f"a week passed {runs.week_jumps}x, a day passed {runs.day_jumps}x",
        f"  files            {len(on_disk & known)}/{n_expected} on disk, {nbytes / 1e6:.1f} MB",
        f"  requests         {len(entries)} ({len(gets)} file GETs for {n_expected} files, "
        f"{ranged} with Range)",
        f"  retried          {retried} requests answered 403/429/500/503; "
        f"{len(gets) - n_expected} extra file GETs",
        "  faults served    "
        f"HTTP 500 x{by_status[500]}, 503 x{by_status[503]}, 429 x{by_status[429]}, "
        f"403 x{by_status[403]}; status 6 x{status6}, hash status 4 x{hash4}, "
        f"export failures x{fail4}",
        f"                   transfers cut (drops, truncations, killed clients) "
        f"x{len(answered) - completes}; Range ignored x{ignored}; expired-file 404 x{expired404}",
        f"  exports          {doc['exports']} staged, status 7 x{doc['status7']}, "
        f"max pending per email {max_email}, per IP {max_ip}, IP blocks {doc['blocks']}",
        f"  lost             {missing}",
        f"  corrupted        {len(corrupted)}",
        f"  partial left     {len(partial)}",
        f"  finished files fetched again  {len(again)}",
        *(f"    {e.path} {e.http_status} range={e.range}" for e in again[:5]),
        f"  result           {'OK' if ok else 'FAILED'}",
    ]
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    """Run the soak; 0 when nothing was lost or corrupted and every rule held."""
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1, help="seed of faults and kills")
    parser.add_argument("--files", type=int, default=3000, help="files to pull (about)")
    parser.add_argument("--minutes", type=float, default=4.0,
                        help="length of the run; kills happen in the first 70%%")
    parser.add_argument("--rate-limit", type=float, default=40.0,
                        help="client requests per second (the budget is set to match)")
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--out", type=Path, help="output directory (default: a temporary one)")
    parser.add_argument("--report", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    if not os.path.exists(EXE):
        print(f"soak: {EXE} not found; install the package first", file=sys.stderr)
        return 2
    knobs = make_knobs(args.seed, args.rate_limit, args.connections)
    # A killed client leaves the server writing into a closed socket; aiohttp logs each one.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="asyncjsoc-soak-") as scratch:
        out = args.out or Path(scratch) / "out"
        log = Path(scratch) / "client.log"
        with start_blocking_portal() as portal, portal.wrap_async_context_manager(
            run_emulator(knobs)
        ) as emu:
            runs, ds, elapsed = soak(args, portal, emu, out, log)
            lines, ok = check(emu, portal, out, runs, ds, elapsed, args)
        if not ok:
            tail = log.read_text(errors="replace").splitlines()[-20:]
            lines += ["  client log (last lines):", *("    " + t for t in tail)]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
