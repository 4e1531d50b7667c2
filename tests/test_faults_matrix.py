"""Every emulator fault, alone and all together, through the real Client.

Each case runs a whole pull against a seeded emulator with one fault knob turned on (or all of
them), then checks the same invariants: every file byte-identical to what the server serves,
nothing half-written under a final name, at most one pending export per email, the IP-wide
pending cap kept, and no IP block for a client at its default pace.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from engine_helpers import emulator, fast_config

from asyncjsoc._client import API_CONNECTIONS, Client, FileResult, PullResult
from asyncjsoc._config import ClientConfig
from asyncjsoc._events import (
    Event,
    ExportExpired,
    ExportFailed,
    ExportReady,
    ExportSubmitted,
)
from asyncjsoc.emulator import Emulator
from asyncjsoc.exceptions import ExportFailedError, IpBlockedError

pytestmark = pytest.mark.anyio

# Ten records 45 s apart, one segment: 10 small FITS files.
QUERY = "hmi.M_45s[2012.01.01_00:00:00_TAI/450s]{magnetogram}"
# Four records: for the cases paced at the library's default 5 requests/s.
SHORT_QUERY = "hmi.M_45s[2012.01.01_00:00:00_TAI/180s]{magnetogram}"
THREE_FILES = "hmi.M_45s[2012.01.01_00:00:00_TAI/135s]{magnetogram}"  # one export
EMAILS = ("a@example.org", "b@example.org", "c@example.org")
STATE_DIR = ".asyncjsoc"

# Knobs whose answers carry Retry-After (at least 1 s): each one answered costs a real second,
# so these are switched off again after a few have been served.
_SLOW_FAULTS = ("http429_rate", "http503_rate")


def _sha(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclasses.dataclass(frozen=True)
class Case:
    """One fault combination: emulator knob changes and client config changes."""

    knobs: dict[str, Any]
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    pace: tuple[float, int] | None = None
    """(requests per second, burst) of the client when it runs under a request budget."""
    expire_at_ready: int | None = None
    """Move the emulator clock past export retention when this many exports are staged
    (``ExportReady`` events; 4 = the last of the four chunks)."""
    query: str = QUERY
    n_files: int = 10
    slow_cap: int = 1
    """How many Retry-After answers (429/503) are served before those knobs are switched off."""


_DEFAULT_PACE = (ClientConfig().requests_per_second, ClientConfig().burst)
# Requests a client at the default connection count can have in flight: its download
# connections plus the connection of its own for JSOC API calls.
_IN_FLIGHT = ClientConfig().connections + API_CONNECTIONS


def budget(pace: tuple[float, int]) -> dict[str, Any]:
    """Knobs of a request budget a client at ``pace`` always satisfies.

    A token bucket lets at most ``burst + rate * window`` requests through in any window; the
    window is 1000 emulator seconds = 1 wall second at the fast time scale.
    """
    rate, burst = pace
    return {"rate_budget": burst + int(rate) + 3, "rate_window": 1000.0, "block_seconds": 3000.0}


# Cut transfers only leave a prefix on disk if the bytes trickle in before the cut (a burst
# and a cut arrive together, and aiohttp drops the buffered bytes with the error): 100 KiB
# files at 1 MB/s come in 50 ms pieces.
_TRICKLE = {"file_size": 36 * 2880, "bandwidth": 1_000_000}
# Bodies up to the client's read size are fetched in one piece and never resumed; a 16 KiB
# read size makes these files stream into .part files, so cuts are resumed with Range.
_STREAM = {"chunk_size": 16 * 1024}

CASES: dict[str, Case] = {
    "export_delay": Case({"export_delay": 150.0}),
    "status6": Case({"status6_polls": 3}),
    "hash_error": Case({"hash_error_rate": 0.6}),
    "http500": Case({"http500_rate": 0.3}),
    "http503": Case({"http503_rate": 0.3}),
    "http429": Case({"http429_rate": 0.3}),
    "drop": Case({"drop_rate": 0.3, **_TRICKLE}, config=_STREAM),
    "ignore_range": Case({"drop_rate": 0.3, "ignore_range_rate": 1.0, **_TRICKLE},
                         config=_STREAM),
    "truncate": Case({"truncate_rate": 0.3, **_TRICKLE}, config=_STREAM),
    "drop_small_files": Case({"drop_rate": 0.2}),
    # A body that goes silent mid-file (for longer than the whole test may take) is given up
    # after sock_read and resumed; the trickle's 50 ms pieces are well inside 0.3 s.
    "stall": Case({"stall_rate": 0.3, "stall_seconds": 600.0, **_TRICKLE},
                  config={**_STREAM, "sock_read": 0.3}),
    "bandwidth": Case({"bandwidth": 400_000}),
    "first_byte_delay": Case({"first_byte_delay": 0.03}),
    "cgi_delay": Case({"cgi_delay": 0.01}),
    "max_connections": Case({"max_connections": _IN_FLIGHT}),
    "rate_budget": Case(budget(_DEFAULT_PACE), pace=_DEFAULT_PACE, query=SHORT_QUERY,
                        n_files=4),
    "expiry": Case({}, config={"connections": 1}, expire_at_ready=4),
    "all": Case(
        {
            "export_delay": 60.0, "status6_polls": 2, "hash_error_rate": 0.2,
            "http500_rate": 0.1, "http503_rate": 0.05, "http429_rate": 0.05,
            "drop_rate": 0.15, "truncate_rate": 0.15, "ignore_range_rate": 0.5,
            "first_byte_delay": 0.005, "cgi_delay": 0.002, "max_connections": _IN_FLIGHT,
            **_TRICKLE, **budget((40.0, 10)),
        },
        config=_STREAM, pace=(40.0, 10), expire_at_ready=4, slow_cap=1,
    ),
}


class FaultGovernor:
    """A reporter that caps the slow (Retry-After) faults and expires exports on cue.

    Runs synchronously on every engine event, so it needs no timer: once ``cap`` answers of a
    slow fault have been served, that knob is turned off for the rest of the pull. The expiry
    jump (past the retention) comes when the ``expire_at_ready``-th export is staged: that
    export's files are not handed out yet, so they surely 404 (as do other queued files, and
    exports still staging answer status 5), and must be requested again. A jump at a file
    count instead depended on timing: under load every remaining file could already be in
    flight, or (chunks being staged ahead of the downloads) the jump never came.
    """

    def __init__(self, emu: Emulator, *, cap: int = 2,
                 expire_at_ready: int | None = None) -> None:
        self.emu = emu
        self.cap = cap
        self.expire_at_ready = expire_at_ready
        self.ready = 0
        """``ExportReady`` events seen so far."""
        self.events: list[Event] = []
        self.expired_once = False
        self.staging: set[int] = set()
        """Chunks with an export submitted and not yet ready (or given up)."""

    def __call__(self, event: Event) -> None:
        """Record ``event``; apply the caps and the expiry cue."""
        self.events.append(event)
        self.tame()
        if isinstance(event, ExportSubmitted):
            self.staging.add(event.chunk)
        elif isinstance(event, ExportReady | ExportFailed):
            self.staging.discard(event.chunk)
        if isinstance(event, ExportReady):
            self.ready += 1
            if (self.expire_at_ready is not None and not self.expired_once
                    and self.ready >= self.expire_at_ready):
                self.expired_once = True
                self.emu.clock.advance(self.emu.knobs.retention + 1.0)

    def tame(self) -> None:
        """Switch off each slow fault once it has been served ``cap`` times."""
        knobs = self.emu.knobs
        codes = {"http429_rate": 429, "http503_rate": 503}
        for name in _SLOW_FAULTS:
            if getattr(knobs, name) > 0 and served(self.emu, codes[name]) >= self.cap:
                setattr(knobs, name, 0.0)


def served(emu: Emulator, http_status: int) -> int:
    """How many answers with ``http_status`` the emulator gave."""
    return sum(1 for e in emu.audit.entries if e.http_status == http_status)


def case_config(emu: Emulator, case: Case, **changes: Any) -> ClientConfig:
    """The client config of a case: fast, or at the case's pace under a request budget."""
    config = fast_config(emu, *EMAILS, max_files_per_export=3, max_pending_exports=2,
                         **{**case.config, **changes})
    if case.pace is not None:
        config = dataclasses.replace(config, requests_per_second=case.pace[0],
                                     burst=case.pace[1])
    return config


