"""Where a pull stands, read from its state store without disturbing it.

:func:`read_status` opens the state database read-only and takes no lock, so it can look at
a pull that is running right now (SQLite's write-ahead log lets one writer and readers work
side by side) as well as at one that stopped. It never changes the database.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path

from ._store import (
    SCHEMA_VERSION,
    default_state_path,
    lock_path,
    read_summary,
    read_unpacked,
)
from .exceptions import InvalidInputError, StateError

__all__ = ["PullStatus", "StagedExport", "read_status"]

FAILED_SHOWN = 20
"""Failed files listed by name (the count covers them all)."""


@dataclass(frozen=True, slots=True)
class StagedExport:
    """An export request the store holds for a chunk that is not done yet."""

    chunk_index: int
    request_id: str
    expires_at: float | None
    """POSIX time after which the JSOC no longer serves it (``None``: not staged yet)."""

    @property
    def staged(self) -> bool:
        """Whether the JSOC had finished it (its files can be fetched) when last seen."""
        return self.expires_at is not None


@dataclass(frozen=True, slots=True)
class PullStatus:
    """What the state store of one output directory says about its pull.

    Attributes
    ----------
    state_path
        The state database read.
    series
        The series pulled (``None`` before the plan was saved).
    n_records, n_files
        Records and files the plan counted.
    estimated_bytes
        The plan's size estimate, if it made one.
    chunks
        Chunks (one export request each) by state: ``planned``, ``exporting``, ``ready``
        (staged, downloading), ``done``, ``failed``.
    files
        Files the exports listed, by state: ``pending``, ``partial``, ``done``, ``failed``.
    bytes_done
        Bytes of the finished files.
    staged
        Exports of unfinished chunks that a rerun may reuse while they last.
    failed
        Up to :data:`FAILED_SHOWN` failed files and their errors, ``(name, error)``.
    failed_exports
        Up to :data:`FAILED_SHOWN` failed chunks, ``(index, record set, error)``: refused
        exports, and exports some of whose files failed (including files never listed
        under a name, such as names refused as unsafe).
    unpacked_tars, unpacked_files
        Tars of url-tar exports unpacked by the client (``extract_tars``), and the files
        they held (``files`` counts each tar as one file).
    running_pid
        The process of a run holding the store's lock right now, if any (found in
        ``/proc/locks``; ``None`` also where that cannot be read).
    gone, gone_examples
        Files recorded as done that are no longer in the output directory with their
        recorded size (deleted, cut short or changed since; a tar unpacked by ``--extract``
        is meant to be gone, and counts when one of its unpacked files is), and up to
        :data:`FAILED_SHOWN` of their names: a rerun fetches them again, so such a pull is
        not complete.
    """

    state_path: Path
    series: str | None
    n_records: int
    n_files: int
    estimated_bytes: int | None
    chunks: dict[str, int] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    bytes_done: int = 0
    staged: tuple[StagedExport, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()
    failed_exports: tuple[tuple[int, str, str], ...] = ()
    unpacked_tars: int = 0
    unpacked_files: int = 0
    running_pid: int | None = None
    gone: int = 0
    gone_examples: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Whether the plan is saved and every chunk of it is done (no file pending, partial
        or failed, and every finished file still on disk as recorded; a query that matched
        nothing is complete once planned)."""
        return self.series is not None and self.gone == 0 and self.chunks.get(
            "done", 0) == sum(self.chunks.values())

    @property
    def files_failed(self) -> int:
        """Failed files (all of them, not only the ones listed)."""
        return self.files.get("failed", 0)


def read_status(out_dir: str | Path, state_path: str | Path | None = None) -> PullStatus:
    """Read where the pull into ``out_dir`` stands, without changing anything.

    Parameters
    ----------
    out_dir
        The output directory of a pull (its ``--out``).
    state_path
        The state database, if the pull was given one (``--state``); default
        ``<out_dir>/.asyncjsoc/state.sqlite``.

    Returns
    -------
    PullStatus
        Counts by state, bytes done, staged exports and failed files, and the finished files
        no longer on disk as recorded (each is looked at: one ``stat`` per finished file).

    Raises
    ------
    InvalidInputError
        There is no state database there.
    StateError
        The database cannot be read, or was written by a newer asyncjsoc.
    """
    path = Path(state_path) if state_path is not None else default_state_path(Path(out_dir))
    if not path.is_file():
        raise InvalidInputError(
            f"no asyncjsoc state at {path}",
            hint="pass the --out directory of a fetch (and its --state PATH if it had one)")
    first, then = _open_modes(path)
    out = Path(out_dir)
    try:
        status = _read_with(path, first, out)
    except sqlite3.OperationalError:  # e.g. no -shm index and no right to make one
        status = None
    except sqlite3.Error as exc:
        raise _unreadable(path, exc) from exc
    if status is None:
        try:
            status = _read_with(path, then, out)
        except sqlite3.Error as exc:
            raise _unreadable(path, exc) from exc
    pid = _lock_holder(lock_path(path))
    return status if pid is None else replace(status, running_pid=pid)


