"""One retry policy for the whole client: jittered exponential backoff.

The policy is plain frozen data; :func:`retrying` applies it to an async callable. The server
may dictate a longer wait (``Retry-After``); a policy never waits less than that.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio

from .exceptions import TransportError

__all__ = ["RetryCallback", "RetryPolicy", "RetryPredicate", "retrying"]

T = TypeVar("T")

RetryCallback = Callable[[int, Exception, float], None]
"""Called before each wait as ``on_retry(attempt, exc, delay)``; ``attempt`` counts from 1."""

RetryPredicate = Callable[[Exception], bool]
"""Decides from the error itself whether another attempt is worth it."""


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often and how patiently to retry a failed operation.

    The wait after the ``n``-th failed attempt is ``initial * multiplier ** (n - 1)``, capped at
    ``maximum``, then multiplied by a random factor in ``[1 - jitter, 1 + jitter]`` (and capped
    at ``maximum`` again), so that many clients that failed together do not retry together.

    Parameters
    ----------
    attempts
        Total number of attempts, the first one included; ``1`` means never retry.
    initial
        Wait in seconds after the first failure, before jitter.
    maximum
        Upper bound in seconds on any computed wait. A server-given delay may exceed it.
    multiplier
        Growth factor of the wait from one attempt to the next (``>= 1``).
    jitter
        Relative spread of the random factor, in ``[0, 1]``; ``0`` makes waits deterministic.
    """

    attempts: int = 6
    initial: float = 1.0
    maximum: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise TypeError("attempts must be an int")
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        for name in ("initial", "maximum"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not math.isfinite(self.multiplier) or self.multiplier < 1:
            raise ValueError(f"multiplier must be a finite number >= 1, got {self.multiplier!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be within [0, 1], got {self.jitter!r}")
        if self.initial > self.maximum:
            raise ValueError(f"initial ({self.initial}) must not exceed maximum ({self.maximum})")

    @classmethod
    def no_wait(cls, attempts: int = 6) -> RetryPolicy:
        """A policy that retries without waiting (for tests); server-given delays still apply.

        Parameters
        ----------
        attempts
            Total number of attempts.
        """
        return cls(attempts=attempts, initial=0.0, maximum=0.0, jitter=0.0)

    def delay(self, attempt: int, *, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``attempt``-th failed attempt (1-based).

        Parameters
        ----------
        attempt
            How many attempts have failed so far (``>= 1``).
        retry_after
            A delay the server asked for (``Retry-After``), in seconds; the result is never
            shorter than it.

        Returns
        -------
        float
            The wait in seconds.
        """
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt}")
        # Cap the exponent first so huge attempt numbers cannot overflow.
        exponent = min(attempt - 1, 1024)
        try:
            base = self.initial * self.multiplier**exponent
        except OverflowError:
            base = self.maximum
        base = min(base, self.maximum)
        if self.jitter:
            base *= random.uniform(1 - self.jitter, 1 + self.jitter)
        wait = min(base, self.maximum)
        if retry_after is not None and math.isfinite(retry_after) and retry_after > wait:
            wait = retry_after
        return max(wait, 0.0)


def _server_delay(exc: Exception) -> float | None:
    """The ``retry_after`` an error carries, if it is a usable number."""
    value = getattr(exc, "retry_after", None)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


async def retrying(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    retry_on: tuple[type[Exception], ...] | RetryPredicate = (TransportError,),
    on_retry: RetryCallback | None = None,
) -> T:
    """Await ``fn()`` until it succeeds, retrying the failures ``retry_on`` accepts.

    Waits follow ``policy``; an error carrying a ``retry_after`` attribute (such as
    :class:`~asyncjsoc.exceptions.HttpStatusError`) makes the wait at least that long.
    Cancellation is never caught. When the attempts run out, the last error propagates
    unchanged.

    Parameters
    ----------
    fn
        A zero-argument callable returning a fresh awaitable on each call.
    policy
        The retry policy.
    retry_on
        Exception classes to retry, or a predicate taking the exception.
    on_retry
        Called as ``on_retry(attempt, exc, delay)`` before each wait.

    Returns
    -------
    T
        What ``fn()`` returned on its first successful attempt.
    """
    should_retry: RetryPredicate
    if isinstance(retry_on, tuple):
        for kind in retry_on:
            if not (isinstance(kind, type) and issubclass(kind, Exception)):
                raise TypeError(f"retry_on must hold Exception subclasses, got {kind!r}")
        kinds = retry_on

        def should_retry(exc: Exception) -> bool:
            return isinstance(exc, kinds)
    else:
        should_retry = retry_on

    attempt = 0
    while True:
        attempt += 1
        try:
            return await fn()
        except Exception as exc:
            if attempt >= policy.attempts or not should_retry(exc):
                raise
            wait = policy.delay(attempt, retry_after=_server_delay(exc))
            if on_retry is not None:
                on_retry(attempt, exc, wait)
        await anyio.sleep(wait)
