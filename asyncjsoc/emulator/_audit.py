"""What clients did to the emulator, kept so tests can assert on politeness and correctness."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Audit", "Block", "FileStats", "PendingSpan", "Refusal", "RequestEntry"]


@dataclass(frozen=True)
class RequestEntry:
    """One HTTP request as the emulator saw it.

    ``time`` is emulator time, ``op`` is the CGI name plus ``op=`` (``"jsoc_fetch/exp_request"``)
    or ``"file"``; ``http_status`` is the HTTP code answered and ``status`` the JSON status, if any.
    """

    time: float
    ip: str
    method: str
    path: str
    op: str
    params: dict[str, str]
    http_status: int = 0
    status: int | None = None
    range: str | None = None
    if_range: str | None = None


@dataclass
class PendingSpan:
    """One pending-export slot: held by ``email``/``ip`` from ``start`` until ``end``."""

    request_id: str
    email: str
    ip: str
    start: float
    end: float


@dataclass(frozen=True)
class Refusal:
    """One status-7 answer."""

    time: float
    email: str
    ip: str
    message: str


@dataclass(frozen=True)
class Block:
    """An IP block: every request from ``ip`` got 403 from ``start`` until ``until``."""

    ip: str
    start: float
    until: float


@dataclass
class FileStats:
    """GETs of one file path: how many, bytes sent, complete transfers, Range headers seen,
    transfers sent with a flipped byte (``corrupt_rate``), transfers that went silent
    mid-body (``stall_rate``)."""

    gets: int = 0
    bytes_sent: int = 0
    complete: int = 0
    corrupted: int = 0
    stalled: int = 0
    ranges: list[str | None] = field(default_factory=list)


class Audit:
    """The emulator's record of every request and of the export slots clients held.

    All times are emulator times (epoch seconds on the emulator clock). Also served as JSON at
    ``GET /_emulator/audit``.
    """

    def __init__(self) -> None:
        self.entries: list[RequestEntry] = []
        self.pending: list[PendingSpan] = []
        self.refusals: list[Refusal] = []
        self.blocks: list[Block] = []
        self.file_stats: dict[str, FileStats] = {}

    def clear(self) -> None:
        """Forget everything recorded so far."""
        self.__init__()  # type: ignore[misc]

    # -- queries -------------------------------------------------------------------------------

    def requests(self, op: str | None = None, *, ip: str | None = None) -> list[RequestEntry]:
        """Requests, optionally only one ``op`` (``"jsoc_fetch/exp_request"``, ``"file"``...)."""
        return [
            e for e in self.entries if (op is None or e.op == op) and (ip is None or e.ip == ip)
        ]

    def count(self, op: str | None = None) -> int:
        """How many requests (of ``op``) were made."""
        return len(self.requests(op))

    def max_pending_per_email(self) -> dict[str, int]:
        """For each email, the most exports it had pending at the same time."""
        return self._max_concurrent(lambda s: s.email)

    def max_pending_per_ip(self) -> dict[str, int]:
        """For each client IP, the most exports it had pending at the same time."""
        return self._max_concurrent(lambda s: s.ip)

    def _max_concurrent(self, key: Any) -> dict[str, int]:
        """Sweep the slot intervals grouped by ``key``."""
        events: dict[str, list[tuple[float, int]]] = {}
        for span in self.pending:
            ev = events.setdefault(key(span), [])
            ev.append((span.start, 1))
            ev.append((span.end, -1))
        result: dict[str, int] = {}
        for k, ev in events.items():
            ev.sort()  # an end (-1) sorts before a start (+1) at the same instant
            cur = best = 0
            for _, delta in ev:
                cur += delta
                best = max(best, cur)
            result[k] = best
        return result

    def status7(self) -> list[Refusal]:
        """Every status-7 answer (pending limits)."""
        return list(self.refusals)

    def file_gets(self, path: str) -> int:
        """How many GETs were made for ``path``."""
        stats = self.file_stats.get(path)
        return 0 if stats is None else stats.gets

    def bytes_sent(self, path: str | None = None) -> int:
        """Body bytes sent for ``path`` (or for all files)."""
        if path is not None:
            stats = self.file_stats.get(path)
            return 0 if stats is None else stats.bytes_sent
        return sum(s.bytes_sent for s in self.file_stats.values())

    def refetched(self) -> list[str]:
        """Paths whose whole body was sent completely more than once."""
        return sorted(p for p, s in self.file_stats.items() if s.complete > 1)

    def ranges(self, path: str) -> list[str | None]:
        """The Range header of every GET of ``path`` (None when absent)."""
        stats = self.file_stats.get(path)
        return [] if stats is None else list(stats.ranges)

    def to_json(self) -> dict[str, Any]:
        """Everything as JSON-ready data (the ``/_emulator/audit`` body)."""
        return {
            "requests": [asdict(e) for e in self.entries],
            "pending": [asdict(s) for s in self.pending],
            "max_pending_per_email": self.max_pending_per_email(),
            "max_pending_per_ip": self.max_pending_per_ip(),
            "status7": [asdict(r) for r in self.refusals],
            "blocks": [asdict(b) for b in self.blocks],
            "files": {p: asdict(s) for p, s in self.file_stats.items()},
        }

    # -- recording (used by the app) ----------------------------------------------------------

    def file(self, path: str) -> FileStats:
        """The (created on demand) stats record of ``path``."""
        return self.file_stats.setdefault(path, FileStats())
