"""Tests for asyncjsoc._untar: unpacking url-tar export tars safely, verified and resumably."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from engine_helpers import output_locked_elsewhere

from asyncjsoc import ExtractResult, extract_tar, extract_tar_sync
from asyncjsoc.exceptions import IntegrityError, LocalError, UnsafePathError

pytestmark = pytest.mark.anyio


def _fits_bytes(seed: int) -> bytes:
    """A small checksummed FITS file, different for each seed."""
    data = np.arange(seed, seed + 600, dtype=">i2").reshape(20, 30)
    buffer = io.BytesIO()
    fits.PrimaryHDU(data).writeto(buffer, checksum=True)
    return buffer.getvalue()


def _tar(path: Path, members: list[tuple[str, bytes]], *,
         extra: list[tarfile.TarInfo] | None = None) -> Path:
    """A plain tar of ``(name, body)`` regular files, plus any ``extra`` headers."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, body in members:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        for info in extra or []:
            tar.addfile(info)
    return path


def _tree(root: Path) -> set[str]:
    """Every file and directory under ``root``, relative."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


MEMBERS = [(f"hmi.sharp_cea_720s.7302.2018090{i}_000000_TAI.Br.fits", _fits_bytes(i))
           for i in range(3)]


async def test_unpacks_every_member_byte_identical(tmp_path: Path) -> None:
    """Every member lands under its name with its bytes; the tar is kept; no part file."""
    tar = _tar(tmp_path / "JSOC_20240101_001.tar", [*MEMBERS, ("sub/dir/x.txt", b"hello")])
    done = await extract_tar(tar)
    assert isinstance(done, ExtractResult)
    assert done.new == 4
    assert [p.name for p in done.files] == [name.split("/")[-1] for name, _ in
                                            [*MEMBERS, ("sub/dir/x.txt", b"")]]
    for name, body in [*MEMBERS, ("sub/dir/x.txt", b"hello")]:
        assert (tmp_path / name).read_bytes() == body
    assert tar.is_file()
    assert not list(tmp_path.rglob("*.part"))  # noqa: ASYNC240 (a tiny test tree)


def test_running_again_keeps_what_is_there(tmp_path: Path) -> None:
    """A second run writes nothing; one file gone (or a stale part left by a crash) is
    written again, the others are kept."""
    tar = _tar(tmp_path / "t.tar", MEMBERS)
    out = tmp_path / "out"
    assert extract_tar_sync(tar, out).new == 3
    first = out / MEMBERS[0][0]
    inode = first.stat().st_ino
    assert extract_tar_sync(tar, out).new == 0
    assert first.stat().st_ino == inode
    (out / MEMBERS[1][0]).unlink()
    (out / (MEMBERS[1][0] + ".part")).write_bytes(b"half of it")
    again = extract_tar_sync(tar, out)
    assert again.new == 1
    assert (out / MEMBERS[1][0]).read_bytes() == MEMBERS[1][1]
    assert first.stat().st_ino == inode
    assert not (out / (MEMBERS[1][0] + ".part")).exists()


@pytest.mark.parametrize("name", ["../evil.fits", "/etc/evil.fits", "a/../../evil.fits",
                                  ".asyncjsoc/state.sqlite", "x.fits.part", "bad\x1bname"])
def test_unsafe_member_names_refuse_the_tar(tmp_path: Path, name: str) -> None:
    """A member name that could land outside the output directory, or on asyncjsoc's own
    files, refuses the whole tar before anything is written."""
    tar = _tar(tmp_path / "t.tar", [*MEMBERS, (name, b"x")])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UnsafePathError, match=r"t\.tar: .*nothing was extracted"):
        extract_tar_sync(tar, out)
    assert _tree(out) == set()
    assert not (tmp_path / "evil.fits").exists()


def test_a_member_path_too_long_for_the_file_system_refuses_the_tar(tmp_path: Path) -> None:
    """A member whose path is longer than the OS allows (each component short) refuses its
    tar with the usual one-line error, like any name that cannot be made."""
    tar_path = tmp_path / "t.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("d/" * 2100 + "x.fits")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UnsafePathError, match=r"t\.tar: .*nothing was extracted"):
        extract_tar_sync(tar_path, out)
    assert _tree(out) == set()


@pytest.mark.parametrize(("kind", "words"), [
    (tarfile.SYMTYPE, "symbolic link"), (tarfile.LNKTYPE, "hard link"),
    (tarfile.CHRTYPE, "device"), (tarfile.FIFOTYPE, "FIFO"),
])
def test_links_and_devices_refuse_the_tar(tmp_path: Path, kind: bytes, words: str) -> None:
    """Only regular files are unpacked: a link or device member refuses the tar."""
    special = tarfile.TarInfo("innocent.fits")
    special.type = kind
    special.linkname = "/etc/passwd"
    tar = _tar(tmp_path / "t.tar", MEMBERS, extra=[special])
    out = tmp_path / "out"
    with pytest.raises(UnsafePathError, match=words):
        extract_tar_sync(tar, out)
    assert not out.exists() or _tree(out) == set()


def test_symlinked_directory_out_of_the_tree_is_refused(tmp_path: Path) -> None:
    """A member under a directory that is a symlink leading outside is refused."""
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(outside)
    tar = _tar(tmp_path / "t.tar", [("link/x.fits", MEMBERS[0][1])])
    with pytest.raises(UnsafePathError, match="outside"):
        extract_tar_sync(tar, out)
    assert _tree(outside) == set()


def test_a_name_twice_refuses_the_tar(tmp_path: Path) -> None:
    """Two members with one name (after normalization) are ambiguous: refused."""
    tar = _tar(tmp_path / "t.tar", [("a/x.fits", MEMBERS[0][1]), ("a//./x.fits", b"other")])
    out = tmp_path / "out"
    with pytest.raises(UnsafePathError, match="twice"):
        extract_tar_sync(tar, out)
    assert not out.exists() or _tree(out) == set()


def test_a_different_file_in_the_way_is_never_overwritten(tmp_path: Path) -> None:
    """A file of another size under a member's name stops the tar before any write."""
    out = tmp_path / "out"
    out.mkdir()
    mine = out / MEMBERS[2][0]
    mine.write_bytes(b"my own notes")
    tar = _tar(tmp_path / "t.tar", MEMBERS)
    with pytest.raises(LocalError, match="already exists"):
        extract_tar_sync(tar, out)
    assert mine.read_bytes() == b"my own notes"
    assert _tree(out) == {MEMBERS[2][0]}


