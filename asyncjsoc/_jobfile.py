"""Job lists: one record per line as ``HARPNUM.T_REC:A`` (``7020.20170524_222400_TAI``).

Blank lines and ``#`` comments (whole-line or trailing) are allowed. Every other line must be
valid; a bad one raises :class:`~asyncjsoc.exceptions.JobFileError` with its 1-based line
number (lines are never silently dropped). Duplicates are removed. Times are normalised to
TAI (``_UTC``/``Z`` times are converted with leap seconds).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from os import PathLike

from asyncjsoc._times import TimeParts, format_trec, match_time, to_tai_parts
from asyncjsoc.exceptions import InvalidInputError, JobFileError

__all__ = ["JobList", "format_job_line", "parse_job_lines", "read_job_file"]

JobList = dict[int, tuple[TimeParts, ...]]
"""HARPNUM → its TAI times, sorted; HARPs in increasing order."""

_LINE = re.compile(r"(\d+)\.")
_HINT = "each line is HARPNUM.T_REC:A, e.g. 7020.20170524_222400_TAI ('#' starts a comment)"


def parse_job_lines(lines: Iterable[str], *, source: str = "<jobs>") -> JobList:
    """Parse job lines into HARP groups of TAI times.

    Parameters
    ----------
    lines
        The lines (with or without line endings).
    source
        The name used in error messages (a path, or ``<jobs>``).

    Returns
    -------
    JobList
        HARPNUM → sorted unique TAI :class:`~asyncjsoc._times.TimeParts`.

    Raises
    ------
    JobFileError
        For the first bad line, with its 1-based number.
    InvalidInputError
        When the list holds no records at all.
    """
    groups: dict[int, set[TimeParts]] = {}
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _LINE.match(line)
        if m is None:
            raise JobFileError("expected HARPNUM.T_REC", path=source, line_number=number,
                               line=raw.rstrip("\r\n"), hint=_HINT)
        try:
            found = match_time(line, m.end())
            if found is None or found[1] != len(line):
                raise JobFileError("bad T_REC", path=source, line_number=number,
                                   line=raw.rstrip("\r\n"), hint=_HINT)
            parts = to_tai_parts(found[0])
        except JobFileError:
            raise
        except InvalidInputError as exc:
            raise JobFileError(f"bad T_REC ({exc.message})", path=source, line_number=number,
                               line=raw.rstrip("\r\n"), hint=_HINT) from None
        groups.setdefault(int(m.group(1)), set()).add(parts)
    if not groups:
        raise InvalidInputError(f"{source}: the job list holds no records", hint=_HINT)
    return {harp: tuple(sorted(groups[harp])) for harp in sorted(groups)}


def read_job_file(path: str | PathLike[str]) -> JobList:
    """Read and parse a job file (see :func:`parse_job_lines`); the file is read at once."""
    name = str(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise InvalidInputError(f"cannot read job file {name}: {exc.strerror or exc}",
                                hint="check the path given to --jobs") from None
    try:
        text = data.decode("utf-8-sig")  # -sig: a BOM some editors add
    except UnicodeDecodeError as exc:
        number = data.count(b"\n", 0, exc.start) + 1
        raise JobFileError(f"byte 0x{data[exc.start]:02x} is not text (UTF-8)", path=name,
                           line_number=number, line=_printable_line(data, exc.start),
                           hint=_HINT) from None
    # Lines end at \n (\r\n, or a lone \r): not at the form feeds, U+2028 and the like that
    # str.splitlines also breaks at, which would cut a comment in two and shift the
    # line numbers of errors.
    return parse_job_lines(_LINE_ENDS.split(text), source=name)


_LINE_ENDS = re.compile(r"\r\n|\r|\n")


def _printable_line(data: bytes, at: int) -> str:
    """The line of ``data`` holding byte ``at``, undecodable bytes shown as U+FFFD."""
    start = data.rfind(b"\n", 0, at) + 1
    end = data.find(b"\n", at)
    line = data[start:] if end < 0 else data[start:end]
    return line.rstrip(b"\r").decode("utf-8", errors="replace")


def format_job_line(harpnum: int, t_rec: TimeParts) -> str:
    """One job line, ``7020.20170524_222400_TAI``."""
    return f"{harpnum}.{format_trec(t_rec, compact=True)}"
