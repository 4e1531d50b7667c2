"""The export engine: turns plan chunks into staged exports and streams their files onward.

For each chunk the scheduler takes an email slot (one pending export per address, and an
IP-wide cap), sends ``exp_request``, polls (:func:`~asyncjsoc._polling.wait_export_ready`) and
gives the slot back the moment the export is staged. The files then go, one
:class:`DownloadJob` each, into a bounded memory stream that the downloaders read; a chunk
stays open until every one of its files is settled, so an export deleted by the server
meanwhile can be requested again for the missing records only. At most ``capacity + 1`` chunks
are *ahead* at once (staging, or staged with files not yet queued for download): chunk N+1 is
staged while chunk N waits for downloaders, and no further. A chunk whose files are all queued
no longer counts, so an email freed while earlier chunks are still downloading starts its next
export at once.

The JSOC's refusals are policy here, not errors:

* status 7 (this email has pending exports) → wait those exports out, then resubmit;
  status 7 for the IP (too many pending from this address) → back off and retry; both
  without limit (pending exports end by themselves), each wait reported as an event;
* an email refused mid-run ("Cannot process your request") → drop it, use the others;
  with none left, finish the staged chunks and raise;
* status 3 (too large, also the per-request file cap) → split the chunk and queue the parts;
* transient status 4 ("Cant save new export-request hash.") → back off and retry;
* legacy status 6 while polling → still pending, a bounded number of times;
* status 4, too many 6s or status 5 while staging → submit the export again, a bounded
  number of times (``MAX_RESUBMITS``); a resubmission answered with the id of the export
  that just failed with 4 (the JSOC's 24 h duplicate check) ends the chunk with
  ``ExportFailedError.handed_back``;
* status 5 or HTTP 404 on a file → request the missing records again; a url-tar export's
  lost tar held all of its chunk's records, so the whole chunk is requested again, and the
  tar's partial download is deleted (the new export's tar has another name).

File names that clash are never overwritten: rows of one export sharing a name fail (the
server keeps one file per name), and a record whose name another export already used gets
a digest suffix (:func:`~asyncjsoc._naming.disambiguated_relpath`).

Everything runs in anyio task groups; nothing outlives :meth:`ExportScheduler.run`.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from asyncjsoc._config import ClientConfig
from asyncjsoc._emails import EmailPool, mask_email
from asyncjsoc._events import (
    Backoff,
    ChunkSplit,
    ExportAdopted,
    ExportExpired,
    ExportFailed,
    ExportReady,
    ExportReused,
    ExportSubmitted,
    FileFailed,
    NullReporter,
    Reporter,
)
from asyncjsoc._handoff import send_soon
from asyncjsoc._models import Chunk, ExportFile, ExportStatus, Plan, RemoteFile, SeriesInfo
from asyncjsoc._naming import (
    disambiguated_relpath,
    missing_segments,
    quick_relpath,
    stray_segments,
)
from asyncjsoc._paths import safe_relpath
from asyncjsoc._plan import split_chunk
from asyncjsoc._polling import StagingTimes, StatusApi, wait_export_ready
from asyncjsoc._retry import RetryPolicy
from asyncjsoc._store import StateStore, StoredExport
from asyncjsoc.exceptions import (
    EmailNotRegisteredError,
    ExportExpiredError,
    ExportFailedError,
    ExportTooLargeError,
    HttpStatusError,
    InvalidInputError,
    IpBlockedError,
    JsocError,
    LocalError,
    PendingLimitError,
    ProtocolError,
    ServerRefusedError,
    UnsafePathError,
)

__all__ = [
    "EXPORT_RETENTION",
    "DownloadJob",
    "ExportApi",
    "ExportScheduler",
    "Failure",
    "SchedulerStatistics",
    "is_expiry",
]

EXPORT_RETENTION = 7 * 86400.0
"""Seconds the JSOC keeps a finished export online."""

QUICK_RETENTION = 86400.0
"""Seconds a ``url_quick`` SUMS path is trusted after the answer (the SU may go offline)."""

MAX_REEXPORTS = 2
"""How many times one chunk's missing records are requested again after an expiry."""

MAX_RESUBMITS = 2
"""How many times an export that failed (4, 6) or expired (5) while staging is sent again."""

MAX_RECORDS_IN_LIST = 100
"""Above this many missing records, the whole chunk is requested again instead of a list."""

_NO_DATA = frozenset({"", "NoDataFile"})

_UNNAMED_TAR = "tar"
"""The record given to a url-tar export's tar when the export has no request id."""


