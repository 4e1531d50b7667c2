"""A hostile or broken server, through the real Client: nothing escapes, the rest completes.

Each case switches one of the emulator's hostile knobs on for part of the records, runs a
whole ``Client.fetch``, and checks that (a) no file appears outside the output directory,
(b) exactly the affected records fail with a clear error, and (c) everything else arrives.
"""

from __future__ import annotations

import os
import shutil
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.abc
import pytest
from engine_helpers import assert_identical, emulator, fast_config

from asyncjsoc import Client
from asyncjsoc._api import MAX_BODY_BYTES
from asyncjsoc._client import PullResult
from asyncjsoc._download import MAX_UNSIZED_BYTES, Downloader
from asyncjsoc._events import Backoff, Event, FileFailed
from asyncjsoc._http import TransportConfig, create_session
from asyncjsoc._models import RemoteFile
from asyncjsoc._retry import RetryPolicy
from asyncjsoc.emulator import Emulator
from asyncjsoc.emulator._hostile import ESCAPE_DIR
from asyncjsoc.exceptions import (
    ExportExpiredError,
    IntegrityError,
    ProtocolError,
    UnsafePathError,
)

pytestmark = pytest.mark.anyio

# Two SHARP records x three segments; with max_files_per_export=3 that is two exports.
SHARP = "hmi.sharp_cea_720s[7302][2018.09.06_00:00:00_TAI-2018.09.06_00:12:00_TAI]{Bp,Bt,Br}"
N_FILES = 6


@pytest.fixture(autouse=True)
def _no_escape_dir() -> Iterator[None]:
    """The directory hostile names aim at must not exist before or after a test."""
    shutil.rmtree(ESCAPE_DIR, ignore_errors=True)
    yield
    assert not os.path.exists(ESCAPE_DIR), "a hostile name escaped into " + ESCAPE_DIR


def tree(root: Path) -> set[str]:
    """Every file and directory under ``root``, relative."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def data_files(out: Path) -> set[str]:
    """Files under their final names (state and ``.part`` temporaries left out)."""
    return {p for p in tree(out) if not p.startswith(".asyncjsoc") and (out / p).is_file()
            and not p.endswith((".part", ".part.meta"))}  # fmt: skip


async def pull(emu: Emulator, tmp_path: Path, query: str = SHARP, *,
               events: list[Event] | None = None, **config: object
               ) -> tuple[PullResult, Path]:  # fmt: skip
    """Fetch ``query`` into ``tmp_path/out``; nothing may appear next to ``out``. The
    client's events are appended to ``events``, if given."""
    out = tmp_path / "out"
    before = set(os.listdir(tmp_path))
    reporter = events.append if events is not None else None
    async with Client(fast_config(emu, **config), out, reporter=reporter) as client:
        result = await client.fetch(query)
    assert set(os.listdir(tmp_path)) - before == {"out"}
    for name in data_files(out):
        assert (out / name).resolve().is_relative_to(out.resolve())
    return result, out


