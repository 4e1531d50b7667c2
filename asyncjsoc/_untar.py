"""Unpack the tar file of a ``url-tar`` export, with the guarantees of a download.

A ``url-tar`` export (what JSOC staff ask bulk users of many small files to use) arrives as
one ``<request id>.tar`` per export. :func:`extract_tar` unpacks one into the output
directory the way the downloader writes files:

- member names are untrusted: each goes through :func:`~asyncjsoc._paths.safe_relpath` and
  must resolve inside the output directory; a tar holding anything but regular files and
  directories (links, devices, FIFOs, sparse files), an unsafe name, the same name twice, or
  a name that is both a file and another member's directory is refused before anything is
  written;
- only uncompressed tars are read (what the JSOC makes): every byte unpacked is then a byte
  of the tar, so a small hostile tar cannot expand into a full disk (no gzip bomb, no sparse
  member declaring terabytes);
- each member is written to ``NAME.part``, its FITS ``CHECKSUM``/``DATASUM`` checked,
  fsynced, then renamed without replacing anything (:func:`_rename_noreplace`): a final name
  means a complete, verified file, and a file another run put under that name meanwhile is
  kept (refused unless it holds the member's bytes);
- a part file belongs to the process writing it, which holds a ``flock`` on it from its
  creation to its rename (see :func:`_claim_part`): another run unpacking the same member
  into the same directory at the same time (``asyncjsoc extract`` twice, or beside a
  ``fetch --extract``) is refused for that tar, touching nothing, rather than deleting,
  overwriting or renaming the first one's part file; a part file nobody holds was left by a
  killed run and is replaced;
- in an output directory of a pull (one with asyncjsoc's ``.asyncjsoc`` state directory),
  :func:`extract_tar` shares the directory's lock with other unpackers and is refused
  (:class:`~asyncjsoc.exceptions.StateLockedError`) while a pull holds it, and a pull
  cannot start there while it unpacks: a pull's downloads write ``NAME.part`` files too,
  without that claim (a pull with ``extract_tars`` unpacks its own tars under its lock);
- a member whose final name already holds a byte-identical file was unpacked by an earlier
  run and is kept; a different file in its way (another size or other bytes: a user's file,
  or another export's file of the same name) is an error, never overwritten and never taken
  for the member. So unpacking again after an interruption finishes the job.

The tar is kept unless ``remove=True``. Used on its own, a pull's state records the tar,
not its members: a tar removed after unpacking is fetched again by a rerun of the same pull.
With :attr:`ClientConfig.extract_tars <asyncjsoc.ClientConfig.extract_tars>` the client
unpacks each tar as it arrives, records it as unpacked, and only then deletes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import stat
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

import anyio.to_thread

from ._durable import NOFOLLOW, disk_errors, fsync_dir
from ._paths import PART_SUFFIX, output_lock_path, resolve_inside, safe_relpath
from ._verify import _verify_fits_sync, _zeros
from .exceptions import (
    FileBusyError,
    IntegrityError,
    LocalError,
    StateLockedError,
    UnsafePathError,
)

__all__ = ["ExtractResult", "extract_tar", "extract_tar_in_pull", "extract_tar_sync"]

_CHUNK = 1 << 20
"""Bytes copied per read from a member."""

_NOTHING_WRITTEN = "nothing was extracted from it"
_DAMAGED_HINT = ("the tar file is damaged: delete it and run the pull again, which fetches "
                 "it anew; files already extracted from it are kept")


@dataclass(frozen=True, slots=True)
class ExtractResult:
    """What :func:`extract_tar` did with one tar file.

    Attributes
    ----------
    tar
        The tar file.
    files
        Every file of the tar, now on disk under its final name, in the tar's order.
    new
        How many of them this call wrote (the others were there from an earlier run).
    removed
        Whether the tar file was deleted afterwards.
    """

    tar: Path
    files: tuple[Path, ...]
    new: int
    removed: bool = False


@dataclass(frozen=True, slots=True)
class _Member:
    """A regular file of the tar and where it goes."""

    info: tarfile.TarInfo
    relpath: str
    dest: Path
    present: bool = False


async def extract_tar(tar_path: str | Path, out_dir: str | Path | None = None, *,
                      verify_checksums: bool = True, fsync: bool = True,
                      remove: bool = False) -> ExtractResult:
    """Unpack a ``url-tar`` export's tar file into ``out_dir``, in a worker thread.

    Safe to run again after an interruption: members already unpacked are kept, the rest
    are written. See the module documentation for the guarantees.

    Parameters
    ----------
    tar_path
        The tar file.
    out_dir
        Where its files go; default the directory holding the tar.
    verify_checksums
        Check each FITS member's ``CHECKSUM``/``DATASUM`` before it gets its final name.
    fsync
        Make each file, and its name, durable before counting it as extracted.
    remove
        Delete the tar once every member is on disk.

    Returns
    -------
    ExtractResult
        The files and how many were new.

    Raises
    ------
    UnsafePathError
        A member name would land outside ``out_dir``, or a member is a link or a device;
        nothing was written.
    IntegrityError
        The tar is not readable or cut short, or a member fails its FITS checksums; the
        members before it are on disk, nothing is left half-written under a final name.
    FileBusyError
        Another process is unpacking one of its members into ``out_dir`` right now (that
        member's part file is left to it; the members before it are on disk).
    StateLockedError
        A pull of another process (``asyncjsoc fetch``, a :class:`~asyncjsoc.Client`) is
        writing into ``out_dir``; nothing was written.
    LocalError
        A different file is in the way of a member (nothing was written), or appeared
        under a member's name while the tar was unpacked (another run's; the members
        before it are on disk), or ``tar_path`` or ``out_dir`` is not what it must be.
    DiskError
        A file could not be written (disk full, permissions).
    """
    return await anyio.to_thread.run_sync(
        lambda: _extract_sharing(Path(tar_path), out_dir, verify_checksums=verify_checksums,
                                 fsync=fsync, remove=remove,
                                 between=anyio.from_thread.check_cancelled))


def extract_tar_sync(tar_path: str | Path, out_dir: str | Path | None = None, *,
                     verify_checksums: bool = True, fsync: bool = True,
                     remove: bool = False) -> ExtractResult:
    """:func:`extract_tar`, blocking (for scripts without an event loop)."""
    return _extract_sharing(Path(tar_path), out_dir, verify_checksums=verify_checksums,
                            fsync=fsync, remove=remove)


def _nothing() -> None:
    """Go on (the default between members)."""


def _extract_sharing(tar_path: Path, out_dir: str | Path | None, *, verify_checksums: bool,
                     fsync: bool, remove: bool,
                     between: Callable[[], None] = _nothing) -> ExtractResult:
    """Check the arguments, take the output directory's lock shared, unpack."""
    out = Path(out_dir) if out_dir is not None else tar_path.parent
    _check_tar_file(tar_path)
    if os.path.lexists(out) and not out.is_dir():
        raise LocalError(f"{out}: not a directory, so {_NOTHING_WRITTEN}",
                         hint="pass the directory to unpack into (--out), or leave it out to "
                              "unpack beside the tar")
    with _sharing_output(out):
        return _extract(tar_path, out, verify_checksums=verify_checksums, fsync=fsync,
                        remove=remove, between=between)