class ExportApi(StatusApi, Protocol):
    """What the scheduler needs from the JSOC API (:class:`~asyncjsoc._api.JsocApi`)."""

    async def series_info(self, series: str) -> SeriesInfo:
        """The series' structure (cached)."""
        ...

    async def count(self, ds: str) -> int:
        """How many records ``ds`` selects."""
        ...

    async def exp_request(
        self,
        ds: str,
        *,
        notify: str,
        method: str,
        protocol: str,
        filenamefmt: str | None = None,
    ) -> ExportStatus:
        """One ``exp_request`` call; raises for refusals."""
        ...

    def file_url(self, status: ExportStatus, f: ExportFile) -> str:
        """The URL of one file of a finished export."""
        ...


@dataclass(frozen=True, slots=True)
class Failure:
    """Something of the query that did not arrive: a file, or a whole chunk's records.

    Attributes
    ----------
    record
        The DRMS record, or for a whole chunk its record set.
    error
        Why it did not arrive (its ``message`` and ``hint`` say what to do).
    relpath
        The file's name in the output directory, for a file; ``None`` for a chunk.
    request_id
        The export involved, if any.
    """

    record: str
    error: JsocError
    relpath: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class SchedulerStatistics:
    """A snapshot of the scheduler's progress, in chunks and exports."""

    chunks_total: int
    chunks_done: int
    chunks_failed: int
    chunks_skipped: int
    chunks_open: int
    exports_submitted: int
    exports_staging: int
    splits: int
    reexports: int


class _Batch:
    """The files of one export handed to the downloaders; done when each is settled."""

    def __init__(self, remotes: Sequence[RemoteFile]) -> None:
        self.remaining = len(remotes)
        self.errors: list[tuple[RemoteFile, JsocError]] = []
        self.settled = anyio.Event()
        if not self.remaining:
            self.settled.set()

    def settle(self, remote: RemoteFile, error: JsocError | None) -> None:
        """Count one file as finished (``error is None``) or failed."""
        if error is not None:
            self.errors.append((remote, error))
        self.remaining -= 1
        if self.remaining <= 0:
            self.settled.set()


class DownloadJob:
    """One file to download, as the scheduler hands it to a downloader.

    The downloader must call :meth:`settle` exactly once per job, with the error if the
    file did not arrive. An expiry error (see :func:`is_expiry`) makes the scheduler
    request the record again; other errors are final for this run.
    """

    __slots__ = ("_batch", "_settled", "chunk_index", "remote")

    def __init__(self, remote: RemoteFile, chunk_index: int, batch: _Batch) -> None:
        self.remote = remote
        self.chunk_index = chunk_index
        self._batch = batch
        self._settled = False

    def settle(self, error: JsocError | None = None) -> None:
        """Report the outcome of this file; later calls are ignored."""
        if self._settled:
            return
        self._settled = True
        self._batch.settle(self.remote, error)


def is_expiry(error: BaseException) -> bool:
    """Whether ``error`` means the export's files are gone (status 5, or HTTP 404/410)."""
    if isinstance(error, ExportExpiredError):
        return True
    return isinstance(error, HttpStatusError) and error.status in (404, 410)


def _refuse_shared_names(
    named: list[tuple[ExportFile, str]], request_id: str | None
) -> tuple[list[tuple[ExportFile, str]], list[Failure]]:
    """Split off rows of one export that share a file name.

    The export directory holds one file per name, so the server keeps only one of them and
    nobody can tell which record's data it is: every row of a shared name fails. Rows of
    one record under one name (overlapping record sets list a record twice) are one file:
    it is kept, once.
    """
    unique: dict[tuple[str, str], tuple[ExportFile, str]] = {}
    for f, relpath in named:
        unique.setdefault((f.record, relpath), (f, relpath))
    named = list(unique.values())
    counts: dict[str, int] = {}
    for _, relpath in named:
        counts[relpath] = counts.get(relpath, 0) + 1
    if all(n == 1 for n in counts.values()):
        return named, []
    kept: list[tuple[ExportFile, str]] = []
    failures: list[Failure] = []
    for f, relpath in named:
        if counts[relpath] == 1:
            kept.append((f, relpath))
            continue
        failures.append(Failure(f.record, InvalidInputError(
            f"{counts[relpath]} files of export {request_id or '(quick)'} share the name "
            f"{relpath!r}; the server keeps only one file under a name",
            hint="put every prime key and {segment} in filenamefmt, or leave it unset",
        ), None, request_id))
    return kept, failures


def _segment_suffix(recordset: str) -> str:
    """The trailing ``{seg,...}`` of a record set, or ``""``."""
    match = re.search(r"\{[^{}]*\}\s*$", recordset)
    return match.group(0).strip() if match else ""


