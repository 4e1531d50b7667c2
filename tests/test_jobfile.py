"""Tests for job-list parsing (asyncjsoc._jobfile)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncjsoc._jobfile import format_job_line, parse_job_lines, read_job_file
from asyncjsoc._times import TimeParts
from asyncjsoc.exceptions import InvalidInputError, JobFileError


def test_groups_sorts_and_dedupes() -> None:
    """Lines group by HARP, times sort, duplicates and comments vanish."""
    jobs = parse_job_lines([
        "# header", "", "7020.20170524_223600_TAI", "7020.20170524_222400_TAI\n",
        "  7019.20170524_222400_TAI  # trailing comment", "7020.20170524_222400_TAI",
    ])
    assert list(jobs) == [7019, 7020]
    assert [str(t) for t in jobs[7020]] == ["2017.05.24_22:24:00_TAI", "2017.05.24_22:36:00_TAI"]


def test_utc_times_converted_to_tai() -> None:
    """A UTC-labelled line is read with leap seconds and kept as TAI."""
    jobs = parse_job_lines(["7020.20170524_222323_UTC", "7020.2017.05.24_22:24:00_TAI"])
    assert [str(t) for t in jobs[7020]] == ["2017.05.24_22:24:00_TAI"]


@pytest.mark.parametrize(
    ("lines", "number"),
    [
        (["7020.20170524_222400_TAI", "7020.2017052_222400_TAI"], 2),
        (["", "# c", "x7020.20170524_222400_TAI"], 3),
        (["7020.20171324_222400_TAI"], 1),
        (["7020.20170524_222400_TAI", "7020"], 2),
        (["7020.20170524_222400_TAI", "7020.20170524_222400_TAI junk"], 2),
    ],
)
def test_bad_line_numbered(lines: list[str], number: int) -> None:
    """A bad line raises JobFileError with its 1-based number and text."""
    with pytest.raises(JobFileError) as info:
        parse_job_lines(lines, source="jobs.txt")
    assert info.value.line_number == number
    assert info.value.line == lines[number - 1]
    assert str(info.value).startswith(f"jobs.txt:{number}:")


def test_empty_list_refused() -> None:
    """A list with only comments is an error, not an empty download."""
    with pytest.raises(InvalidInputError):
        parse_job_lines(["# nothing", ""])


def test_read_file(tmp_path: Path) -> None:
    """Files are read with their path in errors; missing files are our error."""
    path = tmp_path / "jobs.txt"
    path.write_text("7020.20170524_222400_TAI\r\n7021.bad\n")
    with pytest.raises(JobFileError) as info:
        read_job_file(path)
    assert (info.value.path, info.value.line_number) == (str(path), 2)
    with pytest.raises(InvalidInputError):
        read_job_file(tmp_path / "missing.txt")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 20000),
                          st.datetimes().map(lambda d: d.replace(microsecond=0))),
                min_size=1, max_size=30))
def test_format_parse_round_trip(records: list[tuple[int, object]]) -> None:
    """format_job_line writes lines that parse back to the same records."""
    parts = [(h, TimeParts.from_datetime(d)) for h, d in records]  # type: ignore[arg-type]
    jobs = parse_job_lines([format_job_line(h, t) for h, t in parts])
    assert {(h, t) for h, ts in jobs.items() for t in ts} == set(parts)


def test_a_byte_order_mark_is_not_part_of_line_one(tmp_path: Path) -> None:
    """Some editors start UTF-8 files with a BOM; the first job line still parses."""
    path = tmp_path / "jobs.txt"
    path.write_bytes("\ufeff7020.20170524_222400_TAI\n".encode())
    assert list(read_job_file(path)) == [7020]


@pytest.mark.parametrize(("data", "number"), [
    (b"7020.20170524_222400_TAI\r\n7021.2017\xff0524_222400_TAI\r\n", 2),
    (b"\xef\xbb\xbf# Latin-1 comment: caf\xe9\n7020.20170524_222400_TAI\n", 1),
])
def test_a_byte_that_is_not_utf8_names_its_line(tmp_path: Path, data: bytes,
                                                 number: int) -> None:
    """A file that is not UTF-8 text is refused naming the line and the byte, like any bad
    line, not with the codec's offset into the file."""
    path = tmp_path / "jobs.txt"
    path.write_bytes(data)
    with pytest.raises(JobFileError) as info:
        read_job_file(path)
    assert info.value.line_number == number
    assert "not text (UTF-8)" in info.value.message
    assert "\ufffd" in info.value.line
    assert "\r" not in info.value.line


@pytest.mark.parametrize(("data", "number", "line"), [
    ("# flare list\u2028from paper\n7020.20170524_222400_TAI\nbad\n", 3, "bad"),
    ("7020.20170524_222400_TAI\n\x0c\nbad\n", 3, "bad"),
    ("7020.20170524_222400_TAI\r\n# a\x1ccomment\r\nbad\r\n", 3, "bad"),
    ("7020.20170524_222400_TAI\rbad\r", 2, "bad"),
])
def test_lines_end_only_at_newlines(tmp_path: Path, data: str, number: int,
                                    line: str) -> None:
    """A form feed, U+2028 or the like inside a line does not cut it in two: a comment
    stays whole, and errors name the line as an editor counts it (\\n, \\r\\n or \\r)."""
    path = tmp_path / "jobs.txt"
    path.write_text(data, newline="")
    with pytest.raises(JobFileError) as info:
        read_job_file(path)
    assert info.value.line_number == number
    assert info.value.line == line
