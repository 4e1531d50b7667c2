"""Server-side state: exports and their lifecycle, email registration, per-IP accounting.

Everything runs on the emulator clock, so expiry, pending timeouts and IP blocks can be tested
by moving the clock instead of sleeping.
"""

from __future__ import annotations

import math
import random
import re
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from asyncjsoc.emulator._audit import Audit, Block, PendingSpan
from asyncjsoc.emulator._clock import Clock
from asyncjsoc.emulator._knobs import Knobs

if TYPE_CHECKING:
    from asyncjsoc.emulator._catalog import Record, Segment

__all__ = ["EMAIL_RE", "Export", "ExportRow", "State"]

EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,6}")
EXPORT_SUNUM_BASE = 1_900_000_000
"""Export storage units are numbered from here, far from the catalog's series SUNUMs."""


@dataclass
class ExportRow:
    """One data row of an export: the index ``record``/``filename`` and the file's source."""

    record: str
    filename: str
    source: tuple[Record, Segment] | None


@dataclass
class Export:
    """One staged export request and its lifecycle on the emulator clock."""

    request_id: str
    email: str
    ip: str
    method: str
    protocol: str
    requestor: str
    created: float
    done_at: float
    fails: bool
    sunum: int
    rcount: int
    size_mb: int
    rows: list[ExportRow]
    md5: str
    eta_at: float | None = None
    polls: int = 0
    index_json: str | None = None
    error: str = "Export processing failed (emulated failure)."
    dir_override: str | None = None

    @property
    def real_dir(self) -> str:
        """Where the export's files are served, ``/SUM<n>/D<sunum>/S00000``."""
        return f"/SUM{60 + self.sunum % 40}/D{self.sunum}/S00000"

    @property
    def dir(self) -> str:
        """The export directory as the index reports it (a hostile knob may replace it)."""
        return self.dir_override if self.dir_override is not None else self.real_dir

    @property
    def number(self) -> int:
        """1 for the first export this emulator made, 2 for the next, ..."""
        return self.sunum - EXPORT_SUNUM_BASE

    @property
    def count(self) -> int:
        """Files written (rows that are not NoDataFile)."""
        return sum(1 for r in self.rows if r.source is not None)

    @property
    def is_tar(self) -> bool:
        """Whether this is a url-tar export."""
        return self.method == "url-tar"

    @property
    def is_fits(self) -> bool:
        """Whether the protocol writes FITS files."""
        return self.protocol.lower().startswith("fits")

    def phase(self, now: float, retention: float) -> str:
        """``"processing"``, ``"failed"``, ``"done"`` or ``"expired"`` at emulator time ``now``."""
        if now < self.done_at:
            return "processing"
        if self.fails:
            return "failed"
        if now >= self.done_at + retention:
            return "expired"
        return "done"

    def exptime(self) -> str:
        """The finish time as the server writes it (``2020.04.10_00:14:11_UT``)."""
        return datetime.fromtimestamp(self.done_at, UTC).strftime("%Y.%m.%d_%H:%M:%S_UT")


@dataclass
class _IpState:
    """Request times in the current window and the block deadline of one client IP."""

    times: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0
    in_flight: int = 0


