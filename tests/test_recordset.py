"""Tests for the client's record-set parser and renderer (asyncjsoc._recordset)."""

from __future__ import annotations

import re
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncjsoc._privacy import mask_emails
from asyncjsoc._recordset import (
    First,
    IntValue,
    Item,
    Last,
    NumberValue,
    Range,
    Recnums,
    RecordSet,
    Scalar,
    Select,
    Skip,
    Span,
    Subset,
    TimeValue,
    Where,
    WordValue,
    parse_items,
    parse_recordset,
)
from asyncjsoc._times import TimeParts
from asyncjsoc.exceptions import InvalidInputError, RecordSetSyntaxError


def tv(text: str) -> TimeValue:
    """A time value from its canonical text."""
    item = parse_items(text)[0]
    assert isinstance(item, TimeValue)
    return item


def test_sharp_example_typed() -> None:
    """A SHARP record set parses into typed filters and segments."""
    rs = parse_recordset("hmi.sharp_cea_720s[7302][2018.09.08_00:00:00_TAI-"
                         "2018.09.09_00:00:00_TAI@96m][? LON_MIN>-70 ?]{Bp,Bt,Br}")
    assert rs.series == "hmi.sharp_cea_720s"
    assert rs.segments == ("Bp", "Bt", "Br")
    assert rs.filters == (
        Select((IntValue(7302),)),
        Select((Range(tv("2018.09.08_00:00:00_TAI"), tv("2018.09.09_00:00:00_TAI"), 5760.0),)),
        Where("LON_MIN>-70"),
    )


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("hmi.M_45s[2010.05.01/1d]", "hmi.M_45s[2010.05.01_00:00:00_UTC/1d]"),
        ("hmi.M_45s[2010.05.01_TAI/30m@90.0s]", "hmi.M_45s[2010.05.01_00:00:00_TAI/30m@90s]"),
        ("aia.lev1_euv_12s[2010-07-30T13:30Z-2010-07-30T14Z][171, 193]",
         "aia.lev1_euv_12s[2010-07-30T13:30:00Z-2010-07-30T14:00:00Z][171,193]"),
        ("hmi.sharp_720s[7300-7310][]", "hmi.sharp_720s[7300-7310][]"),
        (" hmi.M_45s[$] ", "hmi.M_45s[$]"),
        ("hmi.M_45s[^][2]", "hmi.M_45s[^][2]"),
        ("hmi.M_45s[:#1-#5,#9]{magnetogram}", "hmi.M_45s[:#1-#5,#9]{magnetogram}"),
        ("hmi.M_45s[![QUALITY<0]!]", "hmi.M_45s[! [QUALITY<0] !]"),
        ("hmi.M_45s[]{}", "hmi.M_45s[]{}"),
        ("hmi.x[a_b][1.50][3E2]", "hmi.x[a_b][1.50][3E2]"),  # numbers go as written
        ("hmi.M_45s[20170524_222400_TAI]", "hmi.M_45s[2017.05.24_22:24:00_TAI]"),
        ("hmi.m[1], hmi.M[2]{a}", "hmi.m[1],hmi.M[2]{a}"),
    ],
)
def test_canonical_render(text: str, canonical: str) -> None:
    """Rendering normalises spacing, times and durations; it re-parses equal."""
    rs = parse_recordset(text)
    assert str(rs) == canonical
    assert parse_recordset(canonical) == rs


def test_filter_kinds() -> None:
    """Each bracket kind has its own type."""
    rs = parse_recordset("a.b[][$][^][:#12][? x ?][! y !][w][1.5]")
    assert rs.filters == (Skip(), Last(), First(), Recnums("12"), Where("x"),
                          Where("y", negate=True), Select((WordValue("w"),)),
                          Select((NumberValue(1.5),)))
    assert rs.subsets[0].positional == (Skip(), Last(), First(), Recnums("12"),
                                        Select((WordValue("w"),)), Select((NumberValue(1.5),)))


def test_where_kept_verbatim() -> None:
    """A where clause keeps SQL characters that are illegal elsewhere."""
    rs = parse_recordset("hmi.M_45s[? T_OBS > '2010' AND (A<>1 OR B=2) ?]")
    assert rs.filters == (Where("T_OBS > '2010' AND (A<>1 OR B=2)"),)


