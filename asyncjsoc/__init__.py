"""asyncjsoc: fast, polite, resumable bulk downloads from the Stanford JSOC.

Start with :class:`Client` (async) or :func:`fetch_sync` (blocking)::

    async with Client(ClientConfig(emails=("me@example.org",)), "data") as client:
        result = await client.fetch("hmi.sharp_cea_720s[7300][2018.09.30_00:00_TAI/1h]")

Events for progress displays live in :mod:`asyncjsoc.events`; errors in
:mod:`asyncjsoc.exceptions`.
"""

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
from asyncjsoc._sync import fetch_sync

__version__ = "0.1.0"

__all__ = [
    "Chunk",
    "Client",
    "ClientConfig",
    "EmailStatus",
    "ExportFile",
    "ExportStatus",
    "Failure",
    "FileResult",
    "NullReporter",
    "Plan",
    "Pull",
    "PullResult",
    "Query",
    "RemoteFile",
    "Reporter",
    "RetryPolicy",
    "SeriesInfo",
    "__version__",
    "events",
    "exceptions",
    "fetch_sync",
]
