"""The state store: what a pull planned, exported and downloaded, kept on disk (SQLite).

A rerun of the same pull into the same directory reads it back and only does what is left.
The store lives in ``<out_dir>/.asyncjsoc/state.sqlite`` by default, next to a lock file that
one run holds for the store's whole lifetime. SQLite runs in WAL mode with
``synchronous=NORMAL``: a committed change survives the process being killed.

All SQLite work runs in worker threads, one call at a time, on a single connection.

Completions recorded with :meth:`StateStore.record_done` are kept in memory and committed in
bulk (at most :data:`DEFERRED_ROWS` rows or :data:`DEFERRED_SECONDS` old, and always before any
other operation of the store runs, so every read sees them). A file is given its final name
before it is recorded, so a run killed before such a commit leaves complete files that the
store still lists as pending; the next run finds them under their final names and keeps them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, TypeVar, cast

import anyio
import anyio.to_thread

from ._models import Chunk, Plan, RemoteFile
from ._paths import STATE_DIRNAME
from .exceptions import (
    DiskError,
    InvalidInputError,
    StateError,
    StateLockedError,
    StateMismatchError,
)

__all__ = [
    "ChunkState",
    "FileRecord",
    "FileState",
    "OutputLock",
    "StateStore",
    "StoreSummary",
    "StoredExport",
    "default_state_path",
    "lock_path",
    "read_summary",
    "read_unpacked",
    "take_lock",
]

DEFERRED_ROWS = 1024
"""Completions :meth:`StateStore.record_done` keeps before committing them."""

DEFERRED_SECONDS = 0.5
"""Age of the oldest kept completion after which the next :meth:`StateStore.record_done`
commits them all.

Committing each small file's completion on its own (even grouped with the few finishing at the
same moment) cost a worker-thread hop and a transaction per handful of files. Measured on 2
cores, 20,000 files of 5.8 kB over 4 connections, 4 alternating rounds against the commit
before: into tmpfs 2,812 -> 3,153 files/s (medians), on ext4 2,223 -> 2,311 files/s and 0.332
-> 0.299 ms of user CPU per file.
"""

T = TypeVar("T")

ChunkState = Literal["planned", "exporting", "ready", "done", "failed"]
"""Where one chunk (one export request) stands."""

FileState = Literal["pending", "partial", "done", "failed"]
"""Where one file stands."""

_CHUNK_STATES = ("planned", "exporting", "ready", "done", "failed")
_FILE_STATES = ("pending", "partial", "done", "failed")
SCHEMA_VERSION = 1

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    idx       INTEGER PRIMARY KEY,
    recordset TEXT NOT NULL,
    n_records INTEGER NOT NULL,
    n_files   INTEGER NOT NULL,
    state     TEXT NOT NULL DEFAULT 'planned' CHECK (state IN {_CHUNK_STATES!r}),
    error     TEXT
);
CREATE TABLE IF NOT EXISTS exports (
    chunk_idx    INTEGER PRIMARY KEY,
    email        TEXT,
    request_id   TEXT,
    method       TEXT,
    protocol     TEXT,
    status       INTEGER,
    dir          TEXT,
    submitted_at REAL,
    ready_at     REAL,
    expires_at   REAL
);
CREATE TABLE IF NOT EXISTS files (
    relpath       TEXT PRIMARY KEY,
    url           TEXT NOT NULL,
    record        TEXT NOT NULL,
    request_id    TEXT,
    chunk_idx     INTEGER NOT NULL,
    expected_size INTEGER,
    etag          TEXT,
    state         TEXT NOT NULL DEFAULT 'pending' CHECK (state IN {_FILE_STATES!r}),
    bytes         INTEGER NOT NULL DEFAULT 0,
    error         TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_by_chunk_state ON files (chunk_idx, state);
CREATE TABLE IF NOT EXISTS unpacked (
    relpath TEXT PRIMARY KEY,
    members TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS unpacked_sizes (
    relpath TEXT PRIMARY KEY,
    sizes   TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_by_state ON files (state);

"""


def default_state_path(out_dir: Path) -> Path:
    """Where the state database of ``out_dir`` lives by default.

    Parameters
    ----------
    out_dir
        The output directory of a pull.

    Returns
    -------
    Path
        ``<out_dir>/.asyncjsoc/state.sqlite``.
    """
    return out_dir / STATE_DIRNAME / "state.sqlite"


STATE_FILE_SUFFIXES = ("", "-wal", "-shm", "-journal", ".lock")
"""The state database's name and the suffixes of its companions (SQLite's, and the lock)."""


def lock_path(state_path: Path) -> Path:
    """The lock file a run holds while it uses the state database ``state_path``; for the
    default state of an output directory, its :func:`~asyncjsoc._paths.output_lock_path`."""
    return state_path.with_name(state_path.name + ".lock")


