"""The asyncjsoc exception tree.

Every error asyncjsoc raises on purpose derives from :class:`JsocError`, in three branches::

    JsocError
    ├── TransportError            network trouble; retryable (the engine retries these itself)
    │   └── HttpStatusError       an HTTP status the client could not use (5xx, 429, 403, 404…)
    ├── ServerRefusedError        the JSOC answered, and said no (carries its status and message)
    │   ├── QueryError            jsoc_info refused a record set or series (status 1)
    │   ├── EmailNotRegisteredError
    │   ├── PendingLimitError     status 7: this email (or this IP) already has pending exports
    │   ├── ExportTooLargeError   status 3: over the size cap ("VOID" request id)
    │   ├── ExportFailedError     status 4 for an export, or any other refusal of an export
    │   ├── ExportExpiredError    status 5: the export is gone (7-day retention)
    │   ├── OfflineDataError      status 25: data offline, needs a human at the JSOC
    │   └── IpBlockedError        the server is refusing this IP address
    ├── ProtocolError             the server sent something that is not what the protocol says
    └── LocalError                a problem on this side
        ├── InvalidInputError     bad user input (also a ValueError)
        │   ├── RecordSetSyntaxError  with the position of the problem
        │   └── JobFileError          with the line number
        ├── IntegrityError        size or checksum mismatch of a downloaded file
        ├── DiskError             a file could not be written (disk full, permissions…)
        ├── UnsafePathError       a server-sent name would land outside the output directory
        └── StateError            the state store is unusable
            ├── StateLockedError  another run holds the output directory
            └── StateMismatchError  the state belongs to a different pull

Each error has a one-line ``str()`` that names the problem; :attr:`JsocError.hint` says what to
do about it, so the command line can print both without a traceback.
"""

from __future__ import annotations

__all__ = [
    "DiskError",
    "EmailNotRegisteredError",
    "ExportExpiredError",
    "ExportFailedError",
    "ExportTooLargeError",
    "FileBusyError",
    "HttpStatusError",
    "IntegrityError",
    "InvalidInputError",
    "IpBlockedError",
    "JobFileError",
    "JsocError",
    "LocalError",
    "OfflineDataError",
    "PendingLimitError",
    "ProtocolError",
    "QueryError",
    "RecordSetSyntaxError",
    "ServerRefusedError",
    "StateError",
    "StateLockedError",
    "StateMismatchError",
    "TransportError",
    "UnsafePathError",
]


class JsocError(Exception):
    """Root of every error asyncjsoc raises on purpose.

    Parameters
    ----------
    message
        One line naming the problem.
    hint
        What the user can do about it, if anything useful can be said.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class TransportError(JsocError):
    """The network failed us (connection refused, reset, timed out); worth retrying."""

    def __init__(self, message: str, *, url: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.url = url


class HttpStatusError(TransportError):
    """The server answered with an HTTP status the client cannot use.

    ``retry_after`` holds the server's ``Retry-After`` in seconds when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        url: str | None = None,
        retry_after: float | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, url=url, hint=hint)
        self.status = status
        self.retry_after = retry_after


class ServerRefusedError(JsocError):
    """The JSOC answered and refused; ``status`` and ``server_message`` are what it said."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        server_message: str | None = None,
        request_id: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.server_message = server_message
        self.request_id = request_id


class QueryError(ServerRefusedError):
    """``jsoc_info`` refused a series or record set (unknown series, bad query)."""


class EmailNotRegisteredError(ServerRefusedError):
    """The notify address is not (or no longer, or not yet) registered with the JSOC."""

    def __init__(self, message: str, *, email: str, status: int | None = None,
                 server_message: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, status=status, server_message=server_message, hint=hint)
        self.email = email


class PendingLimitError(ServerRefusedError):
    """Status 7: the email (``per_ip=False``) or the client IP (``per_ip=True``) is at its limit.

    ``pending_ids`` are the request ids the server named as pending, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        pending_ids: tuple[str, ...] = (),
        per_ip: bool = False,
        server_message: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, status=7, server_message=server_message, hint=hint)
        self.pending_ids = pending_ids
        self.per_ip = per_ip