def final_files(out: Path) -> dict[str, Path]:
    """Files under ``out`` with their final names (state directory left out)."""
    return {
        p.relative_to(out).as_posix(): p
        for p in out.rglob("*")
        if p.is_file() and STATE_DIR not in p.relative_to(out).parts
    }


def check_invariants(emu: Emulator, out: Path, files: dict[str, FileResult],
                     config: ClientConfig, *, complete: bool) -> None:
    """The guarantees that hold after every pull, whatever the faults."""
    on_disk = final_files(out)
    partial = sorted(n for n in on_disk if ".part" in n)
    if complete:
        assert partial == [], f"partial files left after success: {partial}"
    named = {n: p for n, p in on_disk.items() if ".part" not in n}
    # Every file under a final name is one the client reported, and byte-identical.
    assert set(named) == set(files), set(named) ^ set(files)
    for name, f in files.items():
        assert _sha(named[name].read_bytes()) == _sha(expected_bytes(emu, f)), name
        assert named[name].stat().st_size == f.bytes
    per_email = emu.audit.max_pending_per_email()
    assert all(n <= 1 for n in per_email.values()), per_email
    per_ip = emu.audit.max_pending_per_ip()
    assert all(n <= config.max_pending_exports for n in per_ip.values()), per_ip
    assert not [r for r in emu.audit.status7() if "too many requests" in r.message]


