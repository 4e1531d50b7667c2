"""fetch_sync: the blocking facade, from a plain thread, refused inside a running loop."""

from __future__ import annotations

from pathlib import Path

import anyio.from_thread
import pytest
from engine_helpers import QUERY, fast_knobs

from asyncjsoc import fetch_sync
from asyncjsoc._events import Event, PullFinished
from asyncjsoc._retry import RetryPolicy
from asyncjsoc.emulator import run_emulator
from asyncjsoc.exceptions import InvalidInputError


def test_fetch_sync_from_a_plain_thread(tmp_path: Path) -> None:
    """A blocking call downloads every file; the emulator runs in its own portal."""
    with anyio.from_thread.start_blocking_portal() as portal, \
            portal.wrap_async_context_manager(run_emulator(fast_knobs())) as emu:
        events: list[Event] = []
        result = fetch_sync(
            QUERY, out_dir=tmp_path, emails="a@example.org", server=emu.url,
            reporter=events.append, poll_min=0.002, poll_max=0.02,
            requests_per_second=1e6, burst=1000, retry=RetryPolicy.no_wait(),
        )
        assert result.ok
        assert len(result.files) == 8
        for f in result.files:
            assert f.path.read_bytes() == emu.file_bytes(f.url)
        assert isinstance(events[-1], PullFinished)


@pytest.mark.anyio
async def test_fetch_sync_refuses_a_running_loop(tmp_path: Path) -> None:
    """Inside an event loop the blocking call raises instead of freezing the loop."""
    with pytest.raises(RuntimeError, match="running event loop"):
        fetch_sync(QUERY, out_dir=tmp_path, emails="a@example.org")


def test_fetch_sync_names_a_misspelled_option(tmp_path: Path) -> None:
    """A keyword that is no ClientConfig field is bad input with a suggestion, before
    anything is written (it was a bare TypeError from dataclasses.replace)."""
    with pytest.raises(InvalidInputError, match="'conections'") as caught:
        fetch_sync(QUERY, out_dir=tmp_path / "out", emails="a@example.org", conections=3)
    assert caught.value.hint == "did you mean 'connections'?"
    assert not (tmp_path / "out").exists()
