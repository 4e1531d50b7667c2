"""The :class:`Client`: its HTTP sessions, one rate limiter, one state store, the pull pipeline.

A pull is two stages joined by a bounded memory stream::

    ExportScheduler ──DownloadJob──▶ downloaders (config.connections) ──FileResult──▶ caller

The scheduler stages exports and hands over their files; the downloaders fetch, verify and
record each file, then pass a :class:`FileResult` to whoever iterates the pull. Everything
runs in anyio task groups inside the ``async with``; leaving it early cancels the pull and
leaves a state the next run resumes from.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType

import aiohttp
import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from asyncjsoc._api import JsocApi
from asyncjsoc._config import ClientConfig
from asyncjsoc._download import Downloader
from asyncjsoc._emails import EmailPool, ask_email
from asyncjsoc._events import (
    EmailChecked,
    FileDone,
    FileFailed,
    FileProgress,
    FileSkipped,
    FileStarted,
    NullReporter,
    PlanCounting,
    Planned,
    PullFinished,
    Reporter,
    TarUnpacked,
)
from asyncjsoc._handoff import receive_soon, send_soon
from asyncjsoc._http import TransportConfig, create_session
from asyncjsoc._models import EmailStatus, Plan, RemoteFile
from asyncjsoc._naming import default_filenamefmt
from asyncjsoc._paths import resolve_inside
from asyncjsoc._plan import estimate_bytes, make_plan
from asyncjsoc._query import Query
from asyncjsoc._ratelimit import TokenBucket
from asyncjsoc._retry import RetryPolicy
from asyncjsoc._scheduler import DownloadJob, ExportScheduler, Failure, is_expiry
from asyncjsoc._store import (
    STATE_FILE_SUFFIXES,
    OutputLock,
    StateStore,
    default_state_path,
)
from asyncjsoc._untar import extract_tar_in_pull
from asyncjsoc._verify import verify_fits
from asyncjsoc.exceptions import (
    DiskError,
    FileBusyError,
    IntegrityError,
    InvalidInputError,
    IpBlockedError,
    JsocError,
    StateError,
)

__all__ = ["API_CONNECTIONS", "WORKERS_PER_CONNECTION", "Client", "FileResult", "Pull",
           "PullResult"]

WORKERS_PER_CONNECTION = 8
"""Download workers per download connection.

While some workers wait for finished files to be made durable, renamed and recorded, others
use the connections (the session's connector still allows only ``connections`` transfers at a
time; workers waiting for a connection hold no buffers, and a small body waiting to be
published is at most :data:`~asyncjsoc._download.WHOLE_BODY_MAX`). For small files the disk
side takes longer than the transfer, and more workers waiting on it make its batches larger:
measured on 2 cores with 10,000 files of 5.8 kB over 4 connections, 2, 4 and 8 workers per
connection gave 872, 992 and 1,078 files/s with one fsync per file; with batched publishing
(:class:`~asyncjsoc._durable.BatchPublisher`), 4 and 8 gave 1,243 and 1,366 files/s.
"""

API_CONNECTIONS = 1
"""Connections for JSOC API calls, beside ``ClientConfig.connections`` for file downloads.

