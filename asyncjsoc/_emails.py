"""The pool of notify addresses: one pending export per email, and a cap for the whole IP.

The JSOC refuses a second pending export for an address (status 7) and more than ten pending
exports from one IP address. The pool turns both rules into slots. A free address travels as
a token on a memory stream; taking a slot takes a token and one place of the IP-wide limiter.
The scheduler gives the slot back as soon as its export is staged, not when its files are
downloaded, so the next chunk is staged while the previous one downloads.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, MutableMapping
from dataclasses import dataclass
from typing import NoReturn, Protocol

import anyio

from asyncjsoc._events import EmailChecked, EmailDropped, NullReporter, Reporter
from asyncjsoc._models import EmailStatus
from asyncjsoc.exceptions import EmailNotRegisteredError, InvalidInputError

__all__ = [
    "REGISTER_URL",
    "EmailChecker",
    "EmailPool",
    "EmailPoolStatistics",
    "EmailSlot",
    "ask_email",
    "mask_email",
]

REGISTER_URL = "http://jsoc.stanford.edu/ajax/register_email.html"
"""Where an address is registered for JSOC exports."""


class EmailChecker(Protocol):
    """What the pool needs from the JSOC API: the ``checkAddress`` call."""

    async def check_email(self, email: str) -> EmailStatus:
        """Ask the JSOC whether ``email`` is registered."""
        ...


@dataclass(frozen=True, slots=True)
class EmailPoolStatistics:
    """A snapshot of the pool.

    ``busy`` maps each usable address to whether it holds a slot; ``dropped`` lists addresses
    the JSOC refused; ``ip_borrowed`` of ``ip_limit`` IP-wide slots are taken.
    """

    busy: dict[str, bool]
    dropped: tuple[str, ...]
    ip_borrowed: int
    ip_limit: int


@dataclass(frozen=True, slots=True)
class EmailSlot:
    """One held export slot: the address to put in ``notify``."""

    email: str


async def ask_email(checker: EmailChecker, email: str,
                    known: MutableMapping[str, EmailStatus], *, fresh: bool = False,
                    ) -> EmailStatus:
    """The status of ``email``, asking the JSOC only when ``known`` has no registered answer.

    ``known`` holds the addresses confirmed as registered: a registered answer is added to
    it, any other removes the address. With ``fresh`` the JSOC is asked in any case.
    """
    status = None if fresh else known.get(email)
    if status is None or not status.registered:
        status = await checker.check_email(email)
    if status.registered:
        known[email] = status
    else:
        known.pop(email, None)
    return status


def mask_email(email: str) -> str:
    """``jane.doe@example.org`` → ``j***@example.org``, for logs that others may read."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"


