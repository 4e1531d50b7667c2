"""A blocking facade for scripts and notebooks that do not want ``async``.

It runs the async :class:`~asyncjsoc.Client` in an anyio blocking portal (an event loop in a
worker thread that anyio starts and stops), never in a hand-made loop. From inside a running
event loop, use ``await Client.fetch(...)`` instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
from pathlib import Path

import anyio.from_thread

from asyncjsoc._client import Client, PullResult
from asyncjsoc._config import ClientConfig
from asyncjsoc._events import Reporter
from asyncjsoc._query import Query
from asyncjsoc.exceptions import InvalidInputError

__all__ = ["fetch_sync"]


def fetch_sync(
    query: Query | str,
    *,
    out_dir: str | Path,
    emails: tuple[str, ...] | list[str] | str | None = None,
    server: str | None = None,
    config: ClientConfig | None = None,
    reporter: Reporter | None = None,
    **options: object,
) -> PullResult:
    """Download everything ``query`` selects into ``out_dir``, blocking until done.

    Parameters
    ----------
    query
        A :class:`~asyncjsoc.Query` or a DRMS record-set string.
    out_dir
        Where the files go; a rerun into the same directory resumes.
    emails
        Registered notify address(es); overrides ``config.emails``.
    server
        The JSOC base URL; overrides ``config.server``.
    config
        A base configuration; ``None`` uses the defaults.
    reporter
        Receives the engine's events; it is called from the portal's worker thread.
    **options
        Any other :class:`~asyncjsoc.ClientConfig` field, e.g. ``protocol="as-is"``.

    Returns
    -------
    PullResult
        What arrived and what did not.

    Raises
    ------
    RuntimeError
        When called from inside a running event loop (it would block that loop).
    InvalidInputError
        For an option that is not a :class:`~asyncjsoc.ClientConfig` field (the hint
        suggests the closest name).
    """
    if _in_event_loop():
        raise RuntimeError(
            "fetch_sync() blocks; inside a running event loop use "
            "`async with Client(...) as client: await client.fetch(query)`"
        )
    changes: dict[str, object] = dict(options)
    if emails is not None:
        changes["emails"] = (emails,) if isinstance(emails, str) else tuple(emails)
    if server is not None:
        changes["server"] = server
    fields = {f.name for f in dataclasses.fields(ClientConfig)}
    for name in changes:
        if name not in fields:
            close = difflib.get_close_matches(name, sorted(fields), n=1)
            raise InvalidInputError(
                f"fetch_sync() got an unknown option {name!r}",
                hint=f"did you mean {close[0]!r}?" if close
                else "options are ClientConfig's fields (see help(asyncjsoc.ClientConfig))")
    base = config if config is not None else ClientConfig()
    final = dataclasses.replace(base, **changes)  # type: ignore[arg-type]

    async def run() -> PullResult:
        async with Client(final, out_dir, reporter=reporter) as client:
            return await client.fetch(query)

    with anyio.from_thread.start_blocking_portal() as portal:
        return portal.call(run)


def _in_event_loop() -> bool:
    """Whether this thread is running an asyncio event loop right now."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
