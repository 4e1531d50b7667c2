"""Tests for asyncjsoc._download against the emulator over real loopback HTTP."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anyio
import pytest
from engine_helpers import xattrs_work_in

import asyncjsoc._download as download_module
import asyncjsoc._resume as resume_module
from asyncjsoc._download import (
    PROGRESS_ROUNDS,
    Downloader,
    DownloadOutcome,
    check_url_path,
    meta_path,
    part_path,
)
from asyncjsoc._http import TransportConfig, create_session
from asyncjsoc._models import RemoteFile
from asyncjsoc._paths import resolve_inside
from asyncjsoc._resume import RESUME_XATTR, Validator
from asyncjsoc._retry import RetryPolicy
from asyncjsoc._stall import hand_over_read_timeout
from asyncjsoc.emulator import Emulator, Knobs, run_emulator
from asyncjsoc.exceptions import (
    DiskError,
    ExportExpiredError,
    HttpStatusError,
    IntegrityError,
    IpBlockedError,
    TransportError,
    UnsafePathError,
)

pytestmark = pytest.mark.anyio

FILE_SIZE = 200 * 2880  # ~560 kB: several writes at the small chunk size used below
CHUNK = 16 * 1024


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """A fresh emulator with seeded faults off and files of FILE_SIZE bytes."""
    async with run_emulator(Knobs(seed=1, file_size=FILE_SIZE, retry_after=0.01)) as emu:
        yield emu


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The client's real session (rate limit off)."""
    async with create_session(TransportConfig(requests_per_second=0, sock_read=10)) as s:
        yield s


def _paths(emu: Emulator, n: int) -> list[str]:
    """URL paths of ``n`` distinct files the emulator serves."""
    sel = emu.catalog.select("hmi.M_45s[2012.01.01_00:00:45_TAI/1h]{magnetogram}")
    seg = sel.segments[0]
    return [rec.segment_path(seg) for rec in itertools.islice(iter(sel), n)]


def _remote(emu: Emulator, path: str, expected_size: int | None = None) -> RemoteFile:
    """A RemoteFile for an emulator path."""
    return RemoteFile(url=emu.url + path, relpath=path.rsplit("/", 1)[-1], record="r",
                      expected_size=expected_size)


def _downloader(session: aiohttp.ClientSession, attempts: int = 6, *,
                inline_io: bool = True) -> Downloader:
    """A downloader with small writes and no retry waits."""
    return Downloader(session, chunk_size=CHUNK, retry=RetryPolicy.no_wait(attempts),
                      inline_io=inline_io)


def _descriptors_on(path: Path) -> int:
    """How many of this process's file descriptors are open on ``path`` (Linux /proc)."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):  # closed since listed
            count += Path(fd.readlink()) == path
    return count


def _leftovers(dest: Path) -> list[str]:
    """Names in dest's directory (sorted)."""
    return sorted(p.name for p in dest.parent.iterdir())


@pytest.fixture(params=["xattr", "sidecar"])
def store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
          tmp_path: Path) -> str:
    """Where the downloader keeps resume validators: the part file's attribute or a sidecar
    (the fallback where attributes are unavailable, forced here)."""
    if request.param == "xattr" and not xattrs_work_in(tmp_path):
        pytest.skip("this file system takes no user extended attributes")
    if request.param == "sidecar":
        monkeypatch.setattr(resume_module, "_xattrs", False)
    return str(request.param)


def _attribute(path: Path) -> bytes | None:
    """The resume attribute of ``path``, if it has one."""
    try:
        return os.getxattr(path, RESUME_XATTR, follow_symlinks=False)
    except (AttributeError, OSError):
        return None


def _stored_validator(dest: Path, store: str) -> bytes | None:
    """The resume validator of ``dest``'s part file, where ``store`` keeps it; checks that
    the other place holds none."""
    part, meta = part_path(dest), meta_path(dest)
    if store == "xattr":
        assert not meta.exists()
        return _attribute(part)
    assert _attribute(part) is None
    return meta.read_bytes() if meta.exists() else None


def _parsed_validator(dest: Path, store: str) -> Validator:
    """:func:`_stored_validator`, parsed (it must be there and well formed)."""
    raw = _stored_validator(dest, store)
    assert raw is not None
    parsed = (Validator.from_attribute(raw) if store == "xattr"
              else Validator.from_json(raw.decode()))
    assert parsed is not None
    return parsed


def _plant_validator(dest: Path, store: str, payload: bytes) -> None:
    """Give ``dest``'s (existing) part file the validator ``payload``, where ``store`` keeps it."""
    if store == "xattr":
        os.setxattr(part_path(dest), RESUME_XATTR, payload)
    else:
        meta_path(dest).write_bytes(payload)


async def _cancel_midway(dl: Downloader, remote: RemoteFile, dest: Path, after: int) -> None:
    """Start a download and cancel it once ``after`` bytes are on disk."""
    with anyio.CancelScope() as scope:

        def progress(done: int, total: int | None) -> None:
            if done >= after:
                scope.cancel()

        await dl.download(remote, dest, on_progress=progress)
    assert scope.cancelled_caught


@pytest.mark.parametrize("inline_io", [True, False])
async def test_full_download(emulator: Emulator, session: aiohttp.ClientSession,
                             tmp_path: Path, inline_io: bool) -> None:
    """A plain download is byte-identical, renamed into place, with honest progress."""
    (path,) = _paths(emulator, 1)
    expected = emulator.file_bytes(path)
    dest = tmp_path / "sub" / "f.fits"
    seen: list[tuple[int, int | None]] = []
    outcome = await _downloader(session, inline_io=inline_io).download(
        _remote(emulator, path), dest, on_progress=lambda d, t: seen.append((d, t)))
    assert outcome == DownloadOutcome(path=dest, bytes=len(expected), resumed_from=0, attempts=1)
    assert dest.read_bytes() == expected
    assert _leftovers(dest) == ["f.fits"]
    assert seen[0] == (0, len(expected))
    assert seen[-1] == (len(expected), len(expected))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert emulator.audit.ranges(path) == [None]


