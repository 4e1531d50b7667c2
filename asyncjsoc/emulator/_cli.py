"""``asyncjsoc emulator``: run the emulated JSOC on loopback until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from asyncjsoc.emulator._knobs import Knobs

__all__ = ["add_parser", "knobs_from_args", "run"]


def _mapping(text: str) -> tuple[str, int]:
    """``KEY=INT`` for prefix/series maps."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=N, got {text!r}")
    return key, int(value)


def add_parser(subparsers: Any) -> None:
    """Register the ``emulator`` sub-command (``handler=run``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "emulator",
        help="run a local JSOC emulator",
        description="Serve an emulated JSOC on 127.0.0.1; prints its URL once it accepts "
        "connections, runs until SIGINT/SIGTERM.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="TCP port (0: any free port)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random fault")
    p.add_argument("--time-scale", type=float, default=1.0, help="emulator s per wall s")
    p.add_argument("--export-delay", type=float, default=1.0, help="export processing seconds")
    p.add_argument("--retention", type=float, default=7 * 86400.0, help="export lifetime, s")
    p.add_argument("--pending-timeout", type=float, default=3600.0, help="slot timeout, s")
    p.add_argument("--max-pending-per-email", type=int, default=1)
    p.add_argument("--max-pending-per-ip", type=int, default=10)
    p.add_argument("--size-cap-mb", type=int, default=100_000)
    p.add_argument("--max-records", type=int, default=1_000_000)
    p.add_argument(
        "--file-cap", type=_mapping, action="append", default=None, metavar="PREFIX=N",
        help="files per export for a series prefix (default aia.=15000 hmi.=30000)",
    )  # fmt: skip
    p.add_argument("--file-size", type=int, default=64 * 1024, help="bytes per FITS file")
    p.add_argument(
        "--series-file-size", type=_mapping, action="append", default=[],
        metavar="SERIES[:SEG]=BYTES", help="per-series/segment file size",
    )  # fmt: skip
    p.add_argument("--missing-segment-rate", type=float, default=0.0)
    p.add_argument("--unknown-email", action="append", default=[], metavar="ADDR")
    p.add_argument("--pending-email", action="append", default=[], metavar="ADDR")
    p.add_argument("--expired-email", action="append", default=[], metavar="ADDR")
    p.add_argument("--rate-budget", type=int, default=None, help="requests per IP per window")
    p.add_argument("--rate-window", type=float, default=60.0)
    p.add_argument("--block-seconds", type=float, default=600.0)
    p.add_argument("--status6-polls", type=int, default=0)
    p.add_argument("--hash-error-rate", type=float, default=0.0)
    p.add_argument("--export-failure-rate", type=float, default=0.0)
    p.add_argument("--http500-rate", type=float, default=0.0)
    p.add_argument("--http503-rate", type=float, default=0.0)
    p.add_argument("--http429-rate", type=float, default=0.0)
    p.add_argument("--retry-after", type=float, default=1.0)
    p.add_argument("--cgi-delay", type=float, default=0.0)
    p.add_argument("--drop-rate", type=float, default=0.0)
    p.add_argument("--truncate-rate", type=float, default=0.0)
    p.add_argument("--corrupt-rate", type=float, default=0.0)
    p.add_argument("--stall-rate", type=float, default=0.0,
                   help="chance a file transfer goes silent mid-body")
    p.add_argument("--stall-seconds", type=float, default=60.0,
                   help="how long a stalled transfer stays silent")
    p.add_argument("--ignore-range-rate", type=float, default=0.0)
    p.add_argument("--bandwidth", type=int, default=None, help="bytes/s per transfer")
    p.add_argument("--max-connections", type=int, default=None, help="per client IP")
    p.add_argument("--first-byte-delay", type=float, default=0.0)
    p.add_argument("--trust-forwarded-for", action="store_true")
    p.set_defaults(handler=run)


def knobs_from_args(args: argparse.Namespace) -> Knobs:
    """The Knobs the parsed flags describe."""
    knobs = Knobs(
        seed=args.seed, time_scale=args.time_scale, export_delay=args.export_delay,
        retention=args.retention, pending_timeout=args.pending_timeout,
        max_pending_per_email=args.max_pending_per_email,
        max_pending_per_ip=args.max_pending_per_ip, size_cap_mb=args.size_cap_mb,
        max_records=args.max_records, file_size=args.file_size,
        file_sizes=dict(args.series_file_size),
        missing_segment_rate=args.missing_segment_rate,
        unknown_emails=set(args.unknown_email), pending_emails=set(args.pending_email),
        expired_emails=set(args.expired_email), rate_budget=args.rate_budget,
        rate_window=args.rate_window, block_seconds=args.block_seconds,
        status6_polls=args.status6_polls, hash_error_rate=args.hash_error_rate,
        export_failure_rate=args.export_failure_rate, http500_rate=args.http500_rate,
        http503_rate=args.http503_rate, http429_rate=args.http429_rate,
        retry_after=args.retry_after, cgi_delay=args.cgi_delay, drop_rate=args.drop_rate,
        truncate_rate=args.truncate_rate, corrupt_rate=args.corrupt_rate,
        ignore_range_rate=args.ignore_range_rate, stall_rate=args.stall_rate,
        stall_seconds=args.stall_seconds, bandwidth=args.bandwidth,
        max_connections=args.max_connections,
        first_byte_delay=args.first_byte_delay, trust_forwarded_for=args.trust_forwarded_for,
    )  # fmt: skip
    if args.file_cap is not None:
        knobs.file_caps = dict(args.file_cap)
    return knobs


async def _serve(knobs: Knobs, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM."""
    from asyncjsoc.emulator._app import run_emulator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with run_emulator(knobs, host=host, port=port) as emu:
            print(emu.url, flush=True)
            await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run(args: argparse.Namespace) -> int:
    """Handler of ``asyncjsoc emulator``; returns the exit code."""
    try:
        knobs = knobs_from_args(args)
    except ValueError as exc:
        print(f"asyncjsoc emulator: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(knobs, args.host, args.port))
    return 0