async def extract_tar_in_pull(tar_path: Path, out_dir: Path, *, verify_checksums: bool,
                              fsync: bool) -> ExtractResult:
    """:func:`extract_tar` for the pull that holds ``out_dir``'s lock (``extract_tars``):
    the same unpacking, without taking the lock it already holds."""
    return await anyio.to_thread.run_sync(
        lambda: _extract(tar_path, out_dir, verify_checksums=verify_checksums, fsync=fsync,
                         remove=False, between=anyio.from_thread.check_cancelled))


def _check_tar_file(tar_path: Path) -> None:
    """Refuse a path that is not an uncompressed tar file, before anything is written."""
    if not tar_path.is_file():
        what = ("a directory" if tar_path.is_dir() else "not a regular file"
                if tar_path.exists() else "no such file")
        raise LocalError(f"{tar_path}: {what}", hint="pass the path of a downloaded export "
                         "tar (REQUESTID.tar in the pull's output directory)")
    _refuse_compressed(tar_path)


@contextlib.contextmanager
def _sharing_output(out: Path) -> Iterator[None]:
    """Hold a shared ``flock`` on ``out``'s lock file (:func:`output_lock_path`) while
    unpacking, so no pull writes there meanwhile; refused while a pull holds it.

    Not against this process's own lock (an open :class:`~asyncjsoc.Client` of the same
    program: unpacking the tars it fetched is the program's own business). Only where a
    pull has been: a directory without asyncjsoc's state directory is left
    without one (a tar unpacked into a new directory leaves its files only), so a pull
    started there while a tar is being unpacked is not held back. Where the lock file cannot
    be opened (not writable) the unpacking goes ahead without it, and fails on its first
    write if ``out`` is not writable, naming the file.
    """
    path = output_lock_path(out)
    if not path.parent.is_dir():
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | NOFOLLOW, 0o644)
    except OSError:
        yield
        return
    try:
        holder: str | None = None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            pass  # no locks on this file system: as if it had no lock file
        # An open Client of this very program may hold it (say, a url-tar fetch whose tars
        # the program now unpacks): its pulls and this are one program's doing.
        if holder is not None and holder != str(os.getpid()):
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise StateLockedError(
                f"an asyncjsoc pull is writing into {out}{who}; nothing was extracted",
                hint="wait for it to finish (with --extract a pull unpacks its own tars), "
                     "or extract into another directory (--out)")
        yield
    finally:
        os.close(fd)