class ExportScheduler:
    """Owns every export of one pull: submit, wait, split, adopt, re-export.

    Parameters
    ----------
    api
        The JSOC API (:class:`~asyncjsoc._api.JsocApi`).
    pool
        The email slots.
    store
        The open state store; exports and files are recorded there as they happen.
    config
        Method, protocol, polling and retry settings.
    reporter
        Receives the export events.
    filenamefmt
        Sent with every export; ``None`` lets the server use its default.
    clock
        Wall-clock seconds (``time.time``), for the stored export times.
    reserved
        Names under the output directory that server-sent names may not take (the state
        file's, when ``state_path`` puts it there); compared without case.
    discard_part
        Deletes the partial download (part file, resume sidecar) of a name under the output
        directory: called for a url-tar export's tar that will not be fetched under its name
        any more (:meth:`~asyncjsoc._download.Downloader.discard_part`).
    """

    def __init__(
        self,
        api: ExportApi,
        pool: EmailPool,
        store: StateStore,
        config: ClientConfig,
        *,
        reporter: Reporter | None = None,
        filenamefmt: str | None = None,
        clock: Callable[[], float] = time.time,
        reserved: frozenset[str] = frozenset(),
        discard_part: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._api = api
        self._discard_part = discard_part
        self._reserved = frozenset(name.casefold() for name in reserved)
        self._pool = pool
        self._store = store
        self._config = config
        self._report: Reporter = reporter if reporter is not None else NullReporter()
        self._filenamefmt = filenamefmt
        self._clock = clock
        self._retry = config.retry if config.retry is not None else RetryPolicy()
        self.failures: list[Failure] = []
        """Chunks and records that could not be exported (file failures are the caller's)."""
        self.missing: list[str] = []
        """Records the server listed without a file (``NoDataFile``): nothing to download."""
        self.request_ids: list[str] = []
        """Every export request id used, new or reused, in order."""
        self._plan: Plan | None = None
        self._states: dict[int, str] = {}
        self._outstanding = 0
        self._open = 0
        self._staging = 0
        self._staging_times = StagingTimes()
        self._done = 0
        self._failed = 0
        self._skipped = 0
        self._splits = 0
        self._reexports = 0
        self._next_index = 0
        self._queue: MemoryObjectSendStream[Chunk] | None = None
        self._names_lock = anyio.Lock()
        self._no_email: EmailNotRegisteredError | None = None

    @property
    def plan(self) -> Plan | None:
        """The plan as it stands, splits included."""
        return self._plan

    def statistics(self) -> SchedulerStatistics:
        """Chunks by state and exports in flight."""
        return SchedulerStatistics(
            chunks_total=len(self._plan.chunks) if self._plan else 0,
            chunks_done=self._done,
            chunks_failed=self._failed,
            chunks_skipped=self._skipped,
            chunks_open=self._open,
            exports_submitted=len(self.request_ids),
            exports_staging=self._staging,
            splits=self._splits,
            reexports=self._reexports,
        )

    async def run(self, plan: Plan, jobs: MemoryObjectSendStream[DownloadJob]) -> None:
        """Export every chunk of ``plan`` and send its files into ``jobs``; closes ``jobs``.

        Returns when every chunk is done or failed and every file is settled.

        Raises
        ------
        EmailNotRegisteredError
            Every notify address was refused during the pull; raised once the chunks
            already staged are downloaded, the others are left for a rerun.

        Parameters
        ----------
        plan
            The chunks to export; it must already be saved in the store.
        jobs
            Where the files go, one :class:`DownloadJob` each.
        """
        async with jobs:
            self._plan = plan
            self._states = dict(await self._store.chunk_states())
            self._next_index = max((c.index for c in plan.chunks), default=-1) + 1
            queue_send, queue_receive = anyio.create_memory_object_stream[Chunk](math.inf)
            self._queue = queue_send
            self._outstanding = len(plan.chunks)
            for chunk in plan.chunks:
                queue_send.send_nowait(chunk)
            if not plan.chunks:
                queue_send.close()
            emails = len(self._config.emails) or 1
            lookahead = anyio.Semaphore(min(emails, self._config.max_pending_exports) + 1)
            # Both ends closed on every exit (a cancelled pull leaves the sender open).
            async with queue_send, anyio.create_task_group() as tg, queue_receive:
                async for chunk in queue_receive:
                    await lookahead.acquire()
                    tg.start_soon(self._chunk_task, chunk, lookahead, jobs)
        if self._no_email is not None:
            raise self._no_email

    async def _chunk_task(
        self, chunk: Chunk, lookahead: anyio.Semaphore, jobs: MemoryObjectSendStream[DownloadJob]
    ) -> None:
        """Process one chunk; the last one closes the queue.

        The chunk's lookahead place is freed as soon as its files are all queued for download
        (or it ends without files), not when they are downloaded.
        """
        self._open += 1
        ahead = True

        def queued() -> None:
            nonlocal ahead
            if ahead:
                ahead = False
                lookahead.release()

        try:
            await self._process_chunk(chunk, jobs, queued)
        finally:
            self._open -= 1
            queued()
            self._outstanding -= 1
            if self._outstanding == 0 and self._queue is not None:
                self._queue.close()

    async def _process_chunk(self, chunk: Chunk, jobs: MemoryObjectSendStream[DownloadJob],
                             queued: Callable[[], None]) -> None:
        """Export one chunk, hand its files over, and re-export what expired meanwhile.

        ``queued`` is called once the first hand-off has queued every file.
        """
        state = self._states.get(chunk.index, "planned")
        if state == "done":
            self._skipped += 1
            return
        remotes: list[RemoteFile] | None = None
        request_id: str | None = None
        if state == "ready":
            stored = await self._store.export_for_chunk(chunk.index)
            if stored is not None and (stored.expires_at or 0) > self._clock():
                remotes = [f.remote() for f in await self._store.pending_files(chunk.index)]
                request_id = stored.request_id
                if request_id:
                    self.request_ids.append(request_id)
                    self._report(ExportReused(chunk.index, request_id))
        ds = chunk.recordset
        expired: list[RemoteFile] = []
        unnamed = 0
        for _round in range(MAX_REEXPORTS + 1):
            if remotes is None:
                try:
                    status = await self._export(chunk, ds)
                except ExportTooLargeError as exc:
                    await self._split(chunk, exc)
                    return
                except EmailNotRegisteredError as exc:
                    # Every address lapsed: let the staged chunks finish downloading, then
                    # end the pull with this error (run() raises it); this chunk stays to do.
                    if self._no_email is None:
                        self._no_email = exc
                    return
                except JsocError as exc:
                    if _is_fatal(exc):
                        raise
                    await self._fail_chunk(chunk, ds, exc, request_id)
                    return
                request_id = status.request_id
                stray = ([] if status.tarfile else
                         stray_segments(ds, status.files, self._filenamefmt or ""))
                if stray:
                    await self._fail_chunk(chunk, ds, _stray_error(status, stray), request_id)
                    return
                missing = ([] if status.tarfile else
                           missing_segments(ds, status.files, self._filenamefmt or ""))
                if missing:
                    await self._fail_chunk(chunk, ds, _missing_error(status, missing),
                                           request_id)
                    return
                remotes, refused = await self._register(chunk, status,
                                                        full=ds == chunk.recordset)
                unnamed += refused
                if status.tarfile:
                    await self._drop_earlier_tars(chunk, remotes)
            errors = await self._hand_off(chunk, remotes, jobs, queued)
            expired = [remote for remote, error in errors if is_expiry(error)]
            if not expired:
                failed = bool(errors) or unnamed > 0
                await self._store.set_chunk_state(
                    chunk.index, "failed" if failed else "done",
                    error=f"{len(errors) + unnamed} file(s) failed" if failed else None,
                )
                if failed:
                    self._failed += 1
                else:
                    self._done += 1
                return
            self._reexports += 1
            self._report(ExportExpired(chunk.index, request_id, len(expired)))
            await self._store.forget_export(chunk.index)
            await self._drop_tars([remote for remote in expired if self._is_tar(remote)])
            ds = self._missing_recordset(chunk, expired)
            remotes = None
        error = ExportExpiredError(
            f"the export of {chunk.recordset} kept expiring before its files arrived",
            status=5, request_id=request_id,
        )
        for remote in expired:
            self._fail(Failure(remote.record, error, remote.relpath, request_id))
        await self._store.set_chunk_state(chunk.index, "failed", error=error.message)
        self._failed += 1

    async def _export(self, chunk: Chunk, ds: str) -> ExportStatus:
        """A staged export of ``ds``: the chunk's stored one if still alive, else a new one."""
        if ds == chunk.recordset:
            reused = await self._reuse(chunk)
            if reused is not None:
                return reused
        resubmits = 0
        failed_ids: set[str] = set()
        while True:
            lost: ExportFailedError | ExportExpiredError | None = None
            async with self._pool.slot() as slot:
                try:
                    status, accepted_at = await self._submit(ds, slot.email)
                except EmailNotRegisteredError as exc:
                    # The address lapsed mid-run: drop it and take another slot.
                    self._pool.drop(slot.email, exc.server_message or exc.message)
                    continue
                if status.request_id in failed_ids:
                    raise _same_failed_export(status.request_id)
                now = self._clock()
                if status.request_id:
                    self.request_ids.append(status.request_id)
                    if ds == chunk.recordset:
                        await self._store.record_export(StoredExport(
                            chunk_index=chunk.index, request_id=status.request_id,
                            email=slot.email, method=status.method, protocol=status.protocol,
                            status=status.status, submitted_at=now,
                        ))
                        await self._store.set_chunk_state(chunk.index, "exporting")
                n_records = chunk.n_records if ds == chunk.recordset else ds.count(",") + 1
                self._report(ExportSubmitted(
                    chunk.index, slot.email, status.request_id,
                    status.method or self._config.export_method, n_records,
                ))
                self._staging += 1
                try:
                    status = await self._wait_ready(status, accepted_at=accepted_at)
                except (ExportFailedError, ExportExpiredError) as exc:
                    if not _worth_resubmitting(exc) or resubmits >= MAX_RESUBMITS:
                        raise
                    lost = exc
                finally:
                    self._staging -= 1
            if lost is not None:
                # The export failed (4), stayed unknown (6) or expired (5) while staging:
                # often transient on the real JSOC, so submit it again, a bounded number of
                # times, after a pause (outside the slot: the failed export is not pending).
                resubmits += 1
                # Only a real failure (4): an id handed back after status 6 ("not visible
                # yet") is an export the JSOC knows, worth polling again.
                if (isinstance(lost, ExportFailedError) and lost.status == 4
                        and lost.request_id):
                    failed_ids.add(lost.request_id)
                await self._store.forget_export(chunk.index)
                if isinstance(lost, ExportExpiredError):
                    self._reexports += 1
                    self._report(ExportExpired(chunk.index, lost.request_id, 0))
                await self._backoff(
                    resubmits, f"export {lost.request_id} ended in status {lost.status} "
                    "while staging; requesting it again", floor=self._config.poll_min)
                continue
            # The slot is free again here: the next chunk can be staged while this downloads.
            self._report(ExportReady(chunk.index, status.request_id, len(status.files)))
            return status

    async def _reuse(self, chunk: Chunk) -> ExportStatus | None:
        """The chunk's export from an earlier run, waited for if still pending; else None."""
        stored = await self._store.export_for_chunk(chunk.index)
        if stored is None or not stored.request_id:
            return None
        try:
            if stored.ready_at is not None:
                status = await self._api.exp_status(stored.request_id)
            else:
                # Maybe still staging (a crashed run's export): the JSOC counts it against
                # its email and the IP, so hold both before asking, or another chunk could
                # send a new export with that email and meet status 7 on our own export.
                async with self._hold_for(stored):
                    status = await self._api.exp_status(stored.request_id)
                    if not status.done:
                        status = await self._wait_ready(
                            status, accepted_at=self._accepted_at(stored))
        except (ExportExpiredError, ExportFailedError, ExportTooLargeError):
            await self._store.forget_export(chunk.index)
            return None
        self.request_ids.append(stored.request_id)
        self._report(ExportReused(chunk.index, stored.request_id))
        return status

    def _accepted_at(self, stored: StoredExport) -> float | None:
        """When a stored export was accepted, on ``anyio.current_time()``'s clock.

        So that an export left pending by an earlier run is polled for its real age: an old
        one at a quarter of that age, not from ``poll_min`` again.
        """
        if stored.submitted_at is None:
            return None
        age = max(0.0, self._clock() - stored.submitted_at)
        return anyio.current_time() - age

    @contextlib.asynccontextmanager
    async def _hold_for(self, stored: StoredExport) -> AsyncIterator[None]:
        """Hold the slot of a stored export's email (or an IP place if it has none)."""
        if stored.email:
            async with self._pool.slot_for(stored.email):
                yield
        else:
            async with self._pool.ip_slot():
                yield

    async def _submit(self, ds: str, email: str) -> tuple[ExportStatus, float]:
        """``exp_request`` until accepted: adopt pending exports (7), retry transient 4s.

        Returns the answer and when (``anyio.current_time()``) it arrived: the export's
        age counts from there, after any wait for a request token or retry.
        """
        attempt = 0
        while True:
            try:
                status = await self._api.exp_request(
                    ds, notify=email, method=self._config.export_method,
                    protocol=self._config.protocol, filenamefmt=self._filenamefmt,
                )
                return status, anyio.current_time()
            except PendingLimitError as exc:
                # Unbounded on purpose: pending exports end by themselves (at the latest
                # after the JSOC's pending timeout); the caller owns the overall deadline.
                attempt += 1
                said = exc.server_message or exc.message
                if exc.per_ip:
                    # Too many pending from this IP (maybe other users behind the same
                    # address): nothing of ours to adopt, wait at least a poll interval.
                    await self._backoff(
                        attempt, f"status 7, too many pending exports from this IP: {said}",
                        floor=self._config.poll_min)
                    continue
                if exc.pending_ids:
                    self._report(ExportAdopted(email, exc.pending_ids))
                    for request_id in exc.pending_ids:
                        await self._wait_out(request_id)
                    if attempt == 1:
                        continue
                await self._backoff(
                    attempt, f"status 7, {mask_email(email)} has a pending export: {said}",
                    floor=self._config.poll_min)
            except ExportFailedError as exc:
                if not exc.transient:
                    raise
                attempt += 1
                if attempt >= self._retry.attempts:
                    raise
                await self._backoff(attempt, f"status 4: {exc.server_message or exc.message}")

    async def _wait_out(self, request_id: str) -> None:
        """Wait until someone's pending export ``request_id`` is no longer pending."""
        try:
            status = await self._api.exp_status(request_id)
            await self._wait_ready(status)
        except (ServerRefusedError, ProtocolError) as exc:
            if _is_fatal(exc):
                raise

    async def _wait_ready(self, status: ExportStatus, *, accepted_at: float | None = None
                          ) -> ExportStatus:
        """:func:`~asyncjsoc._polling.wait_export_ready` with this scheduler's settings.

        ``accepted_at`` is given for an export this pull just requested: its polls are
        planned from, and teach, the staging times of the pull's earlier exports.
        """
        return await wait_export_ready(
            self._api, status, poll_min=self._config.poll_min, poll_max=self._config.poll_max,
            status6_retries=self._config.status6_retries, reporter=self._report,
            accepted_at=accepted_at, staging=self._staging_times,
        )

    async def _backoff(self, attempt: int, reason: str, *, floor: float = 0.0) -> None:
        """Sleep the retry policy's delay for ``attempt`` (at least ``floor``), and say so."""
        delay = max(self._retry.delay(attempt), floor)
        self._report(Backoff(delay, reason))
        await anyio.sleep(delay)

    async def _register(
        self, chunk: Chunk, status: ExportStatus, *, full: bool
    ) -> tuple[list[RemoteFile], int]:
        """The files of a staged export, recorded in the store with the export's lifetime.

        Returns the files and how many of the export's rows could not be given a name.
        """
        named: list[tuple[ExportFile, str]] = []
        urls: dict[ExportFile, str] = {}
        refused = 0
        for f in self._export_files(status):
            if f.filename in _NO_DATA or f.record.startswith("warning="):
                self.missing.append(f.record)
                continue
            try:
                if status.dir and not status.tarfile:
                    relpath = safe_relpath(f.filename)
                elif status.tarfile:
                    relpath = safe_relpath(f.filename.rsplit("/", 1)[-1])
                else:
                    relpath = quick_relpath(f.record, f.filename)
                if relpath.casefold() in self._reserved:
                    raise UnsafePathError(
                        f"refusing file name {f.filename!r}: it is asyncjsoc's state file "
                        "(state_path) inside the output directory",
                        hint="keep the state outside the output directory, or in its "
                             "default place")
                url = self._api.file_url(status, f)
            except UnsafePathError as exc:
                self._fail(Failure(f.record, exc, None, status.request_id))
                refused += 1
                continue
            urls[f] = url
            named.append((f, relpath))
        named, shared = _refuse_shared_names(named, status.request_id)
        for failure in shared:
            self._fail(failure)
        refused += len(shared)
        async with self._names_lock:
            if status.tarfile:
                named = [(f, await self._own_tar_name(chunk, relpath, f.record))
                         for f, relpath in named]
            owners = await self._store.records_of([relpath for _, relpath in named])
            remotes: list[RemoteFile] = []
            for f, relpath in named:
                owner = owners.get(relpath)
                if owner is not None and owner != f.record:
                    # Another export already put a different record under this name.
                    relpath = disambiguated_relpath(relpath, f.record)
                    if owners.get(relpath, f.record) != f.record:
                        self._fail(Failure(f.record, InvalidInputError(
                            f"no free file name for {f.record}: {relpath!r} is taken"),
                            None, status.request_id))
                        refused += 1
                        continue
                owners[relpath] = f.record
                remotes.append(RemoteFile(
                    url=urls[f], relpath=relpath, record=f.record,
                    request_id=status.request_id,
                ))
            await self._store.add_files(chunk.index, remotes)
        if full:
            now = self._clock()
            lifetime = EXPORT_RETENTION if status.request_id else QUICK_RETENTION
            await self._store.record_export(StoredExport(
                chunk_index=chunk.index, request_id=status.request_id, method=status.method,
                protocol=status.protocol, status=status.status, dir=status.dir,
                ready_at=now, expires_at=now + lifetime,
            ))
            await self._store.set_chunk_state(chunk.index, "ready")
        return remotes, refused

    @staticmethod
    def _export_files(status: ExportStatus) -> tuple[ExportFile, ...]:
        """The rows to download: the data rows, or the one tar file of a url-tar export
        (its record is the export's request id: see :meth:`_is_tar`)."""
        if status.tarfile:
            return (ExportFile(record=status.request_id or _UNNAMED_TAR,
                               filename=status.tarfile),)
        return status.files

    async def _own_tar_name(self, chunk: Chunk, relpath: str, record: str) -> str:
        """A name for a url-tar export's tar that no other chunk's file has.

        The tar is named by its request id, which the JSOC never hands out twice; a server
        that does (restarted with its counter reset, as an emulator can be) would give two
        chunks one tar name, and the second chunk's tar would pass for the first one's,
        already done: its records never fetched. Such a tar gets a name of its own, the
        same on every rerun.
        """
        owner = await self._store.chunk_of(relpath)
        if owner is None or owner == chunk.index:
            return relpath
        return disambiguated_relpath(relpath, f"{record} for export {chunk.index + 1}")

    def _is_tar(self, remote: RemoteFile) -> bool:
        """Whether ``remote`` is a url-tar export's tar rather than a record's file."""
        return (self._config.export_method == "url-tar"
                and remote.record == (remote.request_id or _UNNAMED_TAR))

    async def _drop_earlier_tars(self, chunk: Chunk, current: Sequence[RemoteFile]) -> None:
        """Drop the chunk's unfinished tars other than ``current``'s: tars of earlier
        exports (expired, or replaced by this one) that will never be fetched under their
        names; their records come in this export's tar."""
        keep = {remote.relpath for remote in current}
        earlier = [f.remote() for f in await self._store.pending_files(chunk.index)]
        await self._drop_tars([remote for remote in earlier
                               if self._is_tar(remote) and remote.relpath not in keep])

    async def _drop_tars(self, tars: Sequence[RemoteFile]) -> None:
        """Delete the partial downloads of tars whose exports are gone, then forget their
        rows (a row first would leave a part that no later run knows of).

        A tar's name is its export's request id, so a new export of the same records
        brings a tar of another name: these parts would never be resumed.
        """
        if not tars:
            return
        if self._discard_part is not None:
            for tar in tars:
                await self._discard_part(tar.relpath)
        await self._store.forget_unfinished([tar.relpath for tar in tars])

    async def _hand_off(
        self, chunk: Chunk, remotes: Sequence[RemoteFile],
        jobs: MemoryObjectSendStream[DownloadJob], queued: Callable[[], None],
    ) -> list[tuple[RemoteFile, JsocError]]:
        """Send the files to the downloaders, call ``queued``, wait until each is settled."""
        batch = _Batch(remotes)
        for remote in remotes:
            await send_soon(jobs, DownloadJob(remote, chunk.index, batch))
        queued()
        await batch.settled.wait()
        return batch.errors

    def _missing_recordset(self, chunk: Chunk, expired: Sequence[RemoteFile]) -> str:
        """A record set of just the expired files' records (or the whole chunk if many).

        A url-tar export's tar holds every record of the chunk and its "record" is the
        export's request id, no record set: losing it means requesting the whole chunk.
        """
        if any(self._is_tar(remote) for remote in expired):
            return chunk.recordset
        records = list(dict.fromkeys(r.record for r in expired))
        if len(records) > MAX_RECORDS_IN_LIST or any(r.startswith("warning=") for r in records):
            return chunk.recordset
        # The server applies a record set's segment lists to all its subsets, so one record
        # named per segment ("r{Bt},r{Br}", as url_quick rows are) would come back twice with
        # both segments, under shared names: name each record once with the merged segments.
        bases: dict[str, None] = {}
        segments: dict[str, None] = {}
        for record in records:
            match = re.match(r"^(?P<base>.*?)\{(?P<segs>[^{}]*)\}\s*$", record)
            if match is None:
                bases[record] = None
                continue
            bases[match["base"]] = None
            segments.update(dict.fromkeys(s.strip() for s in match["segs"].split(",")))
        suffix = ("{" + ",".join(segments) + "}" if segments
                  else _segment_suffix(chunk.recordset))
        return ",".join(base + suffix for base in bases)

    async def _split(self, chunk: Chunk, exc: ExportTooLargeError) -> None:
        """Split a too-large chunk and queue its parts (or fail it if it cannot be split)."""
        assert self._plan is not None
        assert self._queue is not None
        try:
            parts = await split_chunk(self._api, chunk)
        except InvalidInputError:
            parts = []  # a single record over the cap: nothing left to cut
        except JsocError as split_error:
            if _is_fatal(split_error):
                raise
            parts = []
        if len(parts) < 2:
            await self._fail_chunk(chunk, chunk.recordset, exc, exc.request_id)
            return
        renumbered: list[Chunk] = []
        for part in parts:
            renumbered.append(replace(part, index=self._next_index))
            self._next_index += 1
        self._plan = replace(
            self._plan,
            chunks=tuple(c for c in self._plan.chunks if c.index != chunk.index)
            + tuple(renumbered),
        )
        await self._store.save_plan(self._plan)
        self._splits += 1
        self._report(ChunkSplit(chunk, tuple(renumbered), exc.server_message or exc.message))
        self._outstanding += len(renumbered)
        for part in renumbered:
            self._queue.send_nowait(part)

    def _fail(self, failure: Failure, *, file: bool = True) -> None:
        """Record ``failure``, replacing an earlier one of the same file or record.

        A re-export of missing records can meet the same refusal again; each file is
        reported once, with its latest error (a row without a file name, once per message).
        A new failure of a file (``file``, as opposed to a whole chunk) is also reported as
        a :class:`~asyncjsoc._events.FileFailed`, named by its record when the server's name
        for it was refused, so displays count it with the files that failed to download.
        """

        def key(f: Failure) -> tuple[str, str]:
            """What identifies the thing that failed."""
            return (f.record, f.relpath if f.relpath is not None else "\0" + f.error.message)

        for i, earlier in enumerate(self.failures):
            if key(earlier) == key(failure):
                self.failures[i] = failure
                return
        self.failures.append(failure)
        if file:
            self._report(FileFailed(failure.relpath or failure.record, failure.record,
                                    failure.error))

    async def _fail_chunk(
        self, chunk: Chunk, ds: str, error: JsocError, request_id: str | None
    ) -> None:
        """Record that a chunk (or its re-export ``ds``) could not be exported."""
        if request_id is None and isinstance(error, ServerRefusedError):
            request_id = error.request_id  # the export that failed, if the error names it
        self._fail(Failure(ds, error, None, request_id), file=False)
        self._report(ExportFailed(chunk.index, request_id, error,
                                  chunk.n_files if ds == chunk.recordset else 0))
        await self._store.set_chunk_state(chunk.index, "failed", error=error.message)
        self._failed += 1


def _stray_error(status: ExportStatus, stray: Sequence[str]) -> ExportFailedError:
    """The error of an export holding segments the request did not ask for."""
    shown = ", ".join(repr(name.rsplit("/", 1)[-1]) for name in stray[:3])
    more = f" and {len(stray) - 3} more" if len(stray) > 3 else ""
    return ExportFailedError(
        f"export {status.request_id or '(quick)'} holds files of segments this request did "
        f"not ask for ({shown}{more}): the JSOC handed back an export it made earlier for the "
        "same records with other segments (within 24 h it spots a repeated request by its "
        "records, not its segments); none of its files is taken",
        status=status.status, request_id=status.request_id,
        hint="ask for these segments again a day after that export, or with a different "
             "filenamefmt (which makes it a new request)")


def _missing_error(status: ExportStatus, missing: Sequence[str]) -> ExportFailedError:
    """The error of an export holding no file of some segments the request asked for."""
    return ExportFailedError(
        f"export {status.request_id or '(quick)'} holds no file of segments this request "
        f"asked for ({', '.join(missing)}): the JSOC handed back an export it made earlier "
        "for the same records with fewer segments (within 24 h it spots a repeated request "
        "by its records, not its segments); none of its files is taken",
        status=status.status, request_id=status.request_id,
        hint="ask for these segments again a day after that export, or with a different "
             "filenamefmt (which makes it a new request)")


def _same_failed_export(request_id: str) -> ExportFailedError:
    """The error for a resubmission answered with the id of the export that just failed.

    The JSOC answers a request identical to one of the last 24 h with that request's id
    (protocol notes §5), even when that export failed: asking again cannot help until then.
    """
    return ExportFailedError(
        f"export {request_id} failed, and the JSOC hands that failed export back to the same "
        "request for 24 h (it spots a repeated request by its records and options)",
        status=4, request_id=request_id, handed_back=True,
        hint="run the pull again a day later, or change the request so that it is a new one "
             "(another filenamefmt, or another --method); other chunks are not affected")


def _worth_resubmitting(error: ExportFailedError | ExportExpiredError) -> bool:
    """Whether a staging export that ended with ``error`` may be submitted again."""
    return isinstance(error, ExportExpiredError) or error.status in (4, 6)


def _is_fatal(error: JsocError) -> bool:
    """Errors that end the whole pull: no usable email, an IP block, local state trouble."""
    return isinstance(error, EmailNotRegisteredError | IpBlockedError | LocalError)