def test_damaged_fits_member_never_gets_its_name(tmp_path: Path) -> None:
    """A member failing its checksums is refused (no final name, no part file left); the
    members before it are on disk, and without checksum checks it is written as it is."""
    damaged = bytearray(MEMBERS[1][1])
    damaged[2880 + 100] ^= 0x01
    members = [MEMBERS[0], (MEMBERS[1][0], bytes(damaged)), MEMBERS[2]]
    tar = _tar(tmp_path / "t.tar", members)
    out = tmp_path / "out"
    with pytest.raises(IntegrityError, match=r"t\.tar: .*DATASUM"):
        extract_tar_sync(tar, out)
    assert _tree(out) == {MEMBERS[0][0]}
    assert extract_tar_sync(tar, out, verify_checksums=False).new == 2


def test_cut_tar_is_refused_without_half_files(tmp_path: Path) -> None:
    """A tar cut inside a member: an IntegrityError, and no half file under a final name."""
    tar = _tar(tmp_path / "t.tar", MEMBERS)
    whole = tar.read_bytes()
    tar.write_bytes(whole[:512 + len(MEMBERS[0][1]) + 512 + 1000])
    out = tmp_path / "out"
    with pytest.raises(IntegrityError, match=r"t\.tar"):
        extract_tar_sync(tar, out)
    # Every member header is read (to the end of the tar) before any byte is written, so a
    # cut tar writes nothing at all: not the whole first member, not a part file.
    assert not out.exists()


def test_not_a_tar(tmp_path: Path) -> None:
    """A file that is not a tar, or no file at all: one clear error each."""
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"<html>export expired</html>" * 40)
    with pytest.raises(IntegrityError, match=r"junk\.tar: not a tar file") as caught:
        extract_tar_sync(junk)
    assert caught.value.hint is not None
    assert "check the file name" in caught.value.hint
    assert "damaged" not in caught.value.hint
    # A real tar whose end is garbage is damaged, not "not a tar".
    tar = _tar(tmp_path / "t.tar", MEMBERS)
    tar.write_bytes(tar.read_bytes()[:512] + b"\xff" * 2048)
    with pytest.raises(IntegrityError, match="not a readable tar file") as damaged:
        extract_tar_sync(tar, tmp_path / "out")
    assert damaged.value.hint is not None
    assert "damaged" in damaged.value.hint
    with pytest.raises(LocalError, match="no such file"):
        extract_tar_sync(tmp_path / "missing.tar")