def _state_place_hint(exc: OSError, directory: Path) -> str:
    """What to do when the state's directory cannot hold asyncjsoc's files."""
    elsewhere = "or keep the state elsewhere (--state PATH, ClientConfig.state_path)"
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        return f"a file is where the directory {directory} must be: move it away, {elsewhere}"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{directory} is not writable here: fix its permissions, {elsewhere}"
    return f"check {directory}, {elsewhere}"


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def take_lock(path: Path, user_of: str) -> int:
    """Create ``path`` (and its directory) and hold an exclusive ``flock`` on it.

    Returns the descriptor (closing it releases the lock); the holder's pid is written in
    the file, for the error a second taker gets.

    Raises
    ------
    StateLockedError
        Another process (or another open descriptor here) holds it; the message names
        ``user_of``, what the lock guards.
    StateError
        The lock file cannot be created or locked.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StateError(f"cannot create the state lock {path}: {exc.strerror or exc}",
                         hint=_state_place_hint(exc, path.parent)) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
        finally:
            os.close(fd)
        if holder == str(os.getpid()):
            raise StateLockedError(
                f"another Client in this process is using {user_of}",
                hint="close it first (leave its `async with` block), or use a different "
                     "output directory",
            ) from None
        # A run holding the lock wrote its pid; `extract` shares it without writing one, so
        # a pid left by an earlier run may be there: name it only if it is alive.
        who = (f"pid {holder}" if holder.isdigit() and _alive(int(holder))
               else "an `extract`, or a run starting just now")
        raise StateLockedError(
            f"another asyncjsoc run is using {user_of} ({who})",
            hint="wait for it to finish, or use a different output directory",
        ) from None
    except OSError as exc:
        os.close(fd)
        raise StateError(f"cannot lock {path}: {exc}") from exc
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError as exc:  # a full disk, a quota: the pid needs a block
        os.close(fd)  # and with it the lock
        raise StateError(f"cannot write to the state lock {path}: {exc.strerror or exc}",
                         hint=_state_place_hint(exc, path.parent)) from exc
    return fd


def release_lock(fd: int) -> None:
    """Release a lock taken with :func:`take_lock`: its pid is erased first, so nobody
    later reads it as the holder's (an ``extract`` shares the lock without writing one)."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)


class OutputLock:
    """The lock of an output directory for a pull whose state database lives elsewhere.

    A :class:`StateStore` locks its database; at the default location that lock is the
    output directory's too. A pull with its own ``state_path`` also holds this one (the
    default location's lock file), so two pulls never write into one directory at once,
    whichever state each uses. A sync context manager (the calls are quick and local).
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        self._fd = take_lock(lock_path(default_state_path(self.out_dir)), str(self.out_dir))
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is not None:
            release_lock(self._fd)
            self._fd = None


@dataclass(frozen=True, slots=True)
class StoredExport:
    """The export request made for one chunk, as far as the store knows.

    Times are POSIX timestamps (seconds). Callers judge whether it is still usable, usually by
    ``expires_at``.
    """

    chunk_index: int
    request_id: str | None
    email: str | None = None
    method: str | None = None
    protocol: str | None = None
    status: int | None = None
    dir: str | None = None
    submitted_at: float | None = None
    ready_at: float | None = None
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One file row: what to fetch, where it goes, and how far it got."""

    relpath: str
    url: str
    record: str
    chunk_index: int
    state: FileState
    bytes: int = 0
    request_id: str | None = None
    expected_size: int | None = None
    etag: str | None = None
    error: str | None = None

    def remote(self) -> RemoteFile:
        """The file as a :class:`~asyncjsoc._models.RemoteFile` to hand to a downloader."""
        return RemoteFile(url=self.url, relpath=self.relpath, record=self.record,
                          request_id=self.request_id, expected_size=self.expected_size)


@dataclass(frozen=True, slots=True)
class StoreSummary:
    """Counts of chunks and files by state, and bytes of finished files."""

    chunks: dict[str, int] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    bytes_done: int = 0

    @property
    def files_total(self) -> int:
        """All file rows, whatever their state."""
        return sum(self.files.values())


_SQLITE_MAGIC = b"SQLite format 3\x00"
"""How every SQLite database file begins."""

_UNCHECKED = "unchecked_files"
"""Meta key: "1" once a run with checksums off began, until a run checked every file."""


