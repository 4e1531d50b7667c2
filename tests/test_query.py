"""Tests for Query construction (asyncjsoc._query)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import astropy.units as u
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncjsoc._client import pull_fingerprint
from asyncjsoc._config import ClientConfig
from asyncjsoc._models import KeywordInfo, SegmentInfo, SeriesInfo
from asyncjsoc._query import Query, known_primekeys
from asyncjsoc._recordset import Range, Span, parse_recordset
from asyncjsoc.exceptions import InvalidInputError, JobFileError, RecordSetSyntaxError

SHARP = SeriesInfo(
    name="hmi.sharp_cea_720s",
    primekeys=("HARPNUM", "T_REC"),
    keywords=(KeywordInfo("HARPNUM", "int"), KeywordInfo("T_REC", "time"),
              KeywordInfo("LON_MIN", "float")),
    segments=tuple(SegmentInfo(n) for n in ("Br", "Bp", "Bt", "magnetogram")),
    time_steps={"T_REC": 720.0},
)


def test_build_sharp_example() -> None:
    """The brief's SHARP example renders exactly."""
    q = Query.build("hmi.sharp_cea_720s", start="2018.09.08_00:00:00_TAI",
                    end="2018.09.09_00:00:00_TAI", cadence="96m",
                    primekeys={"HARPNUM": 7302}, segments=["Bp", "Bt", "Br"],
                    where=["LON_MIN > -70"])
    assert q.recordset() == (
        "hmi.sharp_cea_720s[7302][2018.09.08_00:00:00_TAI-2018.09.09_00:00:00_TAI@96m]"
        "[? LON_MIN>-70 ?]{Bp,Bt,Br}")
    assert q.segments == ("Bp", "Bt", "Br")
    assert isinstance(q.time_range, Range)


def test_build_uses_series_info_and_skips() -> None:
    """Prime-key order comes from SeriesInfo; a missing leading key becomes []."""
    q = Query.build("hmi.sharp_cea_720s", start=datetime(2018, 9, 8), end="2018.09.08_01",
                    cadence=12 * u.min, series_info=SHARP)
    assert q.recordset() == ("hmi.sharp_cea_720s[][2018.09.08_00:00:37_TAI-"
                             "2018.09.08_01:00:37_TAI@12m]")


@pytest.mark.parametrize(
    ("series", "keys", "expected"),
    [
        ("aia.lev1_euv_12s", {"WAVELNTH": [171, 193]}, "[171,193]"),
        ("hmi.M_45s", {"camera": 2}, "[2]"),
        ("hmi.sharp_720s", {"HARPNUM": "7300-7310"}, None),
        ("hmi.sharp_720s", {"HARPNUM": range(7300, 7311)}, None),
    ],
)
def test_build_table_order(series: str, keys: dict[str, object], expected: str | None) -> None:
    """Without SeriesInfo the built-in table orders the brackets."""
    q = Query.build(series, start="2010.07.30_13:30:00_TAI", end="2010.07.30_14:00:00_TAI",
                    primekeys=keys)  # type: ignore[arg-type]
    text = q.recordset()
    if expected is not None:
        assert text.endswith("_TAI]" + expected)
    else:
        assert text.startswith(series + "[7300-7310][2010.07.30_13:30:00_TAI-")


def test_known_primekeys_table() -> None:
    """The table covers SHARPs, HMI 45s/720s and AIA, case-insensitively."""
    assert known_primekeys("HMI.SHARP_CEA_720S") == ("HARPNUM", "T_REC")
    assert known_primekeys("hmi.M_720s") == ("T_REC", "CAMERA")
    assert known_primekeys("aia.lev1_uv_24s") == ("T_REC", "WAVELNTH")
    assert known_primekeys("mdi.fd_m_96m_lev182") is None


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"start": "2018.09.09_00:00:00_TAI", "end": "2018.09.08_00:00:00_TAI"}, "after end"),
        ({"cadence": "3x"}, "cadence"),
        ({"where": ["LON_MIN >> 3"]}, "where clause"),
        ({"where": "LON_MIN > abc"}, "where clause"),
        ({"where": ["NOPE>1"], "series_info": SHARP}, "not a keyword"),
        ({"segments": ["Br", "nope"], "series_info": SHARP}, "no segment"),
        ({"segments": ["B r"]}, "segment name"),
        ({"segments": []}, "empty segment"),
        ({"primekeys": {"NOPE": 1}}, "not a prime key"),
        ({"primekeys": {"T_REC": 1}}, "start=/end="),
        ({"primekeys": {"HARPNUM": -1}}, "negative"),
        ({"primekeys": {"HARPNUM": True}}, "bad value"),
        ({"primekeys": {"HARPNUM": "73#0"}}, "bad value"),
        ({"primekeys": {"HARPNUM": range(5, 1)}}, "bad range"),
        ({"primekeys": {"HARPNUM": [1.5]}}, "bad value"),
        ({"start": "nonsense"}, "not a JSOC time"),
    ],
)
def test_build_errors(kwargs: dict[str, object], words: str) -> None:
    """Bad build inputs raise InvalidInputError with a clear message."""
    args: dict[str, object] = {"start": "2018.09.08_00:00:00_TAI",
                               "end": "2018.09.09_00:00:00_TAI"}
    args.update(kwargs)
    with pytest.raises(InvalidInputError) as info:
        Query.build("hmi.sharp_cea_720s", **args)  # type: ignore[arg-type]
    assert words in str(info.value)


