"""Client against the emulator: caps, pipelining, adoption, splits, expiry, resume."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

import aiohttp
import anyio
import pytest
from engine_helpers import QUERY, assert_identical, emulator, fast_config, fetch_with_files_held

from asyncjsoc._client import Client, FileResult, PullResult
from asyncjsoc._config import ClientConfig
from asyncjsoc._events import (
    Backoff,
    ChunkSplit,
    EmailChecked,
    EmailDropped,
    Event,
    ExportAdopted,
    ExportExpired,
    ExportReady,
    ExportReused,
    ExportSubmitted,
    ExportWaiting,
    FileDone,
    FileSkipped,
    FileStarted,
    PullFinished,
)
from asyncjsoc._status import read_status
from asyncjsoc._store import StateStore, default_state_path
from asyncjsoc.emulator import Emulator
from asyncjsoc.exceptions import (
    EmailNotRegisteredError,
    InvalidInputError,
    StateError,
    StateLockedError,
    StateMismatchError,
)

pytestmark = pytest.mark.anyio


async def _fetch_recording(config: ClientConfig, out: Path) -> tuple[PullResult, list[Event]]:
    """Fetch ``QUERY`` with a new client; returns the result and every event it reported."""
    events: list[Event] = []
    async with Client(config, out, reporter=events.append) as client:
        result = await client.fetch(QUERY)
    return result, events


def _ds_param(params: dict[str, str]) -> str:
    """The record set of an audited exp_request."""
    return params.get("ds", "")


async def test_several_emails_respect_email_and_ip_caps(tmp_path: Path) -> None:
    """Three emails, IP cap 2: never more than one pending per email nor two in all."""
    emails = ("a@example.org", "b@example.org", "c@example.org")
    async with emulator() as emu:
        config = fast_config(emu, *emails, max_files_per_export=2, max_pending_exports=2)
        result, events = await _fetch_recording(config, tmp_path)
        assert result.ok
        assert len(result.files) == 8
        assert result.plan is not None
        assert len(result.plan.chunks) >= 4
        assert len(result.exports) == len(result.plan.chunks)
        assert_identical(emu, result)
        per_email = emu.audit.max_pending_per_email()
        assert set(per_email) <= set(emails)
        assert max(per_email.values()) == 1
        assert max(emu.audit.max_pending_per_ip().values()) <= 3  # the server's cap 2, "> 2"
        assert not emu.audit.status7()
        assert len({e.email for e in events if isinstance(e, ExportSubmitted)}) >= 2
        assert isinstance(events[-1], PullFinished)
        assert events[-1].ok


async def test_next_export_is_staged_while_previous_downloads(tmp_path: Path) -> None:
    """With one email, chunk 1 is exported before chunk 0's files are all downloaded."""
    async with emulator(bandwidth=200_000) as emu:
        config = fast_config(emu, max_files_per_export=4, connections=1)
        result, events = await _fetch_recording(config, tmp_path)
        assert result.ok
        first_rid = next(e.request_id for e in events
                         if isinstance(e, ExportSubmitted) and e.chunk == 0)
        first_files = {f.relpath for f in result.files if f.request_id == first_rid}
        first_ready = next(e for e in events if isinstance(e, ExportReady) and e.chunk == 0)
        assert len(first_files) == first_ready.n_files >= 2
        last_done_of_first = max(i for i, e in enumerate(events)
                                 if isinstance(e, FileDone) and e.relpath in first_files)
        second_ready = next(i for i, e in enumerate(events)
                            if isinstance(e, ExportReady) and e.chunk == 1)
        assert second_ready < last_done_of_first
        assert max(emu.audit.max_pending_per_email().values()) == 1


async def test_export_calls_do_not_queue_behind_file_downloads(tmp_path: Path) -> None:
    """JSOC API calls have a connection of their own: with the one download connection busy
    (its GET held by the emulator before the headers, more downloads waiting for it), the
    next chunk is still exported and staged. The files are released only once it is; were
    API calls queued behind downloads, the pull would hang and time out."""
    events: list[Event] = []
    async with emulator() as emu:
        config = fast_config(emu, max_files_per_export=4, connections=1)

        def report(event: Event) -> None:
            events.append(event)
            if isinstance(event, ExportReady) and event.chunk == 0:
                # Chunk 1 (submitted next) stays staging until the clock is moved on below:
                # its 20 ms could otherwise pass before chunk 0's GET reached the hold.
                emu.knobs.export_delay = 100_000.0
            if isinstance(event, ExportReady) and event.chunk == 1:
                assert emu.files_held == 1  # the one connection's GET is waiting
                emu.release_files()

        async def stage_chunk_1_once_a_get_is_held() -> None:
            await emu.wait_files_held(1)
            emu.clock.advance(100_000.0)  # well within chunk 0's 7 days

        async with anyio.create_task_group() as tg:
            tg.start_soon(stage_chunk_1_once_a_get_is_held)
            result = await fetch_with_files_held(emu, config, tmp_path, report)
        assert result.ok
        first_started = next(i for i, e in enumerate(events) if isinstance(e, FileStarted))
        second_ready = next(i for i, e in enumerate(events)
                            if isinstance(e, ExportReady) and e.chunk == 1)
        assert second_ready < first_started