def read_unpacked(conn: sqlite3.Connection) -> dict[str, tuple[tuple[str, int | None], ...]]:
    """Every unpacked tar with its members and their sizes (``None`` where not recorded, or
    recorded for another list of members: by an older version unpacking it again)."""
    tables = {str(name) for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "unpacked" not in tables:  # stores written before it existed
        return {}
    sizes: dict[str, list[int]] = {}
    if "unpacked_sizes" in tables:
        sizes = {str(relpath): [int(n) for n in json.loads(text)] for relpath, text in
                 conn.execute("SELECT relpath, sizes FROM unpacked_sizes")}
    out: dict[str, tuple[tuple[str, int | None], ...]] = {}
    for relpath, text in conn.execute("SELECT relpath, members FROM unpacked"):
        names = [str(name) for name in json.loads(text)]
        known = sizes.get(str(relpath))
        if known is None or len(known) != len(names):
            out[str(relpath)] = tuple((name, None) for name in names)
        else:
            out[str(relpath)] = tuple(zip(names, known, strict=True))
    return out


def read_summary(conn: sqlite3.Connection) -> StoreSummary:
    """:meth:`StateStore.summary` on an open connection (a read-only one too)."""
    chunks = {str(s): int(n) for s, n in
              conn.execute("SELECT state, count(*) FROM chunks GROUP BY state")}
    files = {str(s): int(n) for s, n in
             conn.execute("SELECT state, count(*) FROM files GROUP BY state")}
    (done,) = conn.execute(
        "SELECT coalesce(sum(bytes), 0) FROM files WHERE state = 'done'").fetchone()
    return StoreSummary(chunks=chunks, files=files, bytes_done=int(done))


_FILE_COLUMNS = ("relpath, url, record, chunk_idx, state, bytes, request_id, expected_size, "
                 "etag, error")


@dataclass(slots=True)
class _DoneBatch:
    """Completions committed together by :meth:`StateStore.mark_done`."""

    rows: list[tuple[int, str | None, str]] = field(default_factory=list)
    committed: anyio.Event = field(default_factory=anyio.Event)
    unknown: set[str] = field(default_factory=set)
    error: Exception | None = None


def _no_work(conn: sqlite3.Connection) -> None:
    """Nothing (for a hop that only commits deferred completions)."""


def _file_record(row: tuple[object, ...]) -> FileRecord:
    """A FileRecord from a row selected with ``_FILE_COLUMNS``."""
    relpath, url, record, chunk_idx, state, nbytes, request_id, size, etag, error = row
    return FileRecord(
        relpath=str(relpath), url=str(url), record=str(record),
        chunk_index=_int(chunk_idx), state=cast(FileState, state), bytes=_int(nbytes),
        request_id=_opt_str(request_id), expected_size=None if size is None else _int(size),
        etag=_opt_str(etag), error=_opt_str(error),
    )


def _int(value: object) -> int:
    """An SQLite integer column value."""
    assert isinstance(value, int)
    return value


def _opt_str(value: object) -> str | None:
    """An SQLite nullable text column value."""
    return None if value is None else str(value)


class StateStore:
    """The persistent state of one pull into one output directory.

    Use it as an async context manager; :meth:`open` takes the directory lock and
    :meth:`close` releases it. A second store on the same database (in this process or
    another) is refused with :class:`~asyncjsoc.exceptions.StateLockedError` while the first
    is open.

    Parameters
    ----------
    path
        The SQLite database file; see :func:`default_state_path`. Its directory is created.
    fingerprint
        What this pull is (a digest of the query and the options that change its files). If the
        store was made by a different pull, :meth:`open` raises
        :class:`~asyncjsoc.exceptions.StateMismatchError`, unless ``reset`` is true.
    reset
        Throw away stored state made by a different pull instead of refusing.
    """

    def __init__(self, path: Path, *, fingerprint: str | None = None, reset: bool = False) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.reset = reset
        self._lock_path = lock_path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._limiter = anyio.CapacityLimiter(1)
        self._db_lock = threading.Lock()  # see _serially
        self._closed = False
        self._done_next: _DoneBatch | None = None
        self._flushing: anyio.Event | None = None
        self._deferred: list[tuple[int, str | None, str]] = []  # see record_done
        self._deferred_since = 0.0  # time.monotonic() of the oldest deferred row
        self._deferred_flush: anyio.Event | None = None  # set when flush() ends

    @classmethod
    def for_output(cls, out_dir: Path, *, fingerprint: str | None = None,
                   reset: bool = False) -> StateStore:
        """The store at the default location under ``out_dir``.

        Parameters
        ----------
        out_dir
            The output directory.
        fingerprint, reset
            As for the constructor.

        Returns
        -------
        StateStore
            A store that is not open yet.
        """
        return cls(default_state_path(out_dir), fingerprint=fingerprint, reset=reset)

    # -- lifetime ---------------------------------------------------------------------------

    async def __aenter__(self) -> StateStore:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def open(self) -> None:
        """Take the lock, open (or create) the database and check the fingerprint.

        Raises
        ------
        StateLockedError
            If another store holds the lock.
        StateError
            If the database is unusable, from a newer asyncjsoc, or from a different pull.
        """
        if self._conn is not None or self._closed:
            raise RuntimeError("a StateStore can be opened once")
        await anyio.to_thread.run_sync(self._serially, self._open_sync, limiter=self._limiter)

    async def close(self) -> None:
        """Commit what :meth:`record_done` kept, close the database, release the lock.

        Safe to call twice.
        """
        if self._closed:
            return
        self._closed = True
        try:
            with anyio.CancelScope(shield=True):
                # Completions being committed are written before the database closes.
                while (busy := self._flushing or self._deferred_flush) is not None:
                    await busy.wait()
                await anyio.to_thread.run_sync(self._serially, self._finish_sync,
                                               limiter=self._limiter)
        finally:
            if self._conn is not None or self._lock_fd is not None:
                # Only when a cancellation got through the shield (asyncio's own
                # Task.cancel(), repeated, can): finish here, once any database call still
                # running in a worker thread is over, so the lock is never left held.
                self._serially(self._finish_sync)

    def _finish_sync(self) -> None:
        """Commit the deferred completions, then close the database and release the lock
        (whatever the commit did). Does nothing the second time."""
        rows, self._deferred = self._deferred, []
        try:
            if rows and self._conn is not None:
                try:
                    unknown = self._mark_done_rows(self._conn, rows)
                except sqlite3.Error as exc:
                    raise self._failed(exc) from exc
                if unknown:
                    raise StateError(f"recorded as done but not files of this pull: "
                                     f"{', '.join(sorted(unknown)[:5])}")
        finally:
            self._close_sync()

    def _serially(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` while no other database call runs (a thread-level guard: the
        capacity limiter alone cannot stop a worker thread whose awaiting task was
        cancelled)."""
        with self._db_lock:
            return fn(*args)

    def _open_sync(self) -> None:
        """Blocking body of :meth:`open`."""
        if os.path.lexists(self.path) and not self.path.is_file():
            # Never make a lock or journal next to /dev/null or inside someone's directory.
            raise InvalidInputError(
                f"the state file {self.path} exists and is not a regular file",
                hint="give a file name asyncjsoc may create (or leave the state at its default "
                     "place in the output directory)")
        self._take_lock()
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            self._release_lock()
            raise StateError(f"cannot open the state database {self.path}: {exc}") from exc
        self._conn = conn
        try:
            self._refuse_foreign(conn)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=OFF")
            with self._transaction(conn):
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                version = self._meta_get(conn, "schema_version")
                if version is None:
                    self._meta_set(conn, "schema_version", str(SCHEMA_VERSION))
                elif int(version) > SCHEMA_VERSION:
                    raise StateError(
                        f"{self.path} was written by a newer asyncjsoc (schema {version})",
                        hint="upgrade asyncjsoc, or use another output directory",
                    )
                if self.fingerprint is not None:
                    self._check_fingerprint(conn, self.fingerprint, reset=self.reset)
        except sqlite3.DatabaseError as exc:
            self._close_sync()
            raise StateError(
                f"the state database {self.path} is unusable: {exc}",
                hint=f"move {self.path.parent if self._in_own_directory else self.path} away "
                     "to start this pull afresh (files already downloaded are kept)",
            ) from exc
        except BaseException:
            self._close_sync()
            raise

    @property
    def _in_own_directory(self) -> bool:
        """Whether the database lives in an output directory's ``.asyncjsoc`` (asyncjsoc's
        own directory), rather than at a path the user chose."""
        return self.path.parent.name == STATE_DIRNAME

    def _refuse_foreign(self, conn: sqlite3.Connection) -> None:
        """Refuse a file at a chosen ``state_path`` that is not an asyncjsoc state file (a
        text file, someone's database): it is only read, never turned into ours, and the
        lock file made for it is removed again."""
        if self._in_own_directory:
            return  # a damaged store there is reported as unusable
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(_SQLITE_MAGIC))
            # SQLite takes a file shorter than its header for an empty database: only an
            # empty file (a first run killed before its first write) is ours to fill.
            if head and head != _SQLITE_MAGIC:
                raise sqlite3.DatabaseError("not a database")
            tables = {row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        except (sqlite3.DatabaseError, OSError):
            what = "is not an SQLite database"
        else:
            if not tables or "meta" in tables:
                return
            what = "is an SQLite database, but not an asyncjsoc state file"
        with contextlib.suppress(OSError):
            self._lock_path.unlink()  # ours, and held: nobody else can be using it
        raise InvalidInputError(f"{self.path} {what}; it was left unchanged",
                                hint="give the state its own new file name")

    def _close_sync(self) -> None:
        """Blocking body of :meth:`close`."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._release_lock()

    def _take_lock(self) -> None:
        """Create the state directory and hold an exclusive flock on the lock file."""
        default = self._in_own_directory and self.path.name == "state.sqlite"
        user_of = str(self.path.parent.parent) if default else str(self.path)
        self._lock_fd = take_lock(self._lock_path, user_of)

    def _release_lock(self) -> None:
        """Drop the flock (closing the descriptor releases it)."""
        if self._lock_fd is not None:
            release_lock(self._lock_fd)
            self._lock_fd = None

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in a worker thread, one call at a time.

        Completions deferred by :meth:`record_done` are committed first, in the same hop.
        """
        conn = self._conn
        if conn is None:
            raise StateError("the state store is not open")
        if not self._deferred:
            try:
                return await anyio.to_thread.run_sync(self._serially, fn, conn,
                                                      limiter=self._limiter)
            except sqlite3.Error as exc:
                raise self._failed(exc) from exc
        rows, self._deferred = self._deferred, []
        try:
            return await anyio.to_thread.run_sync(
                self._serially, functools.partial(self._after_deferred, rows=rows, fn=fn), conn,
                limiter=self._limiter)
        except StateError:
            raise  # rows that are not this pull's: trying them again would fail again
        except sqlite3.Error as exc:
            self._deferred[:0] = rows  # not committed: the next operation tries again
            raise self._failed(exc) from exc
        except BaseException:
            # Cancelled, most likely before the worker thread began: the next operation (or
            # close) commits them. Should they have been committed, again is harmless.
            self._deferred[:0] = rows
            raise

    def _failed(self, exc: sqlite3.Error) -> StateError | DiskError:
        """The error for an SQLite failure while using the database: a :class:`DiskError`
        when the disk is to blame (full, read-only, failing), else a :class:`StateError`."""
        name = getattr(exc, "sqlite_errorname", "")
        if name.startswith(("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN")):
            return DiskError(f"cannot write the state database {self.path}: {exc}",
                             hint="free some space, or fix the permissions, then run the same "
                                  "command again: finished files are kept")
        return StateError(f"the state database {self.path} failed: {exc}",
                          hint="run the same command again; if it fails the same way, move "
                               "the state file away to start the pull afresh (finished files "
                               "are kept)")

    @classmethod
    def _after_deferred(cls, conn: sqlite3.Connection, rows: list[tuple[int, str | None, str]],
                        fn: Callable[[sqlite3.Connection], T]) -> T:
        """Commit deferred completions, then run ``fn(conn)``."""
        unknown = cls._mark_done_rows(conn, rows)
        if unknown:
            raise StateError(f"recorded as done but not files of this pull: "
                             f"{', '.join(sorted(unknown)[:5])}")
        return fn(conn)

    @staticmethod
    @contextlib.contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
        """BEGIN IMMEDIATE … COMMIT, rolled back on any error.

        After some errors (a full disk, an I/O error) SQLite has rolled the transaction back
        itself; the error that says so is the one raised, not a failed ``ROLLBACK``.
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a failed COMMIT may leave it open
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _meta_get(conn: sqlite3.Connection, key: str) -> str | None:
        """One value of the meta table."""
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def _meta_set(conn: sqlite3.Connection, key: str, value: str) -> None:
        """Set one value of the meta table."""
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                     "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    async def check_fingerprint(self, fingerprint: str) -> None:
        """Refuse early, before any work, when the store belongs to a different pull.

        Nothing is written; with ``reset`` nothing is refused (:meth:`save_plan` wipes).

        Raises
        ------
        StateMismatchError
            If another fingerprint is stored and the store was not opened with ``reset``.
        """
        stored = await self.stored_fingerprint()
        if stored is not None and stored != fingerprint and not self.reset:
            raise self._mismatch()

    async def replace_fingerprint(self, fingerprint: str) -> None:
        """Store ``fingerprint`` in place of the stored one, keeping the plan and progress
        (the same pull, identified as an earlier version did)."""
        def write(conn: sqlite3.Connection) -> None:
            self._meta_set(conn, "fingerprint", fingerprint)

        await self._run(write)

    def _mismatch(self) -> StateMismatchError:
        """The error for a store that belongs to a different pull."""
        return StateMismatchError(
            f"{self.path.parent.parent} holds the state of a different pull "
            f"(state file {self.path})",
            hint="use another output directory (or another state file) for this "
                 "query, or pass reset=True (ClientConfig.reset) to discard the stored "
                 f"state; or delete {self.path.parent} (downloaded files are kept)",
        )

    def _check_fingerprint(self, conn: sqlite3.Connection, fingerprint: str, *,
                           reset: bool) -> None:
        """Adopt ``fingerprint`` if none is stored; refuse (or reset) on a different one."""
        stored = self._meta_get(conn, "fingerprint")
        if stored == fingerprint:
            return
        if stored is not None:
            if not reset:
                raise self._mismatch()
            self._wipe(conn)
        self._meta_set(conn, "fingerprint", fingerprint)

    @staticmethod
    def _wipe(conn: sqlite3.Connection) -> None:
        """Forget the plan, exports and files of a previous pull."""
        for table in ("chunks", "exports", "files", "unpacked", "unpacked_sizes"):
            conn.execute(f"DELETE FROM {table}")
        conn.execute("DELETE FROM meta WHERE key = 'plan'")

    # -- plan -------------------------------------------------------------------------------

    async def save_plan(self, plan: Plan, fingerprint: str | None = None) -> None:
        """Store a plan and its chunks, keeping the progress of chunks that did not change.

        Parameters
        ----------
        plan
            The plan.
        fingerprint
            If given, checked (and adopted) like the constructor's ``fingerprint``.

        Raises
        ------
        StateError
            If ``fingerprint`` differs from the stored one and the store was not opened with
            ``reset``.
        """
        head = json.dumps({"series": plan.series, "n_records": plan.n_records,
                           "n_files": plan.n_files, "estimated_bytes": plan.estimated_bytes})
        rows = [(c.index, c.recordset, c.n_records, c.n_files) for c in plan.chunks]

        def work(conn: sqlite3.Connection) -> None:
            with self._transaction(conn):
                if fingerprint is not None:
                    self._check_fingerprint(conn, fingerprint, reset=self.reset)
                self._meta_set(conn, "plan", head)
                conn.execute("CREATE TEMP TABLE IF NOT EXISTS keep (idx INTEGER PRIMARY KEY)")
                conn.execute("DELETE FROM keep")
                conn.executemany("INSERT INTO keep (idx) VALUES (?)", [(r[0],) for r in rows])
                conn.execute("DELETE FROM exports WHERE chunk_idx NOT IN (SELECT idx FROM keep)")
                conn.execute("DELETE FROM chunks WHERE idx NOT IN (SELECT idx FROM keep)")
                # A chunk whose record set changed starts over; its old export is useless.
                conn.executemany(
                    "DELETE FROM exports WHERE chunk_idx = ? AND chunk_idx IN "
                    "(SELECT idx FROM chunks WHERE idx = ? AND recordset != ?)",
                    [(r[0], r[0], r[1]) for r in rows])
                conn.executemany(
                    "INSERT INTO chunks (idx, recordset, n_records, n_files) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (idx) DO UPDATE SET "
                    "state = CASE WHEN recordset = excluded.recordset THEN state "
                    "ELSE 'planned' END, "
                    "error = CASE WHEN recordset = excluded.recordset THEN error ELSE NULL END, "
                    "recordset = excluded.recordset, n_records = excluded.n_records, "
                    "n_files = excluded.n_files", rows)

        await self._run(work)

    async def load_plan(self) -> Plan | None:
        """The stored plan, or ``None`` if none was saved.

        Returns
        -------
        Plan or None
            The plan as saved, chunks in index order.
        """

        def work(conn: sqlite3.Connection) -> Plan | None:
            head = self._meta_get(conn, "plan")
            if head is None:
                return None
            fields = json.loads(head)
            chunks = tuple(
                Chunk(index=i, recordset=rs, n_records=nr, n_files=nf)
                for i, rs, nr, nf in conn.execute(
                    "SELECT idx, recordset, n_records, n_files FROM chunks ORDER BY idx"))
            return Plan(series=fields["series"], chunks=chunks, n_records=fields["n_records"],
                        n_files=fields["n_files"], estimated_bytes=fields["estimated_bytes"])

        return await self._run(work)

    async def files_unchecked(self) -> bool:
        """Whether a run with checksums off may have recorded finished files since the
        last run that checked them all (see :meth:`set_files_unchecked`)."""
        return await self._run(lambda conn: self._meta_get(conn, _UNCHECKED) == "1")

    async def set_files_unchecked(self, unchecked: bool) -> None:
        """Record that finished files may not have had their checksums verified (a run with
        checksums off is starting), or that all of them now have."""

        def work(conn: sqlite3.Connection) -> None:
            self._meta_set(conn, _UNCHECKED, "1" if unchecked else "0")

        await self._run(work)

    async def stored_fingerprint(self) -> str | None:
        """The fingerprint of the pull this store belongs to, if one was recorded."""
        return await self._run(lambda conn: self._meta_get(conn, "fingerprint"))

    # -- chunks and exports -----------------------------------------------------------------

    async def set_chunk_state(self, index: int, state: ChunkState,
                              error: str | None = None) -> None:
        """Record where chunk ``index`` stands (and why it failed, for ``failed``).

        Raises
        ------
        StateError
            If the chunk is not part of the stored plan.
        """

        def work(conn: sqlite3.Connection) -> None:
            with self._transaction(conn):
                cur = conn.execute("UPDATE chunks SET state = ?, error = ? WHERE idx = ?",
                                   (state, error, index))
                if cur.rowcount == 0:
                    raise StateError(f"chunk {index} is not in the stored plan")

        await self._run(work)

    async def chunk_states(self) -> dict[int, ChunkState]:
        """The state of every chunk of the stored plan, by index."""

        def work(conn: sqlite3.Connection) -> dict[int, ChunkState]:
            return {int(i): s for i, s in conn.execute("SELECT idx, state FROM chunks")}

        return await self._run(work)

    async def record_export(self, export: StoredExport) -> None:
        """Store (or replace) the export request of a chunk."""
        row = (export.chunk_index, export.email, export.request_id, export.method,
               export.protocol, export.status, export.dir, export.submitted_at,
               export.ready_at, export.expires_at)

        def work(conn: sqlite3.Connection) -> None:
            with self._transaction(conn):
                conn.execute("INSERT OR REPLACE INTO exports (chunk_idx, email, request_id, "
                             "method, protocol, status, dir, submitted_at, ready_at, expires_at) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)

        await self._run(work)

    async def export_for_chunk(self, index: int) -> StoredExport | None:
        """The stored export request of chunk ``index``, or ``None``."""

        def work(conn: sqlite3.Connection) -> StoredExport | None:
            row = conn.execute(
                "SELECT chunk_idx, request_id, email, method, protocol, status, dir, "
                "submitted_at, ready_at, expires_at FROM exports WHERE chunk_idx = ?",
                (index,)).fetchone()
            return None if row is None else StoredExport(*row)

        return await self._run(work)

    async def forget_export(self, index: int) -> None:
        """Drop the stored export request of chunk ``index`` (it expired or failed)."""

        def work(conn: sqlite3.Connection) -> None:
            with self._transaction(conn):
                conn.execute("DELETE FROM exports WHERE chunk_idx = ?", (index,))

        await self._run(work)

    # -- files ------------------------------------------------------------------------------

    async def add_files(self, chunk_index: int, files: Sequence[RemoteFile]) -> None:
        """Add the files of a chunk's export, in one transaction; idempotent.

        A file already known keeps its state and byte count; its URL, request id, chunk and
        expected size are updated (a new export of the same data has new URLs).

        Parameters
        ----------
        chunk_index
            The chunk the files belong to.
        files
            The files; their ``relpath`` is the key.
        """
        rows = [(f.relpath, f.url, f.record, f.request_id, chunk_index, f.expected_size)
                for f in files]

        def work(conn: sqlite3.Connection) -> None:
            with self._transaction(conn):
                conn.executemany(
                    "INSERT INTO files (relpath, url, record, request_id, chunk_idx, "
                    "expected_size) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (relpath) DO UPDATE SET url = excluded.url, "
                    "record = excluded.record, request_id = excluded.request_id, "
                    "chunk_idx = excluded.chunk_idx, "
                    "expected_size = coalesce(excluded.expected_size, expected_size)", rows)

        await self._run(work)

    async def forget_unfinished(self, relpaths: Sequence[str]) -> None:
        """Drop the rows of files that will never be fetched under these names (a url-tar
        export's tar lost to expiry comes back under another name); finished files stay."""
        rows = [(relpath,) for relpath in relpaths]

        def work(conn: sqlite3.Connection) -> None:
            with self._transaction(conn):
                conn.executemany("DELETE FROM files WHERE relpath = ? AND state != 'done'", rows)

        await self._run(work)

    async def _update_file(self, relpath: str, sql: str, params: tuple[object, ...]) -> None:
        """Run an UPDATE on one file row; an unknown relpath is an error."""

        def work(conn: sqlite3.Connection) -> None:
            with self._transaction(conn):
                if conn.execute(sql, (*params, relpath)).rowcount == 0:
                    raise StateError(f"{relpath!r} is not a known file of this pull")

        await self._run(work)

    async def mark_done(self, relpath: str, nbytes: int, *, etag: str | None = None) -> None:
        """Record that ``relpath`` is complete on disk with ``nbytes`` bytes.

        Calls made while another is being committed are committed together, in one
        transaction (a group commit): many downloaders finishing small files share one
        worker-thread hop and one SQLite commit. Each call still returns only once its own
        row is committed, so a file is never reported done before the store says so. A call
        that is cancelled while it waits is committed all the same (the file is complete on
        disk), and :meth:`close` waits for commits in progress.

        Raises
        ------
        StateError
            If ``relpath`` is not a known file of this pull.
        """
        if self._conn is None:
            raise StateError("the state store is not open")
        batch = self._done_next
        if batch is None:
            batch = self._done_next = _DoneBatch()
        batch.rows.append((nbytes, etag, relpath))
        if self._flushing is None:
            await self._flush_done()
        else:
            await batch.committed.wait()
        if batch.error is not None:
            raise batch.error
        if relpath in batch.unknown:
            raise StateError(f"{relpath!r} is not a known file of this pull")

    async def record_done(self, relpath: str, nbytes: int) -> None:
        """Record that ``relpath`` is complete on disk with ``nbytes`` bytes, in bulk.

        Unlike :meth:`mark_done` this does not wait for a commit: the completion is kept in
        memory and committed with others once :data:`DEFERRED_ROWS` are kept or the oldest is
        :data:`DEFERRED_SECONDS` old (this call then commits them), before any other operation
        of the store, and on :meth:`close`. Call it only for a file that is already complete
        under its final name: a run killed before the commit leaves it listed as pending, and
        the next run keeps it as found on disk.

        Raises
        ------
        StateError
            If the store is not open; or, from the operation that commits them, if a deferred
            completion names a file this pull does not have.
        """
        if self._conn is None:
            raise StateError("the state store is not open")
        deferred = self._deferred
        if not deferred:
            self._deferred_since = time.monotonic()
        deferred.append((nbytes, None, relpath))
        if self._deferred_flush is None and (
                len(deferred) >= DEFERRED_ROWS
                or time.monotonic() - self._deferred_since >= DEFERRED_SECONDS):
            await self.flush()

    async def flush(self) -> None:
        """Commit the completions kept by :meth:`record_done` (shielded from cancellation)."""
        if not self._deferred:
            return
        flushing = self._deferred_flush = anyio.Event()
        try:
            with anyio.CancelScope(shield=True):
                await self._run(_no_work)
        finally:
            self._deferred_flush = None
            flushing.set()

    async def _flush_done(self) -> None:
        """Commit queued completions, batch after batch, until none is left (shielded)."""
        flushing = self._flushing = anyio.Event()
        try:
            with anyio.CancelScope(shield=True):
                while (batch := self._done_next) is not None:
                    self._done_next = None
                    try:
                        batch.unknown = await self._run(
                            functools.partial(self._mark_done_rows, rows=batch.rows))
                    except Exception as exc:  # every caller of the batch sees it
                        batch.error = exc
                    batch.committed.set()
        finally:
            self._flushing = None
            flushing.set()

    @classmethod
    def _mark_done_rows(cls, conn: sqlite3.Connection,
                        rows: list[tuple[int, str | None, str]]) -> set[str]:
        """Mark files done in one transaction; returns the relpaths that are not known."""
        unknown = set()
        with cls._transaction(conn):
            for row in rows:
                if conn.execute("UPDATE files SET state = 'done', bytes = ?, "
                                "etag = coalesce(?, etag), error = NULL WHERE relpath = ?",
                                row).rowcount == 0:
                    unknown.add(row[2])
        return unknown

    async def mark_partial(self, relpath: str, nbytes: int) -> None:
        """Record that ``relpath`` has ``nbytes`` bytes in its ``.part`` file."""
        await self._update_file(
            relpath, "UPDATE files SET state = 'partial', bytes = ? WHERE relpath = ? "
                     "AND state != 'done'", (nbytes,))

    async def mark_failed(self, relpath: str, error: str) -> None:
        """Record that ``relpath`` failed, and why."""
        await self._update_file(
            relpath, "UPDATE files SET state = 'failed', error = ? WHERE relpath = ?", (error,))

    async def mark_pending(self, relpath: str) -> None:
        """Put ``relpath`` back in the queue (its final file is missing after all)."""
        await self._update_file(
            relpath, "UPDATE files SET state = 'pending', bytes = 0, error = NULL "
                     "WHERE relpath = ?", ())

    async def file_state(self, relpath: str) -> FileRecord | None:
        """The row of ``relpath``, or ``None`` if the file is unknown."""

        def work(conn: sqlite3.Connection) -> FileRecord | None:
            row = conn.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE relpath = ?",
                               (relpath,)).fetchone()
            return None if row is None else _file_record(row)

        return await self._run(work)

    async def done_relpaths(self) -> set[str]:
        """The relative paths of every finished file."""

        def work(conn: sqlite3.Connection) -> set[str]:
            return {r for (r,) in conn.execute("SELECT relpath FROM files WHERE state = 'done'")}

        return await self._run(work)

    async def mark_unpacked(self, relpath: str, members: Sequence[str],
                            sizes: Sequence[int] | None = None) -> None:
        """Record that the done tar ``relpath`` was unpacked into ``members`` (relative
        paths) of ``sizes`` bytes, so that a rerun takes it as finished although the tar is
        gone from disk, as long as its members are still there with those sizes.

        The sizes have a table of their own: ``unpacked`` keeps the form older versions
        read (a JSON list of names).
        """
        names = json.dumps(list(members))
        if sizes is not None and len(sizes) != len(members):
            raise ValueError("one size per member")

        def work(conn: sqlite3.Connection) -> None:
            with self._transaction(conn):
                conn.execute("INSERT INTO unpacked (relpath, members) VALUES (?, ?) "
                             "ON CONFLICT (relpath) DO UPDATE SET members = excluded.members",
                             (relpath, names))
                conn.execute("DELETE FROM unpacked_sizes WHERE relpath = ?", (relpath,))
                if sizes is not None:
                    conn.execute("INSERT INTO unpacked_sizes (relpath, sizes) VALUES (?, ?)",
                                 (relpath, json.dumps(list(sizes))))

        await self._run(work)

    async def forget_unpacked(self, relpath: str) -> None:
        """Drop the record of :meth:`mark_unpacked` for ``relpath`` (to unpack it again)."""

        def work(conn: sqlite3.Connection) -> None:
            with self._transaction(conn):
                conn.execute("DELETE FROM unpacked WHERE relpath = ?", (relpath,))
                conn.execute("DELETE FROM unpacked_sizes WHERE relpath = ?", (relpath,))

        await self._run(work)

    async def unpacked(self) -> dict[str, tuple[tuple[str, int | None], ...]]:
        """Every tar recorded by :meth:`mark_unpacked`, with its members and their sizes
        (``None`` in records written before sizes were kept, or by an older version)."""
        return await self._run(read_unpacked)

    async def done_files(self, chunk_index: int | None = None) -> list[FileRecord]:
        """Files finished (in this run or an earlier one), optionally of one chunk.

        Parameters
        ----------
        chunk_index
            Only the files of this chunk; ``None`` for every chunk.

        Returns
        -------
        list of FileRecord
            In relpath order, each with ``state == "done"`` and its byte count.
        """

        def work(conn: sqlite3.Connection) -> list[FileRecord]:
            if chunk_index is None:
                cur = conn.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE state = 'done' "
                                   "ORDER BY relpath")
            else:
                cur = conn.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE chunk_idx = ? "
                                   "AND state = 'done' ORDER BY relpath", (chunk_index,))
            return [_file_record(r) for r in cur]

        return await self._run(work)

    async def chunk_of(self, relpath: str) -> int | None:
        """The chunk the file ``relpath`` belongs to, or ``None`` if it is unknown."""

        def work(conn: sqlite3.Connection) -> int | None:
            row = conn.execute("SELECT chunk_idx FROM files WHERE relpath = ?",
                               (relpath,)).fetchone()
            return None if row is None or row[0] is None else int(row[0])

        return await self._run(work)

    async def records_of(self, relpaths: Sequence[str]) -> dict[str, str]:
        """Which record each known relpath belongs to (unknown relpaths are left out).

        Parameters
        ----------
        relpaths
            Relative paths to look up.

        Returns
        -------
        dict
            ``relpath -> record`` for the relpaths already in the store.
        """
        wanted = list(dict.fromkeys(relpaths))

        def work(conn: sqlite3.Connection) -> dict[str, str]:
            found: dict[str, str] = {}
            for start in range(0, len(wanted), 500):
                batch = wanted[start:start + 500]
                marks = ",".join("?" * len(batch))
                found.update((str(r), str(rec)) for r, rec in conn.execute(
                    f"SELECT relpath, record FROM files WHERE relpath IN ({marks})", batch))
            return found

        return await self._run(work)

    async def pending_files(self, chunk_index: int | None = None) -> list[FileRecord]:
        """Files not finished yet (pending, partial or failed), optionally of one chunk.

        Returns
        -------
        list of FileRecord
            In relpath order.
        """

        def work(conn: sqlite3.Connection) -> list[FileRecord]:
            if chunk_index is None:
                cur = conn.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE state != 'done' "
                                   "ORDER BY relpath")
            else:
                cur = conn.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE chunk_idx = ? "
                                   "AND state != 'done' ORDER BY relpath", (chunk_index,))
            return [_file_record(r) for r in cur]

        return await self._run(work)

    async def summary(self) -> StoreSummary:
        """Counts of chunks and files by state, and the bytes of finished files."""
        return await self._run(read_summary)
