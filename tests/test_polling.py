"""Export polling policy: a poll exactly at the server's ETA, then a polite jittered backoff."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from engine_helpers import QUERY, emulator, fast_config

from asyncjsoc._client import Client
from asyncjsoc._events import Event, ExportWaiting
from asyncjsoc._models import ExportStatus
from asyncjsoc._polling import _poll_delay, wait_export_ready

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


def test_first_hint_is_followed_exactly_even_below_poll_min() -> None:
    """The first positive hint sets the next poll, even when sooner than poll_min."""
    assert _poll_delay(0.3, 0, 2.0, 30.0, eta_spent=False) == 0.3
    assert _poll_delay(100.0, 0, 2.0, 30.0, eta_spent=False) == 30.0


def test_later_hints_and_late_exports_never_poll_faster_than_poll_min() -> None:
    """After the ETA exception, every pause is within [poll_min, poll_max] and never zero."""
    assert _poll_delay(0.01, 0, 2.0, 30.0, eta_spent=True) == 2.0
    assert _poll_delay(7.0, 0, 2.0, 30.0, eta_spent=True) == 7.0
    late = [_poll_delay(0.0, k, 2.0, 30.0, eta_spent=True) for k in range(12)]
    assert all(2.0 <= d <= 30.0 for d in late)
    assert late[-1] == 30.0
    assert late[0] < late[6]
    jittered = {_poll_delay(-1.0, 2, 2.0, 30.0, eta_spent=False) for _ in range(20)}
    assert len(jittered) > 1


async def test_a_server_saying_almost_forever_is_polled_at_poll_min() -> None:
    """Repeated tiny hints use the ETA exception once, then poll_min spacing."""
    api = _Scripted(_status(1, wait=0.001), _status(1, wait=0.001), _status(0))
    events: list[Event] = []
    final = await wait_export_ready(api, _status(2, wait=0.001), poll_min=0.01, poll_max=1.0,
                                    reporter=events.append)
    assert final.done
    pauses = [e.next_poll for e in events if isinstance(e, ExportWaiting)]
    assert pauses == [0.001, 0.01, 0.01]


async def test_export_is_polled_at_its_eta_not_on_the_poll_min_grid(tmp_path: Path) -> None:
    """Audit: the only status poll arrives just after the export is ready, long before poll_min."""
    delay = 0.3
    async with emulator(time_scale=1.0, export_delay=delay) as emu:
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
