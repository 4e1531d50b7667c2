"""A per-IP token bucket, and the aiohttp middleware that makes every request pay it.

The JSOC's real request budget is unknown (protocol notes §13), and the JSOC has blocked IP
addresses of heavy users before. So every HTTP request the client makes (CGI calls, file
downloads, every retry and redirect) takes a token from one shared :class:`TokenBucket`, and a
server that says "slow down" (429/503 with ``Retry-After``, or a 403 block with ``Retry-After``)
pauses the whole bucket, not just the request that was told.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse
from aiohttp.client_middlewares import ClientMiddlewareType

__all__ = [
    "BucketStatistics",
    "TokenBucket",
    "parse_retry_after",
    "rate_limit_middleware",
]

PAUSING_STATUSES = frozenset({429, 503})
"""Statuses whose ``Retry-After`` pauses every request (403 needs the header to count)."""


@dataclass(frozen=True, slots=True)
class BucketStatistics:
    """A snapshot of a :class:`TokenBucket`'s counters.

    Attributes
    ----------
    requests_granted
        Tokens handed out so far.
    total_wait_seconds
        Time callers spent waiting in :meth:`TokenBucket.acquire`, summed over callers.
    pauses
        How many times :meth:`TokenBucket.pause_until` extended a pause.
    waiting
        Callers waiting right now.
    paused_until
        The clock time the current pause ends, or ``None`` when not paused.
    tokens
        Tokens available right now (fractional; ``inf`` when unlimited).
    """

    requests_granted: int
    total_wait_seconds: float
    pauses: int
    waiting: int
    paused_until: float | None
    tokens: float


class TokenBucket:
    """A token bucket: at most ``burst`` requests at once, refilled at ``rate`` per second.

    Waiters are served first come, first served. A pause (:meth:`pause_until`) holds back
    everyone, and afterwards the bucket restarts with one token, so a lifted block is not
    greeted with a full burst.

    Parameters
    ----------
    rate
        Tokens added per second. ``0`` or ``inf`` means unlimited (pauses still apply).
    burst
        Capacity of the bucket (``>= 1``); it starts full.
    clock
        Monotonic clock in seconds; injectable for tests.
    sleep
        Async sleep matching ``clock``; injectable for tests together with ``clock``.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if math.isnan(rate) or rate < 0:
            raise ValueError(f"rate must be >= 0 (0 or inf for unlimited), got {rate!r}")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"burst must be an int >= 1, got {burst!r}")
        self._rate = float(rate)
        self._burst = burst
        self._unlimited = rate == 0 or math.isinf(rate)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._last = clock()
        self._paused_until = -math.inf
        self._lock = anyio.Lock()
        self._waiting = 0
        self._granted = 0
        self._waited = 0.0
        self._pauses = 0

    @property
    def rate(self) -> float:
        """Tokens per second (``0`` or ``inf`` = unlimited)."""
        return self._rate

    @property
    def burst(self) -> int:
        """Capacity of the bucket."""
        return self._burst

    def _refill(self, now: float) -> None:
        """Add the tokens earned since the last refill (none while paused)."""
        if self._unlimited:
            return
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(float(self._burst), self._tokens + elapsed * self._rate)
            self._last = now

    def _time_to_token(self, now: float) -> float:
        """Seconds until a token can be granted; 0 when one is available now."""
        if now < self._paused_until:
            return self._paused_until - now
        if self._unlimited:
            return 0.0
        self._refill(now)
        if self._tokens >= 1:
            return 0.0
        return max((1 - self._tokens) / self._rate, 1e-6)

    def _take(self) -> None:
        """Consume one token; the caller checked that one is there."""
        if not self._unlimited:
            self._tokens -= 1
        self._granted += 1

    def try_acquire(self) -> bool:
        """Take a token if one is free right now and nobody is queued ahead.

        Returns
        -------
        bool
            Whether a token was taken.
        """
        if self._lock.locked() or self._waiting:
            return False
        if self._time_to_token(self._clock()) > 0:
            return False
        self._take()
        return True

    def acquire_nowait(self) -> None:
        """Take a token without waiting.

        Raises
        ------
        anyio.WouldBlock
            No token is free right now, the bucket is paused, or others are queued.
        """
        if not self.try_acquire():
            raise anyio.WouldBlock

    async def acquire(self) -> None:
        """Wait for a token and take it (first come, first served).

        A pause that starts while waiting extends the wait. Cancelling the wait takes nothing.
        """
        start = self._clock()
        self._waiting += 1
        try:
            async with self._lock:
                while (wait := self._time_to_token(self._clock())) > 0:
                    await self._sleep(wait)
                self._take()
        finally:
            self._waiting -= 1
            self._waited += max(self._clock() - start, 0.0)

    def pause_until(self, deadline: float) -> None:
        """Hold back every request until ``deadline`` (on this bucket's clock).

        A pause never shortens an earlier one. Tokens do not accumulate during a pause, and
        at most one is left for its end.

        Parameters
        ----------
        deadline
            Clock time at which requests may resume.
        """
        if math.isnan(deadline) or deadline <= self._paused_until:
            return
        now = self._clock()
        if deadline <= now:
            return
        self._refill(now)
        self._tokens = min(self._tokens, 1.0)
        self._last = max(self._last, deadline)
        self._paused_until = deadline
        self._pauses += 1

    def pause_for(self, seconds: float) -> None:
        """Hold back every request for ``seconds`` from now (see :meth:`pause_until`).

        Parameters
        ----------
        seconds
            Length of the pause.
        """
        if seconds > 0:
            self.pause_until(self._clock() + seconds)

    def paused(self) -> bool:
        """Whether a pause is in force right now."""
        return self._clock() < self._paused_until

    def statistics(self) -> BucketStatistics:
        """A snapshot of the counters.

        Returns
        -------
        BucketStatistics
            Granted requests, total waiting time, pauses, current waiters and pause end.
        """
        now = self._clock()
        if self._unlimited:
            tokens = math.inf
        else:
            self._refill(now)
            tokens = self._tokens
        return BucketStatistics(
            requests_granted=self._granted,
            total_wait_seconds=self._waited,
            pauses=self._pauses,
            waiting=self._waiting,
            paused_until=self._paused_until if now < self._paused_until else None,
            tokens=tokens,
        )


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for, or ``None`` if absent or unusable.

    Accepts delta-seconds (also fractional, leniently) and HTTP dates.

    Parameters
    ----------
    value
        The header value.
    now
        Current POSIX time for HTTP dates (defaults to :func:`time.time`).

    Returns
    -------
    float or None
        A non-negative finite number of seconds.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def rate_limit_middleware(bucket: TokenBucket) -> ClientMiddlewareType:
    """An aiohttp client middleware that makes every request pay ``bucket``.

    It takes a token before each request (aiohttp calls middlewares again for redirects and
    its own reconnect retries, so those pay too). When a reply is 429 or 503 with a
    ``Retry-After``, or 403 with a ``Retry-After`` (the form an IP block is assumed to take),
    the bucket is paused for that long, which holds back every request sharing it.

    Parameters
    ----------
    bucket
        The shared bucket.

    Returns
    -------
    ClientMiddlewareType
        Pass it in ``ClientSession(middlewares=[...])``.
    """

    async def middleware(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        await bucket.acquire()
        response = await handler(request)
        if response.status in PAUSING_STATUSES or response.status == 403:
            delay = parse_retry_after(response.headers.get("Retry-After"))
            if delay is not None:
                bucket.pause_for(delay)
        return response

    return middleware
