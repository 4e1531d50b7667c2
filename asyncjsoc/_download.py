"""Download one file: into ``<name>.part``, resumable, checked, then atomically renamed.

The bytes go to ``dest.part``; the validator the server gave (``ETag``, else ``Last-Modified``)
is stored with it before any byte is written (an extended attribute of the part file, else a
small JSON sidecar ``dest.part.meta``: see :mod:`asyncjsoc._resume`). A later attempt (in
this run or the next) resumes with ``Range: bytes=N-`` and ``If-Range: <validator>``, and keeps
the bytes only if the server answers 206 with a ``Content-Range`` that starts at ``N`` and
announces the same total. Any other answer starts over from zero. When the body is complete its
size is checked, FITS checksums are verified, and ``os.replace`` gives it its final name. A
failure leaves at most the ``.part`` file (and any sidecar), never a partial file under the
final name.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, TypeVarTuple
from urllib.parse import unquote, urlsplit

import aiohttp
import anyio
import anyio.to_thread

from ._allocator import raise_malloc_thresholds
from ._durable import NOFOLLOW, BatchPublisher, disk_errors
from ._durable import fsync_dir as _fsync_dir
from ._handoff import cancel_point
from ._http import is_retryable, map_transport_errors, raise_for_status
from ._models import RemoteFile
from ._paths import PART_SUFFIX, SIDECAR_SUFFIX, Placer, resolve_inside
from ._resume import Validator as _Validator
from ._resume import forget_validator, resume_point, save_validator
from ._retry import RetryPolicy, retrying
from ._stall import StallWatch, hand_over_read_timeout
from ._verify import (
    FITS_MAGIC,
    FITS_SUFFIXES,
    check_fits_bytes,
    check_size,
    is_tar_name,
    verify_fits,
    verify_fits_bytes,
)
from .exceptions import (
    DiskError,
    ExportExpiredError,
    IntegrityError,
    IpBlockedError,
    JsocError,
    ProtocolError,
    TransportError,
    UnsafePathError,
)

__all__ = [
    "MAX_UNSIZED_BYTES",
    "PROGRESS_ROUNDS",
    "WHOLE_BODY_MAX",
    "DownloadOutcome",
    "Downloader",
    "ProgressCallback",
    "check_url_path",
    "meta_path",
    "part_path",
]

ProgressCallback = Callable[[int, "int | None"], None]
"""Called as ``on_progress(bytes_done, total)`` while a file downloads; ``total`` may be None."""

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)
_EXPIRED_HINT = "the export's files were deleted on the server; asyncjsoc requests it again"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_url_path(url: str) -> None:
    """Refuse a file URL whose path would not name what the server listed.

    Clients normalise ``..`` and ``.`` segments away before sending, so a listed
    ``/SUM1/D2/S3/../../../etc/x`` would silently fetch ``/etc/x``; backslashes and control
    characters have no place in a SUMS path either.

    Raises
    ------
    UnsafePathError
        For a ``.``/``..`` segment, a backslash or a control character in the (decoded) path.
    """
    if ("%" not in url and "\\" not in url and "/." not in url and ":." not in url
            and url[:1] != "."
            and url.isascii() and url.isprintable()):
        # Nothing to decode and no segment can be '.' or '..' (every segment but the first
        # follows a '/'); no backslash or control character anywhere. The usual case,
        # answered without parsing the URL.
        return
    path = unquote(urlsplit(url).path)
    why = None
    if any(seg in (".", "..") for seg in path.split("/")):
        why = "a '.' or '..' segment"
    elif "\\" in path:
        why = "a backslash"
    elif _CONTROL.search(path):
        why = "a control character"
    if why is not None:
        raise UnsafePathError(f"refusing to fetch {url!r}: its path has {why}",
                              hint="the server listed a file path asyncjsoc will not request")


def part_path(dest: Path) -> Path:
    """Where the bytes of ``dest`` collect until it is complete."""
    return dest.with_name(dest.name + PART_SUFFIX)


def meta_path(dest: Path) -> Path:
    """The sidecar holding the resume validator of ``dest``'s part file."""
    return dest.with_name(dest.name + SIDECAR_SUFFIX)


@dataclass(frozen=True, slots=True)
class DownloadOutcome:
    """What :meth:`Downloader.download` did.

    Attributes
    ----------
    path
        The final file.
    bytes
        Its size.
    resumed_from
        Bytes that were already in the ``.part`` file when the successful request started
        (0 when it was fetched from the start).
    attempts
        HTTP requests made for this file, retries included.
    carried_over
        Bytes of the file that were on disk before this download began and were kept: the
        start of a part file an earlier run left (the lowest offset any attempt started
        from), or the whole file when a final file was taken as it is. ``bytes -
        carried_over`` is what this download fetched.
    """

    path: Path
    bytes: int
    resumed_from: int
    attempts: int
    carried_over: int = 0


class _Restart(TransportError):
    """The part file cannot be resumed; it was discarded and the next attempt starts afresh."""