def _read_with(path: Path, how: str, out_dir: Path) -> PullStatus:
    """:func:`_read` through a connection opened with the URI parameter ``how``."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?{how}", uri=True)
    try:
        return _read(conn, path, out_dir)
    finally:
        conn.close()


_STAT_BATCH = 5000
"""Finished files looked at per database read in :func:`_gone_from_disk`."""


def _gone_from_disk(conn: sqlite3.Connection, out_dir: Path,
                    unpacked: dict[str, tuple[tuple[str, int | None], ...]]
                    ) -> tuple[int, list[str]]:
    """How many finished files are no longer on disk as recorded, and the first
    :data:`FAILED_SHOWN` of their names (a tar unpacked by ``--extract`` counts when one of
    its files is gone or changed, shown as ``NAME (files unpacked from it)``).

    The rows are read a batch at a time, each read finished before its files are looked
    at: a million ``stat`` calls take a while on a slow file system, and a read kept open
    meanwhile would stop a running pull from checkpointing its log.
    """
    count, after = 0, ""
    names: list[str] = []
    while rows := conn.execute(
            "SELECT relpath, bytes FROM files WHERE state = 'done' AND relpath > ? "
            "ORDER BY relpath LIMIT ?", (after, _STAT_BATCH)).fetchall():
        after = str(rows[-1][0])
        for relpath, nbytes in rows:
            members = unpacked.get(str(relpath))
            if members is None:
                if _on_disk(out_dir, str(relpath)) == nbytes:
                    continue
                shown = str(relpath)
            elif all(_intact(out_dir, name, size) for name, size in members):
                continue
            else:
                shown = f"{relpath} (files unpacked from it)"
            count += 1
            if len(names) < FAILED_SHOWN:
                names.append(shown)
    return count, names


def _intact(out_dir: Path, relpath: str, size: int | None) -> bool:
    """Whether the file is on disk, with ``size`` bytes when that is known."""
    found = _on_disk(out_dir, relpath)
    return found is not None and (size is None or found == size)


def _on_disk(out_dir: Path, relpath: str) -> int | None:
    """The size of the regular file ``relpath`` names under ``out_dir``, else ``None``
    (the names were checked to stay inside ``out_dir`` when the pull recorded them)."""
    try:
        st = os.stat(out_dir / relpath)
    except (OSError, ValueError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _unreadable(path: Path, exc: sqlite3.Error) -> StateError:
    """The error for a state database SQLite cannot read."""
    return StateError(f"cannot read the state database {path}: {exc}",
                      hint="is it an asyncjsoc state file?")


_READ_ONLY = "mode=ro"
_IMMUTABLE = "immutable=1"


def _open_modes(path: Path) -> tuple[str, ...]:
    """How to open the state database without writing anything, in the order to try.

    Without a write-ahead log beside it no run has it open and every change is in the file
    itself, so it is read as immutable: SQLite then creates no ``-wal`` or ``-shm`` file
    (the directory may be read-only, or belong to someone else). With a log (a run going
    on, or one that was killed) the reader needs the log's index: a read-only connection
    first, and as immutable only if that cannot be opened (a read-only copy of a killed
    run's directory), which shows the state as of the last checkpoint.
    """
    if path.with_name(path.name + "-wal").exists():
        return (_READ_ONLY, _IMMUTABLE)
    return (_IMMUTABLE, _READ_ONLY)


def _lock_holder(lock: Path) -> int | None:
    """The pid holding an exclusive ``flock`` on ``lock`` (a pull), from ``/proc/locks``
    (Linux).

    Asking the kernel this way takes no lock: trying to take the lock, even a shared one
    for an instant, could make a run starting at that moment think another holds it.
    """
    try:
        st = lock.stat()
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in table.splitlines():
        fields = line.split()
        # Only an exclusive (WRITE) lock is a pull; `extract` holds it shared (READ).
        if (len(fields) >= 6 and fields[1] == "FLOCK" and fields[3] == "WRITE"
                and fields[5] == wanted):
            try:
                return int(fields[4])
            except ValueError:
                return None
    return None


def _read(conn: sqlite3.Connection, path: Path, out_dir: Path) -> PullStatus:
    """The status from an open database."""
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    version = int(meta.get("schema_version", "0") or 0)
    if version > SCHEMA_VERSION:
        raise StateError(f"{path} was written by a newer asyncjsoc (schema {version})",
                         hint="upgrade asyncjsoc to read it")
    plan = json.loads(meta["plan"]) if "plan" in meta else {}
    summary = read_summary(conn)
    staged = tuple(
        StagedExport(int(i), str(rid), None if exp is None else float(exp))
        for i, rid, exp in conn.execute(
            "SELECT e.chunk_idx, e.request_id, e.expires_at FROM exports e "
            "JOIN chunks c ON c.idx = e.chunk_idx "
            "WHERE c.state != 'done' AND e.request_id IS NOT NULL "
            # A failed chunk whose export never staged was refused or failed at the JSOC:
            # nothing there to reuse (one that staged failed on some files: a rerun uses it).
            "AND NOT (c.state = 'failed' AND e.ready_at IS NULL) ORDER BY e.chunk_idx"))
    failed = tuple(
        (str(name), str(error or "")) for name, error in conn.execute(
            "SELECT relpath, error FROM files WHERE state = 'failed' ORDER BY relpath LIMIT ?",
            (FAILED_SHOWN,)))
    failed_exports = tuple(
        (int(index), str(recordset), str(error or "")) for index, recordset, error in
        conn.execute("SELECT idx, recordset, error FROM chunks WHERE state = 'failed' "
                     "ORDER BY idx LIMIT ?", (FAILED_SHOWN,)))
    unpacked_tars = read_unpacked(conn)
    unpacked = [len(members) for members in unpacked_tars.values()]
    n_gone, gone = _gone_from_disk(conn, out_dir, unpacked_tars)
    return PullStatus(
        gone=n_gone, gone_examples=tuple(gone),
        state_path=path, series=plan.get("series"), n_records=int(plan.get("n_records", 0)),
        n_files=int(plan.get("n_files", 0)), estimated_bytes=plan.get("estimated_bytes"),
        chunks=summary.chunks, files=summary.files, bytes_done=summary.bytes_done,
        staged=staged, failed=failed,
        failed_exports=failed_exports, unpacked_tars=len(unpacked),
        unpacked_files=sum(unpacked))