class EmailPool:
    """Export slots over several notify addresses.

    Parameters
    ----------
    checker
        Something with ``check_email`` (normally the :class:`~asyncjsoc._api.JsocApi`).
    emails
        The addresses to use, in order of preference.
    max_pending
        The IP-wide cap: slots held at once over all addresses.
    reporter
        Receives :class:`~asyncjsoc._events.EmailChecked` and
        :class:`~asyncjsoc._events.EmailDropped`.
    known
        Addresses the JSOC already confirmed as registered in this session (the
        :class:`~asyncjsoc.Client` keeps one such map for all its pulls), so they are not
        asked again: a multi-query run or a second pull costs no extra ``checkAddress``
        calls. The pool adds each address it finds registered and removes each one it
        drops (the JSOC refused it mid-run), so a later pool asks about that one afresh.
        Addresses found not registered are always asked again: the owner may have
        confirmed the registration meanwhile. ``EmailChecked`` is reported for every
        address either way.
    """

    def __init__(
        self,
        checker: EmailChecker,
        emails: Iterable[str],
        *,
        max_pending: int,
        reporter: Reporter | None = None,
        known: MutableMapping[str, EmailStatus] | None = None,
    ) -> None:
        self._checker = checker
        self._known: MutableMapping[str, EmailStatus] = known if known is not None else {}
        self._emails = tuple(dict.fromkeys(emails))
        self._reporter: Reporter = reporter if reporter is not None else NullReporter()
        self._ip = anyio.CapacityLimiter(max_pending)
        self._statuses: dict[str, EmailStatus] | None = None
        self._usable: list[str] = []
        self._busy: set[str] = set()
        self._dropped: dict[str, str] = {}
        # Free addresses in hand-out order; every change wakes the waiters, who look again.
        self._free: list[str] = []
        self._wake = anyio.Event()
        self._closed = False
        self._check_lock = anyio.Lock()

    @property
    def emails(self) -> tuple[str, ...]:
        """Addresses still usable (after :meth:`check`, only the registered ones)."""
        return tuple(e for e in self._usable if e not in self._dropped)

    @property
    def capacity(self) -> int:
        """How many exports can be pending at once: usable addresses, bounded by the IP cap."""
        return max(1, min(len(self.emails), int(self._ip.total_tokens)))

    async def check(self) -> list[EmailStatus]:
        """Check every address with the JSOC once and keep the registered ones.

        Addresses in ``known`` are not asked (see the class docs). Later calls return the
        first answers without asking again.

        Returns
        -------
        list of EmailStatus
            One status per address, in the given order.

        Raises
        ------
        EmailNotRegisteredError
            When no address is registered.
        InvalidInputError
            When no address was given.
        """
        async with self._check_lock:
            if self._statuses is None:
                if not self._emails:
                    raise InvalidInputError(
                        "no notify email given; the JSOC needs a registered address to export",
                        hint=f"register one at {REGISTER_URL} and pass it as emails=",
                    )
                statuses: dict[str, EmailStatus] = {}
                for email in self._emails:
                    status = await ask_email(self._checker, email, self._known)
                    statuses[email] = status
                    self._reporter(EmailChecked(status))
                self._statuses = statuses
                self._usable = [e for e, s in statuses.items() if s.registered]
                self._free.extend(self._usable)
                self._notify()
            statuses_now = list(self._statuses.values())
        if not self.emails:
            self._raise_none_usable()
        return statuses_now

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[EmailSlot]:
        """Hold one export slot: a free address plus one place under the IP cap.

        Waits until both are free. The address becomes free again when the block exits,
        unless it was :meth:`drop`-ped meanwhile.

        Raises
        ------
        EmailNotRegisteredError
            When every address has been dropped.
        """
        await self.check()
        async with self._ip:
            email = await self._take_email()
            assert email is not None
            self._busy.add(email)
            try:
                yield EmailSlot(email)
            finally:
                self._give_back(email)

    @contextlib.asynccontextmanager
    async def slot_for(self, email: str) -> AsyncIterator[EmailSlot | None]:
        """Hold the slot of one given address, for an export it already has pending.

        The JSOC counts a pending export against its notify address, so an export resumed
        from an earlier run holds that address (and one place under the IP cap) until it is
        staged; no new export is sent with the address meanwhile. When the address is not
        (or no longer) usable, only the IP place is held and ``None`` is yielded.

        Parameters
        ----------
        email
            The notify address the pending export was made with.
        """
        await self.check()
        async with self._ip:
            held = await self._take_email(email) if email in self.emails else None
            if held is None:
                yield None
                return
            self._busy.add(held)
            try:
                yield EmailSlot(held)
            finally:
                self._give_back(held)

    @contextlib.asynccontextmanager
    async def ip_slot(self) -> AsyncIterator[None]:
        """Hold one place under the IP cap only, for an export whose address is already known
        to the server (one adopted from an earlier run)."""
        async with self._ip:
            yield

    def drop(self, email: str, reason: str) -> None:
        """Stop using ``email`` (the JSOC refused it mid-run); waiting slot-takers move on."""
        if email in self._dropped:
            return
        self._dropped[email] = reason
        self._known.pop(email, None)
        self._reporter(EmailDropped(email, reason))
        # Wake the waiters: those waiting for this address, or for any when none is left.
        self._notify()

    def statistics(self) -> EmailPoolStatistics:
        """Which addresses hold a slot, which were dropped, and how full the IP cap is."""
        return EmailPoolStatistics(
            busy={e: e in self._busy for e in self.emails},
            dropped=tuple(self._dropped),
            ip_borrowed=int(self._ip.borrowed_tokens),
            ip_limit=int(self._ip.total_tokens),
        )

    def close(self) -> None:
        """Stop handing out slots; waiters fail."""
        self._closed = True
        self._notify()

    def _notify(self) -> None:
        """Wake every waiter so it looks at the free addresses again."""
        self._wake.set()
        self._wake = anyio.Event()

    def _give_back(self, email: str) -> None:
        """Make a held address free again, unless it was dropped meanwhile."""
        self._busy.discard(email)
        if email not in self._dropped and email not in self._free:
            self._free.append(email)
            self._notify()

    async def _take_email(self, wanted: str | None = None) -> str | None:
        """Wait for a free address (``wanted`` only, if given); skips dropped ones.

        Returns ``None`` when ``wanted`` is dropped while waiting.
        """
        while True:
            if self._closed or not self.emails:
                self._raise_none_usable()
            if wanted is not None and wanted in self._dropped:
                return None
            for email in self._free:
                if email not in self._dropped and (wanted is None or email == wanted):
                    self._free.remove(email)
                    return email
            await self._wake.wait()

    def _raise_none_usable(self) -> NoReturn:
        """Raise the error for 'no address can be used', naming what the JSOC said."""
        assert self._statuses is not None
        reasons = [
            f"{e}: {self._dropped.get(e) or self._statuses[e].message or 'not registered'}"
            for e in self._emails
        ]
        first = self._emails[0] if self._emails else ""
        code = self._statuses[first].code if first in self._statuses else None
        pending = [e for e in self._emails if e not in self._dropped
                   and e in self._statuses and self._statuses[e].code == 3]
        if pending and len(pending) == len(self._emails):
            hint = ("the registration is waiting for its confirmation: answer the e-mail the "
                    "JSOC sent to the address (within 15 minutes of registering; after that, "
                    f"register again at {REGISTER_URL}), then try again")
        else:
            hint = (f"register the address at {REGISTER_URL} (confirm the reply within 15 "
                    "minutes), then try again")
        raise EmailNotRegisteredError(
            "no usable notify email: " + "; ".join(reasons),
            email=first,
            status=code,
            hint=hint,
        )