def disk_usage(root: Path) -> int:
    """Bytes in every file under ``root``."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def failed_records(result: PullResult) -> set[str]:
    """The records (or record sets) of every failure."""
    return {f.record for f in result.failed}


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "nul", "backslash", "long"])
@pytest.mark.parametrize("method", ["url", "url_quick"])
async def test_unsafe_file_names(kind: str, method: str, tmp_path: Path) -> None:
    """Unsafe names fail their records with UnsafePathError; the other files arrive intact."""
    events: list[Event] = []
    async with emulator(hostile_names={kind: 0.4}) as emu:
        protocol = "as-is" if method == "url_quick" else "fits"
        result, out = await pull(emu, tmp_path, method=method, protocol=protocol,
                                 max_files_per_export=3, events=events)  # fmt: skip
    assert result.failed, "the knob picked no row: change the rate or seed"
    # Each failed file is reported once, so displays count it (refused names included).
    reported = sorted((e.record, e.error.message) for e in events if isinstance(e, FileFailed))
    assert reported == sorted((f.record, f.error.message) for f in result.failed)
    if not (method == "url_quick" and kind == "absolute"):
        assert all(isinstance(f.error, UnsafePathError) for f in result.failed)
        assert all("refusing" in f.error.message for f in result.failed)
    else:
        # An absolute path is a legitimate quick answer: it is requested, gets a 404 and is
        # exported again (each time the same path), until the re-exports run out.
        assert all(isinstance(f.error, ExportExpiredError) for f in result.failed)
    # One failure per file, however many times its records were requested again.
    assert len({(f.record, f.relpath, str(f.error)) for f in result.failed}) == len(result.failed)
    assert len(result.files) + len(result.failed) == N_FILES
    assert len(data_files(out)) == len(result.files) > 0
    assert_identical(emu, result)


@pytest.mark.parametrize("kind", ["dotdot", "relative", "url", "nul"])
async def test_unsafe_export_dir_fails_that_export_only(kind: str, tmp_path: Path) -> None:
    """An export whose ``dir`` is not a clean server path fails with ProtocolError, alone."""
    async with emulator(hostile_dirs={kind: 1.0}, hostile_exports={2}) as emu:
        result, out = await pull(emu, tmp_path, max_files_per_export=3)
    bad = list(result.failed)
    assert len(bad) == 1, result.failed
    assert isinstance(bad[0].error, ProtocolError)
    assert "refusing export dir" in bad[0].error.message
    assert len(result.files) == 3
    assert len(data_files(out)) == 3


@pytest.mark.parametrize("kind", ["html", "truncated", "array", "status-abc", "status-null",
                                  "status-list"])  # fmt: skip
async def test_broken_exp_status_fails_that_export_only(kind: str, tmp_path: Path) -> None:
    """A broken exp_status answer for one export fails it with a ProtocolError; the rest pull."""
    async with emulator(hostile_cgi={"exp_status": kind}, hostile_exports={1}) as emu:
        result, out = await pull(emu, tmp_path, max_files_per_export=3)
    assert len(result.failed) == 1, result.failed
    error = result.failed[0].error
    assert isinstance(error, ProtocolError)
    assert "exp_status" in error.message
    assert len(result.files) == 3
    assert len(data_files(out)) == 3


async def test_broken_exp_status_once_is_polled_past(tmp_path: Path) -> None:
    """One proxy error page (HTML, HTTP 200) from exp_status is polled past: all arrive."""
    async with emulator(hostile_cgi={"exp_status": "html"}, hostile_exports={1}) as emu:
        events: list[Event] = []

        def heal(event: Event) -> None:
            events.append(event)
            if isinstance(event, Backoff) and "broken exp_status" in event.reason:
                emu.knobs.hostile_cgi = {}

        out = tmp_path / "out"
        async with Client(fast_config(emu, max_files_per_export=3), out, reporter=heal) as c:
            result = await c.fetch(SHARP)
        assert result.ok, result.failed
        assert len(data_files(out)) == N_FILES
        assert_identical(emu, result)
    assert sum(isinstance(e, Backoff) and "broken exp_status" in e.reason for e in events) == 1
    # Both exports were submitted once: the broken answer did not cost a new export.
    assert len([e for e in emu.audit.requests() if e.op.endswith("exp_request")]) == 2


@pytest.mark.parametrize("kind", ["html", "status-abc"])
async def test_broken_planning_answer_is_one_clear_error(kind: str, tmp_path: Path) -> None:
    """A broken series_struct stops the pull before any export with one ProtocolError."""
    async with emulator(hostile_cgi={"series_struct": kind}) as emu:
        with pytest.raises(ProtocolError, match="series_struct"):
            await pull(emu, tmp_path)
        assert not [e for e in emu.audit.requests() if e.op.endswith("exp_request")]


@pytest.mark.parametrize("kind", ["huge", "huge-length"])
async def test_huge_json_is_refused_without_allocating_it(kind: str, tmp_path: Path) -> None:
    """A 100 MB CGI body is refused at the 64 MiB bound; memory peak stays below the body."""
    async with emulator(hostile_cgi={"rs_summary": kind}, huge_body_bytes=100 << 20) as emu:
        tracemalloc.start()
        try:
            with pytest.raises(ProtocolError, match="over"):
                await pull(emu, tmp_path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < MAX_BODY_BYTES + (16 << 20), peak
    if kind == "huge-length":
        assert peak < 16 << 20, "a too-long Content-Length must be refused before reading"


async def test_redirect_to_another_host_is_refused(tmp_path: Path) -> None:
    """File GETs answered with a 302 to another host fail; nothing contacts that host."""
    contacted: list[object] = []

    async def note(stream: anyio.abc.SocketStream) -> None:
        contacted.append(stream.extra(anyio.abc.SocketAttribute.remote_address))
        await stream.aclose()

    async with await anyio.create_tcp_listener(local_host="127.0.0.2") as other, \
            anyio.create_task_group() as tg:
        tg.start_soon(other.serve, note)
        port = other.extra(anyio.abc.SocketAttribute.local_port)
        async with emulator(redirect_rate=0.5, redirect_to=f"http://127.0.0.2:{port}") as emu:
            result, out = await pull(emu, tmp_path)
        tg.cancel_scope.cancel()
    assert contacted == []
    assert result.failed
    for f in result.failed:
        assert isinstance(f.error, ProtocolError)
        assert "redirect" in f.error.message
        assert f"127.0.0.2:{port}" in f.error.message
    assert len(result.files) + len(result.failed) == N_FILES
    assert len(data_files(out)) == len(result.files) > 0
    assert_identical(emu, result)


async def test_redirect_on_the_same_host_is_followed(tmp_path: Path) -> None:
    """A 302 to the same server is followed: every file arrives."""
    async with emulator(redirect_rate=1.0, redirect_to="") as emu:
        result, out = await pull(emu, tmp_path)
        assert result.ok, result.failed
        assert len(data_files(out)) == N_FILES
        assert_identical(emu, result)
        redirects = [e for e in emu.audit.requests() if e.http_status == 302]
        assert len(redirects) == N_FILES


@pytest.mark.parametrize("kind", ["padded", "chunked"])
async def test_body_longer_than_the_file_is_not_kept(kind: str, tmp_path: Path) -> None:
    """Junk after a FITS file (with or without Content-Length) fails that file, not others."""
    async with emulator(oversize_files={kind: 0.5}) as emu:
        result, out = await pull(emu, tmp_path)
    assert result.failed
    assert all(type(f.error).__name__ == "IntegrityError" for f in result.failed)
    assert len(result.files) + len(result.failed) == N_FILES
    assert {f.relpath for f in result.failed}.isdisjoint(data_files(out))
    assert len(data_files(out)) == len(result.files) > 0
    assert_identical(emu, result)


async def test_endless_body_without_length_is_cut_at_max_bytes(tmp_path: Path) -> None:
    """A body without Content-Length stops at the Downloader's max_bytes, not at the disk."""
    junk = 64 << 20
    async with emulator(oversize_files={"chunked": 1.0}, oversize_bytes=junk) as emu:
        sel = emu.catalog.select("hmi.M_45s[2012.01.01_00:00:45_TAI]{magnetogram}")
        path = next(iter(sel)).segment_path(sel.segments[0])
        size = len(emu.file_bytes(path))
        remote = RemoteFile(url=emu.url + path, relpath="m.fits", record="r")
        dest = tmp_path / "m.fits"
        async with create_session(TransportConfig(requests_per_second=0)) as session:
            downloader = Downloader(session, chunk_size=1 << 16, max_bytes=4 * size,
                                    retry=RetryPolicy.no_wait(2))
            assert Downloader(session).max_bytes == MAX_UNSIZED_BYTES == 100 * 10**9
            with pytest.raises(IntegrityError, match="max_bytes"):
                await downloader.download(remote, dest)
        # Once, then once more from scratch (corrupt bytes are dropped).
        assert emu.audit.file_gets(path) == 2
    assert not dest.exists()
    assert disk_usage(tmp_path) <= 4 * size


async def test_a_directory_under_a_file_name_fails_that_file_only(tmp_path: Path) -> None:
    """A directory where a file must go (or any name the file system cannot hold there)
    fails that file with UnsafePathError; before, it stopped the whole pull, on every rerun,
    with a DiskError about free space."""
    (tmp_path / "first").mkdir()
    async with emulator() as emu:
        first, first_out = await pull(emu, tmp_path / "first", max_files_per_export=3)
        assert first.ok
        blocked = sorted(f.relpath for f in first.files)[0]
        out = tmp_path / "out"
        (out / blocked / "mine").mkdir(parents=True)
        async with Client(fast_config(emu, max_files_per_export=3), out) as client:
            result = await client.fetch(SHARP)
    assert [f.relpath for f in result.failed] == [blocked]
    error = result.failed[0].error
    assert isinstance(error, UnsafePathError)
    assert "directory" in error.message.lower()
    assert len(result.files) == N_FILES - 1
    assert (out / blocked / "mine").is_dir()
    assert data_files(out) == data_files(first_out) - {blocked}
