"""Tests for JSOC time strings and durations (asyncjsoc._times)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone

import astropy.units as u
import pytest
from astropy.time import Time, TimeDelta
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncjsoc._recordset import parse_recordset
from asyncjsoc._times import (
    TimeParts,
    fast_tai_datetime,
    format_duration,
    format_trec,
    match_time,
    parse_duration,
    parse_time,
    parse_time_parts,
    to_tai_parts,
)
from asyncjsoc.exceptions import InvalidInputError


@pytest.mark.parametrize(
    ("text", "tai"),
    [
        ("2010.07.25_13:30:00_TAI", "2010.07.25_13:30:00_TAI"),
        ("2010.07.25_13:30:00_UTC", "2010.07.25_13:30:34_TAI"),
        ("2010.07.25_13:30:00", "2010.07.25_13:30:34_TAI"),
        ("2010.07.25_13", "2010.07.25_13:00:34_TAI"),
        ("2010.07.25", "2010.07.25_00:00:34_TAI"),
        ("2010.07.25_13:30:00Z", "2010.07.25_13:30:34_TAI"),
        ("2010-07-25T13:30:00Z", "2010.07.25_13:30:34_TAI"),
        ("2010-07-25T13Z", "2010.07.25_13:00:34_TAI"),
        ("20170524_222400_TAI", "2017.05.24_22:24:00_TAI"),
        ("2010-07-30T133009Z", "2010.07.30_13:30:43_TAI"),
        ("1995.06.01_00:00:00_UTC", "1995.06.01_00:00:29_TAI"),
        ("2016.12.31_23:59:60_UTC", "2017.01.01_00:00:36_TAI"),
        ("2150.01.01_00:00:00_TAI", "2150.01.01_00:00:00_TAI"),
    ],
)
def test_parse_and_format_tai(text: str, tai: str) -> None:
    """Every accepted form reads as the right TAI instant (leap seconds included)."""
    assert format_trec(parse_time(text)) == tai


def test_no_zone_means_utc_and_tai_scale_kept() -> None:
    """No suffix is UTC; _TAI strings parse in the TAI scale."""
    assert parse_time("2010.07.25_13:30:00").scale == "utc"
    assert parse_time("2010.07.25_13:30:00_TAI").scale == "tai"
    assert parse_time_parts("2010.07.25_13").zone == "UTC"


def test_formats_exactly() -> None:
    """HMI, compact :A, UTC and ISO layouts match what the JSOC writes."""
    t = parse_time("2017.05.24_22:24:00_TAI")
    assert format_trec(t) == "2017.05.24_22:24:00_TAI"
    assert format_trec(t, compact=True) == "20170524_222400_TAI"
    assert format_trec(t, style="utc") == "2017.05.24_22:23:23_UTC"
    a = parse_time("2010-07-30T13:30:09Z")
    assert format_trec(a, style="iso") == "2010-07-30T13:30:09Z"
    assert format_trec(a, style="iso", compact=True) == "2010-07-30T133009Z"


def test_leap_second_written_as_60() -> None:
    """The inserted second of 2016-12-31 is written 23:59:60 in UTC."""
    t = parse_time("2017.01.01_00:00:36_TAI")
    assert format_trec(t, style="iso") == "2016-12-31T23:59:60Z"
    assert format_trec(t - 1 * u.s, style="utc") == "2016.12.31_23:59:59_UTC"


def test_fraction_kept() -> None:
    """Fractional seconds survive, also in the compact form."""
    t = parse_time("2150.06.01_00:00:00.25_TAI")
    assert format_trec(t) == "2150.06.01_00:00:00.25_TAI"
    assert format_trec(t, compact=True) == "21500601_000000.25_TAI"
    assert format_trec(parse_time("21500601_000000.25_TAI")) == "2150.06.01_00:00:00.25_TAI"


def test_datetime_and_time_inputs() -> None:
    """Naive datetimes are UTC, aware ones converted; Time passes through."""
    naive = datetime(2010, 7, 25, 13, 30)
    aware = datetime(2010, 7, 25, 15, 30, tzinfo=timezone(timedelta(hours=2)))
    assert format_trec(naive) == format_trec(aware) == "2010.07.25_13:30:34_TAI"
    assert format_trec(datetime(2010, 7, 25, 13, 30, tzinfo=UTC)) == "2010.07.25_13:30:34_TAI"
    t = Time("2010-07-25T13:30:00", scale="tai")
    assert parse_time(t) is t


@pytest.mark.parametrize(
    "bad",
    ["", "2010", "2010.13.01", "2010.02.30", "2010.01.01_24:00", "2010.01.01_10:61",
     "2010.06.30_12:00:60_UTC", "2010.12.31_23:59:60_TAI", "yesterday", "2010-07-25T1",
     "2010.07.25_13:30:00_XYZ", "0000.01.01"],
)
def test_bad_times_raise_our_error(bad: str) -> None:
    """Malformed times raise InvalidInputError, never astropy's errors."""
    with pytest.raises(InvalidInputError):
        parse_time(bad)