def _size(path: Path) -> int:
    """Bytes in ``path`` (0 if it does not exist)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _discard(*paths: Path) -> None:
    """Delete files that may not exist."""
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


_Prepared = tuple[int, int, "_Validator | None"]
"""What :func:`_prepare_part` found: bytes in the part file, resume offset, validator."""

_FRESH: _Prepared = (0, 0, None)
"""What :func:`_locate_and_prepare` returns (this very object) for a name the
:class:`~asyncjsoc._paths.Placer` knows fresh: no final file, part file or sidecar there."""


@dataclass(slots=True)
class _Got:
    """What one GET of :meth:`Downloader._attempt` got, filled in as it goes."""

    offset: int
    """Where the body starts in the file (0 unless a Range request was honoured)."""
    total: int | None = None
    """The file's full size as the server announced it, if it did."""
    data: bytes | None = None
    """A small body, read whole (the small-file path); nothing was written."""
    fd: int | None = None
    """The part file, every byte of the body written, still open: sealing it is left to
    the caller, after the connection is released."""
    written: int = 0
    """Bytes in the part file once the body was written (``offset`` plus what arrived)."""
    complete_part: bool = False
    """A 416 said the part file was already complete; ``total`` is its size."""


def _prepare_part(dest: Path, part: Path, meta: Path) -> _Prepared:
    """Create ``dest``'s directory, then :func:`_look_at_part` (one hop)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    return _look_at_part(part, meta)


def _look_at_part(part: Path, meta: Path) -> _Prepared:
    """The size and :func:`~asyncjsoc._resume.resume_point` of a part file.

    A part file is ours alone. A symlink or a second hard link under its name (not made by
    asyncjsoc) would send the bytes into another file, possibly outside the output
    directory, so that name is deleted (the link, not its target) and the file starts
    afresh.
    """
    try:
        st = os.lstat(part)
    except FileNotFoundError:
        return (0, *resume_point(part, meta, 0))
    if stat.S_ISLNK(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink > 1):
        _discard(part, meta)
        return (0, *resume_point(part, meta, 0))
    size = st.st_size if stat.S_ISREG(st.st_mode) else 0
    return (size, *resume_point(part, meta, size))


def _locate_and_prepare(placer: Placer, relpath: str,
                        look_for_final: bool = False) -> tuple[Path, _Prepared, int | None]:
    """:meth:`~asyncjsoc._paths.Placer.place`, then look at the part file (one hop).

    With ``look_for_final``, also the size of a regular file already under the final name
    (``None`` when there is none).
    """
    dest, st, fresh = placer.place_fresh(relpath)
    if fresh:
        return dest, _FRESH, None
    final_size = None
    if look_for_final and st is not None and stat.S_ISREG(st.st_mode):
        final_size = st.st_size
    return dest, _look_at_part(part_path(dest), meta_path(dest)), final_size


def _publish(part: Path, dest: Path, meta: Path) -> None:
    """Rename the finished part to its final name, without its resume validator.

    The rename is made durable by :class:`_DirSyncer` afterwards, before the caller learns
    that the file is done.
    """
    forget_validator(part)
    os.replace(part, dest)
    _discard(meta)


def _open_part(part: Path, offset: int, new_meta: tuple[Path, _Validator] | None) -> int:
    """Open the part file for appending; starting afresh, store the validator first
    (:func:`~asyncjsoc._resume.save_validator`), before any byte.

    Starting afresh creates a new file (whatever had the name is unlinked first), so the
    bytes cannot reach another file through a hard link to the old one.
    """
    if offset:
        flags = os.O_APPEND
    else:
        _discard(part)
        flags = os.O_EXCL
    fd = os.open(part, flags | os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | NOFOLLOW, 0o666)
    if new_meta is not None:
        try:
            save_validator(fd, *new_meta)
        except BaseException:
            os.close(fd)
            raise
    return fd


def _starts_like_fits(path: Path) -> bool:
    """Whether the file at ``path`` begins with a FITS primary header card."""
    with open(path, "rb") as f:
        return f.read(len(FITS_MAGIC)) == FITS_MAGIC


def _write_pieces(fd: int, pieces: list[bytes]) -> int:
    """Write every piece, in order (:func:`_write_all`). Returns the bytes.

    No write-out hint (``sync_file_range``) follows: since a file's final fsync runs after
    its connection is released, starting write-out early only cost time. Measured on 128 x
    8.4 MB over 2 connections with fsync, hints against none in alternating runs: none was
    faster in 18 of 20 pairs (paired medians +10.7 % and +10.4 % MB/s, -6 % CPU per GB),
    and with 32 x 33.6 MB +4.9 % MB/s (6 of 8 pairs). (Before the fsync left the connection,
    the hints had gained 587 -> 713 MB/s on an earlier machine.)
    """
    return _write_all(fd, pieces)


def _write_all(fd: int, pieces: list[bytes]) -> int:
    """Write every piece in order, one ``write`` per piece (retrying short writes).

    Not ``writev``: on Linux 6.x, measured on ext4 with 64 KiB pieces, a buffered
    ``writev`` of many pieces cost about ten times the kernel CPU of the same bytes written
    piece by piece (1.7-2.4 s against 0.2-0.5 s per GB); a copy into one buffer costs user CPU.
    """
    written = 0
    for piece in pieces:
        view = memoryview(piece)
        while view:
            n = os.write(fd, view)
            written += n
            view = view[n:]
    return written


def _seal_part(fd: int, fsync: bool = True) -> int:
    """fsync (unless not ``fsync``) and close a part file; returns its size.

    Its pages stay in the page cache, clean once synced, for the kernel to reclaim when it
    needs to, or to serve a program that reads the file next. (Dropping them with
    ``posix_fadvise(DONTNEED)`` after the fsync, as asyncjsoc did when not verifying, cost
    about 9 % more CPU per GB and 5 % of the throughput: 128 x 8.4 MB over 2 connections,
    10 alternating pairs, paired medians; lower CPU in 9 of them.)
    """
    try:
        if fsync:
            os.fsync(fd)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    return size


@dataclass(slots=True)
class _DirState:
    """Group-commit bookkeeping of one directory's fsyncs."""

    requested: int = 0
    synced: int = 0
    busy: bool = False
    done: anyio.Event | None = None


