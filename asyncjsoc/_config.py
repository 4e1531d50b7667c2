"""The options of a :class:`~asyncjsoc.Client`, as one frozen, validated dataclass.

Vary a configuration with :func:`dataclasses.replace`; every change is validated again.
Nothing here reads environment variables: only the command line does that.
"""

from __future__ import annotations

import math
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args
from urllib.parse import urlsplit

from asyncjsoc._models import ExportMethod, ExportProtocol
from asyncjsoc._retry import RetryPolicy
from asyncjsoc.exceptions import InvalidInputError

__all__ = ["IP_PENDING_LIMIT", "MAX_CONNECTIONS", "MIN_REQUESTS_PER_SECOND", "ClientConfig"]

IP_PENDING_LIMIT = 10
"""The JSOC refuses an export when one IP address has more than this many pending."""

MAX_CONNECTIONS = 64
"""Most download connections a client opens (the JSOC asks for very few; each connection
runs a few download tasks, so a typo of 100000 must not start hundreds of thousands)."""

MIN_REQUESTS_PER_SECOND = 0.01
"""Slowest request rate accepted: one request per 100 s (slower would stall a pull)."""

_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """How a :class:`~asyncjsoc.Client` talks to the JSOC.

    Every field has a polite default; only ``emails`` must be given before exporting.

    Parameters
    ----------
    server
        Base URL of the JSOC (or a NetDRMS site with the same CGIs). Plain ``http`` is what
        drms and sunpy use; ``https://jsoc1.stanford.edu`` works too.
    emails
        Notify addresses registered at http://jsoc.stanford.edu/ajax/register_email.html.
        The JSOC allows one pending export per address, so each address is one export slot;
        several addresses stage several exports at once (opt-in; mind the JSOC's goodwill).
    method
        ``"url"`` (default) stages one file per segment; ``"url-tar"`` one tar per export.
        With ``protocol="as-is"`` the immediate ``"url_quick"`` path is tried automatically
        (it falls back to staging when data are offline); asking for ``"url_quick"`` with
        ``protocol="fits"`` is the same as ``"url"``.
    protocol
        ``"fits"`` (default) writes FITS files with the DRMS keywords in the header, which is
        what SHARP and most science users want. ``"as-is"`` ships the stored files (headers
        without keywords), and is fast: usually no staging at all.
    filenamefmt
        The server-side file name template. ``None`` builds a readable one from the series'
        prime keys, e.g. ``hmi.sharp_cea_720s.{HARPNUM}.{T_REC:A}.{segment}``. A template
        that gives several files the same name is handled without overwriting: within one
        export those files fail (the server keeps only one of them); across exports the
        later record gets ``.<digest of the record>`` before the extension. With
        ``extract_tars``, a tar member whose name an earlier tar's file already took (with
        other bytes) fails its whole tar instead: a tar's members carry no record to name
        them by.
    max_files_per_export
        At most this many files per export request; ``None`` uses the per-series default
        (15 000 for ``aia.*``, 30 000 otherwise). Larger queries are split into chunks.
    max_pending_exports
        Exports this client keeps pending at once over all emails. The JSOC refuses more
        than 10 per IP address, so this must stay below 10; leave room for other users.
        It is counted per client: clients (or processes) pulling at once from one IP share
        the JSOC's limit, so give each a share (the server's refusals are still waited
        out, at the cost of requests).
    connections
        Concurrent file downloads from the JSOC host. The JSOC asked tool authors for very
        few (sunpy uses 1); 2 overlaps one file's latency with another's transfer. JSOC API
        calls (export requests, status polls, ``jsoc_info``) use one more connection of
        their own, so they never wait behind downloads. At most :data:`MAX_CONNECTIONS`.
    requests_per_second
        Sustained rate of HTTP requests of every kind (CGI calls, polls, file GETs, retries);
        at least :data:`MIN_REQUESTS_PER_SECOND`.
    burst
        How many requests may go out back to back before ``requests_per_second`` applies.
    verify_checksums
        Check FITS ``DATASUM``/``CHECKSUM`` of downloaded files when present (the JSOC sends
        no HTTP digest), and the headers and FITS members of url-tar exports. The size is
        always checked. The state store remembers a run with it off: the next run with it on
        checks the files already finished and fetches the damaged ones again.
    extract_tars
        With ``method="url-tar"``: unpack each export's tar into the output directory as
        soon as it is downloaded (as :func:`~asyncjsoc.extract_tar` does: names checked,
        FITS checksums verified unless ``verify_checksums`` is off, each file durable
        before its name), then delete the tar. The state store records what was unpacked,
        so a rerun neither fetches nor unpacks it again; :attr:`FileResult.members
        <asyncjsoc.FileResult.members>` lists the files.
    fsync
        Make each file durable (``fsync``) before giving it its final name, and the rename
        durable before the file counts as done (the default). ``False`` skips every
        ``fsync``: a killed process still never leaves a partial file under a final name,
        but a power loss or kernel crash may lose recently finished files (a resumed pull
        fetches again any file whose size on disk is not the recorded one). Worth it on
        scratch space or file systems where ``fsync`` is slow; see
        :class:`~asyncjsoc._download.Downloader`.
    chunk_size
        Bytes between progress reports (and cancellation checks) of a large file. With
        ``inline_io`` its pieces are written as they arrive; with worker threads this many
        bytes are collected per write. Files of at most 1 MiB, and at most this size, are
        fetched whole and written in one go.
    inline_io
        Make quick file-system calls (stat, open, page-cache writes, rename) on the event
        loop's thread instead of handing each to a worker thread, which costs more CPU than
        the call; three calls in a row slower than 20 ms each (a throttled or network disk)
        switch to worker threads for the rest of the run. ``fsync`` always runs in a worker thread.
        See :class:`~asyncjsoc._download.Downloader`.
    state_path
        The SQLite file that makes a pull resumable; ``None`` means
        ``<out_dir>/.asyncjsoc/state.sqlite``. A pull with a state file elsewhere still
        locks the output directory (``<out_dir>/.asyncjsoc/state.sqlite.lock``): two pulls
        never write into one directory at once, whatever state files they use.
    reset
        When the state file holds the state of a different pull (another query, server or
        export options), discard it and start this pull afresh instead of raising
        :class:`~asyncjsoc.exceptions.StateMismatchError`. Files already on disk are kept;
        the state of the same pull is always resumed.
    ca_bundle
        A PEM file of the CA certificates to trust for HTTPS, instead of the system's (for a
        site with its own CA, or a TLS-inspecting proxy); ``None`` uses the system's. TLS is
        always verified.
    sock_connect
        Seconds to wait for a TCP connection. There is no total timeout: large files take
        as long as they take; the caller owns overall deadlines.
    sock_read
        Seconds a connection may stay silent before it counts as dropped (and is retried).
        A streaming file body is watched by the downloader itself (cheaper than aiohttp's
        per-read timer; see :mod:`asyncjsoc._stall`): it is given up between ``sock_read``
        and ``sock_read`` plus at most a second after its last byte, never sooner.
    poll_min
        Shortest pause between paced status polls of a staging export, in seconds. Polls
        planned from where the pull's earlier exports finished, and one at the server's first
        ``wait`` hint, may come sooner (see :class:`~asyncjsoc._polling.PollPlan`).
    poll_max
        Longest pause between status polls; paced polls come a quarter of the export's age
        apart within ``[poll_min, poll_max]``.
    status6_retries
        How many times the legacy status 6 ("not found yet") counts as still pending.
    retry
        Backoff policy for transient failures (HTTP 5xx/429, dropped connections, the JSOC's
        transient status 4); ``None`` uses the default :class:`~asyncjsoc._retry.RetryPolicy`.
    download_buffer
        Files staged ahead of the downloaders; a bounded queue, so exports are not staged
        far faster than they are fetched.
    """

    server: str = "http://jsoc.stanford.edu"
    emails: tuple[str, ...] = ()
    method: ExportMethod = "url"
    protocol: ExportProtocol = "fits"
    filenamefmt: str | None = None
    max_files_per_export: int | None = None
    max_pending_exports: int = 8
    connections: int = 2
    requests_per_second: float = 5.0
    burst: int = 10
    verify_checksums: bool = True
    extract_tars: bool = False
    fsync: bool = True
    chunk_size: int = 4 << 20
    inline_io: bool = True
    state_path: Path | None = None
    reset: bool = False
    ca_bundle: Path | None = None
    sock_connect: float = 30.0
    sock_read: float = 120.0
    poll_min: float = 2.0
    poll_max: float = 30.0
    status6_retries: int = 5
    retry: RetryPolicy | None = field(default=None, compare=False)
    download_buffer: int = 32

    def __post_init__(self) -> None:
        """Normalise the emails and refuse impossible values."""
        # A lone string is a common slip; iterating it would give one "email" per letter.
        given: object = self.emails  # typed as a tuple, but callers pass anything
        emails: tuple[object, ...]
        if isinstance(given, str):
            emails = (given,)
        elif isinstance(given, Iterable):
            emails = tuple(given)
        else:
            raise InvalidInputError(f"emails must be a list of addresses, not {self.emails!r}")
        cleaned: list[str] = []
        for email in emails:
            if not isinstance(email, str):
                raise InvalidInputError(f"not an email address: {email!r}",
                                        hint="give the address you registered with the JSOC")
            address = email.strip()
            if not _EMAIL.match(address):
                raise InvalidInputError(
                    f"not an email address: {email!r}",
                    hint="give the address you registered with the JSOC",
                )
            if address.lower() not in (e.lower() for e in cleaned):
                cleaned.append(address)
        object.__setattr__(self, "emails", tuple(cleaned))

        if not isinstance(self.server, str):
            raise InvalidInputError(f"server must be an http(s) URL, not {self.server!r}")
        server = self.server.strip().rstrip("/")
        try:
            parts = urlsplit(server)
            parts.port  # noqa: B018 (raises ValueError for a port out of range)
        except ValueError:
            parts = urlsplit("")
        if (parts.scheme not in ("http", "https") or not parts.hostname
                or any(c.isspace() for c in server)):
            raise InvalidInputError(f"server must be an http(s) URL, not {self.server!r}",
                                    hint="for example http://jsoc.stanford.edu")
        object.__setattr__(self, "server", server)
        if self.method not in get_args(ExportMethod):
            raise InvalidInputError(f"unknown export method {self.method!r}")
        if self.protocol not in get_args(ExportProtocol):
            raise InvalidInputError(f"unknown export protocol {self.protocol!r}")
        if self.extract_tars and self.method != "url-tar":
            raise InvalidInputError("extract_tars unpacks url-tar exports",
                                    hint="set method='url-tar', or leave extract_tars off")
        if self.max_files_per_export is not None:
            _positive_int(self.max_files_per_export, "max_files_per_export")
        _positive_int(self.max_pending_exports, "max_pending_exports")
        if not 1 <= self.max_pending_exports < IP_PENDING_LIMIT:
            raise InvalidInputError(
                f"max_pending_exports must be between 1 and {IP_PENDING_LIMIT - 1}",
                hint=f"the JSOC refuses more than {IP_PENDING_LIMIT} pending exports per IP",
            )
        _positive_int(self.connections, "connections")
        if self.connections > MAX_CONNECTIONS:
            raise InvalidInputError(
                f"connections must be at most {MAX_CONNECTIONS}, not {self.connections}",
                hint="the JSOC asks for very few download connections; 2 is the default")
        _positive_int(self.burst, "burst")
        _positive_int(self.chunk_size, "chunk_size")
        _positive_int(self.download_buffer, "download_buffer")
        if (isinstance(self.status6_retries, bool) or not isinstance(self.status6_retries, int)
                or self.status6_retries < 0):
            raise InvalidInputError(f"status6_retries must be a whole number of at least 0, "
                                    f"not {self.status6_retries!r}")
        for name in ("requests_per_second", "sock_connect", "sock_read", "poll_max"):
            _positive_float(getattr(self, name), name)
        if self.requests_per_second < MIN_REQUESTS_PER_SECOND:
            raise InvalidInputError(f"requests_per_second must be at least "
                                    f"{MIN_REQUESTS_PER_SECOND}, not {self.requests_per_second}")
        if not (isinstance(self.poll_min, int | float) and math.isfinite(self.poll_min)
                and 0 <= self.poll_min <= self.poll_max):
            raise InvalidInputError(f"poll_min must be a number between 0 and poll_max, not "
                                    f"{self.poll_min!r}")
        for name in ("verify_checksums", "extract_tars", "fsync", "inline_io", "reset"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInputError(f"{name} must be True or False, not "
                                        f"{getattr(self, name)!r}")
        if self.retry is not None and not isinstance(self.retry, RetryPolicy):
            raise InvalidInputError(f"retry must be a RetryPolicy or None, not {self.retry!r}")
        if self.state_path is not None:
            object.__setattr__(self, "state_path", Path(self.state_path))
        if self.ca_bundle is not None:
            ca_bundle = Path(self.ca_bundle)
            if not ca_bundle.is_file():
                raise InvalidInputError(f"ca_bundle {str(ca_bundle)!r} is not a file",
                                        hint="give the path of a PEM file of CA certificates")
            try:
                ssl.create_default_context(cafile=str(ca_bundle))
            except (ssl.SSLError, OSError) as exc:
                raise InvalidInputError(
                    f"ca_bundle {str(ca_bundle)!r} holds no usable CA certificate ({exc})",
                    hint="give the path of a PEM file of CA certificates") from None
            object.__setattr__(self, "ca_bundle", ca_bundle)

    @property
    def export_method(self) -> ExportMethod:
        """The method actually sent: ``url_quick`` exactly when the protocol is ``as-is``."""
        if self.method == "url-tar":
            return "url-tar"
        return "url_quick" if self.protocol == "as-is" else "url"


def _positive_int(value: int, name: str) -> None:
    """Refuse a count below one."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{name} must be a whole number of at least 1, not {value!r}")


def _positive_float(value: float, name: str) -> None:
    """Refuse a non-positive or non-finite number."""
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise InvalidInputError(f"{name} must be a positive number, not {value!r}")