@pytest.mark.parametrize(
    "text", ["2018.06.30_23:59:60_UTC", "2018-06-30T23:59:60Z", "2040-12-31T23:59:60Z",
             "1960-12-31T23:59:60Z", "9999-12-31T23:59:60Z"])
def test_second_60_only_on_leap_second_days(text: str) -> None:
    """23:59:60 UTC on a day without a leap second (or past the table) is refused in words,
    not read as the next day's first second with an ERFA warning; real ones still read."""
    with pytest.raises(InvalidInputError, match="no leap second") as caught:
        to_tai_parts(text)
    assert "23:59:59" in (caught.value.hint or "")
    with pytest.raises(InvalidInputError, match="no leap second"):
        parse_recordset(f"hmi.M_45s[{text}]")
    assert str(to_tai_parts("1972-06-30T23:59:60Z")) == "1972.07.01_00:00:10_TAI"
    assert str(to_tai_parts("2012.06.30_23:59:60.5_UTC")) == "2012.07.01_00:00:34.5_TAI"


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime(1972, 1, 1), max_value=datetime(2035, 12, 31)),
       st.sampled_from(["hmi", "iso"]))
def test_tai_datetime_agrees_with_astropy(when: datetime, style: str) -> None:
    """The ERFA-table conversion planning uses gives astropy's TAI, to the microsecond."""
    text = str(TimeParts.from_datetime(when, zone="UTC", style=style))  # type: ignore[arg-type]
    assert fast_tai_datetime(text) == to_tai_parts(text).to_datetime()


@pytest.mark.parametrize(("text", "tai"), [
    ("2016-12-31T23:59:60Z", "2017.01.01_00:00:36_TAI"),
    ("2016.12.31_23:59:60.25_UTC", "2017.01.01_00:00:36.25_TAI"),
    ("2017-01-01T00:00:00Z", "2017.01.01_00:00:37_TAI"),
    ("2015.06.30_23:59:59_UTC", "2015.07.01_00:00:34_TAI"),
    ("1965-01-01T00:00:00Z", str(to_tai_parts("1965-01-01T00:00:00Z"))),
])
def test_fast_tai_datetime_across_leap_seconds(text: str, tai: str) -> None:
    """Leap seconds, the seconds around them, and a pre-1972 time (astropy's path: the
    fast reading declines it)."""
    assert to_tai_parts(text).to_datetime() == to_tai_parts(tai).to_datetime()
    assert fast_tai_datetime(text) in (None, to_tai_parts(tai).to_datetime())
    assert (fast_tai_datetime(text) is None) == text.startswith("1965")


def test_bad_time_types() -> None:
    """Non-time inputs are refused with our error."""
    with pytest.raises(InvalidInputError):
        parse_time(12)
    with pytest.raises(InvalidInputError):
        parse_time(Time(["2010-01-01", "2010-01-02"]))


def test_match_time_stops_at_range_dash() -> None:
    """Inside a record set an ISO time ends before the range '-'."""
    text = "2010-07-25T13:30:00Z-2010-07-26T00:00:00Z"
    found = match_time(text)
    assert found is not None
    assert found[1] == 20
    assert str(found[0]) == "2010-07-25T13:30:00Z"


