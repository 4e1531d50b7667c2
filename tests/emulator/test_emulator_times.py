"""Emulator time arithmetic: DRMS time strings, TAI/UTC with leap seconds, durations."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncjsoc.emulator._times import (
    TimeSyntaxError,
    format_iso_utc,
    format_tai,
    parse_duration,
    parse_time,
)

# 1990-01-01 .. 2150-01-01 in TAI seconds from 1993-01-01 (generous on both sides).
_T = st.integers(min_value=-95_000_000, max_value=4_450_000_000)


@given(t=_T, cs=st.integers(0, 99))
@settings(max_examples=200)
def test_tai_format_parse_round_trip(t: int, cs: int) -> None:
    """HMI-style TAI strings parse back to the same instant (centisecond precision)."""
    value = t + cs / 100
    text = format_tai(value, 2)
    assert abs(parse_time(text) - value) < 1e-6
    assert format_tai(parse_time(text), 2) == text


@given(t=_T)
@settings(max_examples=200)
def test_iso_utc_format_parse_round_trip(t: int) -> None:
    """ISO UTC strings (including :60 leap seconds) round-trip exactly."""
    text = format_iso_utc(t)
    assert text.endswith("Z")
    assert parse_time(text) == t


def test_known_values() -> None:
    """Values from real JSOC traffic: AIA T_REC 13:30:02Z is 13:30:36 TAI in 2010."""
    assert format_tai(parse_time("2010-07-30T13:30:02Z")) == "2010.07.30_13:30:36_TAI"
    assert format_iso_utc(parse_time("2014.01.01_00:00:36_TAI")) == "2014-01-01T00:00:01Z"
    assert parse_time("1993.01.01_00:00:00_TAI") == 0
    # Partial times and zones; no zone means UTC.
    assert parse_time("2010.07.25_13_TAI") == parse_time("2010.07.25_13:00:00_TAI")
    assert parse_time("2010.07.25") == parse_time("2010-07-25T00:00:00Z")
    assert parse_time("2010.07.25_00:00:00_UTC") == parse_time("2010.07.25_00:00:34_TAI")
    assert parse_time("-4712.01.01_11:59:28Z") < parse_time("1900.01.01_TAI")


def test_leap_second_formatting() -> None:
    """The 2016-12-31 leap second shows as :60 and is one real second long."""
    leap = parse_time("2016-12-31T23:59:60Z")
    assert parse_time("2017-01-01T00:00:00Z") - leap == 1
    assert leap - parse_time("2016-12-31T23:59:59Z") == 1
    assert format_iso_utc(leap) == "2016-12-31T23:59:60Z"
    assert format_iso_utc(leap + 0.5, 1) == "2016-12-31T23:59:60.5Z"


@given(day=st.integers(min_value=0, max_value=11_600))
@settings(max_examples=60, deadline=None)
def test_leap_table_matches_astropy(day: int) -> None:
    """TAI-UTC agrees with astropy/ERFA from 1993 to 2024."""
    from astropy.time import Time

    t_utc = format_iso_utc(parse_time("1993-01-01T00:00:00Z") + day * 86400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tai = Time(t_utc.rstrip("Z"), format="isot", scale="utc").tai
    got = format_tai(parse_time(t_utc), 0)
    want = tai.strftime("%Y.%m.%d_%H:%M:%S") + "_TAI"
    assert got == want


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("1d", 86400), ("12h", 43200), ("720s", 720), ("90.0s", 90), ("1w", 604800),
     ("45", 45)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    """Durations with s/m/h/d/w units (bare numbers are seconds)."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "yesterday", "2010.13.01", "2010-07-30T13:30:02Q"])
def test_bad_times(text: str) -> None:
    """Garbage times are rejected."""
    with pytest.raises(TimeSyntaxError):
        parse_time(text)


@pytest.mark.parametrize("text", ["", "1x", "m", "-5s"])
def test_bad_durations(text: str) -> None:
    """Garbage durations are rejected."""
    with pytest.raises(TimeSyntaxError):
        parse_duration(text)