@pytest.mark.parametrize("inline_io", [True, False])
async def test_cancel_keeps_part_and_resume_fetches_only_the_rest(
        emulator: Emulator, session: aiohttp.ClientSession, tmp_path: Path,
        inline_io: bool, store: str) -> None:
    """Cancelled mid-transfer: the .part stays; the rerun asks Range: bytes=N- with If-Range.

    The validator is kept on the part file itself where the file system allows (no second
    file), else in the sidecar; either way the finished file carries none of it.
    """
    (path,) = _paths(emulator, 1)
    expected = emulator.file_bytes(path)
    dest = tmp_path / "f.fits"
    remote = _remote(emulator, path)
    # one body per second: the cancel lands a third of the way in, and the paced server
    # could only finish the body first if the loop stalled for over half a second
    emulator.knobs.bandwidth = len(expected)
    await _cancel_midway(_downloader(session, inline_io=inline_io), remote, dest,
                         after=len(expected) // 3)
    assert not dest.exists()
    assert _descriptors_on(part_path(dest)) == 0  # closed, even though cancelled
    n = part_path(dest).stat().st_size
    assert 0 < n < len(expected)
    assert part_path(dest).read_bytes() == expected[:n]
    validator = _parsed_validator(dest, store)
    assert validator.total == len(expected)

    emulator.knobs.bandwidth = None
    outcome = await _downloader(session, inline_io=inline_io).download(remote, dest)
    assert dest.read_bytes() == expected
    assert outcome.resumed_from == n
    assert outcome.carried_over == n  # an earlier download's bytes, kept
    assert _leftovers(dest) == ["f.fits"]
    assert _attribute(dest) is None
    ranges = emulator.audit.ranges(path)
    assert ranges == [None, f"bytes={n}-"]
    last = emulator.audit.requests("file")[-1]
    assert last.if_range == validator.if_range() is not None
    # the first GET may have sent more than was written before the cancel, never a 2nd copy
    assert emulator.audit.bytes_sent(path) < len(expected) + n
    assert emulator.audit.file_stats[path].complete <= 1


async def test_steadily_slow_inline_io_moves_to_worker_threads(
        emulator: Emulator, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """Inline file calls stay inline while fast; steadily slow ones move to worker threads."""
    paths = _paths(emulator, 2)
    dl = _downloader(session)

    def inline(d: Downloader) -> bool:
        return d.inline_io  # (read through a call: mypy would narrow the attribute)

    await dl.download(_remote(emulator, paths[0]), tmp_path / "a.fits")
    assert inline(dl)  # every call on a local disk is far under SLOW_IO_S
    dl.slow_io_s = 0.0  # from now on every call counts as slow
    await dl.download(_remote(emulator, paths[1]), tmp_path / "b.fits")
    assert not inline(dl)
    assert (tmp_path / "b.fits").read_bytes() == emulator.file_bytes(paths[1])
    assert _leftovers(tmp_path / "b.fits") == ["a.fits", "b.fits"]


async def test_resume_at_every_cut_point(emulator: Emulator, session: aiohttp.ClientSession,
                                         tmp_path: Path, store: str) -> None:
    """Whatever prefix the .part holds (block edges, 1 byte, complete), the result is identical."""
    (path,) = _paths(emulator, 1)
    expected = emulator.file_bytes(path)
    dest = tmp_path / "f.fits"
    remote = _remote(emulator, path)
    dl = _downloader(session)
    await _cancel_midway(dl, remote, dest, after=1)
    validator = _stored_validator(dest, store)
    assert validator is not None
    size = len(expected)
    for cut in (1, 2879, 2880, size // 2, size - 1, size):
        part_path(dest).write_bytes(expected[:cut])
        _plant_validator(dest, store, validator)
        dest.unlink(missing_ok=True)
        before = emulator.audit.bytes_sent(path)
        outcome = await dl.download(remote, dest)
        assert dest.read_bytes() == expected, cut
        assert emulator.audit.ranges(path)[-1] == f"bytes={cut}-"
        assert _leftovers(dest) == ["f.fits"]
        sent = emulator.audit.bytes_sent(path) - before
        if cut == size and outcome.resumed_from == 0:
            # A complete part asks for an empty range: RFC 9110 says 416 (then nothing is
            # fetched again); a server that answers 200 instead costs one full copy.
            assert sent == size
        else:
            assert outcome.resumed_from == cut
            assert sent == size - cut


async def test_server_ignoring_range_restarts_from_zero(
        emulator: Emulator, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """A 200 answer to a Range request truncates the part and still yields identical bytes."""
    (path,) = _paths(emulator, 1)
    expected = emulator.file_bytes(path)
    dest = tmp_path / "f.fits"
    remote = _remote(emulator, path)
    await _cancel_midway(_downloader(session), remote, dest, after=len(expected) // 2)
    n = part_path(dest).stat().st_size
    emulator.knobs.ignore_range_rate = 1.0
    outcome = await _downloader(session).download(remote, dest)
    assert dest.read_bytes() == expected
    assert outcome.resumed_from == 0
    assert emulator.audit.ranges(path)[-1] == f"bytes={n}-"
    assert _leftovers(dest) == ["f.fits"]


async def test_dropped_connections_recover(emulator: Emulator, session: aiohttp.ClientSession,
                                           tmp_path: Path) -> None:
    """Connections cut mid-file are retried from the bytes on disk until the file is whole."""
    paths = _paths(emulator, 4)
    emulator.knobs.drop_rate = 0.6
    # paced like a real link, so bytes reach the disk before the cut (aiohttp drops what it
    # had buffered when the connection dies)
    emulator.knobs.bandwidth = 16 * 1024 * 1024
    dl = _downloader(session, attempts=40)
    outcomes = []
    for path in paths:
        dest = tmp_path / path.rsplit("/", 1)[-1]
        outcomes.append(await dl.download(_remote(emulator, path), dest))
        assert dest.read_bytes() == emulator.file_bytes(path)
        assert not part_path(dest).exists()
    assert sum(o.attempts for o in outcomes) > len(paths)
    resumed = [r for p in paths for r in emulator.audit.ranges(p) if r is not None]
    assert resumed, "retries must resume with Range, not start over"
    total = sum(len(emulator.file_bytes(p)) for p in paths)
    assert emulator.audit.bytes_sent() < 2 * total


async def test_truncated_body_never_becomes_final(
        emulator: Emulator, session: aiohttp.ClientSession, tmp_path: Path, store: str) -> None:
    """A body shorter than its Content-Length is an error; only a .part remains, later resumed."""
    (path,) = _paths(emulator, 1)
    expected = emulator.file_bytes(path)
    dest = tmp_path / "f.fits"
    remote = _remote(emulator, path)
    emulator.knobs.truncate_rate = 1.0
    with pytest.raises(TransportError):
        await _downloader(session, attempts=3).download(remote, dest)
    assert not dest.exists()
    kept = ["f.fits.part"] if store == "xattr" else ["f.fits.part", "f.fits.part.meta"]
    assert _leftovers(dest) == kept
    n = part_path(dest).stat().st_size
    assert n < len(expected)
    assert part_path(dest).read_bytes() == expected[:n]
    # The server kept sending: the budget of 3 is renewed PROGRESS_ROUNDS times, no more.
    assert emulator.audit.file_gets(path) == 3 * (PROGRESS_ROUNDS + 1)

    emulator.knobs.truncate_rate = 0.0
    await _downloader(session).download(remote, dest)
    assert dest.read_bytes() == expected


@pytest.mark.parametrize("inline_io", [True, False])
async def test_a_body_that_goes_silent_is_abandoned_and_resumed(
        emulator: Emulator, tmp_path: Path, inline_io: bool) -> None:
    """A transfer that stops mid-body is given up after sock_read seconds without data (not
    after the server's 30 s silence), and the next attempt resumes from what arrived."""
    (path,) = _paths(emulator, 1)
    expected = emulator.file_bytes(path)
    dest = tmp_path / "f.fits"
    emulator.knobs.stall_rate = 1.0
    emulator.knobs.stall_seconds = 30.0

    def first_transfer_only(done: int, total: int | None) -> None:
        emulator.knobs.stall_rate = 0.0  # the first GET's stall is already decided

    config = TransportConfig(requests_per_second=0, sock_read=0.3)
    with anyio.fail_after(10):
        async with create_session(config) as session:
            outcome = await _downloader(session, inline_io=inline_io).download(
                _remote(emulator, path), dest, on_progress=first_transfer_only)
    assert emulator.audit.file_stats[path].stalled == 1
    assert outcome.attempts == 2
    assert 0 < outcome.resumed_from < len(expected)
    assert outcome.carried_over == 0  # resumed within this download: all fetched by it
    assert emulator.audit.ranges(path) == [None, f"bytes={outcome.resumed_from}-"]
    assert dest.read_bytes() == expected
    assert emulator.audit.bytes_sent(path) == len(expected)  # nothing sent twice
    assert _leftovers(dest) == ["f.fits"]


async def test_a_slow_body_that_keeps_flowing_is_never_cut(
        emulator: Emulator, tmp_path: Path) -> None:
    """sock_read bounds the silence between bytes, not the transfer: a body that takes three
    times sock_read but never pauses that long arrives in one attempt."""
    (path,) = _paths(emulator, 1)
    expected = emulator.file_bytes(path)
    emulator.knobs.bandwidth = len(expected)  # one second, in pieces every 50 ms
    config = TransportConfig(requests_per_second=0, sock_read=0.3)
    async with create_session(config) as session:
        outcome = await _downloader(session).download(_remote(emulator, path),
                                                      tmp_path / "f.fits")
    assert outcome.attempts == 1
    assert emulator.audit.ranges(path) == [None]
    assert (tmp_path / "f.fits").read_bytes() == expected


async def test_time_spent_writing_is_not_silence(
        emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sock_read measures the server: while the downloader is busy writing (a slow disk,
    worker-thread writes each longer than sock_read) the body is not taken for stalled, as
    aiohttp stops its own timer while the reader lags behind."""
    (path,) = _paths(emulator, 1)
    expected = emulator.file_bytes(path)
    real_write = download_module._write_pieces

    def slow_write(fd: int, pieces: list[bytes]) -> int:
        threading.Event().wait(0.5)  # a disk slower than sock_read, per write
        return real_write(fd, pieces)

    monkeypatch.setattr(download_module, "_write_pieces", slow_write)
    config = TransportConfig(requests_per_second=0, sock_read=0.3)
    async with create_session(config) as session:
        dl = Downloader(session, chunk_size=256 * 1024, retry=RetryPolicy.no_wait(3),
                        inline_io=False)
        outcome = await dl.download(_remote(emulator, path), tmp_path / "f.fits")
    assert outcome.attempts == 1
    assert emulator.audit.ranges(path) == [None]
    assert (tmp_path / "f.fits").read_bytes() == expected


async def test_a_streamed_body_takes_over_aiohttps_read_timer(emulator: Emulator) -> None:
    """While a body streams, aiohttp's per-read timer is off (the downloader's cheaper
    StallWatch keeps the limit), and the next request on the connection has it again."""
    (path,) = _paths(emulator, 1)
    config = TransportConfig(requests_per_second=0, sock_read=7.0, connections=1)
    async with create_session(config) as session:
        async with session.get(emulator.url + path) as resp:
            assert resp.connection is not None
            protocol = resp.connection.protocol
            assert protocol is not None
            before = protocol.read_timeout
            assert hand_over_read_timeout(resp) == 7.0
            after = protocol.read_timeout
            assert (before, after) == (7.0, None)
            await resp.read()
        async with session.get(emulator.url + path) as resp:
            assert resp.connection is not None
            assert resp.connection.protocol is protocol  # the same connection, reused
            assert protocol.read_timeout == 7.0
            await resp.read()


@pytest.mark.parametrize(("where", "mask"), [
    ("data", 0xFF),   # inside the data unit: DATASUM must catch it
    ("start", 0x01),  # "SIMPLE" -> "RIMPLE": checked as NAME.fits, not as 'NAME.fits.part'
])
async def test_corrupt_part_is_refetched_whole(emulator: Emulator,
                                               session: aiohttp.ClientSession,
                                               tmp_path: Path, where: str, mask: int) -> None:
    """A resumed part file damaged on disk fails its FITS check (in the data, or in its first
    bytes, which a part file need not have as a FITS file but NAME.fits must): the part is
    dropped and the file fetched again from zero, once."""
    (path,) = _paths(emulator, 1)
    expected = emulator.file_bytes(path)
    dest = tmp_path / "f.fits"
    remote = _remote(emulator, path)
    dl = _downloader(session)
    await _cancel_midway(dl, remote, dest, after=len(expected) // 2)
    corrupt = bytearray(part_path(dest).read_bytes())
    corrupt[len(corrupt) - 7 if where == "data" else 0] ^= mask
    part_path(dest).write_bytes(bytes(corrupt))
    outcome = await dl.download(remote, dest)
    assert dest.read_bytes() == expected
    assert outcome.resumed_from == 0
    assert outcome.attempts == 2
    assert emulator.audit.ranges(path)[-2:] == [f"bytes={len(corrupt)}-", None]


async def test_corruption_without_checking_is_not_detected(
        emulator: Emulator, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """With verify_checksums off the corrupt bytes survive (so the check above is real)."""
    (path,) = _paths(emulator, 1)
    expected = emulator.file_bytes(path)
    dest = tmp_path / "f.fits"
    remote = _remote(emulator, path)
    dl = Downloader(session, chunk_size=CHUNK, verify_checksums=False,
                    retry=RetryPolicy.no_wait())
    await _cancel_midway(dl, remote, dest, after=len(expected) // 2)
    corrupt = bytearray(part_path(dest).read_bytes())
    corrupt[-7] ^= 0xFF
    part_path(dest).write_bytes(bytes(corrupt))
    await dl.download(remote, dest)
    assert dest.read_bytes() != expected


async def test_expected_size_mismatch(emulator: Emulator, session: aiohttp.ClientSession,
                                      tmp_path: Path) -> None:
    """A server size that differs from the expected one is an IntegrityError, nothing kept."""
    (path,) = _paths(emulator, 1)
    size = len(emulator.file_bytes(path))
    dest = tmp_path / "f.fits"
    with pytest.raises(IntegrityError, match="expected"):
        await _downloader(session).download(_remote(emulator, path, expected_size=size + 1),
                                            dest)
    assert not dest.exists()
    assert emulator.audit.file_gets(path) == 2  # the one retry from zero


async def test_404_means_export_expired(emulator: Emulator, session: aiohttp.ClientSession,
                                        tmp_path: Path) -> None:
    """A 404 for a file is ExportExpiredError at once (no retries), nothing written."""
    path = "/SUM1/D1/S00000/no-such-file.fits"
    dest = tmp_path / "f.fits"
    with pytest.raises(ExportExpiredError):
        await _downloader(session).download(_remote(emulator, path), dest)
    assert emulator.audit.file_gets(path) == 1
    assert [p async for p in anyio.Path(tmp_path).iterdir()] == []


async def test_429_is_retried_then_reported(emulator: Emulator,
                                            session: aiohttp.ClientSession,
                                            tmp_path: Path) -> None:
    """429 with Retry-After is retried per the policy; when it never stops, it is raised."""
    (path,) = _paths(emulator, 1)
    dest = tmp_path / "f.fits"
    emulator.knobs.http429_rate = 1.0
    with pytest.raises(HttpStatusError) as info:
        await _downloader(session, attempts=2).download(_remote(emulator, path), dest)
    assert info.value.status == 429
    assert info.value.retry_after is not None
    assert [e.http_status for e in emulator.audit.entries if e.path == path] == [429, 429]
    assert not dest.exists()
    emulator.knobs.http429_rate = 0.0
    # a fresh session: the old one's rate limiter honours the last Retry-After (1 s) too
    async with create_session(TransportConfig(requests_per_second=0)) as fresh:
        outcome = await _downloader(fresh).download(_remote(emulator, path), dest)
    assert dest.read_bytes() == emulator.file_bytes(path)
    assert outcome.attempts == 1


_REFUSED_URLS = [
    "http://h/SUM1/D2/../../etc/x.fits", "http://h/SUM1/./x.fits", "http://h/SUM1/D2/..",
    "http://h/SUM1/D2/.", "http://h/SUM1/%2e%2E/x.fits", "http://h/SUM1/%2E/x.fits",
    "http://h/SUM1\\x.fits", "http://h/SUM1/%5Cx.fits", "http://h/SUM1/a\x01.fits",
    "http://h/SUM1/a%00.fits", "http://h/SUM1/a\x7f.fits", "http://h/SUM1/a\x85.fits",
    "http:../etc/x.fits", "../etc/x.fits", "http://h/SUM1/%0a.fits",
]
_ACCEPTED_URLS = [
    "http://h/SUM1/D2/S3/magnetogram.fits", "https://h:8443/SUM1/D2/S3/.hidden",
    "http://h/SUM1/D2/S3/a%20b.fits", "http://h/SUM1/D2/S3/x..y.fits",
    "http://h/SUM1/D2/S3/x.fits?a=/..", "http://h/SUM1/D2/S3/\u00e9.fits",
]


@pytest.mark.parametrize(("url", "refused"), [(u, True) for u in _REFUSED_URLS]
                         + [(u, False) for u in _ACCEPTED_URLS])
def test_check_url_path(url: str, refused: bool) -> None:
    """Dot segments (plain or escaped), backslashes and control characters are refused;
    ordinary SUMS paths pass, dotted names, escapes and non-ASCII letters included."""
    try:
        check_url_path(url)
    except UnsafePathError:
        raised = True
    else:
        raised = False
    assert raised == refused


async def test_unsafe_names_write_nothing_outside(
        emulator: Emulator, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """Hostile names are refused before any download (no GET), and nothing appears outside
    out_dir, nor inside it."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "escape").symlink_to(tmp_path)
    (path,) = _paths(emulator, 1)
    dl = _downloader(session)
    for name in ("../evil.fits", "/tmp/evil.fits", "escape/evil.fits", "a/../../evil.fits"):
        with pytest.raises(UnsafePathError):
            resolve_inside(out, name)
        with pytest.raises(UnsafePathError):
            await dl.download_into(RemoteFile(url=emulator.url + path, relpath=name,
                                              record="r"), out)
    assert [e for e in emulator.audit.entries if e.op == "file"] == []
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert sorted(os.listdir(out)) == ["escape"]


async def test_changed_file_or_damaged_validator_restarts(
        emulator: Emulator, session: aiohttp.ClientSession, tmp_path: Path, store: str) -> None:
    """A stale validator makes the server send 200 (If-Range); a damaged one sends no Range."""
    (path,) = _paths(emulator, 1)
    expected = emulator.file_bytes(path)
    dest = tmp_path / "f.fits"
    remote = _remote(emulator, path)
    dl = _downloader(session)
    stale_validator = Validator(etag='"stale"')
    stale = (stale_validator.to_attribute() if store == "xattr"
             else stale_validator.to_json().encode())
    assert stale is not None
    for validator, sent_range in ((stale, "bytes=1000-"), (b"{not json", None)):
        part_path(dest).write_bytes(b"\0" * 1000)  # bytes of some other version of the file
        _plant_validator(dest, store, validator)
        dest.unlink(missing_ok=True)
        outcome = await dl.download(remote, dest)
        assert dest.read_bytes() == expected
        assert outcome.resumed_from == 0
        assert emulator.audit.ranges(path)[-1] == sent_range
        assert _leftovers(dest) == ["f.fits"]
        assert _attribute(dest) is None


async def test_a_part_started_by_a_sidecar_resumes_where_attributes_are_used(
        emulator: Emulator, session: aiohttp.ClientSession, tmp_path: Path, store: str) -> None:
    """A part whose validator is in a sidecar (an older asyncjsoc, or a file system without
    attributes when it was started) resumes with Range whichever store is in use now."""
    (path,) = _paths(emulator, 1)
    expected = emulator.file_bytes(path)
    dest = tmp_path / "f.fits"
    remote = _remote(emulator, path)
    dl = _downloader(session)
    await _cancel_midway(dl, remote, dest, after=1)
    validator = _parsed_validator(dest, store)
    part_path(dest).unlink()
    part_path(dest).write_bytes(expected[:5000])  # a new inode: no attribute
    meta_path(dest).write_text(validator.to_json())
    outcome = await dl.download(remote, dest)
    assert outcome.resumed_from == 5000
    assert emulator.audit.ranges(path)[-1] == "bytes=5000-"
    assert dest.read_bytes() == expected
    assert _leftovers(dest) == ["f.fits"]


async def test_a_small_file_fetched_whole_over_a_stale_part_carries_no_validator(
        emulator: Emulator, session: aiohttp.ClientSession, tmp_path: Path, store: str) -> None:
    """A file small enough to be read whole, where a stale part (unusable validator) lies,
    is written to a new part file: the stale part's attribute never reaches the final file."""
    (path,) = _paths(emulator, 1)
    out = tmp_path / "out"
    out.mkdir()
    remote = RemoteFile(url=emulator.url + path, relpath="f.fits", record="r")
    dest = out / remote.relpath
    part_path(dest).write_bytes(b"\0" * 1000)
    _plant_validator(dest, store, b"{not json")
    dl = Downloader(session, chunk_size=4 << 20, retry=RetryPolicy.no_wait(2))
    outcome = await dl.download_into(remote, out)
    assert outcome.resumed_from == 0
    assert emulator.audit.ranges(path) == [None]
    assert dest.read_bytes() == emulator.file_bytes(path)
    assert _attribute(dest) is None
    assert _leftovers(dest) == ["f.fits"]


async def test_ip_block_with_retry_after_is_not_retried(
        emulator: Emulator, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """A 403 + Retry-After (IP block) ends the download at once, whatever it says about its
    end: the client stops (see the fault matrix) instead of pressing on after the block."""
    first, second = _paths(emulator, 2)
    emulator.knobs.rate_budget = 1
    emulator.knobs.block_seconds = 1.0
    await _downloader(session).download(_remote(emulator, first), tmp_path / "a.fits")
    with pytest.raises(IpBlockedError) as caught:
        await _downloader(session).download(_remote(emulator, second), tmp_path / "b.fits")
    assert caught.value.retry_after is not None
    assert [e.http_status for e in emulator.audit.entries if e.path == second] == [403]
    assert not (tmp_path / "b.fits").exists()
    assert len(emulator.audit.blocks) == 1


async def test_final_file_from_a_killed_run_is_kept(emulator: Emulator,
                                                    session: aiohttp.ClientSession,
                                                    tmp_path: Path) -> None:
    """A file already under its final name is not fetched again, unless told to."""
    (path,) = _paths(emulator, 1)
    remote = _remote(emulator, path)
    dest = tmp_path / remote.relpath
    dest.write_bytes(emulator.file_bytes(path))  # a run finished it, then died unrecorded
    dl = _downloader(session)

    kept = await dl.download_into(remote, tmp_path)
    assert (kept.attempts, kept.bytes, kept.path) == (0, len(emulator.file_bytes(path)), dest)
    assert emulator.audit.file_gets(path) == 0

    dest.write_bytes(b"changed on disk")
    fetched = await dl.download_into(remote, tmp_path, trust_final=False)
    assert fetched.attempts >= 1
    assert dest.read_bytes() == emulator.file_bytes(path)


async def test_transfers_bound_requests_in_flight(emulator: Emulator,
                                                  session: aiohttp.ClientSession,
                                                  tmp_path: Path) -> None:
    """With ``transfers=1`` only one request is in flight, whatever the session allows.

    The emulator answers 503 to a second concurrent request from the IP; the session here
    allows two connections and four downloads run at once.
    """
    emulator.knobs.max_connections = 1
    dl = Downloader(session, chunk_size=CHUNK, retry=RetryPolicy.no_wait(1), transfers=1)
    paths = _paths(emulator, 4)
    async with anyio.create_task_group() as tg:
        for i, path in enumerate(paths):
            tg.start_soon(dl.download, _remote(emulator, path), tmp_path / f"{i}.fits")
    assert [e for e in emulator.audit.entries if e.http_status == 503] == []
    for i, path in enumerate(paths):
        assert (tmp_path / f"{i}.fits").read_bytes() == emulator.file_bytes(path)


async def test_whole_body_drops_a_stale_sidecar_and_leaves_only_the_file(
        emulator: Emulator, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """A sidecar left without its part file (a crash between the two deletions) is removed
    when the file is fetched whole; a name listed fresh has nothing to remove."""
    stale_path, fresh_path = _paths(emulator, 2)
    out = tmp_path / "out"
    out.mkdir()
    stale, fresh = (RemoteFile(url=emulator.url + path, relpath=name, record="r")
                    for path, name in ((stale_path, "stale.fits"), (fresh_path, "fresh.fits")))
    meta_path(out / stale.relpath).write_text("left over")
    dl = Downloader(session, chunk_size=4 << 20, retry=RetryPolicy.no_wait(2))
    for remote in (stale, fresh):
        outcome = await dl.download_into(remote, out)
        assert outcome.attempts == 1
    assert sorted(p.name for p in out.iterdir()) == sorted([stale.relpath, fresh.relpath])
    assert (out / stale.relpath).read_bytes() == emulator.file_bytes(stale_path)


@pytest.mark.parametrize("chunk_size", [CHUNK, 4 << 20], ids=["streamed", "whole-body"])
async def test_symlinks_planted_after_the_listing_are_never_written_through(
        emulator: Emulator, session: aiohttp.ClientSession, tmp_path: Path,
        chunk_size: int) -> None:
    """Names made behind the placer's back are replaced or refused, never followed.

    The placer lists a directory once and then takes names it did not see as absent, so a
    symlink planted later (breaking the one-writer assumption) must still not lead outside.
    """
    first, second, third = (RemoteFile(url=emulator.url + path, relpath=f"{i}.fits", record="r")
                            for i, path in enumerate(_paths(emulator, 3)))
    out = tmp_path / "out"
    dl = Downloader(session, chunk_size=chunk_size, retry=RetryPolicy.no_wait(2))
    await dl.download_into(first, out)  # the directory is listed now
    victims = [tmp_path / f"victim{i}" for i in range(3)]
    for victim in victims:
        victim.write_bytes(b"keep")

    remote = second
    dest = out / remote.relpath
    dest.symlink_to(victims[0])
    await dl.download_into(remote, out)  # the final name is replaced by the rename
    assert not dest.is_symlink()
    assert dest.read_bytes() == emulator.file_bytes(_paths(emulator, 2)[1])

    remote = third
    part = part_path(out / remote.relpath)
    part.symlink_to(victims[1])
    meta = meta_path(out / remote.relpath)
    meta.with_name(meta.name + ".tmp").symlink_to(victims[2])
    if chunk_size == CHUNK:  # a streamed part file starts afresh: the link is replaced
        await dl.download_into(remote, out)
        assert not part.exists()
        assert not (out / remote.relpath).is_symlink()
        assert (out / remote.relpath).read_bytes() == emulator.file_bytes(
            _paths(emulator, 3)[2])
    else:  # a whole body is written to a name known fresh, without a look: refused
        with pytest.raises(DiskError, match="cannot write") as caught:
            await dl.download_into(remote, out)
        assert caught.value.hint is not None
        assert emulator.audit.file_gets(_paths(emulator, 3)[2]) <= 1  # not retried
    assert [v.read_bytes() for v in victims] == [b"keep"] * 3


@pytest.mark.parametrize("chunk_size", [CHUNK, 4 << 20], ids=["streamed", "whole-body"])
@pytest.mark.parametrize("link", ["symlink", "hard link"])
async def test_a_part_file_linked_elsewhere_is_replaced_not_written_through(
        emulator: Emulator, session: aiohttp.ClientSession, tmp_path: Path,
        chunk_size: int, link: str) -> None:
    """A part file left by someone else as a symlink or a second hard link to a file outside
    the output directory: the file outside keeps its bytes, the download starts afresh and
    arrives whole (a stale part could otherwise stop every rerun, or overwrite the file)."""
    (path,) = _paths(emulator, 1)
    remote = _remote(emulator, path)
    out = tmp_path / "out"
    out.mkdir()
    outside = tmp_path / "precious.txt"
    outside.write_bytes(b"keep me" * 1000)
    part = part_path(out / remote.relpath)
    if link == "symlink":
        part.symlink_to(outside)
    else:
        os.link(outside, part)
    dl = Downloader(session, chunk_size=chunk_size, retry=RetryPolicy.no_wait(2))
    done = await dl.download_into(remote, out)
    assert done.resumed_from == 0
    assert (out / remote.relpath).read_bytes() == emulator.file_bytes(path)
    assert not part.exists()
    assert not part.is_symlink()
    assert outside.read_bytes() == b"keep me" * 1000
    assert outside.stat().st_nlink == 1


@pytest.mark.parametrize("chunk_size", [CHUNK, 4 << 20], ids=["streamed", "whole-body"])
async def test_a_directory_under_the_final_name_is_named_in_the_error(
        emulator: Emulator, session: aiohttp.ClientSession, tmp_path: Path,
        chunk_size: int) -> None:
    """A directory where the file must go fails that file (UnsafePathError, not a disk
    error that would stop the pull), naming the final name, not its part file."""
    (path,) = _paths(emulator, 1)
    remote = _remote(emulator, path)
    (tmp_path / remote.relpath / "inside").mkdir(parents=True)
    dl = Downloader(session, chunk_size=chunk_size, retry=RetryPolicy.no_wait(2))
    with pytest.raises(UnsafePathError) as caught:
        await dl.download_into(remote, tmp_path)
    assert f"{remote.relpath}:" in caught.value.message
    assert ".part" not in caught.value.message
    assert (tmp_path / remote.relpath / "inside").is_dir()


async def test_forget_directories_sees_files_added_between_pulls(
        emulator: Emulator, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """After ``forget_directories`` a finished file added behind the placer's back is kept."""
    first, second = (RemoteFile(url=emulator.url + path, relpath=f"{i}.fits", record="r")
                     for i, path in enumerate(_paths(emulator, 2)))
    dl = _downloader(session)
    await dl.download_into(first, tmp_path)  # the directory is listed now
    body = emulator.file_bytes(_paths(emulator, 2)[1])
    (tmp_path / second.relpath).write_bytes(body)  # e.g. copied in between two pulls
    dl.forget_directories()
    kept = await dl.download_into(second, tmp_path)
    assert kept.attempts == 0
    assert emulator.audit.file_gets(_paths(emulator, 2)[1]) == 0


@pytest.mark.parametrize("verify", [True, False])
async def test_a_damaged_final_file_of_unknown_size_is_not_adopted(
        emulator: Emulator, session: aiohttp.ClientSession, tmp_path: Path,
        verify: bool) -> None:
    """A file already under the final name (not recorded by the store: a reset state, a copy)
    whose FITS checksums fail is fetched again, even with checksums off for downloads (the
    check costs no request); an intact one is kept without a request."""
    paths = _paths(emulator, 2)
    damaged, intact = (RemoteFile(url=emulator.url + path, relpath=f"{i}.fits", record="r")
                       for i, path in enumerate(paths))
    body = bytearray(emulator.file_bytes(paths[0]))
    body[-100] ^= 0xFF  # same size, one data byte flipped
    (tmp_path / damaged.relpath).write_bytes(bytes(body))
    (tmp_path / intact.relpath).write_bytes(emulator.file_bytes(paths[1]))
    dl = Downloader(session, chunk_size=CHUNK, retry=RetryPolicy.no_wait(2),
                    verify_checksums=verify)
    again = await dl.download_into(damaged, tmp_path)
    kept = await dl.download_into(intact, tmp_path)
    # Checked on disk either way: a file found without a record costs no request to check.
    assert kept.attempts == 0
    assert emulator.audit.file_gets(paths[1]) == 0
    assert again.attempts == 1
    assert (tmp_path / damaged.relpath).read_bytes() == emulator.file_bytes(paths[0])


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("fits", [True, False], ids=["fits", "not-fits"])
async def test_a_short_final_file_of_unknown_size_is_fetched_again(
        emulator: Emulator, session: aiohttp.ClientSession, tmp_path: Path,
        verify: bool, fits: bool) -> None:
    """A final file cut short (another tool killed mid-file, an interrupted copy) is not
    taken as done: a FITS one fails its checks on disk (checksums on or off); any other
    file is compared with the size the server reports for it."""
    paths = _paths(emulator, 2)
    short, whole = (RemoteFile(url=emulator.url + path, relpath=f"{i}.dat", record="r")
                    for i, path in enumerate(paths))
    bodies = [emulator.file_bytes(path) for path in paths]
    if not fits:  # same sizes, but nothing in them says FITS (a tar, a JPEG, ...)
        bodies = [b"\x00" * len(body) for body in bodies]
    (tmp_path / short.relpath).write_bytes(bodies[0][: len(bodies[0]) // 2])
    (tmp_path / whole.relpath).write_bytes(bodies[1])
    dl = Downloader(session, chunk_size=CHUNK, retry=RetryPolicy.no_wait(2),
                    verify_checksums=verify)
    again = await dl.download_into(short, tmp_path)
    kept = await dl.download_into(whole, tmp_path)
    assert again.attempts == 1
    assert (tmp_path / short.relpath).read_bytes() == emulator.file_bytes(paths[0])
    assert kept.attempts == 0
    assert (tmp_path / whole.relpath).read_bytes() == bodies[1]
    checked_by_size = not fits  # FITS is checked on disk, checksums on or off
    assert emulator.audit.ranges(paths[1]) == (["bytes=0-0"] if checked_by_size else [])


@pytest.mark.parametrize(("streamed", "inline_io"), [(False, True), (False, False),
                                                     (True, True)])
async def test_body_corrupted_in_transit_is_never_written_under_its_name(
        emulator: Emulator, session: aiohttp.ClientSession, tmp_path: Path,
        streamed: bool, inline_io: bool) -> None:
    """One byte flipped in transit (emulator ``corrupt_rate``): the FITS checksums catch it,
    whether the body was read whole (verified in memory) or streamed to a part file, and no
    file gets its final name; once the transfers are clean the file arrives intact."""
    (path,) = _paths(emulator, 1)
    expected = emulator.file_bytes(path)
    remote = _remote(emulator, path)
    emulator.knobs.corrupt_rate = 1.0
    async with session.get(remote.url) as resp:  # the knob itself: same length, one byte off
        sent = await resp.read()
    assert len(sent) == len(expected)
    assert sum(a != b for a, b in zip(sent, expected, strict=True)) == 1

    dl = _downloader(session, attempts=2) if streamed else Downloader(
        session, retry=RetryPolicy.no_wait(2), inline_io=inline_io)
    dest = tmp_path / "f.fits"
    with pytest.raises(IntegrityError, match=r"DATASUM|CHECKSUM"):
        await dl.download(remote, dest)
    assert not dest.exists()
    if not streamed:  # verified before any byte is written
        assert _leftovers(dest) == []
    assert emulator.audit.file(path).corrupted >= 2  # the knob check and the download

    emulator.knobs.corrupt_rate = 0.0
    await dl.download(remote, dest)
    assert dest.read_bytes() == expected


async def test_the_connection_is_free_while_a_finished_file_is_made_durable(
        emulator: Emulator, session: aiohttp.ClientSession, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With one transfer slot, the next file's GET goes out while the last file's final fsync
    still runs: sealing a part file happens after its connection is released."""
    paths = _paths(emulator, 2)
    dl = Downloader(session, chunk_size=CHUNK, retry=RetryPolicy.no_wait(1), transfers=1)
    progressed: set[int] = set()
    both_transferring = threading.Event()
    first_seal_waited: list[bool] = []
    real_seal = download_module._seal_part

    def held_seal(fd: int, fsync: bool = True) -> int:
        if not first_seal_waited:  # the first file sealed waits until the other's GET is in
            first_seal_waited.append(both_transferring.wait(timeout=5))
        return real_seal(fd, fsync)

    monkeypatch.setattr(download_module, "_seal_part", held_seal)

    async def fetch(i: int) -> None:
        def progress(done: int, total: int | None) -> None:
            progressed.add(i)
            if len(progressed) == len(paths):
                both_transferring.set()

        await dl.download(_remote(emulator, paths[i]), tmp_path / f"f{i}.fits",
                          on_progress=progress)

    async with anyio.create_task_group() as tg:
        for i in range(len(paths)):
            tg.start_soon(fetch, i)
    assert first_seal_waited == [True]
    assert _leftovers(tmp_path / "f0.fits") == ["f0.fits", "f1.fits"]
    for i, path in enumerate(paths):
        assert (tmp_path / f"f{i}.fits").read_bytes() == emulator.file_bytes(path)


async def test_discard_part_deletes_only_that_names_part_and_sidecar(
        tmp_path: Path, session: aiohttp.ClientSession) -> None:
    """The part file and sidecar go; the final file, another name's part and a part reached
    through a symlink out of the output directory stay."""
    out, outside = tmp_path / "out", tmp_path / "outside"
    (out / "sub").mkdir(parents=True)
    outside.mkdir()
    for name in ("sub/a.tar", "sub/a.tar.part", "sub/a.tar.part.meta", "sub/b.tar.part"):
        (out / name).write_bytes(b"x")
    (outside / "c.tar.part").write_bytes(b"x")
    (out / "link").symlink_to(outside, target_is_directory=True)
    dl = _downloader(session)
    await dl.discard_part(out, "sub/a.tar")
    await dl.discard_part(out, "link/c.tar")
    await dl.discard_part(out, "sub/never-started.tar")
    assert sorted(p.relative_to(out).as_posix() for p in (out / "sub").iterdir()) == [
        "sub/a.tar", "sub/b.tar.part"]
    assert (outside / "c.tar.part").exists()


async def test_a_fits_name_without_fits_content_is_not_kept(
        emulator: Emulator, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """Zeros of the right size under a FITS name (what a killed downloader that preallocates
    leaves) are not taken for the file: a FITS name must hold FITS, checked on disk."""
    (path,) = _paths(emulator, 1)
    remote = RemoteFile(url=emulator.url + path, relpath="a.fits", record="r")
    (tmp_path / remote.relpath).write_bytes(b"\0" * len(emulator.file_bytes(path)))
    dl = Downloader(session, chunk_size=CHUNK, retry=RetryPolicy.no_wait(2),
                    verify_checksums=False)
    again = await dl.download_into(remote, tmp_path)
    assert again.attempts == 1
    assert (tmp_path / remote.relpath).read_bytes() == emulator.file_bytes(path)
    assert emulator.audit.ranges(path) == [None]  # no size probe: the name said FITS