async def test_status7_pending_export_is_adopted(tmp_path: Path) -> None:
    """An export already pending for the email is waited out, then the pull goes on."""
    async with emulator(export_delay=10_000.0) as emu:
        async with aiohttp.ClientSession() as session:
            params = {"op": "exp_request", "ds": "hmi.M_45s[2012.02.01_00:00:00_TAI]",
                      "notify": "a@example.org", "method": "url", "protocol": "fits",
                      "format": "json"}
            async with session.get(f"{emu.url}/cgi-bin/ajax/jsoc_fetch", params=params) as r:
                body = await r.json(content_type=None)
        foreign = body["requestid"]
        assert body["status"] == 2
        emu.knobs.export_delay = 20.0
        events: list[Event] = []

        def reporter(event: Event) -> None:
            events.append(event)
            if isinstance(event, ExportAdopted):
                # Let the foreign export finish now that the client is waiting for it.
                emu.clock.advance(10_000.0)

        async with Client(fast_config(emu), tmp_path, reporter=reporter) as client:
            result = await client.fetch(QUERY)
        assert result.ok
        adopted = [e for e in events if isinstance(e, ExportAdopted)]
        assert len(adopted) == 1
        assert adopted[0].pending_ids == (foreign,)
        assert len(emu.audit.status7()) == 1
        assert max(emu.audit.max_pending_per_email().values()) == 1
        assert_identical(emu, result)


async def test_file_cap_in_plan_and_bisect_on_status3(tmp_path: Path) -> None:
    """A server file cap under the planned chunk size makes the chunk split until it fits."""
    async with emulator(file_caps={"hmi.": 3}) as emu:
        events: list[Event] = []
        async with Client(fast_config(emu), tmp_path, reporter=events.append) as client:
            plan = await client.plan(QUERY)
            assert len(plan.chunks) == 1
            result = await client.fetch(QUERY)
        assert result.ok
        assert len(result.files) == 8
        splits = [e for e in events if isinstance(e, ChunkSplit)]
        assert splits
        statuses = [e.status for e in emu.audit.requests("jsoc_fetch/exp_request")]
        assert 3 in statuses  # the planned chunk was refused over the cap...
        assert statuses.count(2) >= 3  # ...and its pieces (8 files, 3 a piece) accepted
        assert result.plan is not None
        assert all(c.n_files <= 3 for c in result.plan.chunks if c.index >= len(plan.chunks))
        assert_identical(emu, result)


async def test_size_cap_bisects(tmp_path: Path) -> None:
    """A tiny size cap (status 3, VOID) bisects the chunk; planner caps also split up front."""
    async with emulator(size_cap_mb=1, file_size=300 * 2880) as emu:
        config = fast_config(emu, max_files_per_export=4)
        async with Client(config, tmp_path / "plan-only") as client:
            assert [c.n_files for c in (await client.plan(QUERY)).chunks] == [4, 4]
        result, events = await _fetch_recording(config, tmp_path)
        assert result.ok
        assert len(result.files) == 8
        assert any(isinstance(e, ChunkSplit) for e in events)
        assert_identical(emu, result)


async def test_expired_export_is_requested_again_for_missing_records(tmp_path: Path) -> None:
    """Files 404 after the export expires; only the missing records are exported again."""
    async with emulator() as emu:
        events: list[Event] = []

        def reporter(event: Event) -> None:
            events.append(event)
            # The second file's body is arriving: with one connection no other GET is out
            # (a file counts as done only once on disk, which a slow disk delays while
            # the connection fetches every other file: the old trigger raced with that).
            if (isinstance(event, FileStarted)
                    and sum(isinstance(e, FileStarted) for e in events) == 2):
                emu.clock.advance(8 * 86400)

        config = fast_config(emu, connections=1)
        async with Client(config, tmp_path, reporter=reporter) as client:
            result = await client.fetch(QUERY)
        assert result.ok
        assert len(result.files) == 8
        assert any(isinstance(e, ExportExpired) for e in events)
        requests = [e for e in emu.audit.requests("jsoc_fetch/exp_request") if e.status == 2]
        assert len(requests) == 2
        again = _ds_param(requests[1].params)
        second = [f for f in result.files if f.request_id != result.exports[0]]
        assert len(second) == 6
        assert again.count("hmi.M_45s[") == len(second)
        for f in second:
            assert f.path.read_bytes() == emu.file_bytes(f.url)
        sizes = {f.path.stat().st_size for f in result.files}
        assert len(sizes) == 1


async def test_pull_yields_each_file_once_and_fetch_returns_them_all(tmp_path: Path) -> None:
    """Iterating a pull yields every file once, as its result lists them; fetch (which
    streams nothing) returns the same files."""
    async with emulator() as emu:
        config = fast_config(emu)
        async with Client(config, tmp_path / "pulled") as client, client.pull(QUERY) as pull:
            got = [f async for f in pull]
        assert pull.result is not None
        assert pull.result.ok
        assert len(got) == 8
        assert sorted(f.relpath for f in got) == sorted(f.relpath for f in pull.result.files)
        async with Client(config, tmp_path / "fetched") as client:
            fetched = await client.fetch(QUERY)
        assert fetched.ok
        assert sorted(f.relpath for f in fetched.files) == sorted(f.relpath for f in got)
        assert_identical(emu, fetched)


async def test_resume_after_cancel_fetches_nothing_twice(tmp_path: Path) -> None:
    """Cancel after 3 files; the rerun reuses the export and fetches only the rest."""
    async with emulator(bandwidth=400_000) as emu:
        config = fast_config(emu, connections=1)
        got: list[FileResult] = []
        async with Client(config, tmp_path) as client:
            with anyio.CancelScope() as scope:
                async with client.pull(QUERY) as pull:
                    async for f in pull:
                        got.append(f)
                        if len(got) == 3:
                            scope.cancel()
        assert scope.cancelled_caught
        assert len(got) == 3
        requests_before = emu.audit.count("jsoc_fetch/exp_request")
        result, events = await _fetch_recording(config, tmp_path)
        assert result.ok
        assert emu.audit.count("jsoc_fetch/exp_request") == requests_before
        assert {f.relpath for f in got}.isdisjoint(f.relpath for f in result.files)
        assert len(got) + len(result.files) == 8
        assert emu.audit.refetched() == []
        assert not any(isinstance(e, FileSkipped) and e.relpath not in
                       {f.relpath for f in got} for e in events)
        assert_identical(emu, result)
        for f in got:
            assert f.path.read_bytes() == emu.file_bytes(f.url)