def test_remove_deletes_the_tar_once_unpacked(tmp_path: Path) -> None:
    """remove=True deletes the tar after every member is on disk, and only then."""
    tar = _tar(tmp_path / "t.tar", MEMBERS)
    done = extract_tar_sync(tar, tmp_path / "out", remove=True, fsync=False)
    assert done.removed
    assert not tar.exists()
    assert {p.name for p in done.files} == {name for name, _ in MEMBERS}
    bad = _tar(tmp_path / "bad.tar", [("../x", b"x")])
    with pytest.raises(UnsafePathError):
        extract_tar_sync(bad, tmp_path / "out", remove=True)
    assert bad.exists()


def test_files_are_created_with_the_umask(tmp_path: Path) -> None:
    """Member modes in the tar (setuid, world-writable) are ignored: 0o666 minus the umask."""
    info = tarfile.TarInfo("x.txt")
    body = b"data"
    info.size = len(body)
    info.mode = 0o4777
    tar = tmp_path / "t.tar"
    with tarfile.open(tar, "w") as handle:
        handle.addfile(info, io.BytesIO(body))
    out = tmp_path / "out"
    extract_tar_sync(tar, out)
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "x.txt").stat().st_mode & 0o7777 == 0o666 & ~umask


def test_member_gets_its_name_only_once_written_and_checked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each member is checked as NAME.part while NAME does not exist yet: a crash while
    writing or checking leaves no partial file under a final name."""
    from asyncjsoc import _untar
    from asyncjsoc._verify import _verify_fits_sync as real

    seen: list[tuple[str, bool]] = []

    def spy(path: Path, name: str) -> None:
        seen.append((path.name, (path.parent / name).exists()))
        real(path, name)

    monkeypatch.setattr(_untar, "_verify_fits_sync", spy)
    out = tmp_path / "out"
    extract_tar_sync(_tar(tmp_path / "t.tar", MEMBERS), out)
    assert seen == [(name + ".part", False) for name, _ in MEMBERS]
    assert all((out / name).is_file() for name, _ in MEMBERS)


def test_a_directory_is_not_a_tar(tmp_path: Path) -> None:
    """A directory given as the tar is named as one."""
    with pytest.raises(LocalError, match="a directory"):
        extract_tar_sync(tmp_path)


def test_a_same_size_file_with_other_bytes_is_not_taken_for_the_member(
        tmp_path: Path) -> None:
    """Only a byte-identical file counts as already unpacked: a file of the member's size
    but other bytes (another export's file of that name, say) stops the tar untouched."""
    out = tmp_path / "out"
    out.mkdir()
    name, body = MEMBERS[1]
    mine = out / name
    other = bytes(b ^ 0xFF for b in body)
    mine.write_bytes(other)
    tar = _tar(tmp_path / "t.tar", MEMBERS)
    with pytest.raises(LocalError, match="already exists and is not the file") as caught:
        extract_tar_sync(tar, out)
    assert "filenamefmt" in (caught.value.hint or "")
    assert mine.read_bytes() == other
    assert _tree(out) == {name}


@pytest.mark.parametrize("order", ["file first", "directory first"])
def test_a_name_that_is_a_file_and_a_directory_refuses_the_tar(tmp_path: Path,
                                                               order: str) -> None:
    """Members ``d`` and ``d/x.fits`` cannot both exist: refused before any write."""
    members = [("d", MEMBERS[0][1]), ("d/x.fits", MEMBERS[1][1])]
    if order == "directory first":
        members.reverse()
    tar = _tar(tmp_path / "t.tar", [MEMBERS[2], *members])
    out = tmp_path / "out"
    with pytest.raises(UnsafePathError, match="also the directory of member"):
        extract_tar_sync(tar, out)
    assert not out.exists() or _tree(out) == set()


def test_a_file_where_a_member_needs_a_directory_refuses_the_tar(tmp_path: Path) -> None:
    """A file on disk where a member's directory goes: refused before any write."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "d").write_bytes(b"mine")
    tar = _tar(tmp_path / "t.tar", [MEMBERS[0], ("d/x.fits", MEMBERS[1][1])])
    with pytest.raises(LocalError, match="needs a directory"):
        extract_tar_sync(tar, out)
    assert _tree(out) == {"d"}
    assert (out / "d").read_bytes() == b"mine"


@pytest.mark.parametrize(("mode", "kind"), [("w:gz", "gzip"), ("w:bz2", "bzip2"),
                                            ("w:xz", "xz")])
def test_a_compressed_tar_is_refused(tmp_path: Path, mode: str, kind: str) -> None:
    """Only plain tars are read (so no member can expand beyond the tar's own bytes)."""
    tar = tmp_path / "t.tar"
    with tarfile.open(tar, mode) as packed:  # type: ignore[call-overload]
        for name, body in MEMBERS:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            packed.addfile(info, io.BytesIO(body))
    out = tmp_path / "out"
    with pytest.raises(IntegrityError, match=f"{kind}-compressed"):
        extract_tar_sync(tar, out)
    assert not out.exists() or _tree(out) == set()


def test_a_sparse_member_is_refused(tmp_path: Path) -> None:
    """A GNU sparse member (a few bytes in the tar, any size on disk) refuses the tar."""
    sparse = tarfile.TarInfo("bomb.fits")
    sparse.type = tarfile.GNUTYPE_SPARSE
    sparse.size = 0
    tar = tmp_path / "t.tar"
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as packed:
        packed.addfile(sparse)
    out = tmp_path / "out"
    with pytest.raises(UnsafePathError, match="sparse file"):
        extract_tar_sync(tar, out)
    assert not out.exists() or _tree(out) == set()


def test_a_damaged_tar_is_named_in_one_line(tmp_path: Path) -> None:
    """Whatever tarfile says, the error is one line."""
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\0" * 100 + b"not a tar header" * 40)
    with pytest.raises(IntegrityError) as caught:
        extract_tar_sync(junk)
    assert "\n" not in str(caught.value.message)


def test_a_fifo_is_not_called_missing(tmp_path: Path) -> None:
    """Something that is there but is no regular file is named as such."""
    fifo = tmp_path / "pipe.tar"
    os.mkfifo(fifo)
    with pytest.raises(LocalError, match="not a regular file"):
        extract_tar_sync(fifo)


_WAIT = 60.0
"""Bound on waits for the other party of a two-run test (a hung run fails the test)."""


def test_a_member_another_run_is_unpacking_is_left_to_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs unpacking one tar into one directory at once: while the first is writing a
    member's part file, the second is refused in one line and touches nothing (it used to
    delete that part file and rename its own, or have the first rename a partial one); the
    first then finishes, with the member's bytes under its final name."""
    from asyncjsoc import _untar
    from asyncjsoc._verify import _verify_fits_sync as real

    name, body = MEMBERS[0]
    tar = _tar(tmp_path / "t.tar", [MEMBERS[0]])
    out = tmp_path / "out"
    part = out / (name + ".part")
    first_is_checking = threading.Event()
    second_is_done = threading.Event()
    first_result: list[ExtractResult | BaseException] = []

    def first_run_pauses_while_checking(path: Path, dest_name: str) -> None:
        if threading.current_thread() is first:
            first_is_checking.set()
            assert second_is_done.wait(_WAIT)
        real(path, dest_name)

    def first_run() -> None:
        try:
            first_result.append(extract_tar_sync(tar, out))
        except BaseException as exc:
            first_result.append(exc)

    monkeypatch.setattr(_untar, "_verify_fits_sync", first_run_pauses_while_checking)
    first = threading.Thread(target=first_run)
    first.start()
    try:
        assert first_is_checking.wait(_WAIT)
        inode = part.stat().st_ino
        with pytest.raises(LocalError, match=r"^t\.tar: .*\.fits is being unpacked by "
                                             r"another process") as caught:
            extract_tar_sync(tar, out)
        assert "\n" not in caught.value.message
        assert part.stat().st_ino == inode
        assert part.read_bytes() == body
        assert not (out / name).exists()
    finally:
        second_is_done.set()
        first.join(_WAIT)
    assert len(first_result) == 1
    assert isinstance(first_result[0], ExtractResult), first_result[0]
    assert first_result[0].new == 1
    assert (out / name).read_bytes() == body
    assert not part.exists()


_HOLD_PART = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
os.write(fd, b"the first megabyte of it")
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""
"""A run writing a part file (argv[1]): it holds its lock until killed."""


def test_a_part_file_is_replaced_only_once_its_writer_is_dead(tmp_path: Path) -> None:
    """A part file another process is writing is refused and left as it is; once that
    process is killed (its lock dies with it), the part file is stale and replaced."""
    name, body = MEMBERS[0]
    tar = _tar(tmp_path / "t.tar", [MEMBERS[0]])
    out = tmp_path / "out"
    out.mkdir()
    part = out / (name + ".part")
    with subprocess.Popen([sys.executable, "-c", _HOLD_PART, str(part)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as writer:
        try:
            assert writer.stdout is not None
            assert writer.stdout.readline() == "held\n"
            inode = part.stat().st_ino
            with pytest.raises(LocalError, match="is being unpacked by another process"):
                extract_tar_sync(tar, out)
            assert part.stat().st_ino == inode
            assert part.read_bytes() == b"the first megabyte of it"
            assert _tree(out) == {part.name}
        finally:
            writer.kill()
            writer.wait(_WAIT)
    again = extract_tar_sync(tar, out)
    assert again.new == 1
    assert (out / name).read_bytes() == body
    assert _tree(out) == {name}


@pytest.mark.parametrize("size", [300_000, 104_000])
def test_a_write_error_names_the_file_and_what_to_do(tmp_path: Path, size: int) -> None:
    """A write that fails (here over a file-size limit, as a full disk would) is a
    DiskError naming the file written, with a hint that fits both extract and fetch; also
    when only the member's last few KiB do not fit (a buffered writer kept them for its
    close, which raised a bare OSError)."""
    tar_path = _tar(tmp_path / "t.tar", [("big.bin", b"\x01" * size)])
    code = textwrap.dedent(f"""
        import resource, signal
        from asyncjsoc import extract_tar_sync
        from asyncjsoc.exceptions import DiskError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        try:
            extract_tar_sync({str(tar_path)!r}, {str(tmp_path / "out")!r})
        except DiskError as exc:
            print(exc.message)
            print(exc.hint)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    message, hint = done.stdout.splitlines()
    assert message.startswith(f"cannot write {tmp_path / 'out' / 'big.bin.part'}:")
    assert "run the same command again" in hint
    assert not (tmp_path / "out" / "big.bin").exists()
    assert not (tmp_path / "out" / "big.bin.part").exists()


def test_a_pull_output_directory_is_not_unpacked_into_while_a_pull_holds_it(
        tmp_path: Path) -> None:
    """A pull's downloads write NAME.part files without the unpackers' claim, so an extract
    into the directory of another process's running pull is refused, touching nothing;
    after it, it works."""
    from asyncjsoc.exceptions import StateLockedError

    tar = _tar(tmp_path / "JSOC_20240101_001.tar", MEMBERS)
    out = tmp_path / "out"
    with output_locked_elsewhere(out) as pid:
        with pytest.raises(StateLockedError, match="pull is writing into") as info:
            extract_tar_sync(tar, out)
        assert f"(pid {pid})" in info.value.message
        assert _tree(out) == {".asyncjsoc", ".asyncjsoc/state.sqlite.lock"}
    done = extract_tar_sync(tar, out)
    assert done.new == len(MEMBERS)


def test_this_process_own_open_client_does_not_block_an_extract(tmp_path: Path) -> None:
    """The lock held by this very process (an open Client that fetched the tar) is no bar:
    unpacking what it fetched is the program's own business."""
    from asyncjsoc._store import OutputLock

    tar = _tar(tmp_path / "JSOC_20240101_001.tar", MEMBERS)
    out = tmp_path / "out"
    with OutputLock(out):
        assert extract_tar_sync(tar, out).new == len(MEMBERS)


def test_no_pull_starts_in_a_directory_while_a_tar_is_unpacked_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While extract writes members into a pull's output directory, a pull starting there
    is refused (a stale pid in the lock file is not named); two unpackers share the lock."""
    from asyncjsoc import _untar
    from asyncjsoc._paths import output_lock_path
    from asyncjsoc._store import OutputLock
    from asyncjsoc.exceptions import StateLockedError

    tar = _tar(tmp_path / "JSOC_20240101_001.tar", MEMBERS)
    other = _tar(tmp_path / "JSOC_20240101_002.tar", [("other.txt", b"x")])
    out = tmp_path / "out"
    with OutputLock(out):  # a pull that has been here and finished, leaving its pid...
        pass
    output_lock_path(out).write_text("999999999\n")  # ...of a process long gone
    seen: list[str] = []
    original = _untar._write_member

    def write_member(*args: object, **kwargs: object) -> bool:
        if not seen:
            try:
                with OutputLock(out):
                    seen.append("a pull got in")
            except StateLockedError as exc:
                seen.append(exc.message)
            seen.append(str(extract_tar_sync(other, out).new))  # a second unpacker
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_untar, "_write_member", write_member)
    assert extract_tar_sync(tar, out).new == len(MEMBERS)
    assert seen[0].endswith("(an `extract`, or a run starting just now)")
    assert "999999999" not in seen[0]
    assert seen[1] == "1"
    with OutputLock(out):  # free again once unpacked
        pass


@pytest.mark.parametrize("same", [False, True])
def test_a_member_another_run_unpacked_meanwhile_is_never_overwritten(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, same: bool) -> None:
    """Two tars holding different files of one name, unpacked at once: the file the other
    run put there while this one wrote its part file is kept, and this run says so; the
    same bytes put there by another run of the same tar are simply taken."""
    from asyncjsoc import _untar

    name, body = MEMBERS[0]
    theirs = body if same else _fits_bytes(99)
    tar = _tar(tmp_path / "JSOC_20240101_001.tar", [(name, body)])
    out = tmp_path / "out"
    original = _untar._fill_part

    def fill_part(*args: object, **kwargs: object) -> None:
        original(*args, **kwargs)  # type: ignore[arg-type]
        (out / name).write_bytes(theirs)  # the other run renames its file in meanwhile

    monkeypatch.setattr(_untar, "_fill_part", fill_part)
    if same:
        assert extract_tar_sync(tar, out).new == 0  # the other run wrote it
    else:
        with pytest.raises(LocalError, match="appeared while") as info:
            extract_tar_sync(tar, out)
        assert "another directory" in (info.value.hint or "")
    assert (out / name).read_bytes() == theirs
    assert _tree(out) == {name}


@pytest.mark.parametrize("way", ["renameat2", "link", "no hard links"])
def test_a_name_is_given_without_replacing_either_way(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, way: str) -> None:
    """renameat2(RENAME_NOREPLACE) where libc has it, else link + unlink, else (no hard
    links: link fails with EPERM) a rename only if the name is free: an existing name is
    never replaced, a free one is taken, and no second name is left behind."""
    import errno

    from asyncjsoc import _untar

    def no_links(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    if way == "renameat2" and _untar._renameat2 is None:
        pytest.skip("no renameat2 here")
    if way != "renameat2":
        monkeypatch.setattr(_untar, "_renameat2", None)
    if way == "no hard links":
        monkeypatch.setattr(os, "link", no_links)
    part, dest = tmp_path / "a.fits.part", tmp_path / "a.fits"
    part.write_bytes(b"new")
    dest.write_bytes(b"old")
    fd = os.open(part, os.O_RDONLY)
    try:
        assert _untar._rename_noreplace(part, dest, fd) is False
        assert (part.read_bytes(), dest.read_bytes()) == (b"new", b"old")
        dest.unlink()
        assert _untar._rename_noreplace(part, dest, fd) is True
    finally:
        os.close(fd)
    assert dest.read_bytes() == b"new"
    assert not part.exists()
    assert dest.stat().st_nlink == 1


def test_a_part_file_held_mid_link_is_left_to_its_writer(tmp_path: Path) -> None:
    """A held part file with two links (its writer between link and unlink) is not taken
    for a planted hard link and deleted; an unheld one is (by name only)."""
    import fcntl

    from asyncjsoc import _untar

    part, dest = tmp_path / "a.fits.part", tmp_path / "a.fits"
    part.write_bytes(b"member")
    os.link(part, dest)
    fd = os.open(part, os.O_WRONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert _untar._drop_stale_part(part) is False  # busy: its writer holds it
        assert part.exists()
    finally:
        os.close(fd)
    assert _untar._drop_stale_part(part) is True  # nobody holds it: the name goes
    assert not part.exists()
    assert dest.read_bytes() == b"member"


def test_a_second_name_left_by_a_crash_mid_link_is_removed(tmp_path: Path) -> None:
    """A run killed between link and unlink leaves NAME.part as a second name of NAME:
    the next run finds the member complete and removes that name."""
    name, body = MEMBERS[0]
    tar = _tar(tmp_path / "JSOC_20240101_001.tar", [(name, body)])
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(body)
    os.link(out / name, out / (name + ".part"))
    assert extract_tar_sync(tar, out).new == 0
    assert _tree(out) == {name}
    assert (out / name).read_bytes() == body


def _damaged_copies(tmp_path: Path) -> dict[str, Path]:
    """A good five-member tar, one with a bit flipped in its fourth member's header, and
    one cut exactly where its third member ends (no end-of-archive blocks)."""
    members = [(f"m{i}.fits", _fits_bytes(i)) for i in range(5)]
    good = _tar(tmp_path / "good.tar", members)
    data = good.read_bytes()
    with tarfile.open(good) as tar:
        infos = tar.getmembers()
    header = bytearray(data)
    header[infos[3].offset + 5] ^= 0x20
    (tmp_path / "header.tar").write_bytes(bytes(header))
    (tmp_path / "cut.tar").write_bytes(data[:infos[3].offset])
    return {"header": tmp_path / "header.tar", "cut": tmp_path / "cut.tar"}


@pytest.mark.parametrize(("kind", "words"), [("header", "a tar header is damaged"),
                                             ("cut", "cut short")])
def test_a_tar_tarfile_reads_as_shorter_is_refused_whole(tmp_path: Path, kind: str,
                                                         words: str) -> None:
    """tarfile takes a damaged header after the first member, or a cut at a member's end,
    for the end of the archive: unpacking stopped there and called it done (3 of 5 files,
    exit 0; with --remove the rest were gone). The tar is refused before anything is
    written, with or without checksums."""
    tar = _damaged_copies(tmp_path)[kind]
    for verify in (True, False):
        out = tmp_path / f"out-{verify}"
        with pytest.raises(IntegrityError, match=words):
            extract_tar_sync(tar, out, verify_checksums=verify, remove=True)
        assert not out.exists() or _tree(out) == set()
    assert tar.exists()


@pytest.mark.parametrize(("kind", "words"), [("header", "a tar header is damaged"),
                                             ("cut", "cut short")])
async def test_a_downloaded_tar_tarfile_reads_as_shorter_fails_its_check(
        tmp_path: Path, kind: str, words: str) -> None:
    """The check a url-tar download gets before its final name catches both too (a tar cut
    at a member's end passed it)."""
    from asyncjsoc._verify import verify_fits

    tar = _damaged_copies(tmp_path)[kind]
    with pytest.raises(IntegrityError, match=words):
        await verify_fits(tar)


async def test_a_cancelled_extract_stops_between_members(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (a cancelled extract_tar) lands between two members, not after the whole
    tar: the members written are complete, the rest are not started, the tar is kept."""
    import anyio
    import anyio.from_thread

    from asyncjsoc import _untar

    members = [(f"m{i}.fits", _fits_bytes(i)) for i in range(6)]
    tar = _tar(tmp_path / "JSOC_20240101_001.tar", members)
    out = tmp_path / "out"
    original = _untar._write_member
    with anyio.CancelScope() as scope:

        def write_member(*args: object, **kwargs: object) -> bool:
            done = original(*args, **kwargs)  # type: ignore[arg-type]
            anyio.from_thread.run_sync(scope.cancel)  # Ctrl-C arrives during the first
            return done

        monkeypatch.setattr(_untar, "_write_member", write_member)
        await extract_tar(tar, out, remove=True)
    assert scope.cancelled_caught
    assert _tree(out) == {"m0.fits"}
    assert (out / "m0.fits").read_bytes() == members[0][1]
    assert tar.exists()


def test_a_tar_another_run_removed_first_is_not_a_disk_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two `extract --remove` of one tar: the one that finds it gone has its files out all
    the same, and succeeds (it reported a disk error: 'No such file')."""
    from asyncjsoc import _untar

    tar = _tar(tmp_path / "JSOC_20240101_001.tar", MEMBERS)
    original = _untar._write_member

    def write_member(*args: object, **kwargs: object) -> bool:
        done = original(*args, **kwargs)  # type: ignore[arg-type]
        tar.unlink(missing_ok=True)  # the other run finished and removed it meanwhile
        return done

    monkeypatch.setattr(_untar, "_write_member", write_member)
    done = extract_tar_sync(tar, tmp_path / "out", remove=True)
    assert done.removed
    assert done.new == len(MEMBERS)
    assert not tar.exists()
