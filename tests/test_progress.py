"""The terminal reporters, fed synthetic engine events (no server needed)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from asyncjsoc._events import (
    Backoff,
    ChunkSplit,
    EmailChecked,
    EmailDropped,
    ExportAdopted,
    ExportExpired,
    ExportFailed,
    ExportReady,
    ExportSubmitted,
    ExportWaiting,
    FileDone,
    FileFailed,
    FileProgress,
    FileSkipped,
    FileStarted,
    PlanCounting,
    Planned,
    PullFinished,
    TarUnpacked,
)
from asyncjsoc._models import Chunk, EmailStatus, Plan
from asyncjsoc._progress import (
    PlainReporter,
    PullView,
    RichReporter,
    _state_text,
    describe,
    format_bytes,
    mask_email,
    mask_emails,
    render_summary,
)
from asyncjsoc.exceptions import (
    ExportFailedError,
    FileBusyError,
    IntegrityError,
    JsocError,
    LocalError,
    TransportError,
    UnsafePathError,
)

EMAILS = ("alice@example.org", "bob@example.org")


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        """Current fake time."""
        return self.now


def _plan(n_chunks: int = 2, files_per_chunk: int = 3) -> Plan:
    """A small plan with equal chunks."""
    chunks = tuple(
        Chunk(index=i, recordset=f"hmi.sharp_cea_720s[7302][{i}]", n_records=1,
              n_files=files_per_chunk)
        for i in range(n_chunks)
    )
    return Plan(series="hmi.sharp_cea_720s", chunks=chunks, n_records=n_chunks,
                n_files=n_chunks * files_per_chunk, estimated_bytes=n_chunks * files_per_chunk
                * 1000)


def test_mask_email_hides_local_part() -> None:
    """Only the first letter of the local part survives."""
    assert mask_email("jane.doe@x.org") == "j***@x.org"
    assert mask_email("nobody") == "n***"
    assert mask_emails("user alice@example.org and bob@b.io refused") == (
        "user a***@example.org and b***@b.io refused"
    )
    # The JSOC's help addresses stay readable (hints ask users to write there); nobody
    # else's, at Stanford or not.
    assert mask_emails("write to jsoc@sun.stanford.edu or jsoc_help@jsoc.stanford.edu, "
                       "not jane@stanford.edu") == (
        "write to jsoc@sun.stanford.edu or jsoc_help@jsoc.stanford.edu, not j***@stanford.edu"
    )


def test_mask_emails_also_hides_rejected_addresses_but_not_cadences() -> None:
    """An address the JSOC would refuse (no dotted domain, quotes) is still someone's: it is
    masked; a record set's ``@12m`` cadence is not an address and stays."""
    assert mask_emails("not an email address: secretuser@localhost") == (
        "not an email address: s***@localhost")
    assert mask_emails('refused secret"dq"@example.org') == "refused s***@example.org"
    rs = "'hmi.M_45s[2018.09.08_00:00_TAI/1h@12m]' runs backwards"
    assert mask_emails(rs) == rs
    # A local part is at most 64 characters (RFC 5321): the bound keeps masking linear.
    assert mask_emails("a" * 100_000 + "@example.org") == "a" * (100_000 - 64) + (
        "a***@example.org")


def test_format_bytes_uses_decimal_units() -> None:
    """Sizes read like rich's download column."""
    assert format_bytes(999) == "999 bytes"
    assert format_bytes(1500) == "1.5 kB"
    assert format_bytes(2_500_000) == "2.5 MB"
    assert format_bytes(None) == "?"


def test_view_tracks_slots_exports_and_files() -> None:
    """Slot occupancy follows submit → ready, and byte totals follow the files."""
    clock = FakeClock()
    view = PullView(EMAILS, clock=clock)
    view.apply(Planned(_plan()))
    view.apply(ExportSubmitted(0, EMAILS[0], "JSOC_20240101_001", "url", 1))
    view.apply(ExportSubmitted(1, EMAILS[1], "JSOC_20240101_002", "url", 1))
    assert view.slot_holder == {EMAILS[0]: "JSOC_20240101_001", EMAILS[1]: "JSOC_20240101_002"}
    assert view.waiting_for_jsoc()
    view.apply(ExportWaiting("JSOC_20240101_001", 1, eta=12.0, next_poll=3.0))
    assert view.exports[0].state == "processing"
    assert view.exports[0].eta_at == pytest.approx(1012.0)
    view.apply(ExportReady(0, "JSOC_20240101_001", 3))
    assert EMAILS[0] not in view.slot_holder
    assert [r.chunk for r in view.in_flight()] == [1]
    view.apply(FileStarted("a.fits", 1000, 0))
    assert not view.waiting_for_jsoc()
    view.apply(FileProgress("a.fits", 400, 1000))
    assert view.bytes_in_flight == 400
    view.apply(FileDone("a.fits", 1000))
    view.apply(FileSkipped("b.fits", 1000))
    view.apply(FileFailed("c.fits", "rec[c]", IntegrityError("size mismatch")))
    assert (view.files_done, view.files_skipped, view.files_failed) == (2, 1, 1)
    assert view.bytes_done == 2000
    assert view.bytes_total == 2000 + 3 * 1000  # 3 files not seen yet, at the average size
    assert [f.error for f in view.failures] == ["size mismatch"]