def _extract(tar_path: Path, out: Path, *, verify_checksums: bool, fsync: bool,
             remove: bool, between: Callable[[], None] = _nothing) -> ExtractResult:
    """Unpack ``tar_path`` into ``out`` (see :func:`extract_tar`), the lock being held.

    ``between`` runs before each member is written: from an event loop's worker thread it
    raises the cancellation of the awaiting task (Ctrl-C), so a stop lands between two
    members, not after the whole tar; the members written so far are complete.
    """
    _check_tar_file(tar_path)
    directories: set[Path] = set()
    try:
        with _damaged(tar_path), tarfile.open(tar_path, "r:") as tar:
            members = _plan(tar, tar_path, out)
            new = 0
            for member in members:
                if member.present:
                    continue
                between()
                if _write_member(tar, member, tar_path, verify=verify_checksums,
                                 fsync=fsync):
                    new += 1
                directories.add(member.dest.parent)
    except BaseException:
        if fsync:  # stopped part-way: what was renamed stays renamed, as far as it can
            for directory in sorted(directories):
                with contextlib.suppress(OSError):
                    fsync_dir(directory)
        raise
    if fsync:
        for directory in sorted(directories):
            fsync_dir(directory)
    if remove:
        # (Another run removing it first is not an error: its files are out either way.)
        with _disk_errors(), contextlib.suppress(FileNotFoundError):
            tar_path.unlink()
        if fsync:
            fsync_dir(tar_path.parent)
    return ExtractResult(tar=tar_path, files=tuple(m.dest for m in members), new=new,
                     removed=remove)


@contextlib.contextmanager
def _damaged(tar_path: Path) -> Iterator[None]:
    """Turn tarfile's complaints about a bad archive into an :class:`IntegrityError`."""
    try:
        yield
    except (tarfile.TarError, EOFError) as exc:
        why = " ".join(str(exc).split()) or type(exc).__name__  # one line
        if not _has_tar_magic(tar_path):
            raise IntegrityError(f"{tar_path.name}: not a tar file ({why})",
                                 hint=_NOT_A_TAR_HINT) from exc
        raise IntegrityError(f"{tar_path.name}: not a readable tar file ({why})",
                             hint=_DAMAGED_HINT) from exc