async def test_rerun_after_completion_does_nothing(tmp_path: Path) -> None:
    """A finished pull run again makes no export request and no file GET."""
    async with emulator() as emu:
        config = fast_config(emu)
        async with Client(config, tmp_path) as client:
            first = await client.fetch(QUERY)
        gets = emu.audit.count("file")
        exports = emu.audit.count("jsoc_fetch/exp_request")
        async with Client(config, tmp_path) as client:
            second = await client.fetch(QUERY)
        assert first.ok
        assert second.ok
        assert second.files == ()
        assert emu.audit.count("file") == gets
        assert emu.audit.count("jsoc_fetch/exp_request") == exports


async def test_rerun_lists_files_of_earlier_runs(tmp_path: Path) -> None:
    """A complete rerun reports every file as reused, with its record, and skip events."""
    async with emulator() as emu:
        config = fast_config(emu)
        async with Client(config, tmp_path) as client:
            first = await client.fetch(QUERY)
        events: list[Event] = []
        async with Client(config, tmp_path, reporter=events.append) as client:
            second = await client.fetch(QUERY)
        assert second.ok
        assert second.skipped == len(second.reused) == 8
        assert all(f.reused for f in second.reused)
        by_path = {f.relpath: f for f in first.files}
        assert {f.relpath for f in second.all_files} == set(by_path)
        for f in second.reused:
            assert f.record == by_path[f.relpath].record
            assert f.path.read_bytes() == emu.file_bytes(f.url)
        skips = {e.relpath: e.record for e in events if isinstance(e, FileSkipped)}
        assert skips == {f.relpath: f.record for f in first.files}


async def test_rerun_fetches_a_file_deleted_from_disk(tmp_path: Path) -> None:
    """A done file missing on disk is fetched again on rerun; the others are reused."""
    async with emulator() as emu:
        config = fast_config(emu)
        async with Client(config, tmp_path) as client:
            first = await client.fetch(QUERY)
        victim = first.files[3]
        victim.path.unlink()
        gets = emu.audit.count("file")
        async with Client(config, tmp_path) as client:
            second = await client.fetch(QUERY)
        assert second.ok
        assert [f.relpath for f in second.files] == [victim.relpath]
        assert len(second.reused) == 7
        assert victim.path.read_bytes() == emu.file_bytes(victim.url)
        assert emu.audit.count("file") == gets + 1


