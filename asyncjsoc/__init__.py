"""asyncjsoc: fast, polite, resumable bulk downloads from the Stanford JSOC.

Start with :class:`Client` (async) or :func:`fetch_sync` (blocking)::

    async with Client(ClientConfig(emails=("me@example.org",)), "data") as client:
        result = await client.fetch("hmi.sharp_cea_720s[7300][2018.09.30_00:00_TAI/1h]")

Events for progress displays live in :mod:`asyncjsoc.events`; errors in
:mod:`asyncjsoc.exceptions`.

The names below load on first use: the engine brings aiohttp and numpy with it (about half
a second), which ``asyncjsoc --help``, a mistyped command line or a program that only
catches :mod:`asyncjsoc.exceptions` need not wait for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asyncjsoc import events, exceptions
    from asyncjsoc._client import Client, FileResult, Pull, PullResult
    from asyncjsoc._config import ClientConfig
    from asyncjsoc._events import NullReporter, Reporter
    from asyncjsoc._models import (
        Chunk,
        EmailStatus,
        ExportFile,
        ExportStatus,
        Plan,
        RemoteFile,
        SeriesInfo,
    )
    from asyncjsoc._query import Query
    from asyncjsoc._retry import RetryPolicy
    from asyncjsoc._scheduler import Failure
    from asyncjsoc._status import PullStatus, read_status
    from asyncjsoc._sync import fetch_sync
    from asyncjsoc._untar import ExtractResult, extract_tar, extract_tar_sync

__version__ = "0.1.0"

__all__ = [
    "Chunk",
    "Client",
    "ClientConfig",
    "EmailStatus",
    "ExportFile",
    "ExportStatus",
    "ExtractResult",
    "Failure",
    "FileResult",
    "NullReporter",
    "Plan",
    "Pull",
    "PullResult",
    "PullStatus",
    "Query",
    "RemoteFile",
    "Reporter",
    "RetryPolicy",
    "SeriesInfo",
    "__version__",
    "events",
    "exceptions",
    "extract_tar",
    "extract_tar_sync",
    "fetch_sync",
    "read_status",
]

# Where each public name lives (loaded by __getattr__ on first use).
_HOMES: dict[str, str] = {
    "Chunk": "asyncjsoc._models",
    "Client": "asyncjsoc._client",
    "ClientConfig": "asyncjsoc._config",
    "EmailStatus": "asyncjsoc._models",
    "ExportFile": "asyncjsoc._models",
    "ExportStatus": "asyncjsoc._models",
    "ExtractResult": "asyncjsoc._untar",
    "Failure": "asyncjsoc._scheduler",
    "FileResult": "asyncjsoc._client",
    "NullReporter": "asyncjsoc._events",
    "Plan": "asyncjsoc._models",
    "Pull": "asyncjsoc._client",
    "PullResult": "asyncjsoc._client",
    "PullStatus": "asyncjsoc._status",
    "Query": "asyncjsoc._query",
    "RemoteFile": "asyncjsoc._models",
    "Reporter": "asyncjsoc._events",
    "RetryPolicy": "asyncjsoc._retry",
    "SeriesInfo": "asyncjsoc._models",
    "events": "asyncjsoc.events",
    "exceptions": "asyncjsoc.exceptions",
    "extract_tar": "asyncjsoc._untar",
    "extract_tar_sync": "asyncjsoc._untar",
    "fetch_sync": "asyncjsoc._sync",
    "read_status": "asyncjsoc._status",
}

if not TYPE_CHECKING:  # type checkers read the imports above instead (and keep typo checks)

    def __getattr__(name: str) -> Any:
        """Import a public name's module on first use, then keep the name here."""
        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        module = importlib.import_module(home)
        value = module if home == f"{__name__}.{name}" else getattr(module, name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    """The module's names, the ones not loaded yet included."""
    return sorted(set(globals()) | set(__all__))