class _DirSyncer:
    """Directory fsyncs as a group commit: one fsync covers every rename made before it began.

    Many downloaders finishing small files in one directory share one ``fsync`` of it instead
    of one each; every caller still returns only after an fsync that started after its own
    rename.
    """

    def __init__(self) -> None:
        self._dirs: dict[Path, _DirState] = {}

    async def sync(self, directory: Path) -> None:
        """Return once an fsync of ``directory`` begun after this call has finished."""
        st = self._dirs.setdefault(directory, _DirState())
        st.requested += 1
        mine = st.requested
        while st.synced < mine:
            if st.busy and st.done is not None:
                await st.done.wait()
                continue
            st.busy, st.done = True, anyio.Event()
            target = st.requested
            try:
                with anyio.CancelScope(shield=True):
                    await _in_thread(_fsync_dir, directory)
                st.synced = max(st.synced, target)
            finally:
                st.busy = False
                st.done.set()


WHOLE_BODY_MAX = 1 << 20
"""Largest body read whole in memory: losing it to an interrupt costs little to fetch again."""

PROGRESS_ROUNDS = 3
"""Extra rounds of the retry policy for a file that kept arriving in pieces."""

MAX_UNSIZED_BYTES = 100 * 10**9
"""Default bound of a body without ``Content-Length``: the JSOC's 100 GB export cap."""

SLOW_IO_S = 0.02
"""An inline file-system call slower than this counts as slow (see ``Downloader.inline_io``)."""

SLOW_IO_STRIKES = 3
"""Slow inline calls in a row after which a downloader moves them to worker threads."""

_T = TypeVar("_T")
_Args = TypeVarTuple("_Args")


_DISK_HINT = ("free some space, or fix the permissions, under the output directory, then run "
              "again: finished files are kept and partial ones resume")


def _disk_errors(path: Path | None = None) -> contextlib.AbstractContextManager[None]:
    """:func:`~asyncjsoc._durable.disk_errors` with the downloader's hint.

    Inside a transfer this must happen where the file call is made: the transfer's own
    handler takes any other :class:`OSError` for a network failure (and retries it).
    """
    return disk_errors(_DISK_HINT, path)


async def _in_thread(fn: Callable[[*_Args], _T], *args: *_Args, where: Path | None = None) -> _T:
    """``fn(*args)``, a local file operation, in a worker thread (see :func:`_disk_errors`)."""
    with _disk_errors(where):
        return await anyio.to_thread.run_sync(fn, *args)


def _retryable(exc: Exception) -> bool:
    """Transport trouble and 408/425/429/5xx; never an IP block, even one that says when it
    ends: the pull stops there, as it does when a CGI call meets the block, rather than wait
    it out and press on against a server that refuses the IP."""
    return not isinstance(exc, IpBlockedError) and is_retryable(exc)


def _content_length(resp: aiohttp.ClientResponse) -> int | None:
    """The announced body length, if the server sent a valid one."""
    value = resp.headers.get("Content-Length")
    if value is None:
        return None
    if not value.strip().isdigit():
        raise ProtocolError(f"bad Content-Length {value!r} ({resp.url})")
    return int(value)