def test_view_adopted_dropped_and_split() -> None:
    """An adopted pending export holds the slot; a dropped email is marked; splits add chunks."""
    view = PullView(EMAILS, clock=FakeClock())
    plan = _plan()
    view.apply(Planned(plan))
    view.apply(ExportAdopted(EMAILS[0], ("JSOC_20240101_009",)))
    assert view.slot_holder[EMAILS[0]] == "earlier export JSOC_20240101_009"
    view.apply(EmailDropped(EMAILS[1], "not registered"))
    assert view.dropped == {EMAILS[1]: "not registered"}
    parts = (Chunk(2, "x", 1, 1), Chunk(3, "y", 1, 2))
    view.apply(ChunkSplit(plan.chunks[0], parts, "status 3"))
    assert view.n_chunks == 3
    view.apply(EmailChecked(EmailStatus("carol@example.org", 4, "unknown")))
    assert "carol@example.org" in view.dropped


def test_plain_reporter_lines_are_timestamped_and_masked() -> None:
    """The plain log has one stamped line per noteworthy event and never a full address."""
    out = io.StringIO()
    rep = PlainReporter(out, emails=EMAILS)
    rep(Planned(_plan()))
    rep(ExportSubmitted(0, EMAILS[0], "JSOC_20240101_001", "url", 1))
    rep(ExportWaiting("JSOC_20240101_001", 1, eta=5.0, next_poll=2.0))
    rep(ExportWaiting("JSOC_20240101_001", 1, eta=3.0, next_poll=2.0))  # no news: not logged
    rep(FileProgress("a.fits", 10, 100))  # never logged
    rep(ExportReady(0, "JSOC_20240101_001", 3))
    rep(FileDone("a.fits", 100))
    rep(ExportFailed(1, None, ExportFailedError("refused for bob@example.org")))
    rep(PullFinished(files=1, failed=2, bytes=100, exports=2, ok=False))
    lines = out.getvalue().splitlines()
    assert len(lines) == 7, lines
    assert all(line[2] == ":" and line[5] == ":" and line[8] == " " for line in lines)
    text = out.getvalue()
    assert "alice@" not in text
    assert "bob@" not in text
    assert "a***@example.org" in text
    assert "waiting for JSOC" in text
    assert "[1/6] a.fits (100 bytes)" in text
    assert "finished with failures" in text


def test_chunks_are_numbered_from_one_everywhere() -> None:
    """An export that failed before it had a request id is named by its chunk as the
    progress lines number it (from 1), in the failure list too."""
    view = PullView()
    view.apply(Planned(_plan()))
    view.apply(ExportSubmitted(0, EMAILS[0], None, "url", 1))
    view.apply(ExportFailed(0, None, ExportFailedError("refused")))
    line = describe(ExportFailed(0, None, ExportFailedError("refused")), view)
    assert line is not None
    assert "chunk 1" in line
    assert [f.what for f in view.failures] == ["export chunk 1"]


def test_describe_says_when_a_query_matches_nothing() -> None:
    """An empty plan names the problem and what to check, instead of '0 records, 0 files'."""
    view = PullView()
    empty = Plan(series="hmi.sharp_cea_720s", chunks=(), n_records=0, n_files=0,
                 estimated_bytes=0)
    line = describe(Planned(empty), view)
    assert line is not None
    assert "matches no records" in line
    assert "prime-key" in line
    full = describe(Planned(_plan()), view)
    assert full is not None
    assert "2 records, 6 files in 2 export(s)" in full
    # The progress-bar display prints it too (it prints no line for a plan with records).
    console, buf = _rich_console()
    rep = RichReporter(console, emails=EMAILS, title="demo")
    rep(Planned(_plan()))
    assert "records" not in buf.getvalue()
    rep(Planned(empty))
    assert "matches no records" in buf.getvalue()
    rep.close()


def test_describe_unmasked_when_asked() -> None:
    """--debug shows full addresses."""
    view = PullView()
    line = describe(ExportSubmitted(0, EMAILS[0], None, "url_quick", 4), view, mask=False)
    assert line is not None
    assert EMAILS[0] in line
    assert "immediate" in line