class ExportTooLargeError(ServerRefusedError):
    """Status 3: the export is over the server's size cap; split it."""


class ExportFailedError(ServerRefusedError):
    """The export failed on the server (status 4, or another status that is not success).

    ``transient`` is true for failures the server is known to recover from by itself (such
    as "Cant save new export-request hash."), so the same request may simply be sent again.
    ``handed_back`` is true when asking again got the same failed export back (the JSOC
    answers a request repeated within 24 h with the earlier request's id): a rerun of the
    same request cannot succeed before then.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        server_message: str | None = None,
        request_id: str | None = None,
        transient: bool = False,
        handed_back: bool = False,
        hint: str | None = None,
    ) -> None:
        super().__init__(
            message, status=status, server_message=server_message, request_id=request_id,
            hint=hint,
        )
        self.transient = transient
        self.handed_back = handed_back


class ExportExpiredError(ServerRefusedError):
    """Status 5 (or 404 on its files): the export was deleted; request it again."""


class OfflineDataError(ServerRefusedError):
    """Status 25: some data are offline and the JSOC wants a human to ask for them."""


class IpBlockedError(ServerRefusedError):
    """The server refuses this IP address (rate budget exceeded or a block).

    ``retry_after`` is how long the server said the block lasts, in seconds, when it said.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        url: str | None = None,
        status: int | None = None,
        server_message: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, status=status, server_message=server_message, hint=hint)
        self.retry_after = retry_after
        self.url = url


class ProtocolError(JsocError):
    """The server sent something that does not fit the JSOC protocol (bad JSON, wrong types)."""


class LocalError(JsocError):
    """A problem on this side: input, files on disk, the state store."""


class InvalidInputError(LocalError, ValueError):
    """Bad user input: a record set, a time, a cadence, an option, a job file."""


class RecordSetSyntaxError(InvalidInputError):
    """A record-set string does not parse; ``position`` is the 0-based offset of the problem."""

    def __init__(self, message: str, *, text: str, position: int, hint: str | None = None) -> None:
        super().__init__(f"{message} at position {position} of {text!r}", hint=hint)
        self.text = text
        self.position = position


class JobFileError(InvalidInputError):
    """A job file has a bad line; ``line_number`` is 1-based."""

    def __init__(self, message: str, *, path: str, line_number: int, line: str,
                 hint: str | None = None) -> None:
        super().__init__(f"{path}:{line_number}: {message}: {line!r}", hint=hint)
        self.path = path
        self.line_number = line_number
        self.line = line


class IntegrityError(LocalError):
    """A downloaded file failed its size or checksum check; it was not given its final name."""


class DiskError(LocalError):
    """A file under the output directory could not be written, read or renamed.

    Disk full, no permission, an I/O error, or something other than asyncjsoc put in the way
    (a symlink where a temporary file goes). It stops the pull: every other file would meet
    the same disk. Files already finished are kept and partial ones resume on the next run.
    """


class UnsafePathError(LocalError):
    """A server-sent file name was refused: it would land outside the output directory (or
    on asyncjsoc's own files), or it cannot be made there (too long for the file system, or
    a file where a directory must go, or the other way round). That file fails; the pull
    goes on with the others."""


class FileBusyError(LocalError):
    """Another process is writing the same file right now (it holds that file's ``.part``).

    Nothing of it was touched; trying again once that process has finished works.
    """


class StateError(LocalError):
    """The state store cannot be used (corrupt, or from a different pull)."""


class StateLockedError(StateError):
    """Another asyncjsoc run holds the output directory's lock."""


class StateMismatchError(StateError):
    """The state store belongs to a different pull (another query, server or export options).

    The hint says what to do: use another output directory or state file, or pass ``reset``
    (:attr:`asyncjsoc.ClientConfig.reset`) to discard the stored state; files on disk are kept.
    """
