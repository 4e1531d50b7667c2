"""Export polling policy: learned staging times, the server's hint once, paced polls after."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anyio
import pytest
from engine_helpers import QUERY, emulator, fast_config

from asyncjsoc._client import Client
from asyncjsoc._events import Backoff, Event, ExportWaiting
from asyncjsoc._models import ExportStatus
from asyncjsoc._polling import LATENESS, PollPlan, StagingTimes, wait_export_ready
from asyncjsoc.emulator import Emulator
from asyncjsoc.exceptions import ProtocolError

pytestmark = pytest.mark.anyio


class _Scripted:
    """exp_status answers from a list."""

    def __init__(self, *statuses: ExportStatus) -> None:
        self.statuses = list(statuses)

    async def exp_status(self, request_id: str) -> ExportStatus:
        """The next scripted answer."""
        return self.statuses.pop(0)


def _status(code: int, wait: float = 0.0) -> ExportStatus:
    """An ExportStatus for one request id."""
    return ExportStatus(status=code, request_id="JSOC_20200101_001", wait=wait)


def _seen_at(staged: float, plan: PollPlan, hint_at: float | None = 10.0) -> tuple[float, int]:
    """When ``plan`` first polls at or after ``staged`` seconds, and how many polls that took.

    ``hint_at`` is the real JSOC's estimate: its ``wait`` is ``hint_at - age``, whole seconds.
    """
    age, polls = 0.0, 0
    while True:
        hint = round(hint_at - age) if hint_at is not None else 0
        age += plan.delay(age, hint)
        polls += 1
        if age >= staged:
            return age, polls


def test_the_first_hint_adds_one_exact_poll_even_below_poll_min() -> None:
    """An ideal server's exact hint is followed to the moment; a far one waits for no one."""
    assert PollPlan(2.0, 30.0).delay(0.0, 0.3) == 0.3
    assert PollPlan(2.0, 30.0).delay(0.0, 100.0) == 2.0
    plan = PollPlan(2.0, 30.0)
    assert plan.delay(0.0, 3.0) == 2.0
    assert plan.delay(2.0, 1.0) == pytest.approx(1.0)
    assert plan.delay(3.0, 0.5) == 2.0  # a later hint is not followed
    capped = PollPlan(0.001, 0.5)
    assert capped.delay(0.0, 100.0) == 0.001


def test_paced_polls_keep_lateness_within_a_quarter_of_the_age() -> None:
    """Against the real JSOC's meaningless hint, an export is seen by ~1.25 x its staging
    time (at most poll_max late), with polls growing like the logarithm of the time."""
    for staged in (0.5, 3.0, 8.0, 11.0, 30.0, 75.0, 200.0, 900.0):
        seen, polls = _seen_at(staged, PollPlan(2.0, 30.0))
        late = seen - staged
        assert late <= max(2.0, min(LATENESS * staged, 30.0)) + 1e-9, (staged, seen)
        # poll_min steps to 8 s, x1.2-1.25 steps to 120 s, then every poll_max
        assert polls <= (5 if staged <= 8 else 20 + max(0.0, staged - 120) / 30), staged
    pauses = [PollPlan(2.0, 30.0).delay(age, 0) for age in (0.0, 4.0, 40.0, 400.0)]
    assert pauses[:2] == [2.0, 2.0]
    assert 0.8 * LATENESS * 40 <= pauses[2] <= LATENESS * 40
    assert pauses[3] == 30.0
    jittered = {PollPlan(2.0, 30.0).delay(40.0, 0) for _ in range(20)}
    assert len(jittered) > 1


def test_a_learned_window_is_bisected_first_and_the_hint_is_then_ignored() -> None:
    """With a learned window the polls halve what is left of it, then go to its end; the
    server's hint is not followed."""
    plan = PollPlan(2.0, 30.0, (6.0, 8.0))
    ages = [0.0]
    for _ in range(5):
        ages.append(ages[-1] + plan.delay(ages[-1], 10 - ages[-1]))
    assert ages[1:] == pytest.approx([7.0, 7.5, 7.75, 7.875, 8.0])
    seen, polls = _seen_at(7.3, PollPlan(2.0, 30.0, (6.0, 8.0)))
    assert seen == pytest.approx(7.5)
    assert polls == 2
    seen, polls = _seen_at(8.0, PollPlan(0.5, 30.0, (7.9, 8.05)))  # settled: its end, once
    assert seen == pytest.approx(8.05)
    assert polls == 1
    assert PollPlan(2.0, 30.0, (1.0, 100.0)).delay(0.0, 0) == 30.0  # still capped
    # never a zero pause, even just before the window's end
    assert PollPlan(2.0, 30.0, (7.9, 8.0)).delay(7.9999, 0) == pytest.approx(0.08)


