"""Waiting for a staged export: when to poll ``exp_status``, and what its answers mean.

:func:`wait_export_ready` polls one export until the JSOC has staged it (status 0) and tells
pending answers (1, 2, and a bounded number of legacy 6s) from failures. When to poll is
planned by :class:`PollPlan` (the policy is in its Notes), helped by :class:`StagingTimes`,
what the pull has seen of how long its exports take.
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import Protocol

import anyio

from asyncjsoc._events import Backoff, ExportWaiting, NullReporter, Reporter
from asyncjsoc._models import ExportStatus
from asyncjsoc.exceptions import ExportFailedError, ProtocolError

__all__ = [
    "BROKEN_STATUS_RETRIES",
    "LATENESS",
    "PollPlan",
    "StagingTimes",
    "StatusApi",
    "wait_export_ready",
]

BROKEN_STATUS_RETRIES = 2
"""How many broken ``exp_status`` answers in a row are polled past before the export fails."""

LATENESS = 0.25
"""Once no planned poll is left, an export is seen staged at most this fraction of its age late
(within ``[poll_min, poll_max]``)."""

SETTLED = 0.02
"""A learned window narrower than this fraction of its end is polled once more, at its end."""


class StatusApi(Protocol):
    """What :func:`wait_export_ready` needs: ``exp_status``."""

    async def exp_status(self, request_id: str) -> ExportStatus:
        """One ``exp_status`` call; raises for statuses 3, 4 and 5."""
        ...


class StagingTimes:
    """How long a pull's recent exports took to stage, as brackets ``(pending_at, done_at]``.

    Each bracket is in seconds since the answer accepting the export arrived: the send time
    of its last poll that was still pending, and the arrival of its first status 0. The time
    the next export will take is guessed from the newest brackets that agree with each other
    (their intersection): chunks of one pull tend to stage alike, and a change in the
    server's pace breaks the agreement, so old brackets drop out by themselves.

    Parameters
    ----------
    keep
        How many of the newest brackets are kept.
    """

    def __init__(self, keep: int = 8) -> None:
        self._seen: deque[tuple[float, float]] = deque(maxlen=keep)

    def record(self, pending_at: float, done_at: float) -> None:
        """One export was still pending at ``pending_at`` and staged by ``done_at``."""
        if 0 <= pending_at < done_at and math.isfinite(done_at):
            self._seen.append((pending_at, done_at))

    def window(self) -> tuple[float, float] | None:
        """The staging time the newest agreeing brackets allow, ``(after, by]``.

        None when there are none, or when none of them saw an export still pending after
        its request (``after`` 0): exports seen staged at their first poll say only "quick",
        and bisecting down from 0 would cost many polls to learn little.
        """
        lo, hi = -math.inf, math.inf
        for a, b in reversed(self._seen):
            if max(lo, a) >= min(hi, b):
                break
            lo, hi = max(lo, a), min(hi, b)
        return None if hi == math.inf or lo <= 0 else (lo, hi)


class PollPlan:
    """When to poll one export; times are its age, in seconds since it was accepted.

    Parameters
    ----------
    poll_min, poll_max
        Bounds of the pause between paced polls, in seconds (see Notes).
    learned
        The window ``(after, by]`` in which earlier exports of the pull staged
        (:meth:`StagingTimes.window`), if any.

    Notes
    -----
    The policy:

    * **The learned window first.** When earlier exports of the pull have staged, the polls
      bisect the window they staged in: each goes to the middle of what is left of it (the
      export was pending at its last answer) until that is narrower than :data:`SETTLED` of
      its end, then one goes to the end. An export that stages like its predecessors is thus
      seen within that width of its staging time, usually at one poll once the window is
      narrow, and its answers narrow the window for the next. There are no polls before the
      window, and the server's hint is not used: an export much quicker than its
      predecessors is seen only at the window's middle, the price of not polling every export
      from its start.
    * **Just past the window.** An export still pending at the window's end (slower than its
      predecessors) is polled after 2 %, 4 %, 8 %... of the end, until that step reaches the
      paced pause: it is seen about as late as it overshot, not a whole paced step late. An
      export already twice as old as the window's end (one left pending by an earlier run)
      is simply paced.
    * **Otherwise the server's hint, once.** The first positive ``wait`` adds one poll at that
      moment. The real JSOC's hint is only request + 10 s whatever the export takes, so it
      is one poll among the paced ones, not a promise to wait for; an ideal server's exact
      hint is thereby still followed to the moment.
    * **Paced polls.** Apart from those, the pause after a poll at age ``t`` is
      :data:`LATENESS` x ``t`` (0-20 % less, as jitter, so exports sent together do not
      poll in lock step) within ``[poll_min, poll_max]``: an export staged at age ``T`` is
      seen by about ``max(T + poll_min, 1.25 T)`` and never more than ``poll_max`` late; the
      number of polls grows with the logarithm of ``T`` until the pause reaches
      ``poll_max`` (at ``4 x poll_max``), then by one per ``poll_max``.

    Bisecting and searching past the window bring polls closer together than ``poll_min``,
    but never closer than 1 % of the window's end, and only a few: the steps halve or double.
    No pause is longer than ``poll_max``, and none is zero unless ``poll_min`` is.
    """

    def __init__(self, poll_min: float, poll_max: float,
                 learned: tuple[float, float] | None = None) -> None:
        self._min = poll_min
        self._max = poll_max
        self._learned = learned
        self._past_window = 0
        self._hint: float | None = None
        self._hint_taken = learned is not None

    def delay(self, age: float, hint: float) -> float:
        """Seconds from now (the export's ``age``) to the next poll, given its ``wait`` hint."""
        if self._learned is not None:
            after, by = self._learned
            if age < by:
                after = max(after, age)  # it was still pending just now
                target = by if by - after <= SETTLED * by else (after + by) / 2
                return min(max(target - age, SETTLED * by / 2), self._max)
            if age < 2 * by:
                step = SETTLED * by * 2.0 ** min(self._past_window, 64)
                self._past_window += 1
                return min(step, self._paced(age))
        if not self._hint_taken and hint > 0:
            self._hint_taken = True
            self._hint = age + hint
        paced = self._paced(age)
        if self._hint is not None and self._hint > age:
            paced = min(self._hint - age, paced)
        return paced

    def _paced(self, age: float) -> float:
        """The paced pause at ``age``: a quarter of it, jittered, within the bounds."""
        return min(max(LATENESS * age * random.uniform(0.8, 1.0), self._min), self._max)


async def wait_export_ready(
    api: StatusApi,
    status: ExportStatus,
    *,
    poll_min: float = 2.0,
    poll_max: float = 30.0,
    status6_retries: int = 5,
    reporter: Reporter | None = None,
    accepted_at: float | None = None,
    staging: StagingTimes | None = None,
) -> ExportStatus:
    """Poll an export until it is staged (status 0).

    Parameters
    ----------
    api
        Something with ``exp_status``.
    status
        The export's latest status (from ``exp_request`` or an earlier poll).
    poll_min, poll_max
        Bounds of the pause between polls, in seconds (see :class:`PollPlan`).
    status6_retries
        How many legacy status-6 answers ("not found yet") count as pending.
    reporter
        Receives an :class:`~asyncjsoc._events.ExportWaiting` before each pause.
    accepted_at
        For an export this caller just requested: when (``anyio.current_time()``) the
        ``exp_request`` answer accepting it arrived. Ages count from there, so a wait for a
        request token or a retried request does not skew them. None for an export found
        pending (adopted, or left by an earlier run).
    staging
        What the pull has learned of staging times. With ``accepted_at`` it plans the first
        polls, and this export is learned from once staged, unless its acceptance came with
        no positive ``wait`` (the real server's sign of a duplicate of an older export, whose
        age is not this request's).

    After a status 6 or a broken answer the next poll waits at least ``poll_min``, so the
    allowances for those are not spent within a fast learned bisection.

    Returns
    -------
    ExportStatus
        The status-0 answer, with the export's files.

    Raises
    ------
    ExportFailedError
        Status 4, an unexpected status, or too many status 6 answers.
    ProtocolError
        More than ``BROKEN_STATUS_RETRIES`` broken answers in a row.
    ExportTooLargeError, ExportExpiredError
        Statuses 3 and 5, from ``exp_status``.
    """
    report = reporter if reporter is not None else NullReporter()
    fresh = accepted_at is not None
    start = accepted_at if accepted_at is not None else anyio.current_time()
    learned = staging.window() if staging is not None and fresh else None
    learnable = staging is not None and fresh and status.wait > 0
    plan = PollPlan(poll_min, poll_max, learned)
    pending_at = 0.0
    polled = False
    floor = 0.0
    sixes = 0
    broken = 0
    while not status.done:
        request_id = status.request_id
        said = (status.error or "").strip() or None
        if not request_id:
            raise ProtocolError(f"an export in status {status.status} came without a request id")
        if status.status == 6:
            sixes += 1
            if sixes > status6_retries:
                raise ExportFailedError(
                    f"export {request_id} was still not found after {sixes} polls (status 6)",
                    status=6, server_message=said, request_id=request_id,
                )
        elif not status.pending:
            raise ExportFailedError(
                f"export {request_id} has unexpected status {status.status}",
                status=status.status, server_message=said, request_id=request_id,
            )
        if status.status == 6:
            floor = poll_min
        delay = max(plan.delay(anyio.current_time() - start, status.wait), floor)
        floor = 0.0
        report(ExportWaiting(request_id, status.status, status.wait, delay))
        await anyio.sleep(delay)
        sent = anyio.current_time() - start
        polled = True
        try:
            status = await api.exp_status(request_id)
        except ProtocolError as exc:
            # A proxy's error page or a cut body is often transient: poll again, a few times.
            broken += 1
            if broken > BROKEN_STATUS_RETRIES:
                raise
            floor = poll_min
            report(Backoff(poll_min, f"broken exp_status answer ({exc.message}); polling again"))
            continue
        broken = 0
        if not status.done:
            pending_at = sent
    if staging is not None and learnable and polled:
        staging.record(pending_at, anyio.current_time() - start)
    return status