def expected_bytes(emu: Emulator, f: FileResult) -> bytes:
    """What the server serves for ``f``; for an export gone since, the record's SUMS file.

    An export's FITS file and the record's stored segment file are the same bytes.
    """
    try:
        return emu.file_bytes(f.url)
    except KeyError:
        pass
    selection = emu.catalog.select(f.record)
    record = next(iter(selection))
    segment = next(s for s in selection.segments if f.relpath.endswith(f".{s.name}.fits"))
    return emu.file_bytes(record.segment_path(segment))


async def pull(out: Path, config: ClientConfig, governor: FaultGovernor,
               query: str = QUERY) -> PullResult:
    """One complete fetch of ``query``."""
    async with Client(config, out, reporter=governor) as client:
        return await client.fetch(query)


@pytest.mark.parametrize("name", list(CASES))
async def test_fault(name: str, tmp_path: Path) -> None:
    """A pull under this fault ends complete, byte-identical and within the server's rules."""
    case = CASES[name]
    async with emulator(**case.knobs, seed=sum(map(ord, name))) as emu:
        config = case_config(emu, case)
        governor = FaultGovernor(emu, cap=case.slow_cap, expire_at_ready=case.expire_at_ready)
        result = await pull(tmp_path, config, governor, case.query)
        assert result.ok, [f"{f.record}: {f.error}" for f in result.failed]
        files = {f.relpath: f for f in result.files}
        assert len(files) == len(result.files) == case.n_files
        check_invariants(emu, tmp_path, files, config, complete=True)
        if case.pace is not None:
            assert emu.audit.blocks == []
        if case.expire_at_ready is not None:
            assert any(isinstance(e, ExportExpired) for e in governor.events)
        assert_fault_fired(emu, name, case, governor)
        assert_retry_after_honoured(emu)


def assert_retry_after_honoured(emu: Emulator) -> None:
    """After a 429/503 with Retry-After, nothing new reaches the server until it has passed.

    Requests already let through when the answer left may still land: one granted its
    token just before may wait for the connection the 429'd exchange holds, so it arrives
    after the answer; on a loaded machine that took more than 50 ms (once in a full suite
    beside busy loops and an fsync hog). 250 ms of grace: a client ignoring Retry-After
    still sends its retries well inside the 1 s that follows, and fails this.
    """
    scale = emu.knobs.time_scale
    entries = sorted(emu.audit.entries, key=lambda e: e.time)
    for told in entries:
        if told.http_status not in (429, 503):
            continue
        wait = max(1.0, emu.knobs.retry_after) * scale
        early = [e for e in entries if told.time + 0.25 * scale < e.time < told.time + wait]
        assert early == [], f"{len(early)} request(s) ignored a Retry-After"