def _rich_console() -> tuple[Console, io.StringIO]:
    """A console that renders like a 120-column colour terminal into a buffer."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120, color_system=None,
                      legacy_windows=False)
    return console, buf


def test_rich_reporter_frame_shows_exports_slots_and_downloads() -> None:
    """One rendered frame has the overall line, export rows, slots and download bars."""
    console, buf = _rich_console()
    rep = RichReporter(console, emails=EMAILS, title="demo")
    rep(Planned(_plan()))
    rep(ExportSubmitted(0, EMAILS[0], "JSOC_20240101_001", "url", 1))
    rep(ExportWaiting("JSOC_20240101_001", 1, eta=30.0, next_poll=5.0))
    console.print(rep._render())
    waiting = buf.getvalue()
    assert "waiting for JSOC" in waiting
    assert "JSOC_20240101_001" in waiting
    assert "processing" in waiting
    assert "ETA 0:" in waiting
    assert "a***@example.org JSOC_20240101_001" in waiting
    assert "b***@example.org free" in waiting
    assert "alice@" not in waiting

    buf.truncate(0)
    buf.seek(0)
    rep(ExportReady(0, "JSOC_20240101_001", 3))
    rep(FileStarted("hmi.sharp_cea_720s.7302.Br.fits", 1000, 0))
    rep(FileProgress("hmi.sharp_cea_720s.7302.Br.fits", 500, 1000))
    console.print(rep._render())
    frame = buf.getvalue()
    assert "downloading" in frame
    assert "hmi.sharp_cea_720s.7302.Br.fits" in frame
    assert "ready: 3 files" in frame
    assert "0/6 files" in frame


def test_rich_reporter_prints_failures_above_display() -> None:
    """Failures and backoffs are printed as lines, not only counted."""
    console, buf = _rich_console()
    rep = RichReporter(console, emails=EMAILS)
    rep(Backoff(4.0, "HTTP 503"))
    rep(FileFailed("x.fits", "rec[x]", IntegrityError("checksum mismatch")))
    # Unpacking errors start with the tar's name: the line names it once.
    rep(FileFailed("d/JSOC_1.tar", "JSOC_1", FileBusyError(
        "JSOC_1.tar: a.fits is being unpacked by another process")))
    text = buf.getvalue()
    assert "backing off 4.0 s: HTTP 503" in text
    assert "FAILED x.fits: checksum mismatch" in text
    assert "FAILED d/JSOC_1.tar: a.fits is being unpacked by another process" in text


def test_rich_reporter_live_start_and_close() -> None:
    """Starting and closing the live display draws at least one frame and is idempotent."""
    console, buf = _rich_console()
    rep = RichReporter(console, emails=EMAILS)
    with rep:
        rep(Planned(_plan()))
        rep(PullFinished(files=6, failed=0, bytes=6000, exports=2, ok=True))
    rep.close()
    assert "done" in buf.getvalue()


def test_summary_plain_and_rich() -> None:
    """The summary names counts, the output directory and every failure with its reason."""
    view = PullView(EMAILS)
    view.apply(Planned(_plan()))
    view.apply(FileDone("a.fits", 1000))
    view.apply(FileSkipped("b.fits", 1000))
    view.apply(FileFailed("c.fits", "rec[c]", IntegrityError("size mismatch for bob@x.org")))
    out = io.StringIO()
    render_summary(None, view, out_dir="/data/out", stream=out)
    text = out.getvalue()
    assert "1 downloaded, 1 already present, 1 failed (of 6 planned)" in text
    assert "/data/out" in text
    assert "FAILED rec[c]: size mismatch for b***@x.org" in text
    assert "rerun the same command" in text

    console, buf = _rich_console()
    render_summary(console, view, out_dir="/data/out", stream=io.StringIO())
    assert "size mismatch" in buf.getvalue()
    assert "asyncjsoc summary" in buf.getvalue()


def test_an_export_past_the_servers_eta_shows_how_long_it_has_taken() -> None:
    """The real JSOC's ETA is request + 10 s: once past it the row says how long the export
    has been staging, not a warning."""
    now = [100.0]
    view = PullView(EMAILS, clock=lambda: now[0])
    view.apply(ExportSubmitted(0, EMAILS[0], "JSOC_20240101_001", "url", 1))
    view.apply(ExportWaiting("JSOC_20240101_001", 1, eta=10.0, next_poll=2.0))
    row = view.exports[0]
    assert _state_text(row, now[0]).plain == "processing ETA 0:10 · next check in 0:02"
    now[0] = 175.0
    view.apply(ExportWaiting("JSOC_20240101_001", 1, eta=-65.0, next_poll=15.0))
    text = _state_text(row, now[0])
    assert text.plain == "processing for 1:15 · next check in 0:15"
    assert "ETA" not in text.plain


def test_summary_rate_counts_only_bytes_fetched_now() -> None:
    """Files already complete add to the totals but not to the transfer rate."""
    now = [0.0]
    view = PullView(EMAILS, clock=lambda: now[0])
    view.apply(FileSkipped("old.fits", 900_000_000))
    view.apply(FileDone("new.fits", 10_000_000))
    now[0] = 10.0
    out = io.StringIO()
    render_summary(None, view, out_dir="/data/out", stream=out)
    text = out.getvalue()
    assert "10.0 MB in 0:10 (1.0 MB/s)" in text
    assert "900.0 MB already present" in text


def test_plain_reporter_logs_unpacked_tars() -> None:
    """An unpacked tar is one line: its files, those kept from an earlier run, the tar gone."""
    out = io.StringIO()
    rep = PlainReporter(out, emails=EMAILS)
    rep(TarUnpacked("JSOC_20240101_001.tar", 5, 3))
    rep(TarUnpacked("JSOC_20240101_002.tar", 4, 4))
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("unpacked JSOC_20240101_001.tar: 5 files (2 already there); "
                             "tar deleted")
    assert lines[1].endswith("unpacked JSOC_20240101_002.tar: 4 files; tar deleted")
    console, buf = _rich_console()
    with RichReporter(console, emails=EMAILS) as live:
        live(TarUnpacked("JSOC_20240101_003.tar", 6, 6))
    assert "unpacked JSOC_20240101_003.tar: 6 files; tar deleted" in buf.getvalue()


def test_view_counts_one_file_per_tar_export() -> None:
    """With url-tar each export is one tar file, so the file total becomes the chunk count."""
    view = PullView(EMAILS)
    view.apply(Planned(_plan(n_chunks=2, files_per_chunk=3)))
    view.apply(ExportSubmitted(0, EMAILS[0], "JSOC_20240101_001", "url-tar", 1))
    assert view.n_files == 2


def test_long_planning_is_logged_every_few_seconds_and_shown_live() -> None:
    """Counting records for years of data takes minutes: the plain log says how far it got
    every 10 s (not once per count), and the live display's headline counts along."""
    now = [0.0]
    out = io.StringIO()
    rep = PlainReporter(out, clock=lambda: now[0])
    for counts, at in enumerate([1.0, 5.0, 10.5, 12.0, 19.0, 21.0], start=1):
        now[0] = at
        rep(PlanCounting(counts))
    lines = out.getvalue().splitlines()
    assert [line.split(" ", 1)[1].split(" jsoc_info requests")[0] for line in lines] == [
        "planning: 3", "planning: 6"]
    console, _buf = _rich_console()
    live = RichReporter(console, emails=EMAILS)
    assert live._headline() == "planning"
    live(PlanCounting(7))
    assert live._headline() == "planning (7 jsoc_info requests)"
    live(Planned(_plan()))
    assert "record counts" not in live._headline()
    live.close()