@pytest.mark.parametrize(
    ("text", "position", "words"),
    [
        ("", 0, "empty record set"),
        ("[1]", 0, "empty series name"),
        ("{a}", 0, "empty series name"),
        ("hmi", 0, "bad series name"),
        ("hmi.x[1", 5, "unbalanced '['"),
        ("hmi.x[1]]", 8, "unbalanced ']'"),
        ("hmi.x{a", 5, "unbalanced '{'"),
        ("hmi.x[? a", 5, "unbalanced '[?'"),
        ("hmi.x[??]", 5, "empty where"),
        ("hmi.x[1]{a}[2]", 11, "before the {segment}"),
        ("hmi.x[2010.13.01]", 6, "invalid date"),
        ("hmi.x[1@2s]", 7, "needs a range"),
        ("hmi.x[1/2s]", 6, "need a time"),
        ("hmi.x[2010.01.01/]", 17, "duration"),
        ("hmi.x[2010.01.01-2010.01.02@]", 28, "cadence"),
        ("hmi.x,aia.y", 6, "same series"),
        ("hmi.x[#]", 6, "bad character '#'"),
        ("hmi.x[1 2]", 8, "expected ',' or ']'"),
        ("hmi.x[1]!", 8, "unexpected character '!'"),
        ("hmi.x{a,}", 8, "bad segment name"),
        ("hmi.x[:#]", 8, "record numbers"),
        ("hmi.x[1],", 9, "empty series name"),
    ],
)
def test_errors_have_position_and_hint(text: str, position: int, words: str) -> None:
    """Syntax errors point at the problem and always carry a hint."""
    with pytest.raises(RecordSetSyntaxError) as info:
        parse_recordset(text)
    assert info.value.position == position
    assert words in str(info.value)
    assert info.value.hint


@pytest.mark.parametrize("text", ["hmi.x[1@2s]", "hmi.x[#]"])
def test_syntax_help_survives_email_masking(text: str) -> None:
    """Error texts are shown through mask_emails: the hint and message must not look like an
    address (a placeholder such as ``end@cadence`` came out as ``s***@cadence``), and the
    hint's example is itself a valid record set."""
    with pytest.raises(RecordSetSyntaxError) as info:
        parse_recordset(text)
    error = info.value
    assert error.hint is not None
    assert mask_emails(error.hint) == error.hint
    assert mask_emails(error.message) == error.message
    example = re.search(r"look like (.+?); see", error.hint)
    assert example is not None
    assert parse_recordset(example.group(1)).series == "hmi.sharp_cea_720s"


def test_non_string_refused() -> None:
    """Only strings are record sets."""
    with pytest.raises(InvalidInputError):
        parse_recordset(None)  # type: ignore[arg-type]


def test_recordset_needs_a_subset() -> None:
    """An empty RecordSet cannot be built."""
    with pytest.raises(InvalidInputError):
        RecordSet(())


# ------------------------------------------------------------------- property: round trips

_times = st.builds(
    lambda d, zone, style: TimeValue(TimeParts.from_datetime(d, zone=zone, style=style)),
    st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2199, 12, 31)),
    st.sampled_from(["TAI", "UTC"]),
    st.sampled_from(["hmi", "iso"]),
)
_durations = st.integers(min_value=1, max_value=10**7).map(float) | st.sampled_from(
    [0.5, 12.0, 45.0, 720.0, 5760.0, 86400.0])
_scalars = (_times | st.integers(min_value=0, max_value=10**12).map(IntValue)
            | st.floats(min_value=0.001, max_value=1e9).filter(lambda x: not x.is_integer())
            .map(NumberValue)
            | st.builds(lambda a, b: a + b, st.sampled_from("aZ_q"),
                        st.text("abcXYZ019_", max_size=6)).map(WordValue))


def _range(start: Scalar, end: Scalar, cadence: float | None, step: int | None) -> Range:
    """A time range with a cadence in seconds, or a range of numbers with an index step."""
    if isinstance(start, TimeValue) or isinstance(end, TimeValue):
        return Range(start, end, cadence)
    return Range(start, end, None if step is None else float(step),
                 "" if step is None else str(step))


_items: st.SearchStrategy[Item] = (
    _scalars
    | st.builds(_range, _scalars, _scalars, st.none() | _durations,
                st.none() | st.integers(min_value=1, max_value=10**6))
    | st.builds(Span, _times, _durations, st.none() | _durations))
_sql = st.text(st.characters(codec="ascii", exclude_characters="?!\x00"), min_size=1,
               max_size=20).map(str.strip).filter(bool)
_filters = (st.lists(_items, min_size=1, max_size=4).map(lambda x: Select(tuple(x)))
            | st.sampled_from([Skip(), First(), Last(), Recnums("5-#9,#12")])
            | st.builds(Where, _sql, st.booleans()))
_names = st.builds(lambda a, b: a + b, st.sampled_from("Bm_x"), st.text("rpt_err01", max_size=6))


@st.composite
def recordsets(draw: st.DrawFn) -> RecordSet:
    """Random record sets of one series."""
    series = draw(st.sampled_from(["hmi.sharp_cea_720s", "aia.lev1_euv_12s", "hmi.M_45s", "a.0"]))
    subsets = draw(st.lists(st.builds(
        Subset, st.just(series), st.lists(_filters, max_size=4).map(tuple),
        st.none() | st.lists(_names, max_size=4, unique_by=str.lower).map(tuple)),
        min_size=1, max_size=3))
    return RecordSet(tuple(subsets))