_NOT_A_TAR_HINT = ("check the file name (asyncjsoc extracts the tars of url-tar exports); if "
                   "a url-tar pull downloaded it, delete it and run the pull again")


def _has_tar_magic(tar_path: Path) -> bool:
    """Whether the file starts with a POSIX (ustar) or GNU tar header, as the JSOC's do."""
    try:
        with tar_path.open("rb") as f:
            head = f.read(512)
    except OSError:
        return True  # unreadable now: say no more than "damaged"
    return len(head) == 512 and head[257:262] == b"ustar"


_COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz",
                     b"\x28\xb5\x2f\xfd": "zstd"}


def _refuse_compressed(tar_path: Path) -> None:
    """Refuse a compressed tar with a clear error (the JSOC's url-tar tars are plain)."""
    with _disk_errors(), tar_path.open("rb") as f:
        head = f.read(6)
    for magic, kind in _COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            raise IntegrityError(
                f"{tar_path.name}: a {kind}-compressed file; asyncjsoc unpacks only the plain "
                f"tars of url-tar exports, so {_NOTHING_WRITTEN}",
                hint="decompress it first, or extract it by hand (tar -xf) if you trust "
                     "its source")


def _disk_errors(path: Path | None = None) -> contextlib.AbstractContextManager[None]:
    """:func:`~asyncjsoc._durable.disk_errors` with the unpacking's hint; ``path`` names the
    file when the error does not (writes through a descriptor)."""
    return disk_errors("free some space, or fix the permissions, then run the same command "
                       "again: files already extracted are kept", path)


def _check_end(tar: tarfile.TarFile, tar_path: Path) -> None:
    """Refuse a tar whose members do not end in its end-of-archive zeros.

    ``tarfile`` takes a damaged header after the first member, or a tar cut exactly where
    a member ends, for the end of the archive: the members after it would be silently
    left out. So the bytes after the last member it read must be at least one zero block,
    and zeros to the end of the file (the scan that :func:`~asyncjsoc._verify._zeros` does).
    """
    end = tar.offset
    size = tar_path.stat().st_size
    with tar_path.open("rb") as f:
        def read(offset: int, n: int) -> bytes:
            f.seek(offset)
            return f.read(n)

        if end + tarfile.BLOCKSIZE > size:
            raise IntegrityError(f"{tar_path.name}: cut short (no end-of-archive block after "
                                 f"its {len(tar.getmembers())} members); {_NOTHING_WRITTEN}",
                                 hint=_DAMAGED_HINT)
        if not _zeros(read, end, size):
            raise IntegrityError(f"{tar_path.name}: a tar header is damaged (data after the "
                                 f"last member that could be read); {_NOTHING_WRITTEN}",
                                 hint=_DAMAGED_HINT)


