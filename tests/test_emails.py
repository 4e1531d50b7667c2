"""EmailPool: checks addresses once, one slot per email, an IP-wide cap, drops refused ones."""

from __future__ import annotations

from collections.abc import Collection

import anyio
import pytest

from asyncjsoc._emails import REGISTER_URL, EmailPool, mask_email
from asyncjsoc._events import EmailChecked, EmailDropped, Event
from asyncjsoc._models import EmailStatus
from asyncjsoc.exceptions import EmailNotRegisteredError, InvalidInputError

pytestmark = pytest.mark.anyio


class FakeChecker:
    """A checkAddress stand-in: listed addresses are registered, others unknown (code 4)."""

    def __init__(self, registered: set[str], pending: Collection[str] = ()) -> None:
        self.registered = registered
        self.pending = pending
        self.calls: list[str] = []

    async def check_email(self, email: str) -> EmailStatus:
        """Answer like the JSOC's checkAddress.sh."""
        self.calls.append(email)
        if email in self.registered:
            return EmailStatus(email, 2, "Email address is valid and registered.")
        if email in self.pending:
            return EmailStatus(email, 3, "Email address registration is pending.")
        return EmailStatus(email, 4, "Email address has been neither validated nor registered.")


async def test_check_keeps_registered_and_reports_each() -> None:
    """Unregistered and pending addresses are dropped; each is checked exactly once."""
    events: list[Event] = []
    checker = FakeChecker({"a@x.org"}, {"p@x.org"})
    pool = EmailPool(checker, ["a@x.org", "p@x.org", "u@x.org"], max_pending=8,
                     reporter=events.append)
    statuses = await pool.check()
    await pool.check()
    assert [s.code for s in statuses] == [2, 3, 4]
    assert pool.emails == ("a@x.org",)
    assert checker.calls == ["a@x.org", "p@x.org", "u@x.org"]
    assert [type(e) for e in events] == [EmailChecked] * 3
    pool.close()


async def test_known_registered_addresses_are_not_asked_again() -> None:
    """A shared ``known`` map spares later pools the registered addresses only."""
    known: dict[str, EmailStatus] = {}
    checker = FakeChecker({"a@x.org"})
    first = EmailPool(checker, ["a@x.org", "u@x.org"], max_pending=8, known=known)
    await first.check()
    assert checker.calls == ["a@x.org", "u@x.org"]
    assert set(known) == {"a@x.org"}
    events: list[Event] = []
    second = EmailPool(checker, ["a@x.org", "u@x.org"], max_pending=8, reporter=events.append,
                       known=known)
    statuses = await second.check()
    # The unregistered address is asked again (it may have been confirmed meanwhile).
    assert checker.calls[2:] == ["u@x.org"]
    assert [s.code for s in statuses] == [2, 4]
    assert second.emails == ("a@x.org",)
    # Every address is still reported, asked or not.
    assert [e.status.email for e in events if isinstance(e, EmailChecked)] == [
        "a@x.org", "u@x.org"]
    # A dropped address is forgotten: the next pool asks about it.
    second.drop("a@x.org", "expired")
    assert known == {}
    third = EmailPool(checker, ["a@x.org"], max_pending=8, known=known)
    await third.check()
    assert checker.calls[3:] == ["a@x.org"]
    for pool in (first, second, third):
        pool.close()


async def test_all_bad_raises_with_register_hint() -> None:
    """With no registered address the error names them and points at the register page."""
    pool = EmailPool(FakeChecker(set()), ["u@x.org"], max_pending=8)
    with pytest.raises(EmailNotRegisteredError) as info:
        await pool.check()
    assert "u@x.org" in str(info.value)
    assert info.value.hint is not None
    assert REGISTER_URL in info.value.hint
    pool.close()


async def test_a_pending_registration_is_told_to_confirm_not_to_register() -> None:
    """An address whose registration waits for its confirmation: the hint says to answer
    the JSOC's e-mail, not to register again (a mix with unknown addresses keeps the
    register hint)."""
    pool = EmailPool(FakeChecker(set(), pending={"p@x.org"}), ["p@x.org"], max_pending=8)
    with pytest.raises(EmailNotRegisteredError) as info:
        await pool.check()
    assert "waiting for its confirmation" in (info.value.hint or "")
    assert (info.value.hint or "").startswith("the registration")
    pool.close()
    mixed = EmailPool(FakeChecker(set(), pending={"p@x.org"}), ["p@x.org", "u@x.org"],
                      max_pending=8)
    with pytest.raises(EmailNotRegisteredError) as info:
        await mixed.check()
    assert (info.value.hint or "").startswith("register the address")
    mixed.close()