def assert_fault_fired(emu: Emulator, name: str, case: Case, governor: FaultGovernor) -> None:
    """The case really exercised its fault (a test that sees no fault proves nothing)."""
    entries = emu.audit.entries
    gets = [e for e in entries if e.op == "file"]
    checks: dict[str, Callable[[], bool]] = {
        "status6": lambda: any(e.status == 6 for e in entries),
        "hash_error": lambda: any(e.op == "jsoc_fetch/exp_request" and e.status == 4
                                  for e in entries),
        "http500": lambda: served(emu, 500) > 0,
        "http503": lambda: served(emu, 503) > 0,
        "http429": lambda: served(emu, 429) > 0,
        # A cut transfer makes the client resume: a ranged GET follows.
        "drop": lambda: any(e.range for e in gets),
        "truncate": lambda: any(e.range for e in gets),
        "drop_small_files": lambda: any(n.gets > 1 for n in emu.audit.file_stats.values()),
        "stall": lambda: (any(n.stalled for n in emu.audit.file_stats.values())
                          and any(e.range for e in gets)),
        "ignore_range": lambda: any(e.range and e.http_status == 200 for e in gets),
        "max_connections": lambda: served(emu, 503) == 0,
        # More requests than the burst: the client's pacing, not luck, kept it in budget.
        "rate_budget": lambda: len(entries) > ClientConfig().burst,
        "all": lambda: any(e.range for e in gets) and served(emu, 500) > 0,
    }
    check = checks.get(name)
    if check is not None:
        assert check(), f"fault {name!r} never fired"


async def test_permanent_export_failure_fails_chunks_then_rerun_succeeds(
    tmp_path: Path,
) -> None:
    """Status 4 for good: those chunks end in PullResult.failed, the rest arrive.

    The JSOC answers a repeat of a failed request with the same failed id for 24 h (protocol
    §5), so the rerun succeeds once that window has passed; it fetches only what is missing.
    """
    async with emulator(export_failure_rate=0.5, seed=7) as emu:
        config = case_config(emu, Case({}))
        governor = FaultGovernor(emu)
        first = await pull(tmp_path, config, governor)
        assert not first.ok
        assert first.failed
        for failure in first.failed:
            assert isinstance(failure.error, ExportFailedError)
            assert failure.relpath is None  # a whole chunk, named by its record set
            assert failure.record.startswith("hmi.M_45s[")
        got = {f.relpath: f for f in first.files}
        assert len(got) < 10
        check_invariants(emu, tmp_path, got, config, complete=True)

        # Within the duplicate window the same failure comes back: still failed, nothing lost.
        again = await pull(tmp_path, config, governor)
        assert not again.ok
        assert again.files == ()
        assert len(again.failed) == len(first.failed)

        emu.knobs.export_failure_rate = 0.0
        emu.clock.advance(emu.knobs.duplicate_window + 1.0)
        gets_before = {p: emu.audit.file_gets(p) for p in emu.audit.file_stats}
        last = await pull(tmp_path, config, governor)
        assert last.ok, [str(f.error) for f in last.failed]
        assert set(got).isdisjoint(f.relpath for f in last.files)
        got.update({f.relpath: f for f in last.files})
        assert len(got) == 10
        check_invariants(emu, tmp_path, got, config, complete=True)
        # Files of the first run were not fetched again.
        for path, n in gets_before.items():
            assert emu.audit.file_gets(path) == n
        assert emu.audit.refetched() == []


