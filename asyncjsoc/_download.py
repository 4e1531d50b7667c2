"""Download one file: into ``<name>.part``, resumable, checked, then atomically renamed.

The bytes go to ``dest.part``; the validator the server gave (``ETag``, else ``Last-Modified``)
goes to a small JSON sidecar ``dest.part.meta`` before any byte is written. A later attempt (in
this run or the next) resumes with ``Range: bytes=N-`` and ``If-Range: <validator>``, and keeps
the bytes only if the server answers 206 with a ``Content-Range`` that starts at ``N`` and
announces the same total. Any other answer starts over from zero. When the body is complete its
size is checked, FITS checksums are verified, and ``os.replace`` gives it its final name. A
failure leaves at most the ``.part`` file (and its sidecar), never a partial file under the
final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiofiles
import aiohttp
import anyio
import anyio.lowlevel
import anyio.to_thread

from ._http import is_retryable, map_transport_errors, raise_for_status
from ._models import RemoteFile
from ._paths import PART_SUFFIX
from ._retry import RetryPolicy, retrying
from ._verify import check_size, verify_fits
from .exceptions import (
    ExportExpiredError,
    IntegrityError,
    IpBlockedError,
    ProtocolError,
    TransportError,
    UnsafePathError,
)

__all__ = [
    "MAX_UNSIZED_BYTES",
    "PROGRESS_ROUNDS",
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
    return dest.with_name(dest.name + PART_SUFFIX + ".meta")


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
    """

    path: Path
    bytes: int
    resumed_from: int
    attempts: int


class _Restart(TransportError):
    """The part file cannot be resumed; it was discarded and the next attempt starts afresh."""


@dataclass(slots=True)
class _Validator:
    """What the server said about the file the part file holds the beginning of."""

    etag: str | None = None
    last_modified: str | None = None
    total: int | None = None

    def if_range(self) -> str | None:
        """The ``If-Range`` value: a strong ETag, else Last-Modified, else nothing."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def to_json(self) -> str:
        """The sidecar's content."""
        return json.dumps({"etag": self.etag, "last_modified": self.last_modified,
                           "total": self.total})

    @classmethod
    def from_json(cls, text: str) -> _Validator | None:
        """Parse a sidecar; ``None`` if it is damaged."""
        try:
            data: Any = json.loads(text)
            etag, lm, total = data["etag"], data["last_modified"], data["total"]
        except (ValueError, KeyError, TypeError):
            return None
        if not (isinstance(etag, str | None) and isinstance(lm, str | None)
                and (total is None or (isinstance(total, int) and total >= 0))):
            return None
        return cls(etag=etag, last_modified=lm, total=total)