class State:
    """Exports, email registrations and per-IP accounting of one emulator.

    Parameters
    ----------
    knobs : Knobs
        Rules and faults (read on every call, so runtime changes apply at once).
    clock : Clock
        The emulator clock.
    audit : Audit
        Where slots, refusals and blocks are recorded.
    """

    def __init__(self, knobs: Knobs, clock: Clock, audit: Audit) -> None:
        self.knobs = knobs
        self.clock = clock
        self.audit = audit
        self.rng = random.Random(knobs.seed)
        self.exports: dict[str, Export] = {}
        self.by_sunum: dict[int, Export] = {}
        self.md5s: dict[str, tuple[float, str]] = {}
        self._day_counters: dict[str, int] = {}
        self._spans: dict[str, PendingSpan] = {}
        self._ips: dict[str, _IpState] = {}
        self._registering: set[str] = set()

    # -- faults ---------------------------------------------------------------------------------

    def chance(self, rate: float) -> bool:
        """One seeded draw: True with probability ``rate`` (no draw when the rate is 0)."""
        return rate > 0 and self.rng.random() < rate

    # -- emails ---------------------------------------------------------------------------------

    def email_status(self, address: str) -> tuple[int, str]:
        """What checkAddress answers for ``address``: (status, msg)."""
        if not address:
            return -2, "Missing required argument 'address'."
        if not EMAIL_RE.fullmatch(address):
            return -2, "Not a valid email address."
        low = address.lower()
        if low in self._registering or low in {e.lower() for e in self.knobs.pending_emails}:
            return 3, "Email address registration is pending. Please wait and try again later."
        if low in {e.lower() for e in self.knobs.expired_emails}:
            return 4, "Email address registration has expired; please register it again."
        if low in {e.lower() for e in self.knobs.unknown_emails}:
            return 4, "Email address has been neither validated nor registered."
        return 2, "Email address is valid and registered."

    def start_registration(self, address: str) -> None:
        """``address`` was sent a registration email: it is pending from now on."""
        self._registering.add(address.lower())

    # -- pending slots --------------------------------------------------------------------------

    def pending(self, *, email: str | None = None, ip: str | None = None) -> list[Export]:
        """Exports whose slot is still held (by ``email`` or by ``ip``), oldest first."""
        now = self.clock.now()
        out = []
        for exp in self.exports.values():
            if now >= min(exp.done_at, exp.created + self.knobs.pending_timeout):
                continue
            if email is not None and exp.email != email.lower():
                continue
            if ip is not None and exp.ip != ip:
                continue
            out.append(exp)
        return out

    # -- exports --------------------------------------------------------------------------------

    def new_request_id(self) -> str:
        """``JSOC_YYYYMMDD_NNN`` with a per-UTC-day counter."""
        day = self.clock.utcnow().strftime("%Y%m%d")
        n = self._day_counters.get(day, 0) + 1
        self._day_counters[day] = n
        return f"JSOC_{day}_{n:03d}"

    def duplicate(self, md5: str) -> Export | None:
        """The export an identical request made within the duplicate window, if any.

        An export already expired is not handed out again: on the real server the window
        (24 h) is far shorter than the retention (7 days), so what it does then is unknown;
        with ``retention`` set below ``duplicate_window`` here, the old id would only answer
        status 5 to every rerun, and a new export is the answer a client can use.
        """
        hit = self.md5s.get(md5)
        now = self.clock.now()
        if hit is None or now - hit[0] > self.knobs.duplicate_window:
            return None
        old = self.exports.get(hit[1])
        if old is not None and old.phase(now, self.knobs.retention) == "expired":
            return None
        return old

    def add_export(
        self,
        *,
        email: str,
        ip: str,
        method: str,
        protocol: str,
        requestor: str,
        rows: list[ExportRow],
        rcount: int,
        size_mb: int,
        md5: str,
    ) -> Export:
        """Register a new export (status 2 now, 0 or 4 after ``export_delay``)."""
        now = self.clock.now()
        sunum = EXPORT_SUNUM_BASE + len(self.exports) + 1
        exp = Export(
            request_id=self.new_request_id(),
            email=email.lower(),
            ip=ip,
            method=method,
            protocol=protocol,
            requestor=requestor,
            created=now,
            done_at=now + self.knobs.export_delay,
            eta_at=None if self.knobs.eta_seconds is None else now + self.knobs.eta_seconds,
            fails=self.chance(self.knobs.export_failure_rate),
            sunum=sunum,
            rcount=rcount,
            size_mb=size_mb,
            rows=rows,
            md5=md5,
        )
        self.exports[exp.request_id] = exp
        self.by_sunum[sunum] = exp
        self.md5s[md5] = (now, exp.request_id)
        end = min(exp.done_at, now + self.knobs.pending_timeout)
        self.audit.pending.append(PendingSpan(exp.request_id, exp.email, ip, now, end))
        return exp

    def wait_of(self, exp: Export) -> float | int:
        """The ``wait`` the server prints for ``exp``: whole seconds to its estimate.

        That is EstTime - now, rounded as ``%1.0lf`` rounds, and negative once the estimate has
        passed (see ``Knobs.eta_seconds``). An export made by an ideal server (``eta_seconds``
        None) reports the true time until it is done instead, an int only when whole.
        """
        if exp.eta_at is None:
            return seconds_value(exp.done_at - self.clock.now())
        return round(self.wait_seconds(exp))

    def wait_seconds(self, exp: Export) -> float:
        """Seconds from now to ``exp``'s estimate, unrounded (``format=txt`` prints ``%f``)."""
        return (exp.done_at if exp.eta_at is None else exp.eta_at) - self.clock.now()

    # -- per-IP accounting ----------------------------------------------------------------------

    def ip_state(self, ip: str) -> _IpState:
        """The (created on demand) accounting record of ``ip``."""
        return self._ips.setdefault(ip, _IpState())

    def admit(self, ip: str) -> float | None:
        """Count one request of ``ip``; the Retry-After seconds if the IP is (now) blocked."""
        now = self.clock.now()
        st = self.ip_state(ip)
        if now < st.blocked_until:
            return st.blocked_until - now
        budget = self.knobs.rate_budget
        if budget is None:
            return None
        while st.times and st.times[0] <= now - self.knobs.rate_window:
            st.times.popleft()
        if len(st.times) >= budget:
            st.blocked_until = now + self.knobs.block_seconds
            st.times.clear()
            self.audit.blocks.append(Block(ip, now, st.blocked_until))
            return self.knobs.block_seconds
        st.times.append(now)
        return None


def seconds_value(value: float) -> float | int:
    """A duration as the JSON number the server prints: whole seconds stay ints."""
    if value == math.floor(value):
        return int(value)
    return round(value, 3)
