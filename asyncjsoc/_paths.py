"""Turn server-sent file names into paths that cannot escape the output directory.

Names in an export come from the server (``filenamefmt`` expansions, SUMS paths) and are
untrusted: :func:`safe_relpath` normalizes one into a relative POSIX path or refuses it, and
:func:`resolve_inside` joins it to the output directory, refusing anything that lands outside
it once existing symlinks are followed.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path, PurePosixPath

from .exceptions import UnsafePathError

__all__ = [
    "PART_SUFFIX", "SIDECAR_SUFFIX", "STATE_DIRNAME", "Placer", "output_lock_path",
    "resolve_inside", "safe_relpath",
]

STATE_DIRNAME = ".asyncjsoc"
"""The directory under the output directory that holds asyncjsoc's own state."""


def output_lock_path(out_dir: Path) -> Path:
    """The lock file of an output directory: a pull holds it exclusively while it writes
    there (it is its default state database's lock), ``extract`` shared."""
    return out_dir / STATE_DIRNAME / "state.sqlite.lock"

PART_SUFFIX = ".part"
"""Suffix of a file that is still being downloaded (its resume sidecar, where one is needed,
adds ``.meta``)."""

SIDECAR_SUFFIX = PART_SUFFIX + ".meta"
"""Suffix of a part file's resume sidecar (its ETag, Last-Modified and size), written only
where the file system takes no extended attributes (see :mod:`asyncjsoc._resume`)."""

_MAX_COMPONENT_BYTES = 255
_MAX_FILE_NAME_BYTES = _MAX_COMPONENT_BYTES - len(SIDECAR_SUFFIX)
"""A file name must leave room for its part file's sidecar suffix (NAME_MAX is 255)."""
_DRIVE = re.compile(r"^[A-Za-z]:")
# C0 controls, DEL and C1 controls: never part of a sane file name, and dangerous on terminals.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Names made only of these, each component starting with a letter, digit or underscore, are
# safe as they are (no empty, ".", ".." or hidden component, nothing to normalize).
_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+\-]*(?:/[A-Za-z0-9_][A-Za-z0-9_.+\-]*)*")
_HINT = "the server sent a file name asyncjsoc will not write; report it if it looks legitimate"


def _refuse(name: str, why: str) -> UnsafePathError:
    """The error for a refused name."""
    return UnsafePathError(f"refusing file name {name!r}: {why}", hint=_HINT)


def safe_relpath(name: str) -> str:
    """Normalize a server-sent file name into a safe relative POSIX path.

    Empty and ``.`` components are dropped (``a//./b`` becomes ``a/b``). Everything that could
    land outside the output directory, or collide with asyncjsoc's own files, is refused.

    Parameters
    ----------
    name
        The name as the server sent it.

    Returns
    -------
    str
        A relative path with ``/`` separators, no ``.``/``..`` components and no empty ones.

    Raises
    ------
    UnsafePathError
        For an empty or ``.``-only name, an absolute path, a drive letter, a backslash, a NUL
        or other control character, a ``..`` component, a component longer than 255 bytes
        (a file name longer than 245, leaving room for the ``.part.meta`` suffix),
        a name under the state directory ``.asyncjsoc``, or a name ending in ``.part`` or
        ``.part.meta`` (the downloader's temporary files).
    """
    if (len(name) <= _MAX_FILE_NAME_BYTES and _PLAIN.fullmatch(name)
            and not name.endswith((PART_SUFFIX, SIDECAR_SUFFIX))):
        return name  # the common case, which _checked_relpath would return unchanged
    return _checked_relpath(name)


def _checked_relpath(name: str) -> str:
    """:func:`safe_relpath`, every check spelled out."""
    if not name:
        raise _refuse(name, "empty name")
    if _CONTROL.search(name):
        raise _refuse(name, "control character in name")
    if "\\" in name:
        raise _refuse(name, "backslash in name")
    if name.startswith("/"):
        raise _refuse(name, "absolute path")
    if _DRIVE.match(name):
        raise _refuse(name, "drive letter")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts:
        raise _refuse(name, "no file name left after normalization")
    for part in parts:
        if part == "..":
            raise _refuse(name, "'..' component")
        try:
            encoded = part.encode("utf-8")
        except UnicodeEncodeError:
            raise _refuse(name, "not encodable as UTF-8") from None
        if len(encoded) > _MAX_COMPONENT_BYTES:
            raise _refuse(name, "component longer than 255 bytes")
    if parts[0] == STATE_DIRNAME:
        raise _refuse(name, f"inside asyncjsoc's state directory {STATE_DIRNAME}")
    last = parts[-1]
    if len(last.encode("utf-8")) > _MAX_FILE_NAME_BYTES:
        raise _refuse(name, f"file name longer than {_MAX_FILE_NAME_BYTES} bytes (no room "
                            f"for the {SIDECAR_SUFFIX!r} suffix of its temporary files)")
    if last.endswith((PART_SUFFIX, SIDECAR_SUFFIX)):
        raise _refuse(name, "collides with asyncjsoc's temporary files")
    return str(PurePosixPath(*parts))