async def test_rude_pace_is_blocked_then_a_rerun_completes(tmp_path: Path) -> None:
    """Control for the budget cases: far over budget the server blocks the IP.

    An IP block ends the pull with IpBlockedError (the engine treats it as fatal: hammering a
    blocked server helps no one); nothing more is sent once the block is known, and a rerun
    after the block resumes and completes without fetching any finished file again.
    """
    knobs = {"rate_budget": 6, "rate_window": 1000.0, "block_seconds": 1000.0}
    async with emulator(**knobs, seed=11) as emu:
        config = case_config(emu, Case({}))
        governor = FaultGovernor(emu)
        with pytest.raises(IpBlockedError) as caught:
            await pull(tmp_path, config, governor, SHORT_QUERY)
        assert caught.value.retry_after is not None
        assert len(emu.audit.blocks) == 1
        block = emu.audit.blocks[0]
        told = min(e.time for e in emu.audit.entries if e.http_status == 403)
        late = [e for e in emu.audit.entries if e.time > told + 50.0]
        assert late == [], "requests went on after the block was known"
        done_before = {p for p, st in emu.audit.file_stats.items() if st.complete}

        emu.clock.advance(block.until - emu.clock.now() + 1.0)
        polite = case_config(emu, Case({}, pace=_DEFAULT_PACE))
        emu.knobs.rate_budget = budget(_DEFAULT_PACE)["rate_budget"]
        result = await pull(tmp_path, polite, governor, SHORT_QUERY)
        assert result.ok
        assert len(emu.audit.blocks) == 1
        assert emu.audit.refetched() == []
        for p in done_before:
            assert emu.audit.file_gets(p) == 1
        on_disk = {n for n in final_files(tmp_path) if ".part" not in n}
        assert len(on_disk) == 4
        for name in on_disk:
            assert name in {f.relpath for f in result.files} or any(
                p.endswith(name) for p in done_before)


async def test_export_expiring_while_staging_is_requested_again(tmp_path: Path) -> None:
    """Status 5 from exp_status of a just-submitted export (the client slept through its
    whole lifetime) makes the scheduler request the chunk again, as it does for ready
    exports whose files went missing."""
    async with emulator(export_delay=2000.0) as emu:
        jumped: list[str | None] = []
        events: list[Event] = []

        def reporter(event: Event) -> None:
            events.append(event)
            if isinstance(event, ExportSubmitted) and not jumped:
                jumped.append(event.request_id)
                emu.clock.advance(emu.knobs.export_delay + emu.knobs.retention + 1.0)

        config = fast_config(emu)
        async with Client(config, tmp_path, reporter=reporter) as client:
            result = await client.fetch(SHORT_QUERY)
        assert jumped
        assert result.ok, [str(f.error) for f in result.failed]
        assert len(result.files) == 4
        assert [e.request_id for e in events if isinstance(e, ExportExpired)] == jumped
        submitted = [e.request_id for e in events if isinstance(e, ExportSubmitted)]
        assert len(submitted) == 2
        assert submitted[0] != submitted[1]
        check_invariants(emu, tmp_path, {f.relpath: f for f in result.files}, config,
                         complete=True)


async def test_failed_export_is_submitted_again(tmp_path: Path) -> None:
    """Status 4 from exp_status (a server-side failure, often transient) makes the scheduler
    submit the chunk again, a bounded number of times; here the second try succeeds."""
    async with emulator(export_failure_rate=1.0, duplicate_window=0.0, seed=3) as emu:
        events: list[Event] = []

        def reporter(event: Event) -> None:
            events.append(event)
            if isinstance(event, ExportSubmitted):
                emu.knobs.export_failure_rate = 0.0  # only the first export fails

        config = fast_config(emu)
        async with Client(config, tmp_path, reporter=reporter) as client:
            result = await client.fetch(SHORT_QUERY)
        assert result.ok, [str(f.error) for f in result.failed]
        assert len(result.files) == 4
        failed = [e for e in emu.audit.entries if e.op.endswith("exp_status") and e.status == 4]
        assert len(failed) >= 1
        assert sum(isinstance(e, ExportSubmitted) for e in events) == 2
        check_invariants(emu, tmp_path, {f.relpath: f for f in result.files}, config,
                         complete=True)


