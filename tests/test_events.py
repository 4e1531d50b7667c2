"""Events are frozen values; reporters combine."""

from __future__ import annotations

import dataclasses

import pytest

from asyncjsoc._events import (
    Event,
    FanOutReporter,
    FileDone,
    NullReporter,
    PullFinished,
    Reporter,
    fan_out,
)


def test_events_are_frozen() -> None:
    """An event cannot be changed after it is sent."""
    event = FileDone("a/b.fits", 10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.bytes = 11  # type: ignore[misc]
    assert isinstance(event, Event)


def test_null_reporter_ignores_events() -> None:
    """NullReporter accepts any event and returns None."""
    assert NullReporter()(FileDone("x", 1)) is None


def test_fan_out_feeds_every_reporter_in_order() -> None:
    """fan_out sends each event to each reporter, and skips None."""
    first: list[Event] = []
    second: list[Event] = []
    reporter = fan_out(first.append, None, second.append)
    assert isinstance(reporter, FanOutReporter)
    events = [FileDone("x", 1), PullFinished(files=1, failed=0, bytes=1, exports=1, ok=True)]
    for event in events:
        reporter(event)
    assert first == events
    assert second == events


def test_fan_out_of_one_or_none() -> None:
    """One reporter is returned as is; none gives a NullReporter."""
    sink: list[Event] = []
    one: Reporter = sink.append
    assert fan_out(one) is one
    assert isinstance(fan_out(), NullReporter)
    assert isinstance(fan_out(None), NullReporter)


def test_file_skipped_carries_the_record() -> None:
    """FileSkipped names the record; old two-argument calls still work."""
    from asyncjsoc._events import FileSkipped

    assert FileSkipped("a.fits", 3, "hmi.M_45s[x]").record == "hmi.M_45s[x]"
    assert FileSkipped("a.fits", 3).record is None