def test_an_export_slower_than_the_window_is_searched_for_just_past_it() -> None:
    """Past the window's end the steps double from 2 % of it until they reach the paced
    pause, so an export that overshoots a little is seen a little late, not poll_min late."""
    plan = PollPlan(2.0, 30.0, (7.9, 8.0))
    assert plan.delay(0.0, 10) == pytest.approx(8.0)
    steps = [plan.delay(age, 0) for age in (8.0, 8.16, 8.48, 9.12, 10.4)]
    assert steps[:4] == pytest.approx([0.16, 0.32, 0.64, 1.28])
    assert 2.0 <= steps[4] <= LATENESS * 10.4  # the paced pause has taken over
    seen, polls = _seen_at(8.3, PollPlan(2.0, 30.0, (7.9, 8.0)))
    assert seen == pytest.approx(8.48)  # polls at 8.0, 8.16, 8.48
    assert polls == 3
    unlearned, _ = _seen_at(8.3, PollPlan(2.0, 30.0))
    assert unlearned >= 10.0
    # an export already twice the window's age (left pending by an earlier run) is paced
    assert PollPlan(2.0, 30.0, (7.9, 8.0)).delay(300.0, 0) == 30.0
    assert 2.0 <= PollPlan(2.0, 30.0, (7.9, 8.0)).delay(16.0, 0) <= LATENESS * 16.0


def test_staging_times_narrow_to_the_agreeing_newest_brackets() -> None:
    """The window is the intersection of the newest consistent brackets; a change of pace
    drops the old ones; nonsense brackets are ignored; no window starts at 0."""
    times = StagingTimes()
    assert times.window() is None
    times.record(0.0, 10.0)
    assert times.window() is None  # never seen pending after its request: no window yet
    times.record(5.0, 10.5)
    assert times.window() == (5.0, 10.0)
    times.record(4.0, 7.5)
    assert times.window() == (5.0, 7.5)
    times.record(7.45, 7.55)
    assert times.window() == (7.45, 7.5)
    times.record(20.0, 25.0)  # slower now: the old brackets disagree and drop out
    assert times.window() == (20.0, 25.0)
    times.record(3.0, 2.0)
    times.record(-1.0, 2.0)
    assert times.window() == (20.0, 25.0)
    small = StagingTimes(keep=2)
    for bracket in ((0.0, 9.0), (1.0, 8.0), (2.0, 10.0)):
        small.record(*bracket)
    assert small.window() == (2.0, 8.0)


async def test_a_server_saying_almost_forever_is_polled_at_poll_min() -> None:
    """Repeated tiny hints use the hint once, then poll_min spacing."""
    api = _Scripted(_status(1, wait=0.001), _status(1, wait=0.001), _status(0))
    events: list[Event] = []
    final = await wait_export_ready(api, _status(2, wait=0.001), poll_min=0.01, poll_max=1.0,
                                    reporter=events.append)
    assert final.done
    pauses = [e.next_poll for e in events if isinstance(e, ExportWaiting)]
    assert pauses[0] == 0.001
    assert pauses[1:] == [0.01, 0.01]


async def test_an_ideal_servers_eta_is_polled_exactly_not_on_the_poll_min_grid(
    tmp_path: Path,
) -> None:
    """Audit: against an exact hint the only status poll arrives just after the export is
    ready, long before poll_min."""
    delay = 0.3
    async with emulator(time_scale=1.0, export_delay=delay, eta_seconds=None) as emu:
        config = dataclasses.replace(fast_config(emu, method="url", protocol="fits"),
                                     poll_min=2.0, poll_max=30.0)
        async with Client(config, tmp_path) as client:
            result = await client.fetch(QUERY)
        assert result.ok
        assert len(result.files) == 8
        submits = emu.audit.requests("jsoc_fetch/exp_request")
        polls = emu.audit.requests("jsoc_fetch/exp_status")
        assert len(submits) == 1
        assert len(polls) == 1
        assert polls[0].status == 0
        late = polls[0].time - (submits[0].time + delay)
        assert -0.01 <= late < 0.5, late