def resolve_inside(out_dir: Path, relpath: str) -> Path:
    """Join ``relpath`` to ``out_dir`` and prove the result stays inside it.

    The parent directory is resolved (following symlinks that already exist); it must be
    ``out_dir`` or below it. If the final name already exists as a symlink, its target must be
    inside ``out_dir`` too. The returned path keeps the final component unresolved, so an
    atomic rename onto it replaces that entry and nothing else.

    This touches the filesystem (``resolve``); call it from a worker thread in async code.

    Parameters
    ----------
    out_dir
        The output directory (it need not exist yet).
    relpath
        A server-sent name; it is passed through :func:`safe_relpath` first.

    Returns
    -------
    Path
        An absolute path inside the resolved ``out_dir``.

    Raises
    ------
    UnsafePathError
        If the name is unsafe, resolves outside ``out_dir``, or cannot be made there (too
        long for the file system, a file where one of its directories must go).
    """
    clean = safe_relpath(relpath)
    base = out_dir.resolve()
    joined = base.joinpath(*clean.split("/"))
    try:
        parent = joined.parent.resolve()
        if not parent.is_relative_to(base):
            raise _refuse(relpath, f"resolves outside {base} (through a symlink)")
        final = parent / joined.name
        if final.is_symlink() and not final.resolve().is_relative_to(base):
            raise _refuse(relpath, f"is a symlink pointing outside {base}")
    except OSError as exc:
        if exc.errno not in _NAME_ERRNOS:
            raise
        raise _refuse(relpath, f"cannot be made here ({exc.strerror})") from None
    return final


_NAME_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR})
"""Errors looking at a path that belong to the name (too long for the file system, a symlink
loop, a file where a directory must go), not to the disk."""


class Placer:
    """:func:`resolve_inside` for many names under one output directory, cheaply.

    Each distinct parent directory is resolved, checked, created, listed and remembered once.
    A name that was not in its directory's listing and has not been placed before is known to
    be absent, with its ``.part`` file and sidecar: placing it costs no system call. Any other
    name costs one ``lstat`` (of the final name, whose symlink target, if it is one, must be
    inside the output directory too). Directories with more than :data:`LISTING_LIMIT` entries
    are not listed, and after :data:`PLACED_LIMIT` names every name gets its ``lstat``, which
    bounds the memory this takes.

    This assumes that nothing but asyncjsoc changes the directories under the output
    directory during a pull (asyncjsoc itself only creates directories and regular files
    there, and a pull holds the directory's lock). Should something break the assumption, a
    name created behind the placer's back is taken as absent: the download then replaces that
    directory entry with an atomic rename (a symlink is replaced, never followed), and the
    downloader opens its temporary files with ``O_NOFOLLOW``.

    This touches the filesystem; in async code call it from a worker thread (or inline
    where a few microseconds of blocking are acceptable).
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self._base: Path | None = None
        self._parents: dict[str, Path] = {}
        self._listings: dict[str, frozenset[str] | None] = {}
        self._placed: set[str] = set()

    def place(self, relpath: str) -> tuple[Path, os.stat_result | None]:
        """The final path of ``relpath`` (parent directories created) and its ``lstat``.

        Returns
        -------
        tuple
            The path, as :func:`resolve_inside` returns it, and the ``lstat`` of whatever
            is already there (``None`` if nothing is).

        Raises
        ------
        UnsafePathError
            As :func:`resolve_inside`.
        """
        final, st, _ = self.place_fresh(relpath)
        return final, st

    def place_fresh(self, relpath: str) -> tuple[Path, os.stat_result | None, bool]:
        """:meth:`place`, and whether the name is known fresh.

        Returns
        -------
        tuple
            The path, its ``lstat`` (``None`` if nothing is there) and ``True`` when none
            of the name, its ``.part`` file and that file's ``.part.meta`` sidecar existed
            when its directory was listed and the name was not placed since: then nothing
            is there, no part file to resume and no stale sidecar to delete.

        Raises
        ------
        UnsafePathError
            As :func:`resolve_inside`.
        """
        clean = safe_relpath(relpath)
        head, _, name = clean.rpartition("/")
        parent = self._parents.get(head)
        if parent is None:
            resolve_inside(self.out_dir, clean).parent.mkdir(parents=True, exist_ok=True)
            # Resolved again now that the directories exist.
            parent = self._parents[head] = resolve_inside(self.out_dir, clean).parent
            self._listings[head] = _list_names(parent)
        if self._base is None:
            self._base = self.out_dir.resolve()
        final = parent / name
        listing = self._listings[head]
        if listing is not None and len(self._placed) < PLACED_LIMIT:
            placed_before = clean in self._placed
            self._placed.add(clean)
            if (not placed_before and name not in listing and name + PART_SUFFIX not in listing
                    and name + SIDECAR_SUFFIX not in listing):
                return final, None, True
        try:
            st = os.lstat(final)
        except FileNotFoundError:
            return final, None, False
        if stat.S_ISLNK(st.st_mode) and not final.resolve().is_relative_to(self._base):
            raise _refuse(relpath, f"is a symlink pointing outside {self._base}")
        return final, st, False


LISTING_LIMIT = 10_000
"""A directory with more entries than this is not listed by :class:`Placer`.

The listing may run on the event loop (the downloader's inline file calls), so it is kept to
a few milliseconds; a fresh pull lists its directories while they are still nearly empty."""

PLACED_LIMIT = 200_000
"""After this many names, :class:`Placer` stops remembering them (and ``lstat`` s each)."""


def _list_names(directory: Path) -> frozenset[str] | None:
    """The names in ``directory``; ``None`` if it has more than :data:`LISTING_LIMIT`."""
    names: set[str] = set()
    with os.scandir(directory) as entries:
        for entry in entries:
            names.add(entry.name)
            if len(names) > LISTING_LIMIT:
                return None
    return frozenset(names)
