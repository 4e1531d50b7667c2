"""The no-yield hand-over helpers: cancellation still lands, and nothing yields needlessly."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import pytest

from asyncjsoc import _handoff
from asyncjsoc._handoff import cancel_point, receive_soon, send_soon

pytestmark = pytest.mark.anyio


async def _runs_of_other_task(action: Callable[[], Awaitable[None]]) -> int:
    """How many times a busy sibling task ran while ``action`` ran."""
    ticks = 0
    stop = False

    async def sibling() -> None:
        nonlocal ticks
        while not stop:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(sibling)
        await anyio.lowlevel.checkpoint()  # the sibling is running
        before = ticks
        await action()
        after = ticks
        stop = True
    return after - before


@pytest.mark.parametrize("fast", [True, False], ids=["asyncio backend", "public fallback"])
async def test_cancel_point_raises_in_a_cancelled_scope(
        fast: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not fast:
        monkeypatch.setattr(_handoff, "_ASYNCIO_CHECK", None)
    reached = False
    with anyio.CancelScope() as scope:
        scope.cancel()
        await cancel_point()
        reached = True
    assert scope.cancelled_caught
    assert not reached


async def test_cancel_point_sees_an_outer_scope_but_not_through_a_shield() -> None:
    with anyio.CancelScope() as outer:
        with anyio.CancelScope():
            outer.cancel()
            with anyio.CancelScope(shield=True):
                await cancel_point()  # shielded: nothing to deliver
                shielded_passed = True
            await cancel_point()
            pytest.fail("the outer cancellation did not land")
    assert shielded_passed
    assert outer.cancelled_caught


async def test_cancel_point_does_not_yield_when_nothing_is_cancelled() -> None:
    async def hundred() -> None:
        for _ in range(100):
            await cancel_point()

    assert await _runs_of_other_task(hundred) == 0


async def test_send_and_receive_soon_do_not_yield_when_they_need_not_wait() -> None:
    send, receive = anyio.create_memory_object_stream[int](10)
    got: list[int] = []

    async def pass_items() -> None:
        for i in range(5):
            await send_soon(send, i)
        for _ in range(5):
            got.append(await receive_soon(receive))

    assert await _runs_of_other_task(pass_items) == 0
    assert got == [0, 1, 2, 3, 4]
    send.close()
    receive.close()


async def test_receive_soon_waits_for_an_item_and_delivers_cancellation() -> None:
    send, receive = anyio.create_memory_object_stream[str](0)
    async with anyio.create_task_group() as tg:
        async def later() -> None:
            await send.send("late")

        tg.start_soon(later)
        assert await receive_soon(receive) == "late"
    with anyio.CancelScope() as scope:
        scope.cancel()
        await receive_soon(receive)
    assert scope.cancelled_caught
    send.close()
    receive.close()


def test_fast_path_is_used_only_for_a_coroutine_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """An anyio whose asyncio check is not a coroutine function gets the public path."""
    from anyio._backends._asyncio import AsyncIOBackend

    assert _handoff._asyncio_check() is not None  # this anyio: the fast path
    monkeypatch.setattr(AsyncIOBackend, "checkpoint_if_cancelled", lambda: None)
    assert _handoff._asyncio_check() is None