def _resume_point(part: Path, meta: Path) -> tuple[int, _Validator | None]:
    """Bytes in the part file and its validator; (0, None) when it cannot be resumed."""
    try:
        size = part.stat().st_size
    except FileNotFoundError:
        return 0, None
    try:
        validator = _Validator.from_json(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        validator = None
    if size == 0 or validator is None or validator.if_range() is None:
        return 0, None
    if validator.total is not None and size > validator.total:
        return 0, None
    return size, validator


def _discard(*paths: Path) -> None:
    """Delete files that may not exist."""
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _write_meta(meta: Path, validator: _Validator) -> None:
    """Write the sidecar (replaced atomically, so it is never half-written)."""
    tmp = meta.with_name(meta.name + ".tmp")
    tmp.write_text(validator.to_json(), encoding="utf-8")
    os.replace(tmp, meta)


def _publish(part: Path, dest: Path, meta: Path) -> None:
    """Rename the finished part to its final name, make the rename durable, drop the sidecar."""
    os.replace(part, dest)
    with contextlib.suppress(OSError):
        fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    _discard(meta)


PROGRESS_ROUNDS = 3
"""Extra rounds of the retry policy for a file that kept arriving in pieces."""

MAX_UNSIZED_BYTES = 100 * 10**9
"""Default bound of a body without ``Content-Length``: the JSOC's 100 GB export cap."""


def _retryable(exc: Exception) -> bool:
    """Transport trouble, 408/425/429/5xx, and IP blocks that say when they end."""
    if isinstance(exc, IpBlockedError):
        return exc.retry_after is not None
    return is_retryable(exc)


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
        Bytes collected in memory before each write to disk.
    verify_checksums
        Verify FITS ``CHECKSUM``/``DATASUM`` before giving a file its final name.
    retry
        How transport errors and retryable HTTP statuses are retried; every retry resumes from
        the bytes already on disk.
    max_bytes
        The most bytes taken from a body without ``Content-Length`` (default 100 GB, the
        JSOC's export size cap), so an endless stream cannot fill the disk.
    """

    def __init__(self, session: aiohttp.ClientSession, *, chunk_size: int = 1 << 20,
                 verify_checksums: bool = True, retry: RetryPolicy | None = None,
                 max_bytes: int = MAX_UNSIZED_BYTES) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self._session = session
        self.chunk_size = chunk_size
        self.verify_checksums = verify_checksums
        self.retry = retry if retry is not None else RetryPolicy()
        self.max_bytes = max_bytes

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
            The server refuses this IP and retries ran out.
        TransportError
            The network failed on every attempt; the ``.part`` file is kept for next time.
        IntegrityError
            The size or checksum was wrong twice in a row (the part file is deleted).
        UnsafePathError
            The URL's path has ``..``, a backslash or a control character (nothing is fetched).
        """
        check_url_path(remote.url)
        part, meta = part_path(dest), meta_path(dest)
        await anyio.to_thread.run_sync(lambda: dest.parent.mkdir(parents=True, exist_ok=True))
        attempts = 0
        answered = [False]

        def progress(done: int, total: int | None) -> None:
            answered[0] = True  # the server began sending the file
            if on_progress is not None:
                on_progress(done, total)

        async def attempt() -> DownloadOutcome:
            nonlocal attempts
            attempts += 1
            size, resumed_from = await self._attempt(remote, dest, part, meta, progress)
            return DownloadOutcome(path=dest, bytes=size, resumed_from=resumed_from,
                                   attempts=attempts)

        try:
            return await self._retrying(attempt, answered)
        except IntegrityError:
            # Corrupt bytes cannot be resumed: drop them and fetch the whole file once more.
            await anyio.to_thread.run_sync(_discard, part, meta)
        return await self._retrying(attempt, answered)

    async def _retrying(self, attempt: Callable[[], Awaitable[DownloadOutcome]],
                        answered: list[bool]) -> DownloadOutcome:
        """``attempt`` under the retry policy, renewed (a few times) while the file flows.

        The retry budget is for attempts that get nowhere: when it runs out but the server
        did start sending the file meanwhile (``answered[0]``, set by the attempts), the
        link is flaky, not the file or server dead, and another round starts, at most
        ``PROGRESS_ROUNDS`` times.
        """
        for round_ in range(PROGRESS_ROUNDS + 1):
            answered[0] = False
            try:
                return await retrying(attempt, self.retry, retry_on=_retryable)
            except Exception as exc:
                if round_ == PROGRESS_ROUNDS or not answered[0] or not _retryable(exc):
                    raise
        raise AssertionError("unreachable")

    async def _attempt(self, remote: RemoteFile, dest: Path, part: Path, meta: Path,
                       on_progress: ProgressCallback | None) -> tuple[int, int]:
        """One GET: resume or restart the part file, then finish it. Returns (size, offset)."""
        url = remote.url
        offset, stored = await anyio.to_thread.run_sync(_resume_point, part, meta)
        headers = {"Accept-Encoding": "identity"}
        total: int | None
        if stored is not None:
            headers["Range"] = f"bytes={offset}-"
            headers["If-Range"] = stored.if_range() or ""
        with map_transport_errors(url):
            async with self._session.get(url, headers=headers) as resp:
                if resp.status == 404:
                    raise ExportExpiredError(f"HTTP 404 for {url}", hint=_EXPIRED_HINT)
                if resp.status == 416:
                    total = await self._unsatisfiable(resp, part, meta, offset, stored)
                    return await self._finish(remote, dest, part, meta, total), offset
                raise_for_status(resp)
                if resp.status == 206 and stored is not None:
                    total = await self._check_partial(resp, part, meta, offset, stored)
                elif resp.status == 200:
                    offset = 0
                    total = _content_length(resp)
                    self._check_expected(remote, total)
                    await anyio.to_thread.run_sync(_write_meta, meta, _Validator(
                        etag=resp.headers.get("ETag"),
                        last_modified=resp.headers.get("Last-Modified"), total=total))
                else:
                    raise ProtocolError(f"unexpected HTTP {resp.status} for {url}")
                if on_progress is not None:
                    on_progress(offset, total)
                await self._stream(resp, part, offset, total, on_progress)
        return await self._finish(remote, dest, part, meta, total), offset

    async def _unsatisfiable(self, resp: aiohttp.ClientResponse, part: Path, meta: Path,
                             offset: int, stored: _Validator | None) -> int:
        """A 416: the part may already be complete; otherwise restart. Returns the total."""
        match = _UNSATISFIED_RANGE.match(resp.headers.get("Content-Range", ""))
        total = int(match.group(1)) if match else None
        if stored is not None and total is not None and total == offset:
            return total
        await anyio.to_thread.run_sync(_discard, part, meta)
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
            await anyio.to_thread.run_sync(_discard, part, meta)
            raise _Restart(f"cannot resume {resp.url}: {why}; starting over", url=str(resp.url))
        return total

    @staticmethod
    def _check_expected(remote: RemoteFile, total: int | None) -> None:
        """The announced size must be the one the caller expects, if it expects one."""
        if remote.expected_size is not None and total is not None \
                and total != remote.expected_size:
            raise IntegrityError(f"{remote.url}: the server announces {total} bytes, "
                                 f"expected {remote.expected_size}")

    async def _stream(self, resp: aiohttp.ClientResponse, part: Path, offset: int,
                      total: int | None, on_progress: ProgressCallback | None) -> None:
        """Append the body to the part file in large writes; fsync once at the end."""
        done = offset
        pending: list[bytes] = []
        buffered = 0
        f = await aiofiles.open(part, "ab" if offset else "wb")

        async def write_pending() -> None:
            nonlocal done, buffered
            data = b"".join(pending)
            pending.clear()
            buffered = 0
            # A write cancelled half-way would leave us unsure what reached the file.
            with anyio.CancelScope(shield=True):
                await f.write(data)
            done += len(data)
            # Reads from aiohttp's buffer need not suspend: let a pending cancel land here.
            await anyio.lowlevel.checkpoint_if_cancelled()

        try:
            async for piece in resp.content.iter_chunked(self.chunk_size):
                if total is not None and done + buffered + len(piece) > total:
                    raise IntegrityError(f"{resp.url}: body longer than the announced "
                                         f"{total} bytes")
                if total is None and done + buffered + len(piece) > self.max_bytes:
                    raise IntegrityError(f"{resp.url}: body without Content-Length longer "
                                         f"than {self.max_bytes} bytes (max_bytes)")
                pending.append(piece)
                buffered += len(piece)
                if buffered >= self.chunk_size:
                    await write_pending()
                    if on_progress is not None:
                        on_progress(done, total)
            if pending:
                await write_pending()
                if on_progress is not None:
                    on_progress(done, total)
            await f.flush()
            await anyio.to_thread.run_sync(os.fsync, f.fileno())
        finally:
            # Keep what arrived (it is a valid prefix) and never leak the descriptor, even
            # when cancelled: the part file is what the next attempt resumes from.
            with anyio.CancelScope(shield=True):
                try:
                    if pending:
                        await write_pending()
                finally:
                    await f.close()
        if total is not None and done != total:
            raise TransportError(f"{resp.url}: body ended after {done} of {total} bytes",
                                 url=str(resp.url))

    async def _finish(self, remote: RemoteFile, dest: Path, part: Path, meta: Path,
                      total: int | None) -> int:
        """Check size and checksums, then give the part its final name. Returns the size."""
        if total is not None:
            size = await check_size(part, total)
        else:
            size = (await anyio.to_thread.run_sync(os.stat, part)).st_size
        if remote.expected_size is not None and size != remote.expected_size:
            raise IntegrityError(f"{dest.name}: {size} bytes, expected {remote.expected_size}")
        if self.verify_checksums:
            await verify_fits(part)
        await anyio.to_thread.run_sync(_publish, part, dest, meta)
        return size
