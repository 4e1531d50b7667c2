"""``asyncjsoc emulator``: run the emulated JSOC on loopback until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import math
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
    return key, _count(value)


def _number(text: str) -> float:
    """A finite float."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _seconds(text: str) -> float:
    """A duration: a finite number of at least 0."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {text}")
    return value


def _positive(text: str) -> float:
    """A finite number above 0."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def _rate(text: str) -> float:
    """A probability, 0 to 1."""
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a rate is between 0 and 1, not {text}")
    return value


def _count(text: str) -> int:
    """A whole number of at least 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {value}")
    return value


def _port(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535."""
    value = _count(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is at most 65535, not {value}")
    return value


def add_parser(subparsers: Any) -> None:
    """Register the ``emulator`` sub-command (``handler=run``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "emulator",
        help="run a local JSOC emulator",
        description="Serve an emulated JSOC on 127.0.0.1; prints its URL once it accepts "
        "connections, runs until SIGINT/SIGTERM.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=0, help="TCP port (0: any free port)")
    p.add_argument("--seed", type=_count, default=0, help="seed of every random fault")
    p.add_argument("--time-scale", type=_positive, default=1.0, help="emulator s per wall s")
    p.add_argument("--export-delay", type=_seconds, default=1.0, help="export processing seconds")
    p.add_argument("--eta-seconds", type=_seconds, default=10.0,
                   help="seconds from a request to the estimate its `wait` counts down to "
                   "(the real server: 10, whatever the export takes)")
    p.add_argument("--exact-wait", action="store_true",
                   help="an ideal server: `wait` is the true time left (overrides --eta-seconds)")
    p.add_argument("--retention", type=_seconds, default=7 * 86400.0, help="export lifetime, s")
    p.add_argument("--pending-timeout", type=_seconds, default=3600.0, help="slot timeout, s")
    p.add_argument("--max-pending-per-email", type=_count, default=1)
    p.add_argument("--max-pending-per-ip", type=_count, default=10)
    p.add_argument("--size-cap-mb", type=_count, default=100_000)
    p.add_argument("--max-records", type=_count, default=1_000_000)
    p.add_argument(
        "--file-cap", type=_mapping, action="append", default=None, metavar="PREFIX=N",
        help="files per export for a series prefix (default aia.=15000 hmi.=30000)",
    )  # fmt: skip
    p.add_argument("--file-size", type=_count, default=64 * 1024, help="bytes per FITS file")
    p.add_argument(
        "--series-file-size", type=_mapping, action="append", default=[],
        metavar="SERIES[:SEG]=BYTES", help="per-series/segment file size",
    )  # fmt: skip
    p.add_argument("--missing-segment-rate", type=_rate, default=0.0)
    p.add_argument("--offline-rate", type=_rate, default=0.0,
                   help="fraction of records whose storage units are offline")
    p.add_argument("--unknown-email", action="append", default=[], metavar="ADDR")
    p.add_argument("--pending-email", action="append", default=[], metavar="ADDR")
    p.add_argument("--expired-email", action="append", default=[], metavar="ADDR")
    p.add_argument("--rate-budget", type=_count, default=None, help="requests per IP per window")
    p.add_argument("--rate-window", type=_seconds, default=60.0)
    p.add_argument("--block-seconds", type=_seconds, default=600.0)
    p.add_argument("--status6-polls", type=_count, default=0)
    p.add_argument("--hash-error-rate", type=_rate, default=0.0)
    p.add_argument("--export-failure-rate", type=_rate, default=0.0)
    p.add_argument("--http500-rate", type=_rate, default=0.0)
    p.add_argument("--http503-rate", type=_rate, default=0.0)
    p.add_argument("--http429-rate", type=_rate, default=0.0)
    p.add_argument("--retry-after", type=_seconds, default=1.0)
    p.add_argument("--cgi-delay", type=_seconds, default=0.0)
    p.add_argument("--drop-rate", type=_rate, default=0.0)
    p.add_argument("--truncate-rate", type=_rate, default=0.0)
    p.add_argument("--corrupt-rate", type=_rate, default=0.0)
    p.add_argument("--stall-rate", type=_rate, default=0.0,
                   help="chance a file transfer goes silent mid-body")
    p.add_argument("--stall-seconds", type=_seconds, default=60.0,
                   help="how long a stalled transfer stays silent")
    p.add_argument("--ignore-range-rate", type=_rate, default=0.0)
    p.add_argument("--bandwidth", type=_count, default=None, help="bytes/s per transfer")
    p.add_argument("--max-connections", type=_count, default=None, help="per client IP")
    p.add_argument("--first-byte-delay", type=_seconds, default=0.0)
    p.add_argument("--trust-forwarded-for", action="store_true")
    p.set_defaults(handler=run)


def knobs_from_args(args: argparse.Namespace) -> Knobs:
    """The Knobs the parsed flags describe."""
    knobs = Knobs(
        seed=args.seed, time_scale=args.time_scale, export_delay=args.export_delay,
        eta_seconds=None if args.exact_wait else args.eta_seconds,
        retention=args.retention, pending_timeout=args.pending_timeout,
        max_pending_per_email=args.max_pending_per_email,
        max_pending_per_ip=args.max_pending_per_ip, size_cap_mb=args.size_cap_mb,
        max_records=args.max_records, file_size=args.file_size,
        file_sizes=dict(args.series_file_size),
        missing_segment_rate=args.missing_segment_rate, offline_rate=args.offline_rate,
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
    try:
        asyncio.run(_serve(knobs, args.host, args.port))
    except OSError as exc:  # the port is taken, the host unknown...
        print(f"asyncjsoc emulator: cannot listen on {args.host}:{args.port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0
