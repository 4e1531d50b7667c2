"""Fuzzing the input parsers: each input parses or raises an InvalidInputError, nothing else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncjsoc._jobfile import parse_job_lines
from asyncjsoc._query import Query
from asyncjsoc._recordset import parse_recordset
from asyncjsoc._times import parse_duration, parse_time, parse_time_parts
from asyncjsoc.exceptions import InvalidInputError, JobFileError, RecordSetSyntaxError

# Characters of the record-set, time and job-file grammars, plus some that have no place there.
GRAMMAR = "hmi.sharp_cea_720s aia.lev1 []{}?,-/@$^#:<>=!&|*+_TAIUTCZ0123456789 dhms\t\n'\"\\\x00é"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

grammar_text = st.text(alphabet=GRAMMAR, max_size=60)
any_text = st.text(max_size=40)


def _pieces() -> st.SearchStrategy[str]:
    """Record sets glued from valid-looking pieces, so the fuzzer reaches deep states."""
    parts = st.sampled_from([
        "hmi.sharp_cea_720s", "hmi.M_45s", "aia.lev1_euv_12s", "[7302]", "[7300-7310]", "[]",
        "[2018.09.06_00:00:00_TAI]", "[2018.09.06/1d]", "[2010-07-30T13:30:00Z/1m@12s]",
        "[$]", "[^]", "[:#123]", "[? LON_MIN > -70 ?]", "[! 1 = 1 !]", "{Br,Bp}", "{}", "[193]",
        "[2018.09.06_00:00_TAI-2018.09.05]", ",", "[", "]", "{", "@96m", "/0s", "-", "?",
    ])  # fmt: skip
    return st.lists(parts, max_size=8).map("".join)


def attempt(fn: Callable[[], Any]) -> tuple[Any, InvalidInputError | None]:
    """``(result, None)`` or ``(None, error)``; any other exception escapes and fails the test."""
    try:
        return fn(), None
    except InvalidInputError as exc:
        return None, exc


def outcome(fn: Callable[[], Any]) -> None:
    """``fn`` returns or raises an InvalidInputError with a one-line message."""
    _, error = attempt(fn)
    if error is not None:
        assert error.args[0]
        assert "\n" not in error.args[0]


@FUZZ
@given(st.one_of(grammar_text, _pieces(), any_text))
def test_recordset_parser(text: str) -> None:
    """parse_recordset parses, or raises RecordSetSyntaxError with a position in the text."""
    parsed, error = attempt(lambda: parse_recordset(text))
    if error is not None:
        assert isinstance(error, RecordSetSyntaxError)
        assert 0 <= error.position <= len(text)
        return
    # A parsed record set renders to text that parses to the same thing.
    assert parse_recordset(str(parsed)) == parsed


@FUZZ
@given(st.one_of(grammar_text, _pieces(), any_text))
def test_query_from_recordset(text: str) -> None:
    """Query.from_recordset parses or raises InvalidInputError."""
    outcome(lambda: Query.from_recordset(text))


@FUZZ
@given(st.one_of(grammar_text, any_text,
                 st.from_regex(r"\d{1,5}[.-]\d{1,2}[.-]\d{1,2}([_T ]\d{1,2}(:\d{1,2}){0,2})?"
                               r"(_TAI|_UTC|Z)?", fullmatch=True)))  # fmt: skip
def test_time_parsers(text: str) -> None:
    """parse_time_parts and parse_time accept or raise InvalidInputError."""
    outcome(lambda: parse_time_parts(text))
    outcome(lambda: parse_time(text))


@FUZZ
@given(st.one_of(grammar_text, any_text, st.from_regex(r"-?\d{0,12}(\.\d*)?[smhd]?",
                                                       fullmatch=True)))  # fmt: skip
def test_duration_parser(text: str) -> None:
    """parse_duration accepts a positive finite duration or raises InvalidInputError."""
    value, error = attempt(lambda: parse_duration(text))
    if error is not None:
        return
    assert value > 0
    assert value != float("inf")


@FUZZ
@given(st.lists(st.one_of(grammar_text, any_text,
                          st.from_regex(r"\d{1,6}\.\d{8}_\d{6}_TAI", fullmatch=True)),
                max_size=6))  # fmt: skip
def test_job_lines(lines: list[str]) -> None:
    """A job list parses, or JobFileError names the line number of a bad line."""
    _, error = attempt(lambda: parse_job_lines(lines, source="jobs.txt"))
    if isinstance(error, JobFileError):
        assert 1 <= error.line_number <= max(1, len("\n".join(lines).splitlines()), len(lines))
        assert "jobs.txt" in str(error)


@FUZZ
@given(series=st.sampled_from(["hmi.sharp_cea_720s", "hmi.M_45s", "x", "", "a b", "hmi.m_45s["]),
       start=grammar_text, end=grammar_text,
       cadence=st.one_of(st.none(), grammar_text, st.floats(allow_nan=True)))  # fmt: skip
def test_query_build(series: str, start: str, end: str, cadence: str | float | None) -> None:
    """Query.build from arbitrary option values builds or raises InvalidInputError."""
    outcome(lambda: Query.build(series, start=start, end=end, cadence=cadence))