def _plan(tar: tarfile.TarFile, tar_path: Path, out: Path) -> list[_Member]:
    """Every regular file of ``tar`` with its destination; refuses the tar (before anything
    is written) for a member that is not a file or a directory, an unsafe or repeated name,
    or a different file in a member's way."""
    members: list[_Member] = []
    seen: set[str] = set()
    parents: dict[str, str] = {}  # every directory the members need -> one member in it
    tar_itself = tar_path.resolve()
    infos = tar.getmembers()
    _check_end(tar, tar_path)
    for info in infos:
        if info.isdir():
            continue
        if not info.isfile() or info.issparse():
            kind = ("symbolic link" if info.issym() else "hard link" if info.islnk()
                    else "sparse file" if info.isfile() else "device or FIFO")
            raise UnsafePathError(
                f"{tar_path.name}: member {info.name!r} is a {kind}; asyncjsoc extracts "
                f"regular files only, so {_NOTHING_WRITTEN}",
                hint="extract it by hand (tar -xf) if you trust its source")
        try:
            relpath = safe_relpath(info.name)
            dest = resolve_inside(out, relpath)
        except UnsafePathError as exc:
            raise UnsafePathError(f"{tar_path.name}: {exc.message}; {_NOTHING_WRITTEN}",
                                  hint=exc.hint) from None
        if relpath in seen:
            raise UnsafePathError(
                f"{tar_path.name}: member {relpath!r} appears twice; {_NOTHING_WRITTEN}",
                hint="extract it by hand (tar -xf) if you trust its source")
        seen.add(relpath)
        head = relpath
        while "/" in head:
            head = head.rpartition("/")[0]
            parents.setdefault(head, relpath)
        if dest == tar_itself:
            raise UnsafePathError(
                f"{tar_path.name}: member {relpath!r} would replace the tar itself; "
                f"{_NOTHING_WRITTEN}", hint="extract it into another directory (--out)")
        members.append(_Member(info, relpath, dest))
    for member in members:
        if member.relpath in parents:
            raise UnsafePathError(
                f"{tar_path.name}: member {member.relpath!r} is also the directory of member "
                f"{parents[member.relpath]!r}; {_NOTHING_WRITTEN}",
                hint="extract it by hand (tar -xf) if you trust its source")
    directories: set[Path] = set()  # looked at already
    return [replace(m, present=_present(tar, m, tar_path, directories)) for m in members]


def _present(tar: tarfile.TarFile, member: _Member, tar_path: Path,
             directories: set[Path]) -> bool:
    """Whether ``member.dest`` already holds the member (a regular file with its very
    bytes); an error when something else is in its way, there or at one of its
    directories (each looked at once per tar: ``directories`` holds those passed)."""
    dest, size = member.dest, member.info.size
    for _ in range(member.relpath.count("/")):  # the member's own directories
        dest = dest.parent
        if dest in directories:
            break  # it and its parents were looked at for an earlier member
        directories.add(dest)
        if dest.exists() and not dest.is_dir():
            raise LocalError(
                f"{dest}: a file where {tar_path.name} needs a directory (for "
                f"{member.info.name!r}); {_NOTHING_WRITTEN}",
                hint="move that file away, or extract into another directory (--out)")
    dest = member.dest
    try:
        st = dest.lstat()
    except FileNotFoundError:
        return False
    if (dest.is_file() and not dest.is_symlink() and st.st_size == size
            and _same_bytes(tar, member.info, dest)):
        _drop_second_name(dest.with_name(dest.name + PART_SUFFIX), st)
        return True
    raise LocalError(
        f"{dest}: already exists and is not the file {tar_path.name} holds under that name "
        f"(another file of that name, {st.st_size} bytes); {_NOTHING_WRITTEN}",
        hint="move that file away, or extract into another directory (--out); when two "
             "exports' files share a name, put every prime key and {segment} in filenamefmt")


def _drop_second_name(part: Path, dest_stat: os.stat_result) -> None:
    """Remove ``part`` if it is another name of the finished file (a crash between the
    link and the unlink of :func:`_rename_noreplace` left both)."""
    with contextlib.suppress(OSError):
        st = os.lstat(part)
        if (st.st_dev, st.st_ino) == (dest_stat.st_dev, dest_stat.st_ino):
            part.unlink()


def _same_bytes(tar: tarfile.TarFile, info: tarfile.TarInfo, path: Path) -> bool:
    """Whether the file at ``path`` holds exactly the bytes of member ``info``."""
    source = tar.extractfile(info)
    if source is None:
        return False
    with source, _disk_errors(), path.open("rb") as mine:
        while chunk := source.read(_CHUNK):
            if mine.read(len(chunk)) != chunk:
                return False
        return mine.read(1) == b""