async def test_a_failed_export_handed_back_again_is_not_waited_for_twice(
        tmp_path: Path) -> None:
    """Within 24 h the JSOC answers the same request with the id of the export that failed:
    the resubmission sees that id and stops with a hint, instead of polling the failed
    export again and again (each rerun too)."""
    async with emulator(export_failure_rate=1.0, seed=3) as emu:
        config = fast_config(emu)
        for _run in range(2):
            before = len(emu.audit.entries)
            async with Client(config, tmp_path) as client:
                result = await client.fetch(SHORT_QUERY)
            assert not result.ok
            errors = {type(f.error) for f in result.failed}
            assert errors == {ExportFailedError}
            error = result.failed[0].error
            assert isinstance(error, ExportFailedError)
            assert "hands that failed export back" in error.message
            assert "a day later" in (error.hint or "")
            ops = [e.op for e in emu.audit.entries[before:]]
            assert ops.count("jsoc_fetch/exp_request") == 2  # the first, and one resubmission
            rids = {e.params.get("requestid") for e in emu.audit.entries[before:]
                    if e.op == "jsoc_fetch/exp_status"}
            assert len(rids) == 1  # always the one failed export


async def test_an_export_handed_back_after_status_6_is_polled_again(tmp_path: Path) -> None:
    """Status 6 ("not visible yet") polled past the client's patience is resubmitted; the
    JSOC hands back the same id, which is an export it knows, not a failure: it is polled
    again and the pull completes."""
    async with emulator(status6_polls=5, seed=3) as emu:
        config = fast_config(emu, status6_retries=2)
        async with Client(config, tmp_path) as client:
            result = await client.fetch(SHORT_QUERY)
        assert result.ok, [str(f.error) for f in result.failed]
        assert len(result.files) == 4
        requests = [e for e in emu.audit.entries if e.op == "jsoc_fetch/exp_request"]
        assert len(requests) >= 2  # resubmitted after the status-6 polls ran out
        assert len(set(result.exports)) == 1  # and handed back the same export


async def test_a_block_met_by_a_file_download_ends_the_pull(tmp_path: Path) -> None:
    """An IP block answered to a file GET ends the pull, as one answered to a CGI call does:
    the pull does not wait the block out (600 s here) and press on against a server that
    refuses the IP. The files finished before it stay, and nothing is sent after it."""
    async with emulator(seed=12) as emu:
        config = case_config(emu, Case({}), connections=2)
        governor = FaultGovernor(emu)
        emu.hold_files()
        outcome: list[BaseException] = []

        async def run() -> None:
            try:
                await pull(tmp_path, config, governor, THREE_FILES)
            except IpBlockedError as exc:
                outcome.append(exc)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await emu.wait_files_held(2)  # both connections wait for their file
                emu.knobs.rate_budget = 0  # the next request blocks the IP
                emu.release_files()
        assert len(outcome) == 1
        refused = [e for e in emu.audit.entries if e.http_status == 403]
        assert len(refused) == 1
        assert refused[0].path.startswith("/SUM")
        assert max(e.time for e in emu.audit.entries) == refused[0].time
        assert len([p for p, st in emu.audit.file_stats.items() if st.complete]) == 2
        # Files finished before the block keep their names (a small one still waiting for
        # its batch to be published may be fetched again by the next run).
        kept = {n: path for n, path in final_files(tmp_path).items() if ".part" not in n}
        assert kept
        served = {p.rsplit("/", 1)[-1]: emu.file_bytes(p) for p in emu.audit.file_stats}
        for name, path in kept.items():
            assert path.read_bytes() == served[Path(name).name]


async def test_a_failed_export_names_its_request_and_counts_its_files(tmp_path: Path) -> None:
    """The ExportFailed event names the export that failed and how many files the chunk
    would have given; the summary counts them as not exported (it said '0 failed')."""
    import io

    from asyncjsoc._progress import PullView, render_summary
    from asyncjsoc.events import ExportFailed

    async with emulator(export_failure_rate=1.0, seed=3) as emu:
        view = PullView(("a@example.org",))
        events: list[Event] = []

        def reporter(event: Event) -> None:
            events.append(event)
            view.apply(event)

        async with Client(fast_config(emu), tmp_path, reporter=reporter) as client:
            result = await client.fetch(SHORT_QUERY)
    assert not result.ok
    (failed,) = [e for e in events if isinstance(e, ExportFailed)]
    assert failed.request_id is not None
    assert failed.request_id.startswith("JSOC_")
    assert failed.n_files == 4
    out = io.StringIO()
    render_summary(None, view, out_dir=str(tmp_path), stream=out)
    assert "0 failed, 4 not exported (of 4 planned)" in out.getvalue()