def test_build_unknown_series() -> None:
    """An unknown series takes a time range only, in the first bracket."""
    q = Query.build("mdi.fd_M_96m_lev182", start="2000.01.01_TAI", end="2000.01.02_TAI")
    assert q.recordset() == "mdi.fd_M_96m_lev182[2000.01.01_00:00:00_TAI-2000.01.02_00:00:00_TAI]"
    with pytest.raises(InvalidInputError, match="prime-key order"):
        Query.build("mdi.fd_M_96m_lev182", start="2000.01.01_TAI", end="2000.01.02_TAI",
                    primekeys={"X": 1})
    with pytest.raises(InvalidInputError, match="series name"):
        Query.build("nodot", start="2000.01.01_TAI", end="2000.01.02_TAI")


def test_from_recordset() -> None:
    """from_recordset keeps the parsed form and the segment list."""
    q = Query.from_recordset("hmi.M_45s[2010.05.01_TAI/1d@6h]{magnetogram}")
    assert (q.series, q.segments) == ("hmi.M_45s", ("magnetogram",))
    assert isinstance(q.time_range, Span)
    assert str(q) == "hmi.M_45s[2010.05.01_00:00:00_TAI/1d@6h]{magnetogram}"
    with pytest.raises(RecordSetSyntaxError):
        Query.from_recordset("hmi.M_45s[")


def test_from_job_lines_batches_by_harp() -> None:
    """Job lines become one subset per HARP with a time list, segments on each."""
    q = Query.from_job_lines(["7021.20170524_222400_TAI", "# c", "7020.20170524_223600_TAI",
                              "7020.20170524_222400_TAI", "7020.20170524_222400_TAI"],
                             segments=["Br"])
    assert q.recordset() == (
        "hmi.sharp_cea_720s[7020][2017.05.24_22:24:00_TAI,2017.05.24_22:36:00_TAI]{Br},"
        "hmi.sharp_cea_720s[7021][2017.05.24_22:24:00_TAI]{Br}")
    assert q.n_subsets == 2
    assert q.time_range is None


def test_from_job_file(tmp_path: Path) -> None:
    """Job files report bad lines by number."""
    path = tmp_path / "j.txt"
    path.write_text("7020.20170524_222400_TAI\n\n7020.nope\n")
    with pytest.raises(JobFileError) as info:
        Query.from_job_file(path)
    assert info.value.line_number == 3
    path.write_text("7020.20170524_222400_TAI\n")
    assert Query.from_job_file(path, series="hmi.sharp_720s").recordset() == \
        "hmi.sharp_720s[7020][2017.05.24_22:24:00_TAI]"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_build_fuzz_only_our_errors(text: str) -> None:
    """Arbitrary strings as any build argument give InvalidInputError or a Query."""
    for kwargs in ({"start": text}, {"cadence": text}, {"where": [text]},
                   {"primekeys": {"HARPNUM": text}}, {"segments": [text]}):
        args: dict[str, object] = {"start": "2018.09.08_TAI", "end": "2018.09.09_TAI"}
        args.update(kwargs)
        try:
            q = Query.build("hmi.sharp_cea_720s", **args)  # type: ignore[arg-type]
        except InvalidInputError:
            continue
        assert Query.from_recordset(q.recordset()).parsed == q.parsed


