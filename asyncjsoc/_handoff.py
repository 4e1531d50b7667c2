"""Stream and limiter operations that do not yield to the event loop when they need not wait.

anyio's ``send``, ``receive`` and ``CapacityLimiter.acquire`` always yield once, even when the
item or the token is there. On the small-file path a file passes through several of them
(scheduler → download worker → results → caller, plus the transfer limiter), and each yield is
a trip through the event loop that resumes the whole chain of awaiting coroutines: measured a
few per cent of the CPU of a few-KB file. The helpers here deliver a pending cancellation
(like every anyio checkpoint) and take the fast path when it is open; otherwise they wait as
anyio does. Every caller yields soon anyway (it goes on to network I/O), so no task can hog
the loop through them.
"""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["LimiterSlot", "receive_soon", "send_soon"]

_T = TypeVar("_T")


async def send_soon(stream: MemoryObjectSendStream[_T], item: _T) -> None:
    """``await stream.send(item)``, without yielding when the buffer has room.

    Raises
    ------
    anyio.BrokenResourceError, anyio.ClosedResourceError
        As :meth:`~anyio.streams.memory.MemoryObjectSendStream.send`.
    """
    await anyio.lowlevel.checkpoint_if_cancelled()
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
    await anyio.lowlevel.checkpoint_if_cancelled()
    try:
        return stream.receive_nowait()
    except anyio.WouldBlock:
        return await stream.receive()


class LimiterSlot:
    """``async with LimiterSlot(limiter):`` holds one token, without yielding when one is free.

    Like ``async with limiter:``, the current task is the borrower; waiting (when no token
    is free or others queue) is anyio's own, first come, first served.
    """

    __slots__ = ("_limiter",)

    def __init__(self, limiter: anyio.CapacityLimiter) -> None:
        self._limiter = limiter

    async def __aenter__(self) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()
        try:
            self._limiter.acquire_nowait()
        except anyio.WouldBlock:
            await self._limiter.acquire()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._limiter.release()
