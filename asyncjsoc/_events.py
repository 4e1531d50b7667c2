"""What the engine tells the outside world while it works.

The core never draws anything. It sends small frozen event objects to a :class:`Reporter`,
which is anything callable with one event. The command line turns them into progress bars;
a script can log them, count them, or ignore them (:class:`NullReporter`, the default).

Events are sent from inside the engine's tasks, so a reporter must be quick and must not
block: no network, no waiting. Exceptions a reporter raises propagate into the pull.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from asyncjsoc._models import Chunk, EmailStatus, Plan
from asyncjsoc.exceptions import JsocError

__all__ = [
    "Backoff",
    "ChunkSplit",
    "EmailChecked",
    "EmailDropped",
    "Event",
    "ExportAdopted",
    "ExportExpired",
    "ExportFailed",
    "ExportReady",
    "ExportReused",
    "ExportSubmitted",
    "ExportWaiting",
    "FanOutReporter",
    "FileDone",
    "FileFailed",
    "FileProgress",
    "FileSkipped",
    "FileStarted",
    "NullReporter",
    "PlanCounting",
    "Planned",
    "PullFinished",
    "Reporter",
    "TarUnpacked",
    "fan_out",
]


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of every event the engine sends."""


# --- planning and emails ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlanCounting(Event):
    """Planning is counting the query's records, one ``jsoc_info`` call per count (or per
    listing of a piece's slot times); sent after each such call, with the number made so
    far. Years of data take many, at the request rate."""

    counts: int


@dataclass(frozen=True, slots=True)
class Planned(Event):
    """The query was split into chunks; nothing has been exported yet."""

    plan: Plan


@dataclass(frozen=True, slots=True)
class EmailChecked(Event):
    """One notify address was checked with the JSOC; ``status.registered`` says if usable."""

    status: EmailStatus


@dataclass(frozen=True, slots=True)
class EmailDropped(Event):
    """The JSOC refused an address during the pull; it is not used again."""

    email: str
    reason: str


# --- exports ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExportSubmitted(Event):
    """An export request for one chunk was accepted.

    ``request_id`` is ``None`` for an immediate ``url_quick`` answer, which has no id.
    """

    chunk: int
    email: str
    request_id: str | None
    method: str
    n_records: int


@dataclass(frozen=True, slots=True)
class ExportReused(Event):
    """A chunk's export from an earlier run is still on the server and is used again."""

    chunk: int
    request_id: str


@dataclass(frozen=True, slots=True)
class ExportWaiting(Event):
    """An export is still being staged; the next status poll comes in ``next_poll`` seconds.

    ``eta`` is the server's own estimate (its ``wait`` hint) in seconds, which can be 0 or
    negative when the server is late; ``status`` is the raw JSOC status (1, 2, 6 or 12).
    """

    request_id: str
    status: int
    eta: float
    next_poll: float


@dataclass(frozen=True, slots=True)
class ExportReady(Event):
    """An export finished staging (status 0); its email slot is free again."""

    chunk: int
    request_id: str | None
    n_files: int


@dataclass(frozen=True, slots=True)
class ExportAdopted(Event):
    """The JSOC said ``email`` already has pending exports (status 7); they are waited out."""

    email: str
    pending_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ExportExpired(Event):
    """An export was deleted by the server before all its files arrived; the missing records
    (``n_missing``) are requested again."""

    chunk: int
    request_id: str | None
    n_missing: int


@dataclass(frozen=True, slots=True)
class ExportFailed(Event):
    """A chunk could not be exported; its records are reported as failed. ``n_files`` is
    how many files of the plan it would have given (0 when not known)."""

    chunk: int
    request_id: str | None
    error: JsocError
    n_files: int = 0


@dataclass(frozen=True, slots=True)
class ChunkSplit(Event):
    """A chunk was too large for one export (status 3) and was split into ``parts``."""

    chunk: Chunk
    parts: tuple[Chunk, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Backoff(Event):
    """The engine waits ``delay`` seconds before trying again, because of ``reason``."""

    delay: float
    reason: str


# --- files ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileStarted(Event):
    """A file download began; ``resumed_from`` is how many bytes a ``.part`` already held."""

    relpath: str
    size: int | None
    resumed_from: int


@dataclass(frozen=True, slots=True)
class FileProgress(Event):
    """Bytes arrived for a file; ``total`` is ``None`` when the server sent no length."""

    relpath: str
    bytes_done: int
    total: int | None


@dataclass(frozen=True, slots=True)
class FileDone(Event):
    """A file is complete, verified and has its final name."""

    relpath: str
    bytes: int


@dataclass(frozen=True, slots=True)
class FileSkipped(Event):
    """A file was already complete from an earlier run and was not fetched again.

    ``record`` is the DRMS record it belongs to (``None`` only from old callers).
    """

    relpath: str
    bytes: int
    record: str | None = None


@dataclass(frozen=True, slots=True)
class TarUnpacked(Event):
    """A url-tar export's tar was unpacked into the output directory and deleted
    (:attr:`ClientConfig.extract_tars <asyncjsoc.ClientConfig.extract_tars>`).

    ``files`` counts its files; ``new`` how many of them this run wrote (the others were
    there from an earlier, interrupted run).
    """

    relpath: str
    files: int
    new: int


@dataclass(frozen=True, slots=True)
class FileFailed(Event):
    """A file could not be fetched or failed verification; it keeps no final name.

    Also sent for a file refused before any download (a server-sent name that is unsafe or
    shared by several files, or an export that kept expiring); ``relpath`` is then the
    record when the file has no usable name.
    """

    relpath: str
    record: str
    error: JsocError


@dataclass(frozen=True, slots=True)
class PullFinished(Event):
    """The pull ended: ``ok`` is true only when every file arrived; ``bytes`` were fetched
    by this run (:attr:`PullResult.bytes <asyncjsoc.PullResult.bytes>`)."""

    files: int
    failed: int
    bytes: int
    exports: int
    ok: bool


# --- reporters --------------------------------------------------------------------------


class Reporter(Protocol):
    """Anything that takes engine events: a function, a bound ``list.append``, a progress UI."""

    def __call__(self, event: Event, /) -> None:
        """Receive one event; must return quickly and never block."""


class NullReporter:
    """A reporter that ignores every event (the default)."""

    def __call__(self, event: Event, /) -> None:
        """Ignore ``event``."""


class FanOutReporter:
    """A reporter that passes each event to several reporters, in order.

    Parameters
    ----------
    reporters
        The reporters to feed; each sees every event.
    """

    def __init__(self, reporters: Iterable[Reporter]) -> None:
        self.reporters: tuple[Reporter, ...] = tuple(reporters)

    def __call__(self, event: Event, /) -> None:
        """Send ``event`` to every reporter."""
        for reporter in self.reporters:
            reporter(event)


def fan_out(*reporters: Reporter | None) -> Reporter:
    """Combine reporters into one; ``None`` entries are left out.

    Parameters
    ----------
    *reporters
        Reporters (or ``None``) to combine.

    Returns
    -------
    Reporter
        :class:`NullReporter` for none, the reporter itself for one, else a
        :class:`FanOutReporter`.
    """
    present = [r for r in reporters if r is not None]
    if not present:
        return NullReporter()
    if len(present) == 1:
        return present[0]
    return FanOutReporter(present)
