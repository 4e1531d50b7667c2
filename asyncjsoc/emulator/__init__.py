"""A local emulator of the Stanford JSOC export service, for tests and benchmarks.

It serves the JSOC CGIs (``jsoc_info``, ``jsoc_fetch``, ``checkAddress.sh``, ``showextseries``,
``show_series``) and static SUMS/export files on loopback, with the real server's rules (one
pending export per email, status 7, size caps, 24 h duplicates, retention) and seeded fault knobs.
It imports nothing from the asyncjsoc client.

Examples
--------
>>> async with run_emulator(Knobs(export_delay=0.2)) as emu:  # doctest: +SKIP
...     print(emu.url)

The names load on first use, so that the command line's parser (which needs only
:class:`Knobs`) does not import the aiohttp server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asyncjsoc.emulator._app import Emulator, create_app, run_emulator
    from asyncjsoc.emulator._audit import (
        Audit,
        Block,
        FileStats,
        PendingSpan,
        Refusal,
        RequestEntry,
    )
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

# Where each public name lives (loaded by __getattr__ on first use).
_HOMES: dict[str, str] = {
    "Audit": "asyncjsoc.emulator._audit",
    "Block": "asyncjsoc.emulator._audit",
    "Clock": "asyncjsoc.emulator._clock",
    "Emulator": "asyncjsoc.emulator._app",
    "FileStats": "asyncjsoc.emulator._audit",
    "Knobs": "asyncjsoc.emulator._knobs",
    "PendingSpan": "asyncjsoc.emulator._audit",
    "Refusal": "asyncjsoc.emulator._audit",
    "RequestEntry": "asyncjsoc.emulator._audit",
    "create_app": "asyncjsoc.emulator._app",
    "run_emulator": "asyncjsoc.emulator._app",
}

if not TYPE_CHECKING:  # type checkers read the imports above instead

    def __getattr__(name: str) -> Any:
        """Import a public name's module on first use, then keep the name here."""
        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    """The module's names, the ones not loaded yet included."""
    return sorted(set(globals()) | set(__all__))