def test_an_empty_segment_list_is_refused() -> None:
    """``{}`` selects no file: refused with the fix, not a pull that downloads nothing."""
    with pytest.raises(InvalidInputError, match=r"asks for no segment") as caught:
        Query.from_recordset("hmi.sharp_cea_720s[7302][2018.09.08_00:00_TAI]{}")
    assert "{Br,Bp}" in (caught.value.hint or "")


@pytest.mark.parametrize("make", [
    lambda: Query.from_recordset("hmi.sharp_cea_720s[7302][2018.09.08_00:00_TAI]{**ALL**}"),
    lambda: Query.from_recordset("hmi.sharp_cea_720s[7302]{Br, **NONE**}"),
    lambda: Query.build("hmi.sharp_cea_720s", start="2018.09.08_00:00_TAI",
                        end="2018.09.08_01:00_TAI", segments=["**ALL**"]),
])
def test_jsoc_info_segment_words_are_refused_with_the_fix(make: Callable[[], Query]) -> None:
    """``**ALL**`` and ``**NONE**`` are words of jsoc_info's ``seg`` parameter, not segment
    names: refused, naming the word, with how to ask for every segment or some."""
    with pytest.raises(InvalidInputError) as caught:
        make()
    message = str(caught.value)
    assert "**ALL**" in message or "**NONE**" in message
    assert "leave out the segment list" in (caught.value.hint or "")


@pytest.mark.parametrize(("written", "canonical"), [
    ("hmi.x[1e5][2012.01.01_TAI]{a}", "hmi.x[100000.0][2012.01.01_TAI]{a}"),
    ("hmi.x[1.50-2.0E1]", "hmi.x[1.5-20.0]"),
    ("hmi.x[? A>1 ?][0.25]", "hmi.x[? A>1 ?][0.25]"),
])
def test_numbers_as_written_go_to_the_server_but_one_pull_has_one_fingerprint(
        written: str, canonical: str) -> None:
    """The server gets numbers as written; the pull's identity (its state fingerprint) is
    the same however they were written, and the same as before numbers were kept as written
    (Python's shortest form), so a pull started then resumes."""
    query, plain = Query.from_recordset(written), Query.from_recordset(canonical)
    assert query.recordset() == str(parse_recordset(written))
    assert query.canonical() == plain.recordset() == plain.canonical()
    config = ClientConfig(emails=("a@example.org",))
    assert pull_fingerprint(query, config) == pull_fingerprint(plain, config)


@pytest.mark.parametrize("text", [
    "hmi.M_45s[2012.01.02_00:00_TAI-2012.01.01_00:00_TAI]",
    "hmi.sharp_720s[7310-7300][2012.01.01_TAI]",
    "hmi.x[2.5-1.5]",
])
def test_a_backwards_range_is_refused_by_the_library_too(text: str) -> None:
    """A range whose start is after its end would select nothing at the JSOC: refused when
    the query is made, in Python as on the command line."""
    with pytest.raises(InvalidInputError, match="runs backwards") as caught:
        Query.from_recordset(text)
    assert caught.value.hint is not None


def test_numpy_integers_and_numbers_are_taken_like_python_ones() -> None:
    """Prime keys and cadences from numpy or pandas (np.int64, np.float64) build the same
    query as Python ints and floats; a numpy float prime key is still refused."""
    import numpy as np

    from asyncjsoc.exceptions import InvalidInputError

    def build(harp: object, cadence: object) -> str:
        return str(Query.build("hmi.sharp_cea_720s", start="2018.09.08_00:00_TAI",
                               end="2018.09.08_01:00_TAI", cadence=cadence,
                               primekeys={"HARPNUM": harp}, segments=["Br"]))  # type: ignore[dict-item]

    plain = build(7302, 720)
    assert build(np.int64(7302), np.int64(720)) == plain
    assert build(np.int32(7302), np.float64(720.0)) == plain
    assert build([np.int64(7302), np.uint16(7303)], 720) == build([7302, 7303], 720)
    with pytest.raises(InvalidInputError, match="bad value"):
        build(np.float64(7302.0), 720)
    assert build(np.array([7302, 7303]), 720) == build([7302, 7303], 720)  # a column's values
    for bad in (np.array([[7302, 7303]]), np.array([], dtype=int)):
        with pytest.raises(InvalidInputError, match="bad value"):
            build(bad, 720)