class Downloader:
    """Fetches files over one shared HTTP session, resuming and verifying them.

    Parameters
    ----------
    session
        The client's session (see :func:`asyncjsoc._http.create_session`); not closed here.
    chunk_size
        Bytes between progress reports and cancellation checks of a
        streamed body (see :meth:`_stream`); worker-thread writes collect this many bytes
        per hand-off. A body of at most this size and at most :data:`WHOLE_BODY_MAX` (by
        its ``Content-Length``) is read whole and,
        without a resume validator, handed to the :class:`~asyncjsoc._durable.BatchPublisher`,
        which writes, syncs and renames many such files together (FITS checksums, when to be
        verified, are checked in memory first: a body that fails is never written).
    verify_checksums
        Verify FITS ``CHECKSUM``/``DATASUM`` before giving a file its final name.
    retry
        How transport errors and retryable HTTP statuses are retried; every retry resumes from
        the bytes already on disk.
    max_bytes
        The most bytes taken from a body without ``Content-Length`` (default 100 GB, the
        JSOC's export size cap), so an endless stream cannot fill the disk.
    inline_io
        Make the quick file-system calls (stat, mkdir, open, writes into the page cache,
        rename) from the event-loop thread. On a local disk each takes microseconds (a
        4 MiB write about a millisecond), far less than a hand-off to a worker thread
        costs: measured on 2 cores, the hand-offs (which contend for the GIL with the
        thread reading the socket) added about 40 % CPU per GB. When
        :data:`SLOW_IO_STRIKES` calls in a row each take longer than :data:`SLOW_IO_S`
        (a disk the kernel is throttling writes to, a network file system: steadily slow,
        unlike a call that was merely preempted on a busy machine), this downloader moves
        them to worker threads for good, so a slow disk stalls the event loop only a few
        times. ``False`` runs every call in worker threads.
        ``fsync`` and checksum verification always run in worker threads.
    transfers
        At most this many requests at once (normally the session's connection limit), each
        holding its place from before the rate limiter until its body is read, not while
        the file is written. ``None``: no bound beyond the session's.
    publisher
        Publishes the small bodies read whole; by default a new
        :class:`~asyncjsoc._durable.BatchPublisher` (with this ``fsync``).
    fsync
        Make every file durable before its rename and the rename durable before the file
        counts as done (the default). ``False`` skips every ``fsync``: files are still
        written under a ``.part`` name and renamed only once complete and checked, so a
        killed or crashed *process* never leaves a partial file under a final name, but after
        a power loss or kernel crash a recently finished file may be short or missing (a
        resumed pull fetches again any file whose size on disk is not the recorded one).
        For scratch space, or file systems where ``fsync`` is very slow (some network and
        parallel file systems).
    """

    def __init__(self, session: aiohttp.ClientSession, *, chunk_size: int = 4 << 20,
                 verify_checksums: bool = True, retry: RetryPolicy | None = None,
                 max_bytes: int = MAX_UNSIZED_BYTES, inline_io: bool = True,
                 transfers: int | None = None,
                 publisher: BatchPublisher | None = None, fsync: bool = True) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self._session = session
        self.chunk_size = chunk_size
        self.verify_checksums = verify_checksums
        self.retry = retry if retry is not None else RetryPolicy()
        self.max_bytes = max_bytes
        self.inline_io = inline_io
        self.slow_io_s = SLOW_IO_S
        self._slow_strikes = 0
        self.fsync = fsync
        self._dirsync = _DirSyncer()
        self.publisher = publisher if publisher is not None else BatchPublisher(fsync=fsync)
        self._placers: dict[Path, Placer] = {}
        # fast_acquire: a free place is taken without a trip through the event loop.
        self._transfers = (anyio.Semaphore(transfers, fast_acquire=True)
                           if transfers is not None else None)
        # Streaming churns ~256 KiB socket buffers: without this, glibc keeps faulting
        # them in afresh (tens of thousands of page faults per GB; see asyncjsoc._allocator).
        raise_malloc_thresholds()

    def forget_directories(self) -> None:
        """Forget what was learnt about output directories (call between pulls).

        A :class:`~asyncjsoc._paths.Placer` trusts that only this downloader changes its
        directory; between pulls anything may, so each pull starts with new ones.
        """
        self._placers.clear()

    def _placer(self, out_dir: Path) -> Placer:
        """The :class:`~asyncjsoc._paths.Placer` of ``out_dir`` (one per output directory)."""
        placer = self._placers.get(out_dir)
        if placer is None:
            placer = self._placers[out_dir] = Placer(out_dir)
        return placer

    async def _quick(self, fn: Callable[[*_Args], _T], *args: *_Args,
                     where: Path | None = None) -> _T:
        """Run a quick file-system call inline while :attr:`inline_io` holds, else in a thread.

        An inline call is never cancelled half-way, like a shielded thread call. An
        :class:`OSError` becomes a :class:`DiskError` (naming ``where`` if it names no file).
        """
        if not self.inline_io:
            return await _in_thread(fn, *args, where=where)
        started = time.perf_counter()
        try:
            with _disk_errors(where):
                return fn(*args)
        finally:
            if time.perf_counter() - started <= self.slow_io_s:
                self._slow_strikes = 0
            else:
                self._slow_strikes += 1
                if self._slow_strikes >= SLOW_IO_STRIKES:
                    self.inline_io = False

    async def download(self, remote: RemoteFile, dest: Path, *,
                       on_progress: ProgressCallback | None = None) -> DownloadOutcome:
        """Fetch ``remote`` into ``dest``, resuming ``dest.part`` if it is there.

        Parameters
        ----------
        remote
            The file; ``expected_size``, if set, must match what the server announces.
        dest
            The final path (already checked to be inside the output directory). Its parent
            directories are created.
        on_progress
            Called with ``(bytes_done, total)`` after each write, ``total`` ``None`` if unknown.

        Returns
        -------
        DownloadOutcome
            What was fetched.

        Raises
        ------
        ExportExpiredError
            The server answered 404: the export is gone and must be requested again.
        HttpStatusError
            Another HTTP status that retrying cannot fix (or retries ran out).
        IpBlockedError
            The server refuses this IP (never retried).
        TransportError
            The network failed on every attempt; the ``.part`` file is kept for next time.
        IntegrityError
            The size or checksum was wrong twice in a row (the part file is deleted).
        UnsafePathError
            The URL's path has ``..``, a backslash or a control character (nothing is fetched).
        """
        check_url_path(remote.url)
        prepared = await self._quick(
            _prepare_part, dest, part_path(dest), meta_path(dest))
        return await self._download(remote, dest, prepared, on_progress)

    async def download_into(self, remote: RemoteFile, out_dir: Path, *,
                            on_progress: ProgressCallback | None = None,
                            trust_final: bool = True) -> DownloadOutcome:
        """Fetch ``remote`` to its ``relpath`` under ``out_dir``, like :meth:`download`.

        The destination is :func:`~asyncjsoc._paths.resolve_inside` ``(out_dir,
        remote.relpath)``, worked out by a :class:`~asyncjsoc._paths.Placer` that resolves
        and creates each directory once, together with the look at the part file.

        Parameters
        ----------
        remote
            The file.
        out_dir
            The output directory.
        on_progress
            As for :meth:`download`.
        trust_final
            A file already under the final name is taken as complete and not fetched (its
            size must match ``remote.expected_size`` when that is known; when it is not, its
            FITS checksums must hold when checksums are verified, and any other file's size
            must match the one the server reports): asyncjsoc gives a final
            name only to a complete, verified file, so one found there was finished by an
            earlier run, possibly killed between the rename and recording it. Pass ``False``
            to fetch it again regardless.

        Returns
        -------
        DownloadOutcome
            What was fetched (``attempts == 0`` when a final file was taken as it is);
            ``path`` is the resolved destination.

        Raises
        ------
        UnsafePathError
            If ``remote.relpath`` is unsafe or resolves outside ``out_dir``; else as
            :meth:`download`.
        """
        check_url_path(remote.url)
        dest, prepared, final_size = await self._quick(
            _locate_and_prepare, self._placer(out_dir), remote.relpath, trust_final)
        if final_size is not None and remote.expected_size in (None, final_size) and (
                remote.expected_size is not None
                or await self._adoptable(remote.url, dest, final_size)):
            return DownloadOutcome(dest, final_size, resumed_from=final_size, attempts=0,
                                   carried_over=final_size)
        return await self._download(remote, dest, prepared, on_progress)

    async def discard_part(self, out_dir: Path, relpath: str) -> None:
        """Delete the part file of ``relpath`` under ``out_dir`` and its resume sidecar (an
        extended attribute goes with the part file); the final file is never touched.

        For a download that will never be resumed: a url-tar export's tar lost to expiry
        comes back under the new export's name. A name that no longer resolves inside
        ``out_dir`` is left alone.

        Raises
        ------
        DiskError
            A part file or sidecar that is there could not be deleted.
        """
        try:
            dest = await self._quick(resolve_inside, out_dir, relpath)
        except UnsafePathError:
            return
        await self._quick(_discard, part_path(dest), meta_path(dest), where=dest)

    async def _adoptable(self, url: str, dest: Path, size: int) -> bool:
        """Whether a final file of unknown expected size may be kept as it is.

        asyncjsoc gives a final name only to a verified file, so one found there is normally
        an earlier run's (killed before recording it). Anything else put there (a pull with
        its state reset, a copy, another tool killed mid-file) is checked first, on disk
        when it can be: a FITS file (or a file with a FITS name) by its checksums and a tar
        by its headers and FITS members (:func:`~asyncjsoc._verify.verify_fits`), even with
        checksums off, since this costs no request and happens only for files found without
        a record; a tar, and any other file (a JPEG, ...), also by its size against the one
        the server reports for ``url`` (one ranged request, retried like a download). A
        file that fails is fetched again, replacing it.
        """
        tar = is_tar_name(dest.name)
        try:
            if tar or dest.name.lower().endswith(FITS_SUFFIXES) or await _in_thread(
                    _starts_like_fits, dest, where=dest):
                await verify_fits(dest)  # a FITS name without FITS content fails here
                if not tar:
                    return True
        except IntegrityError:
            return False
        except (OSError, DiskError):
            return False  # unreadable now: fetching it again is the safe answer
        # A tar's contents say nothing of which export it belongs to (a sound tar of
        # another export could sit under this name): its size is compared too.
        try:
            return await retrying(lambda: self._remote_size(url), self.retry,
                                  retry_on=_retryable) == size
        except JsocError:
            return False  # the download that follows reports it properly

    async def _remote_size(self, url: str) -> int | None:
        """The size of ``url`` as the server reports it, from a GET of its first byte
        (``None`` when the answer does not say); an HTTP error status is raised."""
        with map_transport_errors(url):
            async with self._transfer_slot(), self._session.get(
                    url, headers={"Range": "bytes=0-0"}) as resp:
                raise_for_status(resp)
                if resp.status == 206:
                    match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                    if match is not None and match.group(3) != "*":
                        return int(match.group(3))
                    return None
                if resp.status == 200:  # the server ignored the range: no body is read
                    return _content_length(resp)
                return None

    async def _download(self, remote: RemoteFile, dest: Path, prepared: _Prepared,
                        on_progress: ProgressCallback | None) -> DownloadOutcome:
        """The body of :meth:`download`, the part file already looked at (``prepared``)."""
        part, meta = part_path(dest), meta_path(dest)
        attempts = 0
        first: list[_Prepared] = [prepared]  # the first attempt needs no look of its own
        answered = [False]

        def progress(done: int, total: int | None) -> None:
            answered[0] = True  # the server began sending the file
            if on_progress is not None:
                on_progress(done, total)

        starts: list[int] = []  # the offset each attempt started from

        async def attempt() -> DownloadOutcome:
            nonlocal attempts
            attempts += 1
            size, resumed_from = await self._attempt(remote, dest, part, meta, progress,
                                                     first.pop() if first else None, starts)
            return DownloadOutcome(path=dest, bytes=size, resumed_from=resumed_from,
                                   attempts=attempts, carried_over=min(starts, default=0))

        try:
            return await self._retrying(attempt, part, answered, prepared[0])
        except IntegrityError:
            # Corrupt bytes cannot be resumed: drop them and fetch the whole file once more.
            await _in_thread(_discard, part, meta)
        return await self._retrying(attempt, part, answered)

    async def _retrying(self, attempt: Callable[[], Awaitable[DownloadOutcome]],
                        part: Path, answered: list[bool],
                        size_now: int | None = None) -> DownloadOutcome:
        """``attempt`` under the retry policy, renewed (a few times) while the file flows.

        The retry budget is for attempts that get nowhere: when it runs out but the part
        file grew meanwhile, or the server began sending the file (``answered[0]``, set by
        the attempts; a small file arrives whole or not at all), the link is flaky, not
        the file or server dead, and another round starts, at most ``PROGRESS_ROUNDS``.
        """
        for round_ in range(PROGRESS_ROUNDS + 1):
            if round_ == 0 and size_now is not None:
                before = size_now  # the caller just looked
            else:
                before = await self._quick(_size, part)
            answered[0] = False
            try:
                return await retrying(attempt, self.retry, retry_on=_retryable)
            except Exception as exc:
                grew = answered[0] or await self._quick(_size, part) > before
                if round_ == PROGRESS_ROUNDS or not grew or not _retryable(exc):
                    raise
        raise AssertionError("unreachable")

    async def _attempt(self, remote: RemoteFile, dest: Path, part: Path, meta: Path,
                       on_progress: ProgressCallback | None,
                       prepared: _Prepared | None = None,
                       starts: list[int] | None = None) -> tuple[int, int]:
        """One GET: resume or restart the part file, then finish it. Returns (size, offset);
        the offset it started from (0 once the server sent the whole file) is appended to
        ``starts``, whatever happens."""
        url = remote.url
        if prepared is None:
            prepared = await self._quick(_prepare_part, dest, part, meta)
        # Known fresh (see _FRESH): no stale sidecar to delete when a whole body is published.
        stale_meta = None if prepared is _FRESH else meta
        _, offset, stored = prepared
        headers = {"Accept-Encoding": "identity"}
        if stored is not None:
            headers["Range"] = f"bytes={offset}-"
            headers["If-Range"] = stored.if_range() or ""
        # The transfer slot is held while the connection is in use, not while the file is
        # made durable: a streamed part file is sealed (fsync, close) after the response is
        # released, and a small body is written after it too, so the connection goes on to
        # the next file meanwhile. The workers beyond the connections do that disk work, and
        # no request takes a rate-limit token long before a connection is free to send it.
        got = _Got(offset=offset)
        size: int | None = None  # of a streamed part file, once sealed
        try:
            async with self._transfer_slot():
                await self._get(got, url, headers, remote, part, meta, stored, on_progress)
            if got.fd is not None:
                fd, got.fd = got.fd, None
                size = await self._seal(fd, part)  # closes fd, whatever happens
        finally:
            if starts is not None:
                starts.append(got.offset)
            if got.fd is not None:  # failed or cancelled before sealing: keep what arrived
                with anyio.CancelScope(shield=True):
                    await _in_thread(os.close, got.fd, where=part)
        if got.complete_part:
            return await self._finish(remote, dest, part, meta, got.total), got.offset
        if got.data is not None:
            return await self._finish_whole(dest, part, stale_meta, got.data, on_progress), 0
        if got.total is not None and got.written != got.total:
            raise TransportError(f"{url}: body ended after {got.written} of {got.total} "
                                 "bytes", url=url)
        return await self._finish(remote, dest, part, meta, got.total, size), got.offset

    async def _get(self, got: _Got, url: str, headers: dict[str, str], remote: RemoteFile,
                   part: Path, meta: Path, stored: _Validator | None,
                   on_progress: ProgressCallback | None) -> None:
        """The GET of :meth:`_attempt`, made while it holds a transfer slot; fills ``got``.

        ``got`` ends up with a small body read whole, or with the descriptor of a part file
        the body was written to, still open (the caller seals it, or closes it if anything
        fails before), or, after a 416, marked as a part file that was already complete.
        """
        offset = got.offset
        with map_transport_errors(url):
            async with self._session.get(url, headers=headers) as resp:
                if resp.status == 404:
                    raise ExportExpiredError(f"HTTP 404 for {url}", hint=_EXPIRED_HINT)
                if resp.status == 416:
                    got.total = await self._unsatisfiable(resp, part, meta, offset, stored)
                    got.complete_part = True
                    return
                raise_for_status(resp)
                validator: _Validator | None = None
                total: int | None
                if resp.status == 206 and stored is not None:
                    total = await self._check_partial(resp, part, meta, offset, stored)
                elif resp.status == 200:
                    offset = got.offset = 0
                    total = _content_length(resp)
                    self._check_expected(remote, total)
                    if total is not None and total <= min(self.chunk_size, WHOLE_BODY_MAX):
                        # The whole body fits in one write: read it here; it is published
                        # with other small files, in batches (the small-file fast path).
                        if on_progress is not None:
                            on_progress(0, total)
                        data = await resp.read()
                        if len(data) != total:
                            raise TransportError(f"{url}: body ended after {len(data)} "
                                                 f"of {total} bytes", url=url)
                        got.total, got.data = total, data
                        return
                    validator = _Validator(
                        etag=resp.headers.get("ETag"),
                        last_modified=resp.headers.get("Last-Modified"), total=total)
                else:
                    raise ProtocolError(f"unexpected HTTP {resp.status} for {url}")
                if on_progress is not None:
                    on_progress(offset, total)
                got.total = total
                await self._stream(got, resp, part, on_progress,
                                   (meta, validator) if validator else None)

    def _transfer_slot(self) -> contextlib.AbstractAsyncContextManager[object]:
        """One of :attr:`transfers` places (nothing to hold when it is ``None``)."""
        if self._transfers is None:
            return contextlib.nullcontext()
        return self._transfers

    async def _finish_whole(self, dest: Path, part: Path, meta: Path | None, data: bytes,
                            on_progress: ProgressCallback | None) -> int:
        """Verify a whole (already size-checked) body in memory, then publish it with the
        other small files finishing meanwhile (:attr:`publisher`). Returns the size.

        A body that fails verification is never written.
        """
        if self.verify_checksums and (data.startswith(FITS_MAGIC) or is_tar_name(dest.name)):
            # About a millisecond of astropy: cheaper here than a hop to a worker thread that
            # then contends with this one for the GIL (small-files probe, 4,000 x 5.8 kB,
            # 3 rounds: 441-481 -> 517-528 files/s); in a thread when a check is running.
            # A tar's members may need astropy, which must not be waited for here: a thread.
            checked = (self.inline_io and not is_tar_name(dest.name)
                       and check_fits_bytes(dest.name, data, wait=False))
            if not checked:
                await verify_fits_bytes(dest.name, data)
        with _disk_errors(part):
            await self.publisher.publish(part, dest, meta, data)
        if on_progress is not None:
            on_progress(len(data), len(data))
        return len(data)

    async def _unsatisfiable(self, resp: aiohttp.ClientResponse, part: Path, meta: Path,
                             offset: int, stored: _Validator | None) -> int:
        """A 416: the part may already be complete; otherwise restart. Returns the total."""
        match = _UNSATISFIED_RANGE.match(resp.headers.get("Content-Range", ""))
        total = int(match.group(1)) if match else None
        if stored is not None and total is not None and total == offset:
            return total
        await _in_thread(_discard, part, meta)
        raise _Restart(f"HTTP 416 at offset {offset} (total {total}); starting over",
                       url=str(resp.url))

    async def _check_partial(self, resp: aiohttp.ClientResponse, part: Path, meta: Path,
                             offset: int, stored: _Validator) -> int:
        """Accept a 206 only if it continues exactly where the part file ends."""
        match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        why = None
        total = 0
        if match is None or match.group(3) == "*":
            why = f"unusable Content-Range {resp.headers.get('Content-Range')!r}"
        else:
            start, end, total = (int(g) for g in match.groups())
            length = _content_length(resp)
            etag = resp.headers.get("ETag")
            if start != offset or end != total - 1:
                why = f"Content-Range {start}-{end}/{total} does not continue at {offset}"
            elif stored.total is not None and total != stored.total:
                why = f"the file is now {total} bytes, was {stored.total}"
            elif length is not None and length != total - offset:
                why = f"Content-Length {length} does not match Content-Range"
            elif stored.etag and etag and etag != stored.etag:
                why = "the ETag changed"
        if why is not None:
            await _in_thread(_discard, part, meta)
            raise _Restart(f"cannot resume {resp.url}: {why}; starting over", url=str(resp.url))
        return total

    @staticmethod
    def _check_expected(remote: RemoteFile, total: int | None) -> None:
        """The announced size must be the one the caller expects, if it expects one."""
        if remote.expected_size is not None and total is not None \
                and total != remote.expected_size:
            raise IntegrityError(f"{remote.url}: the server announces {total} bytes, "
                                 f"expected {remote.expected_size}")

    async def _stream(self, got: _Got, resp: aiohttp.ClientResponse, part: Path,
                      on_progress: ProgressCallback | None,
                      new_meta: tuple[Path, _Validator] | None) -> None:
        """Append the body to the part file, from ``got.offset``, expecting ``got.total``.

        With :attr:`inline_io` each piece is written as it comes off the socket, and progress
        and cancellation are looked after every ``chunk_size`` bytes. Holding
        pieces back to write ``chunk_size`` at once made the C allocator hand the freed
        megabytes back to the system and fault them in again: measured on 128 × 8.4 MB over
        2 connections, 100,000-230,000 page faults per GB and about 0.3 s more kernel CPU
        per GB than writing at once (about 1,000 faults). Worker-thread writes (inline I/O
        off) still collect ``chunk_size`` bytes per hand-off, which is what a hop costs.

        ``new_meta``, for a fresh start, is the validator to store (and the sidecar path
        to use where extended attributes are unavailable) before any byte. On success
        the part file's descriptor is left open in ``got.fd`` (sealed by :meth:`_seal` once
        the connection is released) with the bytes it holds in ``got.written``; on failure
        or cancellation it is closed here, keeping the bytes that arrived.
        """
        offset, total = got.offset, got.total
        done = offset
        pending: list[bytes] = []
        buffered = 0  # bytes in ``pending``
        unreported = 0  # bytes written inline since the last progress report
        opened = await self._quick(_open_part, part, offset, new_meta)
        fd: int | None = opened  # None once handed over in ``got``

        async def write_pending() -> None:
            nonlocal done, buffered
            assert fd is not None
            pieces = pending.copy()
            pending.clear()
            buffered = 0
            if self.inline_io:
                done += await self._quick(_write_pieces, fd, pieces, where=part)
            else:
                # A write cancelled half-way would leave us unsure what reached the file.
                with anyio.CancelScope(shield=True):
                    done += await _in_thread(_write_pieces, fd, pieces, where=part)
            # Reads from aiohttp's buffer need not suspend: let a pending cancel land here.
            await cancel_point()

        async def report_inline() -> None:
            """Report the bytes written inline since the last time."""
            nonlocal unreported
            unreported = 0
            if on_progress is not None:
                on_progress(done, total)
            await cancel_point()

        try:
            # A body that stops flowing for sock_read seconds is abandoned (and resumed by the
            # next attempt), as aiohttp's own timer would, for less CPU (see asyncjsoc._stall).
            watch = StallWatch(hand_over_read_timeout(resp))
            with watch.scope:
                # Pieces as they came off the socket: no copy into chunk_size blocks here,
                # and the writes below hand each piece to the kernel as it is.
                async for piece, _ in resp.content.iter_chunks():
                    if not piece:
                        continue
                    watch.fed()
                    if total is not None and done + buffered + len(piece) > total:
                        raise IntegrityError(f"{resp.url}: body longer than the announced "
                                             f"{total} bytes")
                    if total is None and done + buffered + len(piece) > self.max_bytes:
                        raise IntegrityError(f"{resp.url}: body without Content-Length "
                                             f"longer than {self.max_bytes} bytes (max_bytes)")
                    if self.inline_io and not pending:
                        done += await self._quick(_write_all, opened, [piece], where=part)
                        unreported += len(piece)
                        if unreported >= self.chunk_size:
                            await report_inline()
                        continue
                    if unreported:  # inline I/O was just switched off
                        await report_inline()
                    pending.append(piece)
                    buffered += len(piece)
                    if buffered >= self.chunk_size:
                        with watch.paused():
                            await write_pending()
                        if on_progress is not None:
                            on_progress(done, total)
            if watch.stalled:
                raise TransportError(f"timed out ({resp.url}): no data for {watch.limit:g} s",
                                     url=str(resp.url))
            if unreported:
                await report_inline()
            if pending:
                await write_pending()
                if on_progress is not None:
                    on_progress(done, total)
            got.fd, got.written, fd = fd, done, None
        finally:
            # Keep what arrived (it is a valid prefix) and never leak the descriptor, even
            # when cancelled: the part file is what the next attempt resumes from.
            if fd is not None:
                with anyio.CancelScope(shield=True):
                    try:
                        if pending:
                            await write_pending()
                    finally:
                        await _in_thread(os.close, fd, where=part)

    async def _seal(self, fd: int, part: Path) -> int:
        """Make a streamed part file durable (unless :attr:`fsync` is off) and close it;
        returns its size. The descriptor is closed whatever happens."""
        # Shielded: a worker thread call is not abandoned once running anyway, and a cancel
        # before it starts would leave the descriptor open.
        with anyio.CancelScope(shield=True):
            if not self.fsync:  # nothing slow left: fstat and close
                size = await self._quick(_seal_part, fd, False, where=part)
            else:
                size = await _in_thread(_seal_part, fd, True, where=part)
        return size

    async def _finish(self, remote: RemoteFile, dest: Path, part: Path, meta: Path,
                      total: int | None, on_disk: int | None = None) -> int:
        """Check size and checksums, then give the part its final name. Returns the size.

        ``on_disk`` is the part file's size if the caller just measured it (after fsync).
        """
        if on_disk is not None:
            size = on_disk
            if total is not None and size != total:
                raise IntegrityError(f"{part.name}: {size} bytes on disk, the server "
                                     f"announced {total}")
        elif total is not None:
            with _disk_errors():
                size = await check_size(part, total)
        else:
            size = (await self._quick(os.stat, part)).st_size
        if remote.expected_size is not None and size != remote.expected_size:
            raise IntegrityError(f"{dest.name}: {size} bytes, expected {remote.expected_size}")
        if self.verify_checksums:
            with _disk_errors():
                await verify_fits(part, name=dest.name)
        await self._quick(_publish, part, dest, meta)
        await self._sync_dir(dest.parent)
        return size

    async def _sync_dir(self, directory: Path) -> None:
        """Make the renames in ``directory`` durable (nothing without :attr:`fsync`)."""
        if self.fsync:
            await self._dirsync.sync(directory)
