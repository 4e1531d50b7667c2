"""Waiting for a staged export: when to poll ``exp_status``, and what its answers mean.

:func:`wait_export_ready` polls one export until the JSOC has staged it (status 0), following
the server's ``wait`` estimate without ever busy-polling (the policy is in its Notes), and
tells pending answers (1, 2, and a bounded number of legacy 6s) from failures.
"""

from __future__ import annotations

import random
from typing import Protocol

import anyio

from asyncjsoc._events import Backoff, ExportWaiting, NullReporter, Reporter
from asyncjsoc._models import ExportStatus
from asyncjsoc.exceptions import ExportFailedError, ProtocolError

__all__ = ["BROKEN_STATUS_RETRIES", "StatusApi", "wait_export_ready"]

BROKEN_STATUS_RETRIES = 2
"""How many broken ``exp_status`` answers in a row are polled past before the export fails."""


class StatusApi(Protocol):
    """What :func:`wait_export_ready` needs: ``exp_status``."""

    async def exp_status(self, request_id: str) -> ExportStatus:
        """One ``exp_status`` call; raises for statuses 3, 4 and 5."""
        ...


def _poll_delay(hint: float, late_polls: int, poll_min: float, poll_max: float, *,
                eta_spent: bool) -> float:
    """Seconds until the next status poll (see :func:`wait_export_ready` for the policy)."""
    if hint > 0:
        if not eta_spent:
            # Exactly at the server's estimate, even when that is sooner than poll_min.
            return min(hint, poll_max)
        return min(max(hint, poll_min), poll_max)
    base = poll_min * 1.5 ** min(late_polls, 64) * random.uniform(1.0, 1.5)
    return min(max(base, poll_min), poll_max)


async def wait_export_ready(
    api: StatusApi,
    status: ExportStatus,
    *,
    poll_min: float = 2.0,
    poll_max: float = 30.0,
    status6_retries: int = 5,
    reporter: Reporter | None = None,
) -> ExportStatus:
    """Poll an export until it is staged (status 0).

    Parameters
    ----------
    api
        Something with ``exp_status``.
    status
        The export's latest status (from ``exp_request`` or an earlier poll).
    poll_min, poll_max
        Bounds of the pause between polls, in seconds (see Notes).
    status6_retries
        How many legacy status-6 answers ("not found yet") count as pending.
    reporter
        Receives an :class:`~asyncjsoc._events.ExportWaiting` before each pause.

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

    Notes
    -----
    The polling policy. The server's ``wait`` hint says when it expects the export to be
    staged (the answer's arrival + ``wait``):

    * the first time a positive hint comes, the next poll is made exactly then, even if that
      is sooner than ``poll_min`` (capped at ``poll_max``): a ready export is noticed at once
      rather than on a coarse grid;
    * later positive hints are followed within ``[poll_min, poll_max]``: a server that keeps
      saying "almost" is never polled more often than every ``poll_min`` seconds;
    * once the estimate has passed (no hint, or ``wait <= 0``), the pause backs off from
      ``poll_min`` by a factor of 1.5 per poll, with 0-50 % random jitter (so exports staged
      together are not polled in lock step), capped at ``poll_max``.

    There is never a pause of zero unless ``poll_min`` is zero: no busy polling.
    """
    report = reporter if reporter is not None else NullReporter()
    late_polls = 0
    eta_spent = False
    sixes = 0
    broken = 0
    while not status.done:
        request_id = status.request_id
        if not request_id:
            raise ProtocolError(f"an export in status {status.status} came without a request id")
        if status.status == 6:
            sixes += 1
            if sixes > status6_retries:
                raise ExportFailedError(
                    f"export {request_id} was still not found after {sixes} polls (status 6)",
                    status=6, server_message=status.error, request_id=request_id,
                )
        elif not status.pending:
            raise ExportFailedError(
                f"export {request_id} has unexpected status {status.status}",
                status=status.status, server_message=status.error, request_id=request_id,
            )
        delay = _poll_delay(status.wait, late_polls, poll_min, poll_max, eta_spent=eta_spent)
        if status.wait > 0:
            eta_spent = True
        else:
            late_polls += 1
        report(ExportWaiting(request_id, status.status, status.wait, delay))
        await anyio.sleep(delay)
        try:
            status = await api.exp_status(request_id)
        except ProtocolError as exc:
            # A proxy's error page or a cut body is often transient: poll again, a few times.
            broken += 1
            if broken > BROKEN_STATUS_RETRIES:
                raise
            report(Backoff(delay, f"broken exp_status answer ({exc.message}); polling again"))
            continue
        broken = 0
    return status