_moments = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2199, 12, 31))


@settings(max_examples=150, deadline=None)
@given(moment=_moments, style=st.sampled_from(["tai", "utc", "iso"]), compact=st.booleans())
def test_format_parse_round_trip(moment: datetime, style: str, compact: bool) -> None:
    """format → parse → format is exact for 1990s to 2190s, every layout."""
    t = parse_time(format_trec(TimeParts.from_datetime(moment, zone="TAI")))
    text = format_trec(t, style=style, compact=compact)  # type: ignore[arg-type]
    back = parse_time(text)
    assert format_trec(back) == format_trec(t)
    assert format_trec(back, style=style, compact=compact) == text  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(moment=_moments)
def test_tai_fast_path_agrees_with_astropy(moment: datetime) -> None:
    """The string-only TAI reading equals astropy's reading."""
    parts = TimeParts.from_datetime(moment, zone="TAI")
    assert to_tai_parts(str(parts)) == parts
    assert format_trec(parse_time(str(parts))) == str(parts)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("96m", 5760.0), ("12s", 12.0), ("1d", 86400.0), ("6h", 21600.0), ("720s", 720.0),
     ("90.0s", 90.0), ("45", 45.0), (720, 720.0), (0.5, 0.5), (96 * u.min, 5760.0),
     (timedelta(hours=1), 3600.0), (" 12s ", 12.0), (TimeDelta(90, format="sec"), 90.0)],
)
def test_parse_duration(value: object, seconds: float) -> None:
    """Strings with units, numbers, Quantities and timedeltas all give seconds."""
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("bad", ["", "3x", "-5m", "0s", "m", "1 day", True, None, 0, -1.0,
                                 float("nan"), 5 * u.m, "1e30s", [1]])
def test_bad_duration(bad: object) -> None:
    """Bad cadences name the value and list the accepted forms."""
    with pytest.raises(InvalidInputError) as info:
        parse_duration(bad)
    assert repr(bad) in str(info.value)
    assert info.value.hint is not None
    assert "96m" in info.value.hint


@given(st.integers(min_value=1, max_value=10**10) | st.floats(min_value=1e-3, max_value=1e10))
def test_duration_round_trip(seconds: float) -> None:
    """format_duration writes what parse_duration reads back to the same float."""
    assert parse_duration(format_duration(seconds)) == float(seconds)


def test_format_duration_units() -> None:
    """The largest exact unit is used."""
    assert [format_duration(x) for x in (86400, 5760, 720, 45, 0.5)] == \
        ["1d", "96m", "12m", "45s", "0.5s"]


def test_importing_the_package_leaves_astropy_time_unloaded() -> None:
    """astropy.time (a third of the command line's start-up) loads only when a time needs it."""
    code = ("import sys, asyncjsoc.cli, asyncjsoc._times as t\n"
            "assert 'astropy.time' not in sys.modules\n"
            "assert str(t.to_tai_parts('2010.07.25_13:30_TAI')) == '2010.07.25_13:30:00_TAI'\n"
            "assert 'astropy.time' not in sys.modules\n"
            "print(t.to_tai_parts('2010-07-25T13:30:00Z'))\n"
            "assert 'astropy.time' in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2010.07.25_13:30:34_TAI"  # TAI - UTC = 34 s in 2010


def test_a_utc_time_that_is_year_10000_in_tai_is_refused_in_words() -> None:
    """9999.12.31_23:59:59_UTC is 10000.01.01_00:00:36 in TAI, which DRMS cannot read: a
    clear error before anything is sent, not the server's 'invalid end time'."""
    from asyncjsoc._times import to_tai_parts
    from asyncjsoc.exceptions import InvalidInputError

    with pytest.raises(InvalidInputError, match=r"10000-01-01T00:00:36 in TAI is outside"):
        to_tai_parts("9999.12.31_23:59:59_UTC")
    assert str(to_tai_parts("9999.12.31_23:59:00_UTC")).startswith("9999.12.31_23:59:3")