def test_a_subset_given_twice_is_kept_once() -> None:
    """The same record set twice (two identical arguments) selects its records once: the
    plan would count them twice and the export list each file twice."""
    one = "hmi.M_45s[2012.01.01_00:00:00_TAI/2m]{magnetogram}"
    other = "hmi.M_45s[2012.01.02_00:00:00_TAI/2m]{magnetogram}"
    q = Query.from_recordset(f"{one},{other},{one}")
    assert q.recordset() == f"{one},{other}"
    assert Query.from_recordset(f"{one},{one}").recordset() == one
    # as DRMS reads it: series and segment case do not make another subset
    shouted = one.replace("hmi.M_45s", "HMI.M_45S").replace("magnetogram", "Magnetogram")
    assert Query.from_recordset(f"{one},{shouted}").recordset() == one


def test_a_segment_given_twice_in_another_case_is_kept_once() -> None:
    """DRMS segment names are case-insensitive: ['Br', 'br'] is one segment (the plan
    counted two files per record and fetched one)."""
    q = Query.build("hmi.sharp_cea_720s", start="2018.09.08_00:00_TAI",
                    end="2018.09.08_01:00_TAI", segments=["Br", "br", "Bp", "BR"])
    assert q.recordset().endswith("{Br,Bp}")


def test_a_numpy_timedelta_cadence_is_read_in_seconds() -> None:
    """np.timedelta64 is registered as a real number, but float() refuses it: it is read by
    its unit (a raw TypeError before); NaT or a unitless one is refused in words."""
    import numpy as np

    from asyncjsoc._times import parse_duration
    from asyncjsoc.exceptions import InvalidInputError

    assert parse_duration(np.timedelta64(12, "m")) == 720.0
    assert parse_duration(np.timedelta64(1500, "ms")) == 1.5
    for bad in (np.timedelta64("NaT"), np.timedelta64(5)):
        with pytest.raises(InvalidInputError, match="invalid cadence or duration"):
            parse_duration(bad)


@pytest.mark.parametrize(("one", "other"), [
    ("hmi.sharp_cea_720s[7302][2018.09.08_00:00_TAI/3h]{Br}",
     "hmi.sharp_cea_720s[7302][2018.09.08_00:00_TAI/3h]{br}"),
    ("hmi.sharp_cea_720s[7302][2018.09.08_00:00_TAI/3h]{Br}",
     "HMI.SHARP_CEA_720S[7302][2018.09.08_00:00_TAI/3h]{Br}"),
    ("hmi.sharp_cea_720s[7302][2018.09.08_00:00_TAI/3h]{Br,Bp}",
     "hmi.sharp_cea_720s[7302][2018.09.08_00:00_TAI/3h]{Bp,Br}"),
    ("hmi.M_45s[:#12147285 , #12147289]", "hmi.M_45s[:#12147285,#12147289]"),
])
def test_spellings_drms_does_not_tell_apart_are_one_pull(one: str, other: str) -> None:
    """Series and segment case, segment order and spaces in record-number lists do not
    change the selection: one fingerprint, so the second spelling resumes the first's pull."""
    config = ClientConfig(emails=("a@example.org",))
    a, b = Query.from_recordset(one), Query.from_recordset(other)
    assert a.identity() == b.identity()
    assert pull_fingerprint(a, config) == pull_fingerprint(b, config)


@pytest.mark.parametrize(("one", "other"), [
    ("hmi.sharp_cea_720s[7302][2018.09.08_00:00_TAI/3h]{Br}",
     "hmi.sharp_cea_720s[7302][2018.09.08_00:00_TAI/3h]{Bp}"),
    ("hmi.sharp_cea_720s[7302][2018.09.08_00:00_TAI/3h]{Br}",
     "hmi.sharp_cea_720s[7302][2018.09.08_00:00_TAI/3h]"),
    ("hmi.sharp_cea_720s[7300-7310@2]", "hmi.sharp_cea_720s[7300-7310]"),
    ("hmi.M_45s[:#12147285,#12147289]", "hmi.M_45s[:#12147285-#12147289]"),
    ("hmi.x[? A>1 ?]", "hmi.x[? a>1 ?]"),
])
def test_different_selections_keep_different_fingerprints(one: str, other: str) -> None:
    """Folding never merges two selections: other segments, all segments, a step, a list
    against a range, where clauses (kept as written) stay apart."""
    config = ClientConfig(emails=("a@example.org",))
    assert pull_fingerprint(Query.from_recordset(one), config) != pull_fingerprint(
        Query.from_recordset(other), config)