With one shared pool, an export request or status poll waited for a connection behind every
download already queued for one (the downloaders outnumber the connections), so the next
export could leave only after several files had arrived. The API calls are few and short, and
they are rate-limited with the downloads by the same token bucket.
"""


@dataclass(frozen=True, slots=True)
class FileResult:
    """One file that arrived, was verified and has its final name.

    Attributes
    ----------
    path
        Where it is on disk.
    relpath
        Its name relative to the output directory.
    record
        The DRMS record it belongs to (as the export listed it).
    bytes
        Its size.
    request_id
        The export it came from (``None`` for an immediate ``url_quick`` answer).
    url
        Where it was fetched from.
    resumed_from
        Bytes of it that were on disk before this run fetched it and were kept: the start of
        a part file an interrupted run left, or all of it for a file found complete.
    reused
        True for a file finished by an earlier run and found intact on disk: it was not
        fetched again (see :attr:`PullResult.reused`).
    members
        For a url-tar export's tar with :attr:`ClientConfig.extract_tars
        <asyncjsoc.ClientConfig.extract_tars>`: the files unpacked from it, in the tar's
        order. The tar itself (``path``) is then deleted.
    """

    path: Path
    relpath: str
    record: str
    bytes: int
    request_id: str | None
    url: str = ""
    resumed_from: int = 0
    reused: bool = False
    members: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True, repr=False)
class PullResult:
    """How a pull ended.

    Attributes
    ----------
    files
        The files fetched by this run, in the order they were finished, with the files it
        found complete under their final names but not yet recorded (a run killed before
        recording them, or a state removed since): those are reported as
        :class:`~asyncjsoc.events.FileSkipped`, not fetched.
    failed
        What did not arrive: files, or whole chunks whose export the JSOC refused.
    exports
        Every export request id used, new or reused.
    skipped
        How many files were already complete from an earlier run (``len(reused)``).
    missing
        Records the server listed without a file (``NoDataFile``): nothing to fetch.
    plan
        The plan as it ended, splits included.
    reused
        The files finished by earlier runs and found intact on disk (``reused=True``);
        with :attr:`files` they make :attr:`all_files`, every file of the pull on disk.
    """

    files: tuple[FileResult, ...]
    failed: tuple[Failure, ...]
    exports: tuple[str, ...]
    skipped: int = 0
    missing: tuple[str, ...] = ()
    plan: Plan | None = None
    reused: tuple[FileResult, ...] = ()

    @property
    def all_files(self) -> tuple[FileResult, ...]:
        """Every file of the pull that is on disk: fetched now, then reused from earlier runs."""
        return self.files + self.reused

    @property
    def ok(self) -> bool:
        """True when nothing failed; a rerun of a failed pull fetches only what is missing."""
        return not self.failed

    @property
    def bytes(self) -> int:
        """Bytes fetched by this run: the sizes of :attr:`files` less what was on disk
        already (the start of a resumed part file, a file found complete)."""
        return sum(f.bytes - f.resumed_from for f in self.files)

    def __repr__(self) -> str:
        # Counts, not contents: a pull may hold a million files, and ``asyncio.run`` formats
        # the repr of the finished main task (its result included) on its way out.
        return (f"PullResult(ok={self.ok}, files={len(self.files)}, bytes={self.bytes}, "
                f"failed={len(self.failed)}, reused={len(self.reused)}, "
                f"missing={len(self.missing)}, exports={len(self.exports)})")


@dataclass
class _PullState:
    """What the downloaders of one pull collect."""

    files: list[FileResult] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    reused: list[FileResult] = field(default_factory=list)
    reused_paths: set[str] = field(default_factory=set)
    # Relpaths the store may hold as done beyond reused_paths (only these need a look-up).
    done_here: set[str] = field(default_factory=set)
    store_has_more_done: bool = True
    # Tars unpacked (ClientConfig.extract_tars) by this run or an earlier one: members.
    unpacked: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Files recorded as done whose size on disk differs: the final file is not trusted.
    changed: set[str] = field(default_factory=set)


class Pull:
    """A pull in progress: iterate it for each :class:`FileResult` as it is verified.

    Obtained from :meth:`Client.pull`, not made directly. After the iteration ends,
    :attr:`result` holds the :class:`PullResult`. Files reused from earlier runs are not
    yielded; they are in ``result.reused``.

    Parameters
    ----------
    results
        The stream the downloaders send finished files into.
    plan
        The plan the pull started with.
    scheduler
        The pull's export scheduler.
    pool
        The pull's email pool.
    """

    def __init__(self, results: MemoryObjectReceiveStream[FileResult], plan: Plan,
                 scheduler: ExportScheduler, pool: EmailPool) -> None:
        self._results = results
        self.plan = plan
        """The plan the pull started with."""
        self.result: PullResult | None = None
        """The outcome; set once every file is settled (before the iteration ends)."""
        self._scheduler = scheduler
        self._pool = pool

    def __aiter__(self) -> Pull:
        """The pull is its own iterator."""
        return self

    async def __anext__(self) -> FileResult:
        """The next verified file; stops when every file is settled, or once the pull's
        ``async with`` block has been left."""
        try:
            return await receive_soon(self._results)
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    @property
    def scheduler(self) -> ExportScheduler:
        """The export scheduler, for :meth:`~ExportScheduler.statistics`."""
        return self._scheduler

    @property
    def emails(self) -> EmailPool:
        """The email pool, for :meth:`~asyncjsoc._emails.EmailPool.statistics`."""
        return self._pool


def pull_fingerprint(query: Query, config: ClientConfig, *, legacy: bool = False) -> str:
    """A digest of what decides a pull's files: the record set, server and export options.

    The record set is :meth:`Query.identity`, so equivalent spellings resume one pull;
    ``legacy`` gives the digest earlier versions stored (:meth:`Query.canonical`: numbers
    only), which a resumed pull accepts and replaces.
    """
    fields = {
        "recordset": query.canonical() if legacy else query.identity(),
        "server": config.server,
        "method": config.export_method,
        "protocol": config.protocol,
        "filenamefmt": config.filenamefmt,
        "max_files_per_export": config.max_files_per_export,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class Client:
    """An async client for bulk JSOC downloads into one output directory.

    Use it as an async context manager. It owns two HTTP sessions (file downloads with
    ``config.connections`` connections, JSOC API calls with :data:`API_CONNECTIONS`), one rate
    limiter shared by both and, from
    its first :meth:`pull` or :meth:`fetch` on, the directory's state store and its lock: a
    second client (or process) pulling into the same directory is then refused until this
    one is closed. :meth:`plan` and :meth:`check_emails` write nothing and take no lock.
    It works inside any running anyio/asyncio event loop and starts
    no threads for I/O, no private loops and no signal handlers.

    Parameters
    ----------
    config
        The options; ``None`` means :class:`~asyncjsoc.ClientConfig` defaults (which have
        no email: enough for :meth:`plan`, not for exports).
    out_dir
        Where files go. Created if needed.
    reporter
        Receives the engine's events (see :mod:`asyncjsoc.events`).

    Raises
    ------
    InvalidInputError
        When ``out_dir`` names an existing file, or ``reporter`` is an ``async def``
        function (events are reported without awaiting).

    Examples
    --------
    >>> async with Client(ClientConfig(emails=("me@example.org",)), "data") as client:
    ...     result = await client.fetch("hmi.sharp_cea_720s[7300][2018.09.30_00:00_TAI/1h]")
    """

    def __init__(self, config: ClientConfig | None = None, out_dir: str | Path = ".", *,
                 reporter: Reporter | None = None) -> None:
        if config is not None and not isinstance(config, ClientConfig):
            raise InvalidInputError(f"config must be a ClientConfig, not {type(config).__name__}",
                                    hint="pass ClientConfig(**options)")
        self.config = config if config is not None else ClientConfig()
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise InvalidInputError(f"out_dir {str(self.out_dir)!r} is a file, not a directory",
                                    hint="give a directory (it is created if missing)")
        if reporter is not None and _is_async_callable(reporter):
            # Called and never awaited, it would get no event at all, silently.
            raise InvalidInputError(
                "reporter must be a plain function: the engine calls it without awaiting",
                hint="use `def`, not `async def`; to hand events to async code, put them on "
                     "a queue (anyio.create_memory_object_stream, send_nowait) and read it "
                     "in a task")
        self._report: Reporter = reporter if reporter is not None else NullReporter()
        self._stack: contextlib.AsyncExitStack | None = None
        self._entered = False
        self._session: aiohttp.ClientSession | None = None
        self._api: JsocApi | None = None
        self._store: StateStore | None = None
        self._downloader: Downloader | None = None
        self._bucket: TokenBucket | None = None
        self._pull_lock = anyio.Lock()
        self._store_lock = anyio.Lock()
        # Addresses the JSOC confirmed as registered during this client's life: later pulls
        # do not ask again (EmailPool's ``known``).
        self._registered: dict[str, EmailStatus] = {}

    # -- lifetime -------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        """Open the HTTP session (the state store opens with the first pull).

        Raises
        ------
        RuntimeError
            When the client was entered before; a client is used once.
        """
        if self._entered:
            raise RuntimeError("a Client can be entered only once")
        self._entered = True
        config = self.config
        retry = config.retry if config.retry is not None else RetryPolicy()
        transport = TransportConfig(
            connections=config.connections, requests_per_second=config.requests_per_second,
            burst=config.burst, sock_connect=config.sock_connect, sock_read=config.sock_read,
            ca_bundle=config.ca_bundle,
        )
        async with contextlib.AsyncExitStack() as stack:
            self._bucket = transport.make_bucket()
            self._session = await stack.enter_async_context(
                create_session(transport, self._bucket))
            # The JSOC API calls (exports, polls, jsoc_info) get a connection of their own,
            # so they never queue behind file downloads waiting for one; same rate limiter.
            api_session = await stack.enter_async_context(
                create_session(replace(transport, connections=API_CONNECTIONS), self._bucket))
            self._api = JsocApi(api_session, config.server, retry=retry)
            self._downloader = Downloader(
                self._session, chunk_size=config.chunk_size,
                verify_checksums=config.verify_checksums, retry=retry,
                inline_io=config.inline_io, transfers=config.connections, fsync=config.fsync,
            )
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        """Close everything; see :meth:`aclose`."""
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session and release the output directory; the client is done after."""
        stack, self._stack = self._stack, None
        self._api = None
        if stack is not None:
            with anyio.CancelScope(shield=True):
                await stack.aclose()

    def _require_open(self) -> tuple[JsocApi, Downloader]:
        """The open resources, or a clear error when used outside ``async with``."""
        if self._api is None or self._downloader is None or self._stack is None:
            raise RuntimeError("use the Client inside `async with Client(...) as client:`")
        return self._api, self._downloader

    async def _open_store(self) -> StateStore:
        """The state store, opened (and locked) on first use; closed with the client."""
        async with self._store_lock:
            self._require_open()
            if self._store is None:
                assert self._stack is not None
                default = default_state_path(self.out_dir)
                path = self.config.state_path or default
                if await anyio.to_thread.run_sync(_elsewhere, path, default):
                    # The store locks its own database: lock the directory as well.
                    lock = OutputLock(self.out_dir)
                    await anyio.to_thread.run_sync(lock.__enter__)
                    self._stack.callback(lock.__exit__)
                self._store = await self._stack.enter_async_context(
                    StateStore(path, reset=self.config.reset))
            return self._store

    def _opened_store(self) -> StateStore:
        """The store a running pull uses."""
        assert self._store is not None
        return self._store

    @property
    def api(self) -> JsocApi:
        """The typed JSOC API over this client's session (for series info, counts...)."""
        return self._require_open()[0]

    def statistics(self) -> dict[str, object]:
        """The rate limiter's counters (requests granted, waits, pauses)."""
        return {"rate_limiter": self._bucket.statistics() if self._bucket else None}

    # -- operations -----------------------------------------------------------------------

    async def check_emails(self) -> list[EmailStatus]:
        """Ask the JSOC about each configured email (``checkAddress``); nothing is exported.

        Always asks afresh. The client remembers the registered addresses (here and in every
        pull), and its later pulls do not ask about those again; an address a pull had to
        drop, or one found not registered, is asked about again.

        Returns
        -------
        list of EmailStatus
            One per address, in order; ``registered`` says if it can be used.
        """
        statuses = await self._ask_emails(fresh=True)
        for status in statuses:
            self._report(EmailChecked(status))
        return statuses

    async def _ask_emails(self, *, fresh: bool = False) -> list[EmailStatus]:
        """The status of each configured email, remembering the registered ones.

        Unless ``fresh``, an address already confirmed during this client's life is not
        asked again. Reports nothing: the pulls report what their pools found.
        """
        api = self._require_open()[0]
        return [await ask_email(api, email, self._registered, fresh=fresh)
                for email in self.config.emails]

    async def plan(self, query: Query | str) -> Plan:
        """Split a query into export-sized chunks, without exporting anything.

        Parameters
        ----------
        query
            A :class:`~asyncjsoc.Query` or a DRMS record-set string.

        Returns
        -------
        Plan
            The chunks, with record and file counts.
        """
        api = self._require_open()[0]
        query = _as_query(query)
        plan = await make_plan(api, query, max_files_per_export=self.config.max_files_per_export,
                               on_count=lambda n: self._report(PlanCounting(n)))
        plan = replace(plan, estimated_bytes=await estimate_bytes(
            api, plan, segments=query.segments))
        self._report(Planned(plan))
        return plan

    async def fetch(self, query: Query | str) -> PullResult:
        """Download everything ``query`` selects; resumes what an earlier run left.

        Parameters
        ----------
        query
            A :class:`~asyncjsoc.Query` or a DRMS record-set string.

        Returns
        -------
        PullResult
            What arrived and what did not (``ok`` is false if anything failed).
        """
        # Nothing reads the files one by one here, so none is sent through the pull's stream:
        # handing each file to a waiting reader cost a task wake-up and an anyio receive per
        # file (see _run_pull). The iteration below ends when the pull does.
        async with self._pull(query, stream_files=False) as pull:
            async for _ in pull:
                pass
        assert pull.result is not None
        return pull.result

    @contextlib.asynccontextmanager
    async def pull(self, query: Query | str) -> AsyncIterator[Pull]:
        """Download everything ``query`` selects, yielding each file as it is verified.

        Use as ``async with client.pull(query) as pull: async for f in pull: ...``. Leaving
        the block early cancels the rest; the state store keeps what is done, so running the
        same query again resumes.

        Parameters
        ----------
        query
            A :class:`~asyncjsoc.Query` or a DRMS record-set string.

        Yields
        ------
        Pull
            An async iterator of :class:`FileResult`; its ``result`` is set at the end.

        Raises
        ------
        StateMismatchError
            The state file holds the state of a different pull (see ``ClientConfig.reset``).
        StateLockedError
            Another run is pulling into the same directory.
        EmailNotRegisteredError
            No configured email can be used for exports.
        """
        async with self._pull(query, stream_files=True) as pull:
            yield pull

    @contextlib.asynccontextmanager
    async def _pull(self, query: Query | str, *, stream_files: bool) -> AsyncIterator[Pull]:
        """:meth:`pull`; without ``stream_files`` the iteration yields nothing and ends with
        the pull (the files are in ``result`` all the same)."""
        api, downloader = self._require_open()
        query = _as_query(query)
        store = await self._open_store()
        if self._pull_lock.locked() and self._pull_lock.statistics().owner == (
                anyio.get_current_task()):
            raise RuntimeError(
                "this Client is already running a pull in this task (a fetch() or pull() "
                "inside a pull() block would wait for itself): finish the first pull, or run "
                "the other in another task, where it waits its turn")
        async with self._pull_lock:
            # The output directory may have changed since the last pull: look at it afresh.
            downloader.forget_directories()
            plan = await self._prepare(query, store)
            info = await api.series_info(plan.series)
            filenamefmt = self.config.filenamefmt or default_filenamefmt(info)
            pool = EmailPool(api, self.config.emails,
                             max_pending=self.config.max_pending_exports, reporter=self._report,
                             known=self._registered)
            reserved = await anyio.to_thread.run_sync(_state_names_inside, store.path,
                                                      self.out_dir)
            scheduler = ExportScheduler(
                api, pool, store, self.config, reporter=self._report, filenamefmt=filenamefmt,
                reserved=reserved, discard_part=functools.partial(downloader.discard_part,
                                                                  self.out_dir))
            results_send, results_receive = anyio.create_memory_object_stream[FileResult](
                self.config.download_buffer)
            pull = Pull(results_receive, plan, scheduler, pool)
            try:
                with results_receive:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._run_pull, plan, scheduler, pool, results_send, pull,
                                      stream_files)
                        yield pull
                        # Leaving early: stop the pull; the store keeps what is done.
                        tg.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                sole = _sole_error(group)
                if sole is None:
                    raise
                raise sole from None
            finally:
                pool.close()
                # However the pull ended, what finished is committed now, not when the client
                # closes: read_status (or a status command) meanwhile tells the truth.
                await store.flush()

    async def _prepare(self, query: Query, store: StateStore) -> Plan:
        """The plan of ``query``: the stored one when resuming the same pull, else a new one."""
        fingerprint = pull_fingerprint(query, self.config)
        stored = await store.stored_fingerprint()
        if stored is not None and stored != fingerprint and stored == pull_fingerprint(
                query, self.config, legacy=True):
            await store.replace_fingerprint(fingerprint)  # stored by an earlier version
        await store.check_fingerprint(fingerprint)
        stored = await store.stored_fingerprint()
        plan: Plan | None = None
        if stored == fingerprint:
            plan = await store.load_plan()
        if plan is None:
            plan = await self.plan(query)
            await store.save_plan(plan, fingerprint)
        else:
            self._report(Planned(plan))
        return plan

    async def _run_pull(self, plan: Plan, scheduler: ExportScheduler, pool: EmailPool,
                        results: MemoryObjectSendStream[FileResult], pull: Pull,
                        stream_files: bool = True) -> None:
        """The whole pipeline: scheduler → downloaders → results; sets ``pull.result``.

        Without ``stream_files`` the downloaders send nothing to ``results``, which closes
        when the pull ends.
        """
        store = self._opened_store()
        state = _PullState()
        async with results:
            unchecked = await store.files_unchecked()
            if not self.config.verify_checksums and not unchecked:
                await store.set_files_unchecked(True)  # before any file is recorded unchecked
            check = self.config.verify_checksums and unchecked
            await self._reuse_done(store, state, check=check)
            if check:
                await store.set_files_unchecked(False)
            summary = await store.summary()
            state.store_has_more_done = summary.files.get("done", 0) > len(state.reused_paths)
            states = await store.chunk_states()
            if self.config.emails and any(s != "done" for s in states.values()):
                await pool.check()
            jobs_send, jobs_receive = anyio.create_memory_object_stream[DownloadJob](
                self.config.download_buffer)
            async with anyio.create_task_group() as tg, jobs_receive:
                tg.start_soon(scheduler.run, plan, jobs_send)
                # More workers than connections: see WORKERS_PER_CONNECTION.
                for _ in range(WORKERS_PER_CONNECTION * self.config.connections):
                    tg.start_soon(self._download_worker, jobs_receive.clone(),
                                  results.clone() if stream_files else None, state)
            failed = tuple(scheduler.failures) + tuple(state.failures)
            result = PullResult(
                files=tuple(state.files), failed=failed,
                exports=tuple(dict.fromkeys(scheduler.request_ids)),
                skipped=len(state.reused), missing=tuple(scheduler.missing),
                plan=scheduler.plan or plan, reused=tuple(state.reused),
            )
            pull.result = result
            self._report(PullFinished(files=len(result.files), failed=len(result.failed),
                                      bytes=result.bytes, exports=len(result.exports),
                                      ok=result.ok))

    async def _reuse_done(self, store: StateStore, state: _PullState, *,
                          check: bool = False) -> None:
        """Report the files finished by earlier runs; queue again the ones gone from disk.

        A file is reused when it is on disk with its recorded size. One that is not is put
        back to pending, and its chunk (if done) back to ``ready``, so the scheduler fetches
        it again from the stored export, or re-exports it if that export is gone. A file
        still there with another size (cut short or changed since) is fetched again too, not
        taken as complete. With ``check`` (checksums are on now, and an earlier run had them
        off), each file (and each file unpacked from a tar) must also pass
        :func:`~asyncjsoc._verify.verify_fits`, or it is fetched again.
        """
        states = await store.chunk_states()
        unpacked = await store.unpacked()
        state.unpacked = {tar: tuple(name for name, _ in members)
                          for tar, members in unpacked.items()}
        for index in sorted(states):
            records = await store.done_files(index)
            if not records:
                continue
            sizes = await anyio.to_thread.run_sync(
                _sizes_on_disk, self.out_dir, [r.relpath for r in records])
            gone = False
            for record, (path, size) in zip(records, sizes, strict=True):
                members = state.unpacked.get(record.relpath)
                if members is not None and not await self._members_intact(
                        record.relpath, unpacked[record.relpath], store, state, check=check):
                    gone = True
                    continue
                if (members is None and check and path is not None and size == record.bytes
                        and not await _checks_out(path)):
                    size = -1  # on disk as recorded, but damaged: fetch it again
                if members is not None:  # unpacked: the tar is meant to be gone
                    if path is not None:  # a run stopped before deleting it
                        await anyio.to_thread.run_sync(_remove, path)
                elif path is None or size != record.bytes:
                    await store.mark_pending(record.relpath)
                    if size is not None:  # there, but not as recorded: fetch it again
                        state.changed.add(record.relpath)
                    gone = True
                    continue
                elif self.config.extract_tars:  # a run stopped before unpacking it
                    try:
                        members = await self._unpack(record.relpath, path, state)
                    except JsocError as exc:
                        if isinstance(exc, DiskError):
                            raise
                        await store.mark_pending(record.relpath)
                        gone = True
                        continue
                dest = path if path is not None else await anyio.to_thread.run_sync(
                    resolve_inside, self.out_dir, record.relpath)
                state.reused.append(FileResult(
                    path=dest, relpath=record.relpath, record=record.record,
                    bytes=record.bytes, request_id=record.request_id, url=record.url,
                    reused=True, members=self._member_paths(members)))
                state.reused_paths.add(record.relpath)
                self._report(FileSkipped(record.relpath, record.bytes, record.record))
            if gone and states[index] == "done":
                await store.set_chunk_state(index, "ready")

    async def _members_intact(self, tar: str, members: tuple[tuple[str, int | None], ...],
                              store: StateStore, state: _PullState, *,
                              check: bool = False) -> bool:
        """Whether every file unpacked from ``tar`` is still on disk with its size (and,
        with ``check``, passes :func:`~asyncjsoc._verify.verify_fits`).

        When one is not (deleted, cut short, changed), the tar is put back to pending, to be
        fetched and unpacked again, like any finished file gone from disk; the changed
        members are deleted first (they are this pull's own files, and unpacking never
        overwrites a file that is not byte-identical), the intact ones are kept.
        """
        found = await anyio.to_thread.run_sync(
            _sizes_on_disk, self.out_dir, [name for name, _ in members])
        changed = [path for (_, want), (path, size) in zip(members, found, strict=True)
                   if path is not None and size is not None and (
                       (want is not None and size != want)
                       or (check and not await _checks_out(path)))]
        if not changed and all(path is not None and size is not None
                               for path, size in found):
            return True
        for path in changed:
            await anyio.to_thread.run_sync(_remove, path)
        await store.forget_unpacked(tar)
        del state.unpacked[tar]
        await store.mark_pending(tar)
        return False

    async def _unpack(self, relpath: str, tar: Path, state: _PullState) -> tuple[str, ...]:
        """Unpack a downloaded tar, record it as unpacked, then delete it; its members.

        In this order a stop at any point loses nothing: before the record the tar is still
        there and is unpacked again (members already there are kept), after it the tar is
        known to be unpacked and only deleted.
        """
        done = await extract_tar_in_pull(tar, self.out_dir,
                                         verify_checksums=self.config.verify_checksums,
                                         fsync=self.config.fsync)
        base = self.out_dir.resolve()
        members = tuple(p.relative_to(base).as_posix() for p in done.files)
        sizes = await anyio.to_thread.run_sync(_file_sizes, done.files)
        await self._opened_store().mark_unpacked(relpath, members, sizes)
        state.unpacked[relpath] = members
        await anyio.to_thread.run_sync(_remove, tar)
        self._report(TarUnpacked(relpath, len(members), done.new))
        return members

    def _member_paths(self, members: tuple[str, ...] | None) -> tuple[Path, ...]:
        """Paths of unpacked members under the output directory (resolved, like ``path``)."""
        if not members:
            return ()
        base = self.out_dir.resolve()
        return tuple(base.joinpath(*m.split("/")) for m in members)

    async def _download_worker(self, jobs: MemoryObjectReceiveStream[DownloadJob],
                               results: MemoryObjectSendStream[FileResult] | None,
                               state: _PullState) -> None:
        """Fetch jobs one at a time until the scheduler closes the stream; send each file
        to ``results`` (if given) too."""
        async with jobs, results if results is not None else contextlib.nullcontext():
            while True:
                try:
                    job = await receive_soon(jobs)
                except anyio.EndOfStream:
                    return
                result, error = await self._download_one(job.remote, state)
                job.settle(error)
                if result is not None:
                    state.files.append(result)
                    if results is not None:
                        await send_soon(results, result)

    async def _download_one(self, remote: RemoteFile,
                            state: _PullState) -> tuple[FileResult | None, JsocError | None]:
        """Fetch one file (or skip it if done); returns the result or the error."""
        _, downloader = self._require_open()
        store = self._opened_store()
        relpath = remote.relpath
        report = self._report
        if relpath in state.reused_paths:
            return None, None  # reported at the start of the pull
        try:
            # Every file the store held as done at the start is in reused_paths (or was put
            # back to pending); only files finished since can be done without a look-up.
            maybe_done = state.store_has_more_done or relpath in state.done_here
            known = await store.file_state(relpath) if maybe_done else None
            # A final file the store does not list as done was finished by a run killed
            # between the rename and its (bulk-committed) record: keep it. One the store
            # lists with another size was changed on disk: fetch it again.
            trust_final = relpath not in state.changed
            if known is not None and known.state == "done" and relpath in state.unpacked:
                dest = await anyio.to_thread.run_sync(resolve_inside, self.out_dir, relpath)
                state.reused.append(FileResult(
                    path=dest, relpath=relpath, record=remote.record, bytes=known.bytes,
                    request_id=known.request_id, url=known.url, reused=True,
                    members=self._member_paths(state.unpacked[relpath])))
                state.reused_paths.add(relpath)
                report(FileSkipped(relpath, known.bytes, remote.record))
                return None, None
            if known is not None and known.state == "done":
                dest = await anyio.to_thread.run_sync(resolve_inside, self.out_dir, relpath)
                size = await anyio.to_thread.run_sync(_size_or_none, dest)
                if size == known.bytes:
                    state.reused.append(FileResult(
                        path=dest, relpath=relpath, record=remote.record, bytes=size,
                        request_id=known.request_id, url=known.url, reused=True))
                    state.reused_paths.add(relpath)
                    report(FileSkipped(relpath, size, remote.record))
                    return None, None
                await store.mark_pending(relpath)
                trust_final = False
            started = False

            def progress(done: int, total: int | None) -> None:
                nonlocal started
                if not started:
                    started = True
                    report(FileStarted(relpath, total, done))
                report(FileProgress(relpath, done, total))

            outcome = await downloader.download_into(remote, self.out_dir, on_progress=progress,
                                                     trust_final=trust_final)
            members: tuple[str, ...] = ()
            if self.config.extract_tars:
                # Recorded done first: a tar on disk under its final name is complete.
                await store.record_done(relpath, outcome.bytes)
                try:
                    members = await self._unpack(relpath, outcome.path, state)
                except JsocError as exc:
                    # A tar that cannot be unpacked is fetched again by the next run (the
                    # members already out are kept); after a disk error, or while another
                    # process unpacks one of its members, it is kept for the next run.
                    if not isinstance(exc, DiskError | FileBusyError):
                        await anyio.to_thread.run_sync(_remove, outcome.path)
                    raise
        except JsocError as exc:
            if isinstance(exc, IpBlockedError | StateError | DiskError):
                raise
            if not is_expiry(exc):
                # Expired files are not failures yet: the scheduler requests them again.
                await store.mark_failed(relpath, exc.message)
                state.failures.append(Failure(remote.record, exc, relpath, remote.request_id))
                report(FileFailed(relpath, remote.record, exc))
            return None, exc
        # Committed in bulk (StateStore.record_done): the file is final on disk already.
        if not self.config.extract_tars:
            await store.record_done(relpath, outcome.bytes)
        state.done_here.add(relpath)
        # Found complete under its final name (attempts == 0: nothing was fetched): already
        # present, like a file the store knew, not a download.
        kept = outcome.attempts == 0
        report(FileSkipped(relpath, outcome.bytes, remote.record) if kept
               else FileDone(relpath, outcome.bytes))
        return FileResult(path=outcome.path, relpath=relpath, record=remote.record,
                          bytes=outcome.bytes, request_id=remote.request_id, url=remote.url,
                          resumed_from=outcome.carried_over,
                          members=self._member_paths(members)), None


def _is_async_callable(function: object) -> bool:
    """Whether calling ``function`` returns a coroutine (an ``async def`` function, or an
    object whose ``__call__`` is one)."""
    if inspect.isroutine(function):
        return inspect.iscoroutinefunction(function)
    # The class's __call__, inherited ones included (looked up on the type, as a call does)
    call = next((vars(base)["__call__"] for base in type(function).__mro__
                 if "__call__" in vars(base)), None)
    return inspect.iscoroutinefunction(call)


def _as_query(query: Query | str) -> Query:
    """A Query from a Query or a record-set string."""
    if isinstance(query, str):
        return Query.from_recordset(query)
    if not isinstance(query, Query):
        raise InvalidInputError(f"a query is a record-set string or a Query, not {query!r}",
                                hint="e.g. 'hmi.M_720s[2014.01.01_TAI/1h]{magnetogram}', "
                                     "or Query.build(...)")
    return query


def _elsewhere(path: Path, default: Path) -> bool:
    """Whether the state file ``path`` is not the output directory's default one."""
    return path.resolve() != default.resolve()


def _state_names_inside(state: Path, out_dir: Path) -> frozenset[str]:
    """The names under ``out_dir`` of the state database and its companion files, when it
    was put inside the output directory (``state_path``): server-sent names may not take
    them. (The default place, ``.asyncjsoc/``, is refused by ``safe_relpath`` already.)"""
    try:
        inside = state.resolve().relative_to(out_dir.resolve()).as_posix()
    except ValueError:
        return frozenset()
    return frozenset(inside + suffix for suffix in STATE_FILE_SUFFIXES)


def _sizes_on_disk(out_dir: Path, relpaths: list[str]) -> list[tuple[Path | None, int | None]]:
    """Each relpath's final path and size on disk (``None`` when missing or unsafe)."""
    found: list[tuple[Path | None, int | None]] = []
    for relpath in relpaths:
        try:
            path = resolve_inside(out_dir, relpath)
        except JsocError:
            found.append((None, None))
            continue
        found.append((path, _size_or_none(path)))
    return found


async def _checks_out(path: Path) -> bool:
    """Whether the file at ``path`` passes :func:`~asyncjsoc._verify.verify_fits` (one that
    cannot be read counts as damaged: fetching it again is the safe answer)."""
    try:
        await verify_fits(path)
    except (IntegrityError, OSError):
        return False
    return True


def _file_sizes(paths: Sequence[Path]) -> list[int]:
    """The size of each file."""
    return [path.stat().st_size for path in paths]


def _remove(path: Path) -> None:
    """Delete a file if it is there."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _size_or_none(path: Path) -> int | None:
    """The size of a regular file, or None if there is none."""
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def _sole_error(group: BaseExceptionGroup[BaseException]) -> Exception | None:
    """The one ordinary exception inside nested groups (the first, if all are of one type)."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    # Several of one kind (every download worker meeting the same full disk) count as one.
    first = leaves[0] if leaves else None
    if isinstance(first, Exception) and all(type(e) is type(first) for e in leaves):
        return first
    return None