async def test_rerun_fetches_files_whose_size_changed_on_disk(tmp_path: Path) -> None:
    """Done files found emptied, cut short or grown (a power loss with ``fsync`` off, an
    editor) are fetched again on rerun, not taken as complete; the others are reused."""
    async with emulator() as emu:
        config = fast_config(emu)
        async with Client(config, tmp_path) as client:
            first = await client.fetch(QUERY)
        emptied, cut, grown = first.files[1], first.files[4], first.files[6]
        emptied.path.write_bytes(b"")
        with cut.path.open("r+b") as handle:
            handle.truncate(cut.bytes // 2)
        with grown.path.open("ab") as appended:
            appended.write(b"trailing")
        gets = emu.audit.count("file")
        async with Client(config, tmp_path) as client:
            second = await client.fetch(QUERY)
        assert second.ok
        assert sorted(f.relpath for f in second.files) == sorted(
            f.relpath for f in (emptied, cut, grown))
        assert len(second.reused) == len(first.files) - 3
        for f in (emptied, cut, grown):
            assert f.path.read_bytes() == emu.file_bytes(f.url)
        assert emu.audit.count("file") == gets + 3
        status = read_status(tmp_path)
        assert status.complete


async def test_second_client_on_same_directory_is_refused(tmp_path: Path) -> None:
    """The state lock, taken by the first pull, refuses a second client's pull."""
    async with emulator() as emu:
        config = fast_config(emu)
        async with Client(config, tmp_path) as first:
            await first.fetch(QUERY)
            async with Client(config, tmp_path) as second:
                with pytest.raises(StateLockedError):
                    await second.fetch(QUERY)


@pytest.mark.parametrize("states", [("a.sqlite", "b.sqlite"), (None, "b.sqlite"),
                                    ("a.sqlite", None)])
async def test_pulls_with_their_own_state_files_still_lock_the_directory(
        tmp_path: Path, states: tuple[str | None, str | None]) -> None:
    """A state file elsewhere does not let two pulls write into one directory at once (their
    part files would collide): the second is refused, naming the directory; the first goes
    on, and once it is closed the second may pull."""
    out = tmp_path / "out"
    paths = [tmp_path / name if name else None for name in states]
    async with emulator() as emu:
        first_config, second_config = (fast_config(emu, state_path=p) for p in paths)
        async with Client(first_config, out) as first:
            await first.fetch(QUERY)
            async with Client(second_config, out) as second:
                with pytest.raises(StateLockedError, match=re.escape(str(out))):
                    await second.fetch(QUERY)
            assert (await first.fetch(QUERY)).ok
        async with Client(second_config, out) as second:
            assert (await second.fetch(QUERY)).ok


async def test_a_state_file_at_the_default_place_named_explicitly_is_no_second_lock(
        tmp_path: Path) -> None:
    """state_path spelling out the default location takes the one lock, once."""
    async with emulator() as emu:
        config = fast_config(emu, state_path=tmp_path / "x" / ".." / ".asyncjsoc" /
                             "state.sqlite")
        async with Client(config, tmp_path) as client:
            assert (await client.fetch(QUERY)).ok


async def test_plan_and_check_emails_write_nothing_and_take_no_lock(tmp_path: Path) -> None:
    """plan() and check_emails() create no state; another client can pull meanwhile."""
    async with emulator() as emu:
        config = fast_config(emu)
        async with Client(config, tmp_path) as planner:
            plan = await planner.plan(QUERY)
            assert [s.registered for s in await planner.check_emails()] == [True]
            assert not (tmp_path / ".asyncjsoc").exists()
            async with Client(config, tmp_path) as puller:
                result = await puller.fetch(QUERY)
            assert await planner.plan(QUERY) == plan
        assert result.ok
        assert len(result.files) == plan.n_files == 8


async def test_different_query_in_same_directory_is_refused(tmp_path: Path) -> None:
    """A directory holding one pull's state refuses a different query, before planning."""
    async with emulator() as emu:
        config = fast_config(emu)
        async with Client(config, tmp_path) as client:
            await client.fetch("hmi.M_45s[2012.01.01_00:00:00_TAI]{magnetogram}")
            counts = emu.audit.count("jsoc_info/rs_summary")
            with pytest.raises(StateMismatchError) as caught:
                await client.fetch("hmi.M_45s[2012.01.02_00:00:00_TAI]{magnetogram}")
        assert isinstance(caught.value, StateError)
        assert "different pull" in caught.value.message
        assert caught.value.hint is not None
        assert "reset" in caught.value.hint
        assert "another output directory" in caught.value.hint
        assert emu.audit.count("jsoc_info/rs_summary") == counts


async def test_reset_discards_the_state_of_a_different_pull(tmp_path: Path) -> None:
    """ClientConfig(reset=True) starts the new pull afresh; earlier files stay on disk."""
    async with emulator() as emu:
        config = fast_config(emu)
        async with Client(config, tmp_path) as client:
            old = await client.fetch("hmi.M_45s[2012.01.01_00:00:00_TAI]{magnetogram}")
        reset = dataclasses.replace(config, reset=True)
        async with Client(reset, tmp_path) as client:
            new = await client.fetch("hmi.M_45s[2012.01.02_00:00:00_TAI]{magnetogram}")
        assert new.ok
        assert len(new.files) == 1
        assert new.reused == ()
        assert old.files[0].path.exists()
        async with StateStore(tmp_path / ".asyncjsoc" / "state.sqlite") as store:
            assert {f.relpath for f in await store.done_files()} == {new.files[0].relpath}


async def test_unregistered_email_fails_fast(tmp_path: Path) -> None:
    """With no registered email the pull raises before exporting anything."""
    async with emulator(unknown_emails={"nobody@example.org"}) as emu:
        config = fast_config(emu, "nobody@example.org")
        async with Client(config, tmp_path) as client:
            statuses = await client.check_emails()
            assert [s.registered for s in statuses] == [False]
            with pytest.raises(EmailNotRegisteredError):
                await client.fetch(QUERY)
        assert emu.audit.count("jsoc_fetch/exp_request") == 0


def _asked(emu: Emulator) -> list[str]:
    """The addresses checkAddress was asked about, in order (sent encoded twice, as drms
    does; the audit undoes one)."""
    return [unquote(e.params["address"]) for e in emu.audit.requests("checkAddress.sh")]


async def test_a_client_asks_about_each_email_once(tmp_path: Path) -> None:
    """Later pulls of one client reuse its registered addresses; a dropped one is asked again,
    and check_emails() always asks."""
    a, b = "a@example.org", "b@example.org"
    async with emulator() as emu:
        config = fast_config(emu, a, b, max_files_per_export=2, max_pending_exports=2,
                             reset=True)
        events: list[Event] = []
        lapse = True

        def reporter(event: Event) -> None:
            nonlocal lapse
            events.append(event)
            if isinstance(event, ExportReady) and lapse:
                lapse = False
                emu.knobs.expired_emails.add(a)

        async with Client(config, tmp_path, reporter=reporter) as client:
            assert (await client.fetch(QUERY)).ok
            assert [e.email for e in events if isinstance(e, EmailDropped)] == [a]
            assert sorted(_asked(emu)) == [a, b]
            emu.knobs.expired_emails.clear()  # the owner registered again
            events.clear()
            assert (await client.fetch("hmi.M_45s[2012.01.02_00:00:00_TAI]{magnetogram}")).ok
            assert _asked(emu)[2:] == [a]  # only the dropped address
            assert [e.status.email for e in events if isinstance(e, EmailChecked)] == [a, b]
            assert [s.registered for s in await client.check_emails()] == [True, True]
            assert _asked(emu)[3:] == [a, b]
            assert (await client.fetch("hmi.M_45s[2012.01.03_00:00:00_TAI]{magnetogram}")).ok
            assert _asked(emu)[5:] == []


async def test_as_is_uses_url_quick_without_a_slot(tmp_path: Path) -> None:
    """protocol='as-is' takes the immediate url_quick path: no pending export at all."""
    async with emulator() as emu:
        config = fast_config(emu, protocol="as-is")
        async with Client(config, tmp_path) as client:
            result = await client.fetch(QUERY)
        assert result.ok
        assert len(result.files) == 8
        assert emu.audit.pending == []
        names = sorted(f.relpath for f in result.files)
        assert names[0] == "hmi.m_45s.20120101_000000_TAI.2.magnetogram.fits"
        assert all(f.request_id is None for f in result.files)
        assert_identical(emu, result)


async def test_status6_and_transient_status4_are_ridden_out(tmp_path: Path) -> None:
    """Legacy status 6 polls and the transient 'hash' status 4 do not fail the pull."""
    async with emulator(status6_polls=2, hash_error_rate=0.5) as emu:
        config = fast_config(emu, max_files_per_export=4)
        async with Client(config, tmp_path) as client:
            result = await client.fetch(QUERY)
        assert result.ok
        assert len(result.files) == 8
        assert_identical(emu, result)
        # Both faults were served (a pull that met neither would prove nothing).
        assert any(e.op == "jsoc_fetch/exp_status" and e.status == 6 for e in emu.audit.entries)
        assert any(e.op == "jsoc_fetch/exp_request" and e.status == 4 for e in emu.audit.entries)


async def test_state_records_every_file_done(tmp_path: Path) -> None:
    """After a pull the store holds every file as done with its size."""
    async with emulator() as emu, Client(fast_config(emu), tmp_path) as client:
        result = await client.fetch(QUERY)
    async with StateStore(tmp_path / ".asyncjsoc" / "state.sqlite") as store:
        summary = await store.summary()
    assert summary.files == {"done": 8}
    assert summary.bytes_done == result.bytes


async def test_resume_with_expired_export_requests_only_missing(tmp_path: Path) -> None:
    """Interrupted, then the export expires: the rerun re-exports and skips finished files."""
    async with emulator(bandwidth=400_000) as emu:
        config = fast_config(emu, connections=1)
        got: list[FileResult] = []
        async with Client(config, tmp_path) as client:
            with anyio.CancelScope() as scope:
                async with client.pull(QUERY) as pull:
                    async for f in pull:
                        got.append(f)
                        if len(got) == 2:
                            scope.cancel()
        emu.clock.advance(8 * 86400)
        result, events = await _fetch_recording(config, tmp_path)
        assert result.ok
        assert len(got) + len(result.files) == 8
        assert any(isinstance(e, ExportExpired) for e in events)
        assert emu.audit.refetched() == []
        for f in result.files:
            assert f.path.read_bytes() == emu.file_bytes(f.url)


async def test_url_tar_fetches_one_tar_per_export(tmp_path: Path) -> None:
    """method='url-tar' downloads the export's tar file, byte-identical."""
    async with emulator() as emu:
        config = fast_config(emu, method="url-tar")
        async with Client(config, tmp_path) as client:
            result = await client.fetch(QUERY)
        assert result.ok
        assert len(result.files) == 1
        assert result.files[0].relpath.endswith(".tar")
        assert_identical(emu, result)


async def _stop_after_first_export(config: ClientConfig, out: Path) -> None:
    """A run of ``QUERY`` cancelled right after its first export is submitted (a crash that
    leaves the export pending on the server and recorded in the state file)."""
    async with Client(config, out) as client:
        with anyio.CancelScope() as scope:

            def stop(event: Event) -> None:
                if isinstance(event, ExportSubmitted):
                    scope.cancel()

            client._report = stop
            await client.fetch(QUERY)
    assert scope.cancelled_caught


async def test_resumed_pending_export_holds_its_email(tmp_path: Path) -> None:
    """A crashed run's still-pending export keeps its email busy: no status 7 on our own."""
    async with emulator(export_delay=100_000.0) as emu:
        config = fast_config(emu, max_files_per_export=4)
        await _stop_after_first_export(config, tmp_path)
        assert len(emu.audit.pending) == 1
        pending_id = emu.audit.pending[0].request_id
        emu.knobs.export_delay = 20.0
        events: list[Event] = []

        def reporter(event: Event) -> None:
            events.append(event)
            if isinstance(event, ExportWaiting) and event.request_id == pending_id and sum(
                    isinstance(e, ExportWaiting) and e.request_id == pending_id
                    for e in events) == 5:
                # Long enough for chunk 1 to have been sent if the email were free.
                emu.clock.advance(100_000.0)

        async with Client(config, tmp_path, reporter=reporter) as client:
            result = await client.fetch(QUERY)
        assert result.ok, [(f.record, f.error.message) for f in result.failed]
        assert len(result.files) == 8
        assert emu.audit.status7() == []
        assert any(isinstance(e, ExportReused) and e.request_id == pending_id for e in events)
        assert max(emu.audit.max_pending_per_email().values()) == 1
        assert_identical(emu, result)


async def test_an_export_left_pending_long_ago_is_polled_for_its_real_age(
    tmp_path: Path,
) -> None:
    """A crashed run's export submitted 1,000 s ago is paced at a quarter of that age (here
    capped at poll_max), not from poll_min as if it were new."""
    async with emulator(export_delay=100_000.0) as emu:
        config = dataclasses.replace(fast_config(emu, max_files_per_export=8),
                                     poll_min=0.001, poll_max=0.05)
        await _stop_after_first_export(config, tmp_path)
        pending_id = emu.audit.pending[0].request_id
        state = default_state_path(tmp_path)  # our own state file: age the export
        with sqlite3.connect(state) as db:
            db.execute("UPDATE exports SET submitted_at = submitted_at - 1000")
        db.close()
        pauses: list[float] = []

        def reporter(event: Event) -> None:
            if isinstance(event, ExportWaiting) and event.request_id == pending_id:
                pauses.append(event.next_poll)
                if len(pauses) == 3:
                    emu.clock.advance(100_000.0)

        async with Client(config, tmp_path, reporter=reporter) as client:
            result = await client.fetch(QUERY)
        assert result.ok
        assert pauses[:3] == [0.05, 0.05, 0.05]


async def test_email_lapsing_mid_pull_is_dropped_and_chunks_go_to_the_others(
        tmp_path: Path) -> None:
    """An address whose registration lapses is dropped; its chunk is exported with another."""
    async with emulator() as emu:
        config = fast_config(emu, "a@example.org", "b@example.org", max_files_per_export=2,
                             max_pending_exports=2)
        events: list[Event] = []

        def reporter(event: Event) -> None:
            events.append(event)
            if isinstance(event, ExportReady) and not emu.knobs.expired_emails:
                emu.knobs.expired_emails.add("a@example.org")

        async with Client(config, tmp_path, reporter=reporter) as client:
            result = await client.fetch(QUERY)
        assert result.ok
        assert len(result.files) == 8
        assert_identical(emu, result)
        dropped = [e for e in events if isinstance(e, EmailDropped)]
        assert [e.email for e in dropped] == ["a@example.org"]
        assert "Cannot process your request" in dropped[0].reason
        requests = emu.audit.requests("jsoc_fetch/exp_request")
        refused = [i for i, e in enumerate(requests) if e.status == 4]
        assert len(refused) == 1
        assert requests[refused[0]].params["notify"] == "a@example.org"
        later = {e.params["notify"] for e in requests[refused[0] + 1:] if e.status == 2}
        assert later == {"b@example.org"}


async def test_last_email_lapsing_fails_the_pull_clearly(tmp_path: Path) -> None:
    """The only address lapses mid-pull: staged files still arrive, then the pull raises."""
    async with emulator() as emu:
        config = fast_config(emu, max_files_per_export=2)

        def reporter(event: Event) -> None:
            if isinstance(event, ExportReady):
                emu.knobs.expired_emails.add("a@example.org")

        async with Client(config, tmp_path, reporter=reporter) as client:
            with pytest.raises(EmailNotRegisteredError, match="no usable notify") as caught:
                await client.fetch(QUERY)
        assert "expired" in caught.value.message
        assert caught.value.hint is not None
        assert "register" in caught.value.hint
        async with StateStore(tmp_path / ".asyncjsoc" / "state.sqlite") as store:
            summary = await store.summary()
        # The export staged before the lapse is still downloaded; the rest is left to do.
        assert summary.files == {"done": 2}
        assert summary.chunks["done"] == 1
        assert summary.chunks.get("failed", 0) == 0


async def test_per_ip_status7_backs_off_and_finishes(tmp_path: Path) -> None:
    """The server's IP cap below the client's: refused requests back off, with reasons."""
    emails = tuple(f"u{i}@example.org" for i in range(6))
    async with emulator(max_pending_per_ip=2, export_delay=200.0) as emu:
        config = fast_config(emu, *emails, max_files_per_export=1, max_pending_exports=6)
        result, events = await _fetch_recording(config, tmp_path)
        assert result.ok
        assert len(result.files) == 8
        assert_identical(emu, result)
        assert max(emu.audit.max_pending_per_ip().values()) <= 3  # the server's cap 2, "> 2"
        refusals = emu.audit.status7()
        assert refusals
        backoffs = [e for e in events if isinstance(e, Backoff)]
        assert len(backoffs) == len(refusals)
        assert all("this IP" in e.reason and e.delay >= config.poll_min for e in backoffs)
        assert not any(isinstance(e, ExportAdopted) for e in events)


@pytest.mark.parametrize("state_name", ["hmi.M_45s.magnetogram.fits",
                                        "HMI.M_45S.MAGNETOGRAM.FITS"])
async def test_a_state_file_inside_the_output_directory_is_never_a_data_file(
        tmp_path: Path, state_name: str) -> None:
    """``state_path`` inside the output directory, named as the server names data files (or
    in another case): those files are refused, and the state survives."""
    out = tmp_path / "out"
    state = out / state_name
    async with emulator() as emu:
        config = fast_config(emu, max_files_per_export=1, filenamefmt="{seriesname}.{segment}",
                             state_path=state)
        async with Client(config, out) as client:
            result = await client.fetch(QUERY)
    assert result.files == ()
    assert len(result.failed) == 8
    assert all("state file" in f.error.message for f in result.failed)
    assert read_status(out, state).files == {}
    assert sqlite3.connect(state).execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_shared_file_names_never_overwrite(tmp_path: Path) -> None:
    """A filenamefmt without prime keys: names shared inside one export fail, across
    exports the later record gets a digest suffix; no file is overwritten."""
    async with emulator() as emu:
        config = fast_config(emu, max_files_per_export=1, filenamefmt="{seriesname}.{segment}")
        async with Client(config, tmp_path) as client:
            result = await client.fetch(QUERY)
        assert result.ok
        names = sorted(f.relpath for f in result.files)
        assert len(set(names)) == 8
        assert "hmi.M_45s.magnetogram.fits" in names
        assert sum(n.startswith("hmi.M_45s.magnetogram.") for n in names) == 8
        assert_identical(emu, result)
        assert len({f.path.read_bytes() for f in result.files}) == 8
        on_disk = sorted(p.name for p in await anyio.to_thread.run_sync(
            lambda: [p for p in tmp_path.iterdir() if p.is_file()]))
        assert on_disk == names

        async with Client(config, tmp_path) as client:
            again = await client.fetch(QUERY)
        assert sorted(f.relpath for f in again.reused) == names

        one = dataclasses.replace(config, max_files_per_export=None)
        async with Client(one, tmp_path / "one") as client:
            shared = await client.fetch(QUERY)
        assert not shared.ok
        assert shared.files == ()
        assert len(shared.failed) == 8
        assert all("share the name" in f.error.message for f in shared.failed)
        assert not (tmp_path / "one" / "hmi.M_45s.magnetogram.fits").exists()


def test_pull_result_repr_counts_instead_of_listing() -> None:
    """A big result prints as counts: asyncio.run formats the main task's result on exit."""
    files = tuple(FileResult(path=Path(f"/out/f{i}.fits"), relpath=f"f{i}.fits",
                             record=f"hmi.m_45s[{i}]", bytes=10, request_id="JSOC_1")
                  for i in range(5000))
    result = PullResult(files=files, failed=(), exports=("JSOC_1",), reused=files[:3])
    text = repr(result)
    assert text == ("PullResult(ok=True, files=5000, bytes=50000, failed=0, reused=3, "
                    "missing=0, exports=1)")


def test_out_dir_that_is_a_file_is_refused_at_once(tmp_path: Path) -> None:
    """A Client over an existing file says so when made, before any request or lock."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InvalidInputError, match="is a file, not a directory"):
        Client(ClientConfig(emails=("a@example.org",)), blocker)
    assert blocker.read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


async def test_wrongly_typed_arguments_are_clear_errors(tmp_path: Path) -> None:
    """A dict for the config, or bytes for the query: InvalidInputError naming the problem,
    not an AttributeError from deep inside."""
    with pytest.raises(InvalidInputError, match="ClientConfig"):
        Client({"server": "http://127.0.0.1:1"}, tmp_path)  # type: ignore[arg-type]
    async with emulator() as emu, Client(fast_config(emu), tmp_path) as client:
        for query in (b"hmi.M_45s[$]", None, ["hmi.M_45s[$]"]):
            with pytest.raises(InvalidInputError, match="record-set string or a Query"):
                await client.fetch(query)  # type: ignore[arg-type]
            with pytest.raises(InvalidInputError, match="record-set string or a Query"):
                await client.plan(query)  # type: ignore[arg-type]
    assert not (tmp_path / ".asyncjsoc").exists()


async def test_a_cancelled_pull_leaves_its_finished_files_recorded(tmp_path: Path) -> None:
    """Completions are committed in bulk; a pull cancelled part-way (the client still open)
    has committed every file it reported done, so read_status does not call them pending."""
    done: list[FileDone] = []
    stop = anyio.CancelScope()

    def reporter(event: Event) -> None:
        if isinstance(event, FileDone):
            done.append(event)
            if len(done) == 4:
                stop.cancel()

    async with emulator() as emu, Client(fast_config(emu), tmp_path, reporter=reporter) as c:
        with stop:
            await c.fetch(QUERY)
        assert stop.cancelled_caught
        status = read_status(tmp_path)
        assert status.files.get("done", 0) >= len(done) >= 4
        assert not status.complete


async def test_overlapping_record_sets_fetch_each_file_once(tmp_path: Path) -> None:
    """A record set given twice (or two overlapping ones, joined with a comma as the CLI
    does) lists records twice in one export: one record under one name is one file, fetched
    once (before: every such file failed as "sharing its name")."""
    async with emulator() as emu:
        async with Client(fast_config(emu), tmp_path / "once") as client:
            once = await client.fetch(QUERY)
        async with Client(fast_config(emu), tmp_path / "twice") as client:
            twice = await client.fetch(f"{QUERY},{QUERY}")
    assert once.ok
    assert twice.ok, twice.failed
    assert sorted(f.relpath for f in twice.files) == sorted(f.relpath for f in once.files)
    assert_identical(emu, twice)


async def test_files_kept_unchecked_are_checked_when_checksums_come_back_on(
        tmp_path: Path) -> None:
    """Files finished by a run with checksums off (here every one corrupted in transit, same
    size) are checked by the next run that has them on, which fetches the damaged ones
    again before it reports success; the run after that trusts them again (no request)."""
    async with emulator(corrupt_rate=1.0) as emu:
        async with Client(fast_config(emu, verify_checksums=False), tmp_path) as client:
            blind = await client.fetch(QUERY)
        assert blind.ok
        damaged = [f for f in blind.files if f.url and f.path.read_bytes() != emu.file_bytes(f.url)]
        assert len(damaged) == len(blind.files)
        emu.knobs.corrupt_rate = 0.0
        async with Client(fast_config(emu), tmp_path) as client:
            checked = await client.fetch(QUERY)
        assert checked.ok
        assert sorted(f.relpath for f in checked.files if not f.reused) == sorted(
            f.relpath for f in damaged)
        assert_identical(emu, checked)
        gets = len([e for e in emu.audit.entries if e.op == "file"])
        async with Client(fast_config(emu), tmp_path) as client:
            trusted = await client.fetch(QUERY)
        assert trusted.ok
        assert all(f.reused for f in trusted.files)
        assert len([e for e in emu.audit.entries if e.op == "file"]) == gets


async def test_files_found_complete_without_a_record_count_as_already_present(
        tmp_path: Path) -> None:
    """A finished pull copied without its state: the rerun finds every file complete under
    its name, fetches none, and reports each as skipped (already present), not done."""
    events: list[Event] = []
    async with emulator() as emu:
        async with Client(fast_config(emu), tmp_path / "a") as client:
            first = await client.fetch(QUERY)
        copy = tmp_path / "b"
        copy.mkdir()
        for f in first.files:
            (copy / f.relpath).parent.mkdir(parents=True, exist_ok=True)
            (copy / f.relpath).write_bytes(f.path.read_bytes())
        gets = len([e for e in emu.audit.entries if e.op == "file"])
        async with Client(fast_config(emu), copy, reporter=events.append) as client:
            again = await client.fetch(QUERY)
        assert len([e for e in emu.audit.entries if e.op == "file"]) == gets
    assert again.ok
    assert len(again.files) == len(first.files)
    assert not [e for e in events if isinstance(e, FileDone)]
    assert len([e for e in events if isinstance(e, FileSkipped)]) == len(first.files)


async def test_leaving_a_pull_early_leaves_no_stream_unclosed(tmp_path: Path) -> None:
    """Breaking out of a pull (or cancelling it) closes the scheduler's chunk queue: no
    ResourceWarning for an unclosed stream (suites run with -W error fail on one)."""
    import gc
    import warnings

    async with emulator() as emu:
        config = fast_config(emu, max_files_per_export=2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            async with Client(config, tmp_path) as client, client.pull(QUERY) as pull:
                async for _ in pull:
                    break
            gc.collect()
        unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
        assert unclosed == []


async def test_bytes_count_only_what_this_run_fetched(tmp_path: Path) -> None:
    """Files found complete without a record (the state removed) are in ``files`` but not
    in ``bytes``: PullResult.bytes and PullFinished.bytes match what the server sent."""
    import shutil

    async with emulator() as emu:
        config = fast_config(emu)
        async with Client(config, tmp_path) as client:
            first = await client.fetch(QUERY)
        assert first.bytes == sum(f.bytes for f in first.files) > 0
        shutil.rmtree(tmp_path / ".asyncjsoc")
        sent_before = sum(s.bytes_sent for s in emu.audit.file_stats.values())
        events: list[Event] = []
        async with Client(config, tmp_path, reporter=events.append) as client:
            again = await client.fetch(QUERY)
        sent = sum(s.bytes_sent for s in emu.audit.file_stats.values()) - sent_before
        assert len(again.files) == 8
        assert again.bytes == sent == 0
        finished = [e for e in events if isinstance(e, PullFinished)]
        assert [e.bytes for e in finished] == [0]


async def test_a_pull_inside_a_pull_of_the_same_task_is_a_clear_error(tmp_path: Path) -> None:
    """fetch() inside a pull() block of the same Client and task would wait for itself: it
    is refused in words, and the outer pull goes on to finish."""
    async with emulator() as emu, Client(fast_config(emu), tmp_path) as client:
        async with client.pull(QUERY) as pull:
            with pytest.raises(RuntimeError, match="already running a pull in this task"):
                await client.fetch(QUERY)
            got = [f async for f in pull]
        assert len(got) == 8
        assert pull.result is not None
        assert pull.result.ok


async def test_iterating_a_pull_after_its_block_just_ends(tmp_path: Path) -> None:
    """A Pull iterated after its ``async with`` block was left yields nothing more."""
    async with emulator() as emu, Client(fast_config(emu), tmp_path) as client:
        async with client.pull(QUERY) as pull:
            async for _ in pull:
                break
        assert [f async for f in pull] == []


def test_an_async_reporter_is_refused_in_words(tmp_path: Path) -> None:
    """An ``async def`` reporter would be called and never awaited (no event, silently): it
    is refused when the Client is made; plain functions and callables are taken."""

    async def async_reporter(event: Event) -> None:
        raise AssertionError("never awaited")

    class AsyncCallable:
        async def __call__(self, event: Event) -> None:
            raise AssertionError("never awaited")

    class PlainCallable:
        def __call__(self, event: Event) -> None:
            pass

    class InheritsAsyncCall(AsyncCallable):
        pass

    for bad in (async_reporter, AsyncCallable(), InheritsAsyncCall()):
        with pytest.raises(InvalidInputError, match="reporter must be a plain function"):
            Client(ClientConfig(), tmp_path, reporter=bad)  # type: ignore[arg-type]
    seen: list[Event] = []
    good: list[Callable[[Event], None]] = [print, PlainCallable(), seen.append]
    for reporter in good:
        Client(ClientConfig(), tmp_path, reporter=reporter)


async def test_bytes_count_a_file_resumed_within_the_run_once(tmp_path: Path) -> None:
    """Connections cut mid-file are resumed within the run: those files' bytes were all
    fetched by this run and count in full (the start of the last attempt is not subtracted)."""
    async with emulator(drop_rate=0.5, file_size=700 * 2880, seed=5) as emu:
        async with Client(fast_config(emu), tmp_path) as client:
            result = await client.fetch(QUERY)
        assert result.ok
        resumed = [p for p, s in emu.audit.file_stats.items()
                   if any(r is not None for r in s.ranges)]
        assert resumed  # the seed cuts some transfers: they were resumed with a Range
        assert result.bytes == sum(f.bytes for f in result.files)
        assert all(f.resumed_from == 0 for f in result.files)


async def test_a_pull_stored_by_an_earlier_version_resumes_and_is_rekeyed(
        tmp_path: Path) -> None:
    """A state keyed by the earlier fingerprint (numbers folded only: 'hmi.M_45s' as
    written) is the same pull: the rerun resumes it, exports nothing, and stores the new key."""
    from asyncjsoc import Query
    from asyncjsoc._client import pull_fingerprint

    async with emulator() as emu:
        config = fast_config(emu)
        async with Client(config, tmp_path) as client:
            first = await client.fetch(QUERY)
        assert first.ok
        query = Query.from_recordset(QUERY)
        old = pull_fingerprint(query, config, legacy=True)
        new = pull_fingerprint(query, config)
        assert old != new  # the series is written 'hmi.M_45s': case folded in the new key
        state = tmp_path / ".asyncjsoc" / "state.sqlite"
        with sqlite3.connect(state) as conn:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'fingerprint'", (old,))
        conn.close()
        requests = emu.audit.count("jsoc_fetch/exp_request")
        async with Client(config, tmp_path) as client:
            again = await client.fetch(QUERY)
        assert again.ok
        assert again.files == ()
        assert len(again.reused) == 8
        assert emu.audit.count("jsoc_fetch/exp_request") == requests
        with sqlite3.connect(state) as conn:
            (stored,) = conn.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
        conn.close()
        assert stored == new
