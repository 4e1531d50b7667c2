"""Stream operations that do not yield to the event loop when they need not wait.

anyio's ``send`` and ``receive`` always yield once, even when the item or the room is there.
On the small-file path a file passes through several of them (scheduler → download worker →
results → caller), and each yield is a trip through the event loop that resumes the whole
chain of awaiting coroutines: measured a few per cent of the CPU of a few-KB file. The helpers
here deliver a pending cancellation (like every anyio checkpoint) and take the fast path when
it is open; otherwise they wait as anyio does. Every caller yields soon anyway (it goes on to
network I/O), so no task can hog the loop through them. (The downloader's transfer limit is
an ``anyio.Semaphore`` with ``fast_acquire=True``, which behaves the same way.)

:func:`cancel_point` is the cancellation check they share. anyio's
``checkpoint_if_cancelled`` first works out which event loop is running (through sniffio) on
every call; a few-kB file passes five or six of them, and that look-up was about a twentieth
of the client's CPU per file.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["cancel_point", "receive_soon", "send_soon"]

_T = TypeVar("_T")


def _asyncio_check() -> Callable[[], Awaitable[None]] | None:
    """anyio's asyncio cancellation check, if this anyio version has it where we look."""
    try:
        from anyio._backends._asyncio import AsyncIOBackend
    except ImportError:  # pragma: no cover - an anyio without its asyncio backend module
        return None
    check = getattr(AsyncIOBackend, "checkpoint_if_cancelled", None)
    # Only the shape anyio 4 has (a coroutine function): anything else means the public path.
    return check if inspect.iscoroutinefunction(check) else None


_ASYNCIO_CHECK = _asyncio_check()


async def cancel_point() -> None:
    """``await anyio.lowlevel.checkpoint_if_cancelled()``, with the backend found cheaply.

    Raises the pending cancellation of the enclosing cancel scopes, if any; never yields
    otherwise. Inside an asyncio event loop it calls anyio's asyncio backend directly (what
    anyio would pick), which is a private name of anyio's: if it is not there, or no asyncio
    loop runs in this thread (trio), it falls back to the public function.
    """
    if _ASYNCIO_CHECK is not None and asyncio._get_running_loop() is not None:
        await _ASYNCIO_CHECK()
    else:
        await anyio.lowlevel.checkpoint_if_cancelled()


async def send_soon(stream: MemoryObjectSendStream[_T], item: _T) -> None:
    """``await stream.send(item)``, without yielding when the buffer has room.

    Raises
    ------
    anyio.BrokenResourceError, anyio.ClosedResourceError
        As :meth:`~anyio.streams.memory.MemoryObjectSendStream.send`.
    """
    await cancel_point()
    try:
        stream.send_nowait(item)
    except anyio.WouldBlock:
        await stream.send(item)


async def receive_soon(stream: MemoryObjectReceiveStream[_T]) -> _T:
    """``await stream.receive()``, without yielding when an item is waiting.

    Raises
    ------
    anyio.EndOfStream
        The stream is closed at the other end and empty.
    """
    await cancel_point()
    try:
        return stream.receive_nowait()
    except anyio.WouldBlock:
        return await stream.receive()