def test_an_expired_export_is_not_a_failure_in_the_summary() -> None:
    """An export the JSOC let expire, requested again, is counted as such, not listed as a
    failure of a pull that then succeeded."""
    view = PullView(EMAILS)
    view.apply(Planned(_plan()))
    view.apply(ExportSubmitted(0, EMAILS[0], "JSOC_20240101_001", "url", 1))
    view.apply(ExportExpired(0, "JSOC_20240101_001", 3))
    view.apply(FileDone("a.fits", 1000))
    out = io.StringIO()
    render_summary(None, view, out_dir="/data/out", stream=out)
    text = out.getvalue()
    assert "FAILED" not in text
    assert "(+1 re-requested after expiry)" in text
    assert "rerun" not in text


@pytest.mark.parametrize(("errors", "closing"), [
    ([TransportError("reset")], "rerun the same command to retry what failed\n"),
    ([LocalError("x.fits is in the way"), UnsafePathError("y.fits: link out of --out")],
     "fix what the errors above name, then rerun the same command\n"),
    ([LocalError("x.fits is in the way"), IntegrityError("bad sum")],
     "rerun the same command to retry what failed; errors about a file in the way, an "
     "unsafe name or a failed export handed back need fixing first\n"),
    ([ExportFailedError("export JSOC_1 failed, and the JSOC hands it back", status=4,
                        handed_back=True)],
     "fix what the errors above name, then rerun the same command\n"),
    ([ExportFailedError("export JSOC_1 failed", status=4)],
     "rerun the same command to retry what failed\n"),
])
def test_the_closing_line_says_when_a_rerun_alone_is_not_enough(
        errors: list[JsocError], closing: str) -> None:
    """Failures a rerun cannot fix by itself (a file in the way, an unsafe name) are told
    apart from those it retries (network, damaged transfers)."""
    view = PullView(EMAILS)
    for i, error in enumerate(errors):
        view.apply(FileFailed(f"{i}.fits", f"rec[{i}]", error))
    out = io.StringIO()
    render_summary(None, view, out_dir="/data/out", stream=out)
    assert out.getvalue().endswith(f"  {closing}")