async def test_status_6_and_broken_answers_wait_poll_min_even_inside_a_learned_window(
) -> None:
    """The status-6 and broken-answer allowances are not spent by a fast bisection."""
    staging = StagingTimes()
    staging.record(0.01, 0.02)

    class _Flaky(_Scripted):
        async def exp_status(self, request_id: str) -> ExportStatus:
            if self.statuses and self.statuses[0].status == -1:
                self.statuses.pop(0)
                raise ProtocolError("cut short")
            return await super().exp_status(request_id)

    api = _Flaky(_status(6), _status(6), _status(-1), _status(1), _status(0))
    events: list[Event] = []
    final = await wait_export_ready(api, _status(2, wait=10), poll_min=0.05, poll_max=1.0,
                                    reporter=events.append, accepted_at=anyio.current_time(),
                                    staging=staging)
    assert final.done
    pauses = [e.next_poll for e in events if isinstance(e, ExportWaiting)]
    backoffs = [e for e in events if isinstance(e, Backoff)]
    assert pauses[0] < 0.05  # the learned window
    assert pauses[1] >= 0.05  # after the first status 6
    assert pauses[2] >= 0.05  # after the second
    assert [b.delay for b in backoffs] == [0.05]
    assert pauses[3] >= 0.05  # after the broken answer


async def test_an_export_accepted_without_a_wait_is_not_learned_from() -> None:
    """A duplicate (accepted with wait 0: an older export's) teaches nothing; a fresh one
    with a pending poll does."""
    for wait, learned in ((0, False), (10, True)):
        staging = StagingTimes()
        api = _Scripted(_status(1), _status(0))
        await wait_export_ready(api, _status(2, wait=wait), poll_min=0.001, poll_max=0.01,
                                accepted_at=anyio.current_time(), staging=staging)
        assert (staging.window() is not None) is learned


def _lateness(emu: Emulator) -> list[tuple[float, int]]:
    """Per export, in request order: seconds from staged to the first status-0 poll, polls."""
    out = []
    polls = emu.audit.requests("jsoc_fetch/exp_status")
    for span in sorted(emu.audit.pending, key=lambda s: s.start):
        mine = [p for p in polls if p.params.get("requestid") == span.request_id]
        seen = next(p.time for p in mine if p.status == 0)
        out.append((seen - span.end, len(mine)))
    return out


async def test_a_pull_learns_its_staging_time_from_the_real_servers_meaningless_hint(
    tmp_path: Path,
) -> None:
    """Audit, real-server hints (request + 10 s): the first export is seen on the paced grid,
    not at the 10 s estimate; later ones are polled where the earlier ones finished."""
    delay = 0.45
    async with emulator(time_scale=1.0, export_delay=delay, file_caps={"hmi.": 1}) as emu:
        config = dataclasses.replace(fast_config(emu, method="url", protocol="fits"),
                                     poll_min=0.2, poll_max=30.0)
        async with Client(config, tmp_path) as client:
            result = await client.fetch("hmi.M_45s[2012.01.01_00:00:00_TAI/315s]{magnetogram}")
        assert result.ok
        assert len(result.files) == 7
        late = _lateness(emu)
    assert len(late) == 7
    first_late, first_polls = late[0]
    assert -0.005 <= first_late <= 0.2 + 0.1, late
    assert first_polls >= 2, late
    # Robust to a loaded machine: an export a few ms slower than the window is found just
    # past it, so even the worst of the last three is well under poll_min late.
    last = sorted(lateness for lateness, _ in late[-3:])
    # The audit stamps a poll on arrival; an export ending while that poll is handled is
    # answered staged, so a poll may look a few microseconds early (-56 µs seen once).
    assert last[0] >= -0.005, late
    assert last[1] < 0.06, late
    assert last[2] < 0.15, late
    assert all(polls <= 6 for _, polls in late[-3:]), late
