"""A per-IP token bucket, and the aiohttp middleware that makes every request pay it.

The JSOC's real request budget is unknown (protocol notes §13), and the JSOC has blocked IP
addresses of heavy users before. So every HTTP request the client makes (CGI calls, file
downloads, every retry and redirect) takes a token from one shared :class:`TokenBucket`, and a
server that says "slow down" (429/503 with ``Retry-After``, or a 403 block with ``Retry-After``)
pauses the whole bucket, not just the request that was told.

Waiting requests are served by :class:`Priority`: calls to the JSOC's CGIs (export requests,
status polls, ``jsoc_info``, ``checkAddress``) take the next token before queued file
downloads. A poll or an export submission is a handful of requests that gates minutes of
staging, while a file GET only moves data, so letting the CGI call go first costs the
downloads one token's time and can save the whole pipeline an export's worth. The rate and the
burst are the same for both classes: priority only reorders the queue.
"""

from __future__ import annotations

import email.utils
import enum
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse
from aiohttp.client_middlewares import ClientMiddlewareType
from yarl import URL

from ._handoff import cancel_point

__all__ = [
    "BucketStatistics",
    "Priority",
    "TokenBucket",
    "parse_retry_after",
    "rate_limit_middleware",
    "request_priority",
]

PAUSING_STATUSES = frozenset({429, 503})
"""Statuses whose ``Retry-After`` pauses every request (403 needs the header to count)."""


class Priority(enum.IntEnum):
    """Which queue a request waits in for its token; lower values are served first."""

    CONTROL = 0
    """CGI calls: export requests, status polls, record counts, email checks."""
    BULK = 1
    """File downloads."""


@dataclass(eq=False, slots=True)
class _Waiter:
    """One caller queued in :meth:`TokenBucket.acquire`."""

    granted: bool = False
    wake: anyio.Event = field(default_factory=anyio.Event)

    async def wait(self) -> None:
        """Sleep until woken (granted a token, or asked to take over dispatching)."""
        await self.wake.wait()
        self.wake = anyio.Event()


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

    Waiters are served by :class:`Priority` (every ``CONTROL`` waiter before any ``BULK``
    one), first come, first served within a priority. A pause (:meth:`pause_until`) holds back
    everyone, and afterwards the bucket restarts with one token, so a lifted block is not
    greeted with a full burst.

    A steady stream of ``CONTROL`` requests above ``rate`` would starve ``BULK`` ones; the
    client's CGI calls are few (one submission per chunk, polls seconds apart), so that does
    not happen in practice.

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
        self._queues: tuple[deque[_Waiter], ...] = tuple(deque() for _ in Priority)
        # The one waiter that sleeps until the next token and hands tokens out; the others
        # wait on their own events, so only one task ever sleeps on the clock.
        self._dispatcher: _Waiter | None = None
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
        if self._dispatcher is not None or any(self._queues):
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

    async def acquire(self, priority: Priority = Priority.CONTROL) -> None:
        """Wait for a token and take it: by priority, first come, first served within one.

        A pause that starts while waiting extends the wait. Cancelling the wait takes nothing,
        unless the token was handed over just before the cancellation arrived: then it is spent
        (the bucket errs towards fewer requests, never more).

        Parameters
        ----------
        priority
            The queue to wait in; ``CONTROL`` waiters get tokens before ``BULK`` ones.
        """
        # A free token is taken without yielding to the event loop (the request that spends
        # it yields soon enough); only a pending cancellation is delivered here. Yielding on
        # every request cost a trip through the event loop per file (about 1/20 of the CPU
        # of a small file).
        await cancel_point()
        if self.try_acquire():
            return
        start = self._clock()
        me = _Waiter()
        queue = self._queues[priority]
        queue.append(me)
        self._waiting += 1
        try:
            while not me.granted:
                if self._dispatcher is None:
                    await self._dispatch(me)
                else:
                    await me.wait()
        finally:
            if not me.granted:
                queue.remove(me)
            if self._dispatcher is None:
                self._wake_head()
            self._waiting -= 1
            self._waited += max(self._clock() - start, 0.0)

    async def _dispatch(self, me: _Waiter) -> None:
        """Hand out tokens to the head of the queues until ``me`` has one."""
        self._dispatcher = me
        try:
            while not me.granted:
                wait = self._time_to_token(self._clock())
                if wait > 0:
                    await self._sleep(wait)
                    continue
                head = self._pop_head()
                self._take()
                head.granted = True
                head.wake.set()
                if head is not me:
                    # Let the waiter just served resume (and send its request) before this
                    # one can serve itself: requests go out in the order tokens were granted.
                    await anyio.lowlevel.checkpoint()
        finally:
            self._dispatcher = None

    def _pop_head(self) -> _Waiter:
        """Remove and return the first waiter of the most urgent non-empty queue."""
        return next(q for q in self._queues if q).popleft()

    def _wake_head(self) -> None:
        """Wake the first waiter, if any, to take over dispatching."""
        head = next((q[0] for q in self._queues if q), None)
        if head is not None:
            head.wake.set()

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


def request_priority(url: URL) -> Priority:
    """The queue a request to ``url`` waits in: ``CONTROL`` for the CGIs, ``BULK`` otherwise.

    The JSOC's CGIs live under ``/cgi-bin/`` (also on NetDRMS sites and behind a path
    prefix); exported files are served from ``/SUM…`` paths.

    Parameters
    ----------
    url
        The request URL.

    Returns
    -------
    Priority
        ``CONTROL`` when a path segment is ``cgi-bin``, else ``BULK``.
    """
    path = url.raw_path
    # The substring test first: file URLs (most requests) never contain it.
    if "cgi-bin" in path and "cgi-bin" in path.split("/"):
        return Priority.CONTROL
    return Priority.BULK


def rate_limit_middleware(
    bucket: TokenBucket, *, classify: Callable[[URL], Priority] = request_priority
) -> ClientMiddlewareType:
    """An aiohttp client middleware that makes every request pay ``bucket``.

    It takes a token before each request (aiohttp calls middlewares again for redirects and
    its own reconnect retries, so those pay too), waiting in the queue ``classify`` picks for
    the URL: by default CGI calls go before file downloads. When a reply is 429 or 503 with a
    ``Retry-After``, or 403 with a ``Retry-After`` (the form an IP block is assumed to take),
    the bucket is paused for that long, which holds back every request sharing it.

    Parameters
    ----------
    bucket
        The shared bucket.
    classify
        The priority of a request, from its URL.

    Returns
    -------
    ClientMiddlewareType
        Pass it in ``ClientSession(middlewares=[...])``.
    """

    async def middleware(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        await bucket.acquire(classify(request.url))
        response = await handler(request)
        if response.status in PAUSING_STATUSES or response.status == 403:
            delay = parse_retry_after(response.headers.get("Retry-After"))
            if delay is not None:
                bucket.pause_for(delay)
        return response

    return middleware