async def test_no_email_is_invalid_input() -> None:
    """A pool without addresses cannot export."""
    pool = EmailPool(FakeChecker(set()), [], max_pending=8)
    with pytest.raises(InvalidInputError):
        await pool.check()
    pool.close()


async def test_one_slot_per_email_and_ip_cap() -> None:
    """Concurrent holders never share an email, and never exceed the IP cap."""
    emails = [f"e{i}@x.org" for i in range(4)]
    pool = EmailPool(FakeChecker(set(emails)), emails, max_pending=3)
    holding: set[str] = set()
    peak = 0
    seen: set[str] = set()

    async def worker() -> None:
        nonlocal peak
        async with pool.slot() as slot:
            assert slot.email not in holding
            holding.add(slot.email)
            seen.add(slot.email)
            peak = max(peak, len(holding))
            stats = pool.statistics()
            assert stats.busy[slot.email]
            assert sum(stats.busy.values()) <= 3
            await anyio.sleep(0.01)
            holding.discard(slot.email)

    async with anyio.create_task_group() as tg:
        for _ in range(12):
            tg.start_soon(worker)
    assert peak == 3
    assert seen == set(emails)
    assert pool.capacity == 3
    assert not any(pool.statistics().busy.values())
    pool.close()


async def test_drop_moves_waiters_to_other_emails_then_fails() -> None:
    """A dropped email is never handed out again; dropping the last one fails the waiters."""
    events: list[Event] = []
    pool = EmailPool(FakeChecker({"a@x.org", "b@x.org"}), ["a@x.org", "b@x.org"],
                     max_pending=8, reporter=events.append)
    async with pool.slot() as slot:
        pool.drop(slot.email, "Cannot process your request.")
    async with pool.slot() as other:
        assert other.email != slot.email
    assert pool.emails == (other.email,)
    assert any(isinstance(e, EmailDropped) and e.email == slot.email for e in events)

    pool.drop(other.email, "lapsed")
    with pytest.raises(EmailNotRegisteredError, match="lapsed"):
        async with pool.slot():
            pass
    pool.close()


async def test_waiter_fails_when_last_email_is_dropped() -> None:
    """A task waiting for a slot is woken with an error when the holder's email is dropped."""
    pool = EmailPool(FakeChecker({"a@x.org"}), ["a@x.org"], max_pending=8)
    failures: list[BaseException] = []

    async def waiter() -> None:
        try:
            async with pool.slot():
                pass
        except EmailNotRegisteredError as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg, pool.slot() as slot:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        pool.drop(slot.email, "refused")
    assert len(failures) == 1
    pool.close()


def test_mask_email() -> None:
    """Masking keeps the first letter and the domain."""
    assert mask_email("jane.doe@example.org") == "j***@example.org"
    assert mask_email("nonsense") == "***"


async def test_slot_for_waits_for_that_email_and_keeps_it_from_others() -> None:
    """slot_for(email) takes exactly that address; slot() hands out the others meanwhile."""
    pool = EmailPool(FakeChecker({"a@x.org", "b@x.org"}), ["a@x.org", "b@x.org"], max_pending=8)
    order: list[str] = []
    release = anyio.Event()

    async def holder() -> None:
        async with pool.slot() as held:
            order.append(f"slot {held.email}")
            await release.wait()

    async def resumer() -> None:
        async with pool.slot_for("a@x.org") as held:
            assert held is not None
            order.append(f"resumed {held.email}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(resumer)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(holder)
        await anyio.wait_all_tasks_blocked()
        assert order == ["slot a@x.org", "slot b@x.org"]
        release.set()
    assert order[2:] == ["resumed a@x.org"]
    async with pool.slot_for("c@x.org") as none:
        assert none is None
    assert pool.statistics().ip_borrowed == 0
    pool.close()