def _write_member(tar: tarfile.TarFile, member: _Member, tar_path: Path, *, verify: bool,
                  fsync: bool) -> bool:
    """Copy one member to ``NAME.part``, check it, make it durable, give it its name;
    ``False`` when another run gave the name the same bytes first (this copy is dropped).

    The part file is claimed (:func:`_claim_part`) before anything is written and held
    until it is renamed or deleted, so no other process touches it meanwhile.
    """
    dest = member.dest
    part = dest.with_name(dest.name + PART_SUFFIX)
    source = tar.extractfile(member.info)
    if source is None:  # not a regular file: _plan let none through
        raise IntegrityError(f"{tar_path.name}: member {member.info.name!r} has no data",
                             hint=_DAMAGED_HINT)
    with source:
        with _disk_errors():
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd = _claim_part(part)
        if fd is None:
            raise FileBusyError(
                f"{tar_path.name}: {dest} is being unpacked by another process (it holds "
                f"{part.name})", hint="try again when it has finished: files already "
                                      "extracted are kept")
        done = False
        try:
            _fill_part(source, fd, member, part, tar_path, verify=verify, fsync=fsync)
            # No unpacker moves a part file it does not hold; this catches any other program
            # that did (not atomically with the rename: it narrows that window, no more).
            if not _names(part, fd):
                raise LocalError(f"{tar_path.name}: {part} was replaced by another program "
                                 f"while {member.info.name!r} was unpacked into it",
                                 hint="let it finish, then extract again")
            with _disk_errors():
                placed = _rename_noreplace(part, dest, fd)
            if not placed:  # appeared since _present looked: another run unpacked it
                if not (dest.is_file() and not dest.is_symlink()
                        and _same_bytes(tar, member.info, dest)):
                    raise LocalError(
                        f"{dest}: appeared while {tar_path.name} was being unpacked, and is "
                        f"not the file it holds under that name; it was left as it is",
                        hint="another run unpacked a different file of that name into this "
                             "directory: extract into another directory (--out); when two "
                             "exports' files share a name, put every prime key and {segment} "
                             "in filenamefmt")
                _drop_own_part(part, fd)
            done = True
        finally:
            if not done:
                _drop_own_part(part, fd)
            os.close(fd)  # releases the claim, after the rename or the unlink
    return placed


def _fill_part(source: IO[bytes], fd: int, member: _Member, part: Path,
               tar_path: Path, *, verify: bool, fsync: bool) -> None:
    """Copy the member's bytes into the claimed part file ``fd``, check them, sync them."""
    dest = member.dest
    written = 0
    # Unbuffered writes of 1 MiB pieces: a buffered writer would keep a tail to flush on
    # close, where a full disk escaped as a bare OSError instead of a DiskError.
    while chunk := source.read(_CHUNK):
        view = memoryview(chunk)
        with _disk_errors(part):
            while view:
                view = view[os.write(fd, view):]
        written += len(chunk)
    if written != member.info.size:
        raise IntegrityError(
            f"{tar_path.name}: member {member.info.name!r} is cut short ({written} of "
            f"{member.info.size} bytes)", hint=_DAMAGED_HINT)
    if verify:
        try:
            _verify_fits_sync(part, dest.name)
        except IntegrityError as exc:
            raise IntegrityError(f"{tar_path.name}: {exc.message}",
                                 hint=_DAMAGED_HINT) from None
    if fsync:
        with _disk_errors(part):
            os.fsync(fd)


_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV,
                            errno.EMLINK, errno.ENOSYS})
"""``link`` errors of file systems without hard links (FAT, some network shares)."""


