"""Shared pieces of the engine tests: a fast emulator, a fast config, byte checks."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio

from asyncjsoc._client import Client, PullResult
from asyncjsoc._config import ClientConfig
from asyncjsoc._events import Reporter
from asyncjsoc._retry import RetryPolicy
from asyncjsoc.emulator import Emulator, Knobs, run_emulator

QUERY = "hmi.M_45s[2012.01.01_00:00:00_TAI/6m]{magnetogram}"
"""Eight records, one file each."""


def fast_knobs(**changes: Any) -> Knobs:
    """Emulator knobs with exports taking milliseconds and small files."""
    base = Knobs(time_scale=1000.0, export_delay=20.0, file_size=8 * 2880, seed=1)
    return dataclasses.replace(base, **changes)


@asynccontextmanager
async def emulator(**changes: Any) -> AsyncIterator[Emulator]:
    """A running emulator with :func:`fast_knobs`."""
    async with run_emulator(fast_knobs(**changes)) as emu:
        yield emu


async def fetch_with_files_held(emu: Emulator, config: ClientConfig, out: Path,
                                reporter: Reporter) -> PullResult:
    """Fetch ``QUERY`` while the emulator holds file GETs; ``reporter`` releases them.

    A pull whose reporter never releases them times out after 20 s (the test fails); the
    files are released either way, so the emulator's teardown finds no GET held.
    """
    emu.hold_files()
    try:
        with anyio.fail_after(20):
            async with Client(config, out, reporter=reporter) as client:
                return await client.fetch(QUERY)
    finally:
        emu.release_files()


def fast_config(emu: Emulator, *emails: str, **changes: Any) -> ClientConfig:
    """A client config for the emulator: tiny poll intervals, no retry waits, no rate limit."""
    return ClientConfig(
        server=emu.url,
        emails=emails or ("a@example.org",),
        poll_min=0.002,
        poll_max=0.02,
        requests_per_second=1e6,
        burst=1000,
        retry=RetryPolicy.no_wait(),
        **changes,
    )


def assert_identical(emu: Emulator, result: PullResult) -> None:
    """Every fetched file holds exactly what the emulator serves for its URL."""
    for f in result.files:
        assert f.path.read_bytes() == emu.file_bytes(f.url), f.relpath
        assert f.bytes == f.path.stat().st_size


def xattrs_work_in(directory: Path) -> bool:
    """Whether files in ``directory`` take user extended attributes."""
    probe = directory / "xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except (AttributeError, OSError):
        return False
    finally:
        probe.unlink()
    return True


@contextmanager
def output_locked_elsewhere(out_dir: Path) -> Iterator[int]:
    """Another process holds ``out_dir``'s output lock (as a running pull does) for the
    block; yields its pid."""
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from asyncjsoc._store import OutputLock
        with OutputLock(Path({str(out_dir)!r})):
            print("held", flush=True)
            sys.stdin.readline()
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdin is not None
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()
