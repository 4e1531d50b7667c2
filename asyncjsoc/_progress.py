"""Terminal reporters: a live rich display and a plain, timestamped log.

Both are :class:`~asyncjsoc._events.Reporter` implementations fed only by the engine's events.
They share one bookkeeping object, :class:`PullView`, which turns the event stream into
"what is going on right now": exports in flight with the server's ETA, which email holds
which export slot, files done and bytes moved. The rich reporter draws that view several
times a second from rich's refresh thread; the plain reporter writes one line per
noteworthy event. Only this module and :mod:`asyncjsoc.cli` import rich.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from asyncjsoc._events import (
    Backoff,
    ChunkSplit,
    EmailChecked,
    EmailDropped,
    Event,
    ExportAdopted,
    ExportExpired,
    ExportFailed,
    ExportReady,
    ExportReused,
    ExportSubmitted,
    ExportWaiting,
    FileDone,
    FileFailed,
    FileProgress,
    FileSkipped,
    FileStarted,
    PlanCounting,
    Planned,
    PullFinished,
    TarUnpacked,
)
from asyncjsoc._privacy import mask_email as _mask_address
from asyncjsoc._privacy import mask_emails
from asyncjsoc.exceptions import ExportFailedError, JsocError, LocalError, UnsafePathError

__all__ = [
    "NO_RECORDS",
    "PlainReporter",
    "PullView",
    "RichReporter",
    "describe",
    "format_bytes",
    "mask_email",
    "mask_emails",
    "render_summary",
]

# How many finished exports stay listed under the ones still in flight.
_RECENT_READY = 3
# The plain log repeats an unchanged "still staging" line at most this often (seconds).
_WAIT_LOG_EVERY = 30.0
_COUNT_LOG_EVERY = 10.0  # seconds between "planning: N record counts" lines


NO_RECORDS = ("the query matches no records (check the prime-key values, the time range "
              "and any keyword filter)")
"""What the command line says about a query that matched nothing."""


def mask_email(address: str) -> str:
    """Hide most of an address's local part: ``jane@x.org`` → ``j***@x.org``.

    Parameters
    ----------
    address
        An email address; text without an ``@`` is returned with its tail hidden.

    Returns
    -------
    str
        The masked address.
    """
    if "@" not in address:
        return address[:1] + "***"
    return _mask_address(address)


def format_bytes(n: float | None) -> str:
    """``1536`` → ``"1.5 kB"`` (decimal units, like rich's download column)."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def _format_seconds(seconds: float) -> str:
    """``75`` → ``"1:15"``; hours when needed."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


# --- the shared view -------------------------------------------------------------------


@dataclass
class ExportRow:
    """One export as the display sees it."""

    chunk: int
    email: str | None
    request_id: str | None
    method: str
    n_records: int
    state: str = "submitted"  # submitted, queued, processing, ready, failed, expired, reused
    status: int | None = None
    eta_at: float | None = None
    poll_at: float | None = None
    since: float | None = None
    n_files: int | None = None
    error: str | None = None
    spinner: Spinner = field(default_factory=lambda: Spinner("dots", style="cyan"))


@dataclass
class ActiveFile:
    """A download in progress."""

    relpath: str
    size: int | None
    bytes_done: int


@dataclass
class Failure:
    """Something that did not arrive, and why; ``fix_first`` when a rerun alone fails the
    same way (a file in the way, a name refused as unsafe: the user must act first)."""

    what: str
    error: str
    fix_first: bool = False


class PullView:
    """The state of a pull, rebuilt from engine events.

    Parameters
    ----------
    emails
        Addresses known up front (shown as free slots before any event names them).
    clock
        Monotonic clock in seconds; injectable for tests.
    """

    def __init__(
        self, emails: Iterable[str] = (), *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        self.started = clock()
        self.emails: list[str] = []
        for e in emails:
            self._know_email(e)
        self.slot_holder: dict[str, str] = {}
        self.dropped: dict[str, str] = {}
        self.exports: dict[int, ExportRow] = {}
        self.n_chunks: int | None = None
        self.n_files: int | None = None
        # url-tar exports: one file (the tar) per chunk, whatever the plan counted. Set by
        # whoever knows the export method (a resumed pull submits no export to say it).
        self.tar_exports = False
        self.n_records: int | None = None
        self.estimated_bytes: int | None = None
        self.plan_counts = 0  # jsoc_info requests made while planning (PlanCounting)
        self.files_done = 0
        self.files_skipped = 0
        self.files_failed = 0
        self.files_not_exported = 0  # files of chunks whose export failed
        self.bytes_done = 0
        self.bytes_skipped = 0  # of bytes_done: files complete from an earlier run
        self.known_sizes: list[int] = []
        self.skipped: dict[str, tuple[int, str | None]] = {}
        self.active: dict[str, ActiveFile] = {}
        self.failures: list[Failure] = []
        self.reexported = 0
        """Exports requested again after the JSOC let them expire (not failures)."""
        self.backoff_until: float | None = None
        self.backoff_reason: str | None = None
        self.finished: PullFinished | None = None

    # bookkeeping --------------------------------------------------------------------------

    def _know_email(self, email: str) -> None:
        """Add an address to the slot list once."""
        if email not in self.emails:
            self.emails.append(email)

    def _row_for_request(self, request_id: str | None) -> ExportRow | None:
        """The export row carrying ``request_id``."""
        if request_id is None:
            return None
        for row in self.exports.values():
            if row.request_id == request_id:
                return row
        return None

    def _free_slot(self, row: ExportRow) -> None:
        """Release the email slot a finished export held."""
        if row.email is not None and self.slot_holder.get(row.email) == _slot_label(row):
            del self.slot_holder[row.email]

    def apply(self, event: Event) -> None:
        """Update the view with one event."""
        now = self.clock()
        row: ExportRow | None
        match event:
            case PlanCounting(counts=counts):
                self.plan_counts = counts
            case Planned(plan=plan):
                self.n_chunks = len(plan.chunks)
                self.n_files = self.n_chunks if self.tar_exports else plan.n_files
                self.n_records = plan.n_records
                self.estimated_bytes = plan.estimated_bytes
            case EmailChecked(status=status):
                self._know_email(status.email)
                if not status.registered:
                    self.dropped[status.email] = status.message
            case EmailDropped(email=email, reason=reason):
                self._know_email(email)
                self.dropped[email] = reason
                self.slot_holder.pop(email, None)
            case ExportSubmitted(chunk=chunk, email=email, request_id=rid, method=method):
                self._know_email(email)
                if method == "url-tar" and self.n_chunks is not None:
                    self.n_files = self.n_chunks  # one tar file per export
                new = ExportRow(chunk, email, rid, method, event.n_records, since=now)
                new.state = "queued" if rid else "submitted"
                self.exports[chunk] = new
                if rid:
                    self.slot_holder[email] = _slot_label(new)
            case ExportReused(chunk=chunk, request_id=rid):
                old = self.exports.get(chunk)
                self.exports[chunk] = ExportRow(
                    chunk, old.email if old else None, rid, old.method if old else "", 0,
                    state="reused",
                )
            case ExportWaiting(request_id=rid, status=status, eta=eta, next_poll=next_poll):
                row = self._row_for_request(rid)
                if row is not None:
                    row.status = status
                    row.state = "processing" if status == 1 else "queued"
                    row.eta_at = now + eta
                    row.poll_at = now + next_poll
                    if row.since is None:
                        row.since = now
            case ExportReady(chunk=chunk, request_id=rid, n_files=n_files):
                row = self.exports.get(chunk)
                if row is None:
                    row = ExportRow(chunk, None, rid, "", 0)
                    self.exports[chunk] = row
                row.state = "ready"
                row.n_files = n_files
                row.eta_at = row.poll_at = None
                self._free_slot(row)
            case ExportAdopted(email=email, pending_ids=ids):
                self._know_email(email)
                self.slot_holder[email] = (
                    "earlier export " + ",".join(ids) if ids else "earlier export"
                )
            case ExportExpired(chunk=chunk):
                row = self.exports.get(chunk)
                if row is not None:
                    row.state = "expired"
                    self._free_slot(row)
                self.reexported += 1
            case ExportFailed(chunk=chunk, request_id=rid, error=error, n_files=n_files):
                row = self.exports.get(chunk)
                if row is not None:
                    row.state = "failed"
                    row.error = error.message
                    self._free_slot(row)
                self.files_not_exported += 1 if self.tar_exports and n_files else n_files
                what = f"export {rid or f'chunk {chunk + 1}'}"
                self.failures.append(Failure(what, error.message))
            case ChunkSplit(chunk=chunk, parts=parts):
                old = self.exports.pop(chunk.index, None)
                if old is not None:
                    self._free_slot(old)
                if self.n_chunks is not None:
                    self.n_chunks += len(parts) - 1
            case Backoff(delay=delay, reason=reason):
                self.backoff_until = now + delay
                self.backoff_reason = reason
            case FileStarted(relpath=relpath, size=size, resumed_from=resumed):
                self.active[relpath] = ActiveFile(relpath, size, resumed)
            case FileProgress(relpath=relpath, bytes_done=done, total=total):
                active = self.active.get(relpath)
                if active is None:
                    active = self.active[relpath] = ActiveFile(relpath, total, 0)
                active.bytes_done = done
                if total is not None:
                    active.size = total
            case FileDone(relpath=relpath, bytes=n):
                self.active.pop(relpath, None)
                self.files_done += 1
                self.bytes_done += n
                self.known_sizes.append(n)
            case FileSkipped(relpath=relpath, bytes=n):
                self.active.pop(relpath, None)
                self.files_done += 1
                self.files_skipped += 1
                self.bytes_done += n
                self.bytes_skipped += n
                self.skipped[relpath] = (n, getattr(event, "record", None))
                self.known_sizes.append(n)
            case FileFailed(relpath=relpath, record=record, error=error):
                self.active.pop(relpath, None)
                self.files_failed += 1
                self.failures.append(Failure(record or relpath, error.message,
                                             fix_first=_needs_the_user(error)))
            case PullFinished():
                self.finished = event
                self.active.clear()
            case _:
                pass

    # derived values -----------------------------------------------------------------------

    @property
    def bytes_in_flight(self) -> int:
        """Bytes of files still downloading, already on disk."""
        return sum(a.bytes_done for a in self.active.values())

    @property
    def bytes_total(self) -> int | None:
        """Best guess of the pull's total size: real sizes where known, else the average."""
        if self.n_files is None:
            return None
        sizes = self.known_sizes + [a.size for a in self.active.values() if a.size is not None]
        if sizes:
            average = sum(sizes) / len(sizes)
        elif self.estimated_bytes is not None and self.n_files:
            average = self.estimated_bytes / self.n_files
        else:
            return None
        unknown = max(0, self.n_files - len(sizes) - self.files_failed - self.files_not_exported)
        return int(sum(sizes) + unknown * average)

    def in_flight(self) -> list[ExportRow]:
        """Exports submitted and not yet ready or failed, oldest first."""
        return [r for r in self.exports.values() if r.state in _STAGING]

    def waiting_for_jsoc(self) -> bool:
        """True while nothing downloads because every export is still staging."""
        return not self.active and bool(self.in_flight())

    def backing_off(self) -> float:
        """Seconds left of the current backoff pause, 0 when none."""
        if self.backoff_until is None:
            return 0.0
        return max(0.0, self.backoff_until - self.clock())


_STAGING = ("submitted", "queued", "processing", "reused")


def _slot_label(row: ExportRow) -> str:
    """What a slot-holding export is called in the slot line."""
    return row.request_id or f"chunk {row.chunk + 1}"


# --- one-line descriptions (plain log, and warnings above the live display) -------------


def describe(event: Event, view: PullView, *, mask: bool = True) -> str | None:
    """A one-line, human description of ``event``; ``None`` for events not worth a line.

    Call it after ``view.apply(event)``: the line uses the running totals.

    Parameters
    ----------
    event
        The engine event.
    view
        The view the event was applied to.
    mask
        Mask email addresses (the default for human output).
    """
    show = mask_email if mask else _identity
    match event:
        case PlanCounting(counts=counts):
            return (f"planning: {counts} jsoc_info requests so far (record counts and "
                    "listings; a long time range takes many)")
        case Planned(plan=plan):
            if not plan.n_records:
                return f"planned {plan.series}: {NO_RECORDS}, so there is nothing to export"
            size = f", about {format_bytes(plan.estimated_bytes)}" if plan.estimated_bytes else ""
            return (
                f"planned {plan.series}: {plan.n_records} records, {plan.n_files} files "
                f"in {len(plan.chunks)} export(s){size}"
            )
        case EmailChecked(status=status):
            state = "registered" if status.registered else f"NOT usable: {status.message}"
            return f"email {show(status.email)}: {state}"
        case EmailDropped(email=email, reason=reason):
            return f"email {show(email)} dropped: {_mask_text(reason, mask)}"
        case ExportSubmitted(chunk=chunk, email=email, request_id=rid, method=method):
            what = rid or "immediate (url_quick)"
            return (
                f"export {what} submitted for chunk {chunk + 1}{_of(view.n_chunks)} "
                f"({event.n_records} records, {method}) via {show(email)}"
            )
        case ExportReused(chunk=chunk, request_id=rid):
            return f"export {rid} from an earlier run reused for chunk {chunk + 1}"
        case ExportWaiting(request_id=rid, status=status, eta=eta):
            label = "processing" if status == 1 else f"queued (status {status})"
            eta_text = f"server ETA {_format_seconds(eta)}" if eta > 0 else "server ETA passed"
            return f"export {rid} {label}, {eta_text}; waiting for JSOC"
        case ExportReady(chunk=chunk, request_id=rid, n_files=n):
            return f"export {rid or f'chunk {chunk + 1}'} ready: {n} files"
        case ExportAdopted(email=email, pending_ids=ids):
            listed = ", ".join(ids) if ids else "unnamed"
            return f"{show(email)} already has pending export(s) {listed}; waiting them out"
        case ExportExpired(request_id=rid, n_missing=n):
            return f"export {rid} expired on the server; requesting {n} missing files again"
        case ExportFailed(chunk=chunk, request_id=rid, error=error):
            return (
                f"export {rid or '-'} for chunk {chunk + 1} FAILED: "
                f"{_mask_text(error.message, mask)}"
            )
        case ChunkSplit(chunk=chunk, parts=parts, reason=reason):
            return f"chunk {chunk.index + 1} split into {len(parts)} ({_mask_text(reason, mask)})"
        case Backoff(delay=delay, reason=reason):
            return f"backing off {delay:.1f} s: {_mask_text(reason, mask)}"
        case FileStarted(relpath=relpath, resumed_from=resumed) if resumed:
            return f"resuming {relpath} from {format_bytes(resumed)}"
        case FileDone(relpath=relpath, bytes=n):
            return f"[{view.files_done}{_of(view.n_files)}] {relpath} ({format_bytes(n)})"
        case FileSkipped(relpath=relpath):
            return f"[{view.files_done}{_of(view.n_files)}] {relpath} already complete, skipped"
        case TarUnpacked(relpath=relpath, files=files, new=new):
            kept = f" ({files - new} already there)" if new < files else ""
            return f"unpacked {relpath}: {files} files{kept}; tar deleted"
        case FileFailed(relpath=relpath, error=error):
            message = _without_name(error.message, relpath)
            return f"FAILED {relpath}: {_mask_text(message, mask)}"
        case PullFinished(files=files, failed=failed, bytes=n, ok=ok):
            verdict = "done" if ok else "finished with failures"
            return (
                f"{verdict}: {files} files ({format_bytes(n)}) from {len(view.exports)} export(s), "
                f"{failed} failed, in {_format_seconds(view.clock() - view.started)}"
            )
        case _:
            return None


def _needs_the_user(error: JsocError) -> bool:
    """Whether a rerun alone would fail the same way: a file or directory in the way, a
    name refused as unsafe, a failed export the JSOC hands back to the same request for
    24 h (a damaged transfer, a full disk or the network may pass)."""
    return (isinstance(error, UnsafePathError) or type(error) is LocalError
            or (isinstance(error, ExportFailedError) and error.handed_back))


def _closing_hint(failures: list[Failure]) -> str:
    """The summary's last line after failures: what a rerun does, and what it cannot."""
    if failures and all(f.fix_first for f in failures):
        return "fix what the errors above name, then rerun the same command"
    if any(f.fix_first for f in failures):
        return ("rerun the same command to retry what failed; errors about a file in the "
                "way, an unsafe name or a failed export handed back need fixing first")
    return "rerun the same command to retry what failed"


def _identity(text: str) -> str:
    """Return ``text`` unchanged."""
    return text


def _without_name(message: str, relpath: str) -> str:
    """``message`` without a leading ``NAME: `` that repeats the file's own name (unpacking
    errors start with the tar's name, which the line already shows)."""
    prefix = relpath.rsplit("/", 1)[-1] + ": "
    return message[len(prefix):] if message.startswith(prefix) else message


def _mask_text(text: str, mask: bool) -> str:
    """Mask addresses inside free text when asked to."""
    return mask_emails(text) if mask else text


def _of(total: int | None) -> str:
    """``"/N"`` when the total is known."""
    return f"/{total}" if total is not None else ""


# --- plain log reporter ------------------------------------------------------------------


class PlainReporter:
    """Writes one timestamped line per noteworthy event (for logs, CI and pipes).

    Parameters
    ----------
    stream
        Where lines go (the command line passes ``sys.stderr``).
    emails
        The addresses in use, for the view.
    mask
        Mask email addresses in the lines.
    clock
        Monotonic clock in seconds (for the pacing of repeated lines); injectable for tests.
    """

    def __init__(
        self, stream: TextIO, *, emails: Iterable[str] = (), mask: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.mask = mask
        self.view = PullView(emails, clock=clock)
        self._last_wait: dict[str, tuple[int, float]] = {}
        # Planning that takes more than a few seconds gets a line every _COUNT_LOG_EVERY.
        self._last_count_line = self.view.started

    def __call__(self, event: Event, /) -> None:
        """Apply ``event`` and log it when it is worth a line."""
        self.view.apply(event)
        if isinstance(event, ExportWaiting) and not self._wait_is_news(event):
            return
        if isinstance(event, PlanCounting):
            now = self.view.clock()
            if now - self._last_count_line < _COUNT_LOG_EVERY:
                return
            self._last_count_line = now
        line = describe(event, self.view, mask=self.mask)
        if line is not None:
            self.log(line)

    def _wait_is_news(self, event: ExportWaiting) -> bool:
        """Log a staging poll only when its status changed or it has been a while."""
        now = self.view.clock()
        last = self._last_wait.get(event.request_id)
        if last is not None and last[0] == event.status and now - last[1] < _WAIT_LOG_EVERY:
            return False
        self._last_wait[event.request_id] = (event.status, now)
        return True

    def log(self, line: str) -> None:
        """Write one line with a wall-clock timestamp."""
        stamp = time.strftime("%H:%M:%S")
        self.stream.write(f"{stamp} {line}\n")
        self.stream.flush()

    def close(self) -> None:
        """Nothing to tear down; present so both reporters can be closed alike."""


# --- rich live reporter ------------------------------------------------------------------


class RichReporter:
    """A live terminal display of a pull, drawn with rich on ``console``.

    Shows an overall bar (files, bytes, throughput, ETA), a line per export in flight (masked
    email, request id, queued/processing with the server's ETA counting down, ready), which
    email holds which export slot, and a bar per active download. While every export is
    still staging the overall line says so with a spinner instead of freezing.

    Use it as a context manager (or call :meth:`start` and :meth:`close`).

    Parameters
    ----------
    console
        The rich console to draw on (the command line uses one on stderr).
    emails
        The addresses in use, listed as slots from the start.
    mask
        Mask email addresses.
    title
        A heading shown above the display.
    """

    def __init__(
        self,
        console: Console,
        *,
        emails: Iterable[str] = (),
        mask: bool = True,
        title: str | None = None,
    ) -> None:
        self.console = console
        self.mask = mask
        self.title = title
        self.view = PullView(emails)
        self._lock = threading.Lock()
        self._overall = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            TextColumn("{task.fields[files]}"),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            auto_refresh=False,
        )
        self._overall_task = self._overall.add_task("starting", total=None, files="")
        self._downloads = Progress(
            TextColumn("  [blue]↓[/] {task.description}", justify="left"),
            BarColumn(bar_width=20),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=console,
            auto_refresh=False,
        )
        self._download_tasks: dict[str, TaskID] = {}
        self._live = Live(
            console=console,
            get_renderable=self._render,
            refresh_per_second=8,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def __enter__(self) -> RichReporter:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Begin drawing."""
        self._live.start()

    def close(self) -> None:
        """Draw a last frame and stop (idempotent)."""
        if self._live.is_started:
            self._live.refresh()
            self._live.stop()

    def __call__(self, event: Event, /) -> None:
        """Apply one engine event to the display."""
        with self._lock:
            self.view.apply(event)
            self._update_bars(event)
        empty_plan = isinstance(event, Planned) and not event.plan.n_records
        if empty_plan or isinstance(
            event, ExportFailed | FileFailed | ChunkSplit | EmailDropped | ExportExpired
            | ExportAdopted | Backoff | TarUnpacked
        ):
            line = describe(event, self.view, mask=self.mask)
            if line is not None:
                mild = empty_plan or isinstance(event, ChunkSplit | Backoff | ExportAdopted)
                style = "green" if isinstance(event, TarUnpacked) else (
                    "yellow" if mild else "red")
                self.console.print(Text(line, style=style))

    def _update_bars(self, event: Event) -> None:
        """Mirror the view into the rich progress tasks."""
        view = self.view
        match event:
            case FileStarted(relpath=relpath, size=size, resumed_from=resumed):
                if relpath not in self._download_tasks:
                    self._download_tasks[relpath] = self._downloads.add_task(
                        _shorten(relpath, 48), total=size, completed=resumed
                    )
            case FileProgress(relpath=relpath, bytes_done=done, total=total):
                task = self._download_tasks.get(relpath)
                if task is not None:
                    self._downloads.update(task, completed=done, total=total)
            case FileDone(relpath=relpath) | FileSkipped(relpath=relpath) | FileFailed(
                relpath=relpath
            ):
                task = self._download_tasks.pop(relpath, None)
                if task is not None:
                    self._downloads.remove_task(task)
            case PullFinished():
                for task in self._download_tasks.values():
                    self._downloads.remove_task(task)
                self._download_tasks.clear()
            case _:
                pass
        total = view.bytes_total
        if view.finished is not None:
            total = view.bytes_done
        self._overall.update(
            self._overall_task,
            completed=view.bytes_done + view.bytes_in_flight,
            total=total,
            files=f"{view.files_done}{_of(view.n_files)} files",
        )

    # rendering (called from rich's refresh thread) ----------------------------------------

    def _render(self) -> RenderableType:
        """Build one frame of the display."""
        with self._lock:
            self._overall.update(self._overall_task, description=self._headline())
            parts: list[RenderableType] = []
            if self.title:
                parts.append(Text(self.title, style="bold"))
            parts.append(self._overall.get_renderable())
            table = self._exports_table()
            if table is not None:
                parts.append(table)
            slots = self._slots_line()
            if slots is not None:
                parts.append(slots)
            if self._download_tasks:
                parts.append(self._downloads.get_renderable())
            return Group(*parts)

    def _headline(self) -> str:
        """What the overall line says the pull is doing right now."""
        view = self.view
        if view.finished is not None:
            return "[green]done[/]" if view.finished.ok else "[red]finished with failures[/]"
        pause = view.backing_off()
        if pause > 0:
            return f"[yellow]backing off {pause:.0f} s[/] ({view.backoff_reason})"
        if view.waiting_for_jsoc():
            n = len(view.in_flight())
            return f"[cyan]waiting for JSOC[/] ({n} export{'s' if n != 1 else ''} staging)"
        if view.active:
            return "downloading"
        if view.n_files is None:
            counts = view.plan_counts
            return f"planning ({counts} jsoc_info requests)" if counts else "planning"
        return "working"

    def _exports_table(self) -> Table | None:
        """One row per export in flight, plus the last few that became ready."""
        view = self.view
        staging = view.in_flight()
        others = [r for r in view.exports.values() if r.state not in _STAGING]
        recent = others[-_RECENT_READY:]
        rows = staging + recent
        if not rows:
            return None
        table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1))
        table.add_column(width=1)
        table.add_column(style="dim")
        table.add_column()
        table.add_column()
        table.add_column()
        now = view.clock()
        hidden = len(others) - len(recent)
        for row in rows:
            email = row.email or ""
            table.add_row(
                row.spinner if row.state in _STAGING else _state_mark(row.state),
                f"chunk {row.chunk + 1}{_of(view.n_chunks)}",
                row.request_id or ("url_quick" if row.state == "ready" else "…"),
                mask_email(email) if self.mask and email else email,
                _state_text(row, now),
            )
        if hidden:
            table.add_row("", "", "", "", Text(f"+{hidden} earlier exports ready", style="dim"))
        return table

    def _slots_line(self) -> Text | None:
        """Per-email slot occupancy: which export each address is holding."""
        view = self.view
        if not view.emails:
            return None
        line = Text("email slots: ", style="dim")
        for i, email in enumerate(view.emails):
            if i:
                line.append("  ")
            shown = mask_email(email) if self.mask else email
            if email in view.dropped:
                line.append(f"✗ {shown} (refused)", style="red")
            elif email in view.slot_holder:
                line.append(f"● {shown} {view.slot_holder[email]}", style="cyan")
            else:
                line.append(f"○ {shown} free", style="green")
        return line


def _state_mark(state: str) -> Text:
    """A one-character mark for a finished export."""
    if state == "ready":
        return Text("✓", style="green")
    return Text("✗", style="red")


def _state_text(row: ExportRow, now: float) -> Text:
    """What an export is doing: the server's ETA counting down, then how long it has taken."""
    if row.state == "ready":
        return Text(f"ready: {row.n_files} files", style="green")
    if row.state in ("failed", "expired"):
        return Text(f"{row.state}: {row.error or ''}".rstrip(": "), style="red")
    if row.state == "submitted":
        return Text(f"submitted ({row.n_records} records)")
    if row.state == "reused":
        return Text("reused from an earlier run; checking")
    label = "processing" if row.state == "processing" else "queued"
    text = Text(f"{label} ", style="cyan")
    if row.eta_at is not None:
        left = row.eta_at - now
        if left > 0:
            text.append(f"ETA {_format_seconds(left)}")
        elif row.since is not None:
            # The real JSOC's ETA is only request + 10 s, so being past it is normal.
            text.append(f"for {_format_seconds(max(0.0, now - row.since))}")
    if row.poll_at is not None:
        text.append(f" · next check in {_format_seconds(max(0.0, row.poll_at - now))}", "dim")
    return text


def _shorten(text: str, width: int) -> str:
    """Keep the end of a long path, where the distinguishing part is."""
    return text if len(text) <= width else "…" + text[-(width - 1) :]


# --- the end-of-pull summary -------------------------------------------------------------

_MAX_FAILURES_SHOWN = 20


def render_summary(
    console: Console | None,
    view: PullView,
    *,
    out_dir: object,
    stream: TextIO,
    mask: bool = True,
) -> None:
    """Print what a pull did: files, bytes, exports, time and every failure with its reason.

    Parameters
    ----------
    console
        A rich console for a table; ``None`` writes plain lines to ``stream``.
    view
        The view the pull's events were applied to.
    out_dir
        The output directory (shown so the user knows where the files are).
    stream
        Where plain lines go.
    mask
        Mask email addresses inside error messages.
    """
    elapsed = max(view.clock() - view.started, 1e-9)
    new = view.files_done - view.files_skipped
    fetched = view.bytes_done - view.bytes_skipped
    rows: list[tuple[str, str]] = [
        ("files", f"{new} downloaded, {view.files_skipped} already present, "
                  f"{view.files_failed} failed"
                  + (f", {view.files_not_exported} not exported"
                     if view.files_not_exported else "")
                  + (f" (of {view.n_files} planned)" if view.n_files is not None else "")),
        # Files already on disk took no transfer: the rate counts this run's bytes only.
        ("data", f"{format_bytes(fetched)} in {_format_seconds(elapsed)} "
                 f"({format_bytes(fetched / elapsed)}/s)"
                 + (f"; {format_bytes(view.bytes_skipped)} already present"
                    if view.bytes_skipped else "")),
        ("exports", str(len(view.exports))
                    + (f" (+{view.reexported} re-requested after expiry)"
                       if view.reexported else "")),
        ("output", str(out_dir)),
    ]
    closing = _closing_hint(view.failures)
    failures = [
        (f.what, mask_emails(f.error) if mask else f.error) for f in view.failures
    ]
    ok = not view.files_failed and not any(
        r.state == "failed" for r in view.exports.values()
    )
    if console is not None:
        table = Table(title="asyncjsoc summary", show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        for k, v in rows:
            table.add_row(k, v)
        console.print(table)
        if failures:
            ftable = Table(title="failed", title_style="bold red", title_justify="left")
            ftable.add_column("what")
            ftable.add_column("why", style="red")
            for what, why in failures[:_MAX_FAILURES_SHOWN]:
                ftable.add_row(what, why)
            console.print(ftable)
            if len(failures) > _MAX_FAILURES_SHOWN:
                console.print(f"... and {len(failures) - _MAX_FAILURES_SHOWN} more")
        if not ok:
            console.print(f"[yellow]{closing}[/]")
        return
    stamp = time.strftime("%H:%M:%S")
    stream.write(f"{stamp} summary:\n")
    for k, v in rows:
        stream.write(f"  {k:<8} {v}\n")
    for what, why in failures[:_MAX_FAILURES_SHOWN]:
        stream.write(f"  FAILED {what}: {why}\n")
    if len(failures) > _MAX_FAILURES_SHOWN:
        stream.write(f"  ... and {len(failures) - _MAX_FAILURES_SHOWN} more failures\n")
    if not ok:
        stream.write(f"  {closing}\n")
    stream.flush()