@settings(max_examples=200, deadline=None)
@given(recordsets())
def test_render_parse_round_trip(rs: RecordSet) -> None:
    """str(RecordSet) parses back to an equal RecordSet."""
    assert parse_recordset(str(rs)) == rs


@settings(max_examples=500, deadline=None)
@given(st.text(st.sampled_from("hmi.x_72s0[]{}?!$^:#@,-/ TZ1.9_aA"), max_size=40) | st.text())
def test_fuzz_only_our_errors(text: str) -> None:
    """Arbitrary text either parses (and round-trips) or raises RecordSetSyntaxError."""
    try:
        rs = parse_recordset(text)
    except RecordSetSyntaxError as exc:
        position = exc.position
        assert 0 <= position <= len(text)
        return
    assert parse_recordset(str(rs)) == rs


def test_a_segment_named_twice_counts_once() -> None:
    """``{Br,Bp,br}`` asks for two segments (DRMS names are case-insensitive): planning must
    not count a file twice that the export holds once."""
    rs = parse_recordset("hmi.sharp_cea_720s[7302]{Br,Bp,br, Br}")
    assert rs.segments == ("Br", "Bp")
    assert str(rs) == "hmi.sharp_cea_720s[7302]{Br,Bp}"


@pytest.mark.parametrize(("text", "position"), [("7302,", 5), ("7302, ", 6), ("171,193 ,", 9)])
def test_prime_key_value_with_a_trailing_comma(text: str, position: int) -> None:
    """A list ending in ',' (as in --primekey HARPNUM=7302,) says a value is missing there,
    not that a bracket is unbalanced."""
    with pytest.raises(RecordSetSyntaxError) as info:
        parse_items(text)
    assert "missing after the last ','" in info.value.message
    assert info.value.position == position
    assert "[" not in info.value.message.split(" at position")[0]


@pytest.mark.parametrize("text", ["7302-", "7300,7302-"])
def test_a_primekey_value_cut_short_says_so(text: str) -> None:
    """A --primekey value that ends where a value should follow is named as such, not as an
    unbalanced '[' (there is no bracket in it)."""
    with pytest.raises(RecordSetSyntaxError, match="a value is missing at the end") as caught:
        parse_items(text)
    assert "[" not in caught.value.message


@pytest.mark.parametrize("text", [
    "hmi.sharp_cea_720s[7300-7310@2][2018.09.08_00:00:00_TAI/2h]",
    "aia.lev1_euv_12s[2014.01.01_00:00:00_TAI/1m][94-171@2]{image}",
])
def test_an_index_step_on_a_range_of_numbers_goes_as_written(text: str) -> None:
    """``[7300-7310@2]`` is every 2nd value (DRMS's skip, no unit): it is sent as written,
    not as a cadence of 2 seconds (``@2s``, which DRMS refuses)."""
    assert str(parse_recordset(text)) == text
    assert str(Range(IntValue(7300), IntValue(7310), 2.0)) == "7300-7310@2"


@pytest.mark.parametrize("bad", ["7300-7310@2s", "7300-7310@0", "7300-7310@", "7300-7310@1.5"])
def test_an_index_step_must_be_a_whole_number(bad: str) -> None:
    """A unit or a fraction after '@' in a range of numbers is refused where it is."""
    with pytest.raises(RecordSetSyntaxError, match="whole number of steps"):
        parse_recordset(f"hmi.sharp_cea_720s[{bad}]")


@pytest.mark.parametrize("text", [
    "hmi.M_45s[#13300000-#13300002]",
    "hmi.M_45s[#13300000]",
    "hmi.M_45s[:#4994397-#4994398]",
    "hmi.M_45s[:#4994397,#4994399]",
    "hmi.M_45s[:#^]",
    "hmi.M_45s[:#5/3]",
])
def test_drms_index_forms_go_as_written(text: str) -> None:
    """Slot indices (``[#n]``) and record numbers, each with its '#' as DRMS wants them,
    are read and sent as written."""
    assert str(parse_recordset(text)) == text


@pytest.mark.parametrize(("text", "words"), [
    ("hmi.M_45s[:#4994397,4994399]", "each record number starts with '#'"),
    ("hmi.sharp_cea_720s[HARPNUM=7302]", "'HARPNUM=...' brackets are not read here"),
    ("hmi.M_45s[2012-01-01/1d]", "the ISO time '2012-01-01' needs at least the hour"),
    ("hmi.sharp_cea_720s[7302][2012-01-01]", "the ISO time '2012-01-01' needs at least"),
])
def test_forms_drms_refuses_or_we_do_not_read_say_so(text: str, words: str) -> None:
    """A record-number list missing a '#' (DRMS refuses it), name=value brackets and ISO
    dates without an hour are refused with what to write instead."""
    with pytest.raises(RecordSetSyntaxError, match=re.escape(words)) as caught:
        parse_recordset(text)
    assert caught.value.hint