def _load_renameat2() -> Callable[..., int] | None:
    """libc's ``renameat2`` (Linux, glibc 2.28+), or ``None`` where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                         ctypes.c_uint]
    function.restype = ctypes.c_int
    found: Callable[..., int] = function
    return found


_renameat2 = _load_renameat2()
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _rename_noreplace(part: Path, dest: Path, fd: int) -> bool:
    """Give the claimed part file ``fd`` (named ``part``) the name ``dest`` unless ``dest``
    exists; whether it did.

    A file another run unpacked meanwhile under the same name (another tar's file of that
    name) is never replaced, as ``os.replace`` would. On Linux one atomic
    ``renameat2(RENAME_NOREPLACE)``; elsewhere, or where the file system does not support
    it, a hard link then the unlink of ``part`` (if it still names ``fd``: the unpackers
    leave a locked part file alone, whatever its link count); where there are no hard links
    either, an existence check then ``os.replace`` (a window between them remains there).
    A crash between the link and the unlink leaves ``part`` beside ``dest``, one file:
    :func:`_present` removes that name on the next run.
    """
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(part), _AT_FDCWD, os.fsencode(dest),
                      _RENAME_NOREPLACE) == 0:
            return True
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            return False
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(dest))
    try:
        os.link(part, dest, follow_symlinks=False)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if os.path.lexists(dest):
            return False
        os.replace(part, dest)
        return True
    _drop_own_part(part, fd)
    return True


_CLAIM_TRIES = 3
"""Times :func:`_claim_part` starts over when another process races it for the name."""


def _claim_part(part: Path) -> int | None:
    """Create ``part`` afresh and hold an exclusive ``flock`` on it; returns the descriptor
    (closing it releases the claim), or ``None`` when another process holds the part file.

    Two runs unpacking the same member into the same directory would otherwise each delete
    the other's part file as stale and rename whatever the name holds by then: a partial
    file under a final name. Every unpacker keeps to one rule instead: it deletes or renames
    a part file only while holding its lock, having checked that the name still leads to
    the locked file (:func:`_names`). A part file found locked belongs to a live writer and
    is left alone; one found unlocked was left by a killed run (the kernel drops a dead
    process's locks) and is deleted, never written through, as is anything planted there
    (a symlink, a hard link to another file). The new file is made with ``O_EXCL`` and
    ``O_NOFOLLOW``; between its creation and its lock another process may take it for
    stale and delete it, hence the check after locking, and the fresh start.

    Raises :class:`OSError` (the caller's :func:`disk_errors` turns it into a
    :class:`~asyncjsoc.exceptions.DiskError`) when the file cannot be made or locked.
    """
    for _ in range(_CLAIM_TRIES):
        if not _drop_stale_part(part):
            return None
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | NOFOLLOW,
                         0o666)
        except FileExistsError:
            continue  # another process made one meanwhile: look at it again
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # another process took it for stale, and deletes it
            continue
        except BaseException:
            os.close(fd)
            raise
        if _names(part, fd):
            return fd
        os.close(fd)  # deleted as stale before we locked it
    return None


def _drop_stale_part(part: Path) -> bool:
    """Delete what ``part`` names unless a live process holds it; ``False`` if one does."""
    try:
        st = os.lstat(part)
    except FileNotFoundError:
        return True
    if not stat.S_ISREG(st.st_mode):
        with contextlib.suppress(FileNotFoundError):
            part.unlink()  # planted, never an unpacker's: delete the name, not its target
        return True
    # A regular file with more than one link may be planted (a hard link to another file:
    # deleted by name below, never written) or an unpacker's, mid-way through giving its
    # part file its final name by a link (held: left alone). Opening it to try the lock
    # writes nothing either way.
    try:
        # For writing: where flock is emulated with POSIX locks (NFS), an exclusive lock
        # needs a descriptor open for writing. Opening does not change the file, and
        # O_NONBLOCK keeps a FIFO swapped in meanwhile from blocking the open.
        fd = os.open(part, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | NOFOLLOW)
    except FileNotFoundError:
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if _names(part, fd):
            part.unlink()
        return True
    finally:
        os.close(fd)


def _drop_own_part(part: Path, fd: int) -> None:
    """Delete the claimed part file ``fd`` after a failure, if ``part`` still names it."""
    with contextlib.suppress(OSError):
        if _names(part, fd):
            part.unlink()


def _names(part: Path, fd: int) -> bool:
    """Whether the name ``part`` still leads to the open file ``fd``."""
    try:
        st = os.lstat(part)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)

