"""A local emulator of the Stanford JSOC export service, for tests and benchmarks.

It serves the JSOC CGIs (``jsoc_info``, ``jsoc_fetch``, ``checkAddress.sh``, ``showextseries``,
``show_series``) and static SUMS/export files on loopback, with the real server's rules (one
pending export per email, status 7, size caps, 24 h duplicates, retention) and seeded fault knobs.
It imports nothing from the asyncjsoc client.

Examples
--------
>>> async with run_emulator(Knobs(export_delay=0.2)) as emu:  # doctest: +SKIP
...     print(emu.url)
"""

from __future__ import annotations

from asyncjsoc.emulator._app import Emulator, create_app, run_emulator
from asyncjsoc.emulator._audit import Audit, Block, FileStats, PendingSpan, Refusal, RequestEntry
from asyncjsoc.emulator._clock import Clock
from asyncjsoc.emulator._knobs import Knobs

__all__ = [
    "Audit",
    "Block",
    "Clock",
    "Emulator",
    "FileStats",
    "Knobs",
    "PendingSpan",
    "Refusal",
    "RequestEntry",
    "create_app",
    "run_emulator",
]
