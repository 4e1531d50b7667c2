"""Record-set grammar and selection arithmetic, checked against brute-force enumeration."""

from __future__ import annotations

import math
import time
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncjsoc.emulator._catalog import Catalog, DsError
from asyncjsoc.emulator._indexset import IndexSet
from asyncjsoc.emulator._times import format_tai, parse_time

CATALOG = Catalog()
T2012 = parse_time("2012.01.01_00:00:00_TAI")


def _nearest_slot(t: float, epoch: float, step: float) -> int:
    """Brute force: the slot whose time is nearest to t (ties go to the later slot)."""
    first = int((t - epoch) // step) - 2
    candidates = range(first, first + 5)
    return min(candidates, key=lambda j: (abs(epoch + j * step - t), -j))


def _brute(lo: int, hi: int, stride: Fraction) -> list[int]:
    """Brute force: slots lo + round(j*stride) up to hi, one by one."""
    out: list[int] = []
    j = 0
    stride = max(stride, Fraction(1))
    while True:
        v = lo + math.floor(j * stride + Fraction(1, 2))
        if v > hi:
            return out
        out.append(v)
        j += 1


@given(
    a=st.integers(0, 20_000),
    span=st.integers(0, 20_000),
    cad=st.sampled_from([None, "45s", "90.0s", "100s", "3m", "720s", "1h"]),
    use_duration=st.booleans(),
)
@settings(max_examples=60, deadline=None)
def test_time_range_counts_match_brute_force(
    a: int, span: int, cad: str | None, use_duration: bool
) -> None:
    """a-b (inclusive) and start/duration (exclusive) with @cadence agree with brute force."""
    ta, tb = T2012 + a, T2012 + a + span
    sa = format_tai(ta)
    rng = f"{sa}/{span}s" if use_duration else f"{sa}-{format_tai(tb)}"
    if cad:
        rng += f"@{cad}"
    sel = CATALOG.select(f"hmi.M_45s[{rng}]")
    lo = _nearest_slot(ta, 0, 45)
    hi = _nearest_slot(tb, 0, 45) - (1 if use_duration else 0)
    cad_s = {"45s": 45, "90.0s": 90, "100s": 100, "3m": 180, "720s": 720, "1h": 3600}.get(
        cad or "", 45
    )
    want = _brute(lo, hi, Fraction(cad_s, 45))
    got = [r.values[0] for r in sel]
    assert got == want
    assert sel.count() == len(want)


def _sharp_brute(lo: int, hi: int) -> int:
    """Brute force: sum over every HARP of its overlap with slots [lo, hi]."""
    series = CATALOG.find("hmi.sharp_cea_720s")
    assert series is not None
    assert series.harps is not None
    total = 0
    for h in range(1, series.harps.max_harp + 1):
        s, e = series.harps.window(h)
        total += max(0, min(e, hi) - max(s, lo) + 1)
    return total


@given(day=st.integers(0, 5000), hours=st.integers(1, 24 * 40))
@settings(max_examples=15, deadline=None)
def test_sharp_counts_match_brute_force(day: int, hours: int) -> None:
    """SHARP [][start/dur] counts equal the brute-force overlap sum and the iteration."""
    t0 = parse_time("2010.05.01_00:00:00_TAI") + day * 86400
    sel = CATALOG.select(f"hmi.sharp_cea_720s[][{format_tai(t0)}/{hours}h]")
    lo = round(t0 / 720)
    want = _sharp_brute(lo, lo + hours * 5 - 1)
    assert sel.count() == want
    if want < 5000:
        assert len(list(sel)) == want


def test_sharp_examples() -> None:
    """One HARP at one time is one record; a day of all HARPs is (active HARPs x 120)."""
    one = CATALOG.select("hmi.sharp_cea_720s[7302][2018.09.08_14:24_TAI]")
    assert [r.spec() for r in one] == ["hmi.sharp_cea_720s[7302][2018.09.08_14:24:00_TAI]"]
    day = CATALOG.select("hmi.sharp_cea_720s[][2018.09.08_00:00_TAI/1d]")
    harps = {r.values[0] for r in day}
    assert 3 <= len(harps) <= 30
    assert day.count() == len(list(day))
    assert day.count() <= len(harps) * 120
    by_list = CATALOG.select("hmi.sharp_cea_720s[7300-7310][2018.09.01_TAI/30d]")
    assert {r.values[0] for r in by_list} <= set(range(7300, 7311))
    assert by_list.count() == len(list(by_list))


def test_counting_is_arithmetic() -> None:
    """Years of records count by arithmetic, and iteration is lazy.

    Counting takes milliseconds; the bound only catches a per-record loop over 10^8
    records, which would take minutes, with room for a loaded machine.
    """
    start = time.perf_counter()
    big = CATALOG.select("aia.lev1_euv_12s[2010.06.01_TAI-2020.06.01_TAI]")
    sharp = CATALOG.select("hmi.sharp_720s[][2011.01.01_TAI-2019.01.01_TAI]")
    n_aia, n_sharp = big.count(), sharp.count()
    elapsed = time.perf_counter() - start
    assert n_aia > 100_000_000
    assert n_sharp > 1_000_000
    assert elapsed < 5
    first = next(iter(big))
    assert first.spec() == "aia.lev1_euv_12s[2010-05-31T23:59:26Z][94]"


@pytest.mark.parametrize(
    ("ds", "count"),
    [
        ("aia.lev1_euv_12s[2010-07-30T13:30:02Z-2010-07-30T13:31:02Z]", 42),
        ("aia.lev1_euv_12s[2010-07-30T13:30:02Z/1m][171,193]", 10),
        ("aia.lev1_euv_12s[2010-07-30T13:30:02Z/1m][WAVELNTH=94-171]", 15),
        ("hmi.M_45s[2012.01.01_TAI/1h]", 80),
        ("hmi.M_45s[T_REC=2012.01.01_TAI/1h]", 80),
        ("hmi.m_45s[2012.01.01_TAI/1h][2]{MAGNETOGRAM}", 80),
        ("hmi.M_45s[2012.01.01_TAI/1h][1]", 0),
        ("hmi.M_45s[2012.01.01_TAI/1h],hmi.M_45s[2013.01.01_TAI/30m]", 120),
        ("hmi.M_45s[2012.01.01_00:00:00_TAI,2012.01.01_00:00:45_TAI,2012.01.01_00:00:45_TAI]", 2),
        ("hmi.M_45s[2012.01.01_12_TAI/12h@6h]", 2),
        ("hmi.M_45s[$]", 1),
        ("hmi.M_45s[^]", 1),
        ("hmi.M_45s[:#3760477-#3760576]", 100),
        ("hmi.M_45s[:#3760477,#3760480]", 2),
        ("hmi.M_45s[#13322880-#13322889]", 10),
        ("hmi.M_45s[1980.01.01_TAI/1d]", 0),
        ("hmi.sharp_cea_720s[3604]", 1223),
        ("hmi.sharp_cea_720s[3604][2014.01.08_TAI/1d]", 104),
        ("hmi.B_720s[2015.01.01_TAI/1d]", 120),
        ("hmi.M_720s[2015.01.01_TAI/1d]", 120),
        ("hmi.Ic_45s[2015.01.01_TAI/1h]", 80),
        ("hmi.V_45s[2015.01.01_TAI/1h]", 80),
        ("aia.lev1_uv_24s[2015.01.01_TAI/1h][1600]", 150),
        ("aia.lev1_euv_12s[2015.01.01_TAI/1h][? WAVELNTH > 200 AND WAVELNTH < 320 ?]", 600),
        ("aia.lev1_euv_12s[2015.01.01_TAI/1m][? WAVELNTH = 94 OR WAVELNTH = 335 ?]", 10),
        ("hmi.M_45s[2012.01.01_TAI/1h][? T_REC >= $(2012.01.01_00:30_TAI) ?]", 40),
    ],
)
def test_grammar_counts(ds: str, count: int) -> None:
    """Assorted grammar: lists, named keys, ^/$, recnums, slot indices, where, segments."""
    sel = CATALOG.select(ds)
    assert sel.count() == count
    assert len(list(sel)) == count


def test_where_quality_and_image_exists() -> None:
    """QUALITY filters keep most records and agree with the keyword values."""
    base = "hmi.M_45s[2012.01.01_TAI/1d]"
    total = CATALOG.select(base).count()
    good = CATALOG.select(base + "[? QUALITY=0 ?]")
    bad = CATALOG.select(base + "[? QUALITY<>0 ?]")
    exists = CATALOG.select(base + "[? drms.image_exists(quality) ?]")
    assert good.count() + bad.count() == total
    assert 0 < bad.count() < total // 20
    assert all(r.key("QUALITY") == "0x00000000" for r in good)
    assert good.count() <= exists.count() <= total


def test_limits() -> None:
    """Positive limits keep the first records, negative ones the last."""
    ds = "hmi.M_45s[2012.01.01_TAI/1h],hmi.M_45s[2013.01.01_TAI/1h]"
    everything = [r.spec() for r in CATALOG.select(ds)]
    assert [r.spec() for r in CATALOG.select(ds, limit=5)] == everything[:5]
    assert [r.spec() for r in CATALOG.select(ds, limit=-90)] == everything[-90:]
    assert CATALOG.select(ds, limit=-90).count() == 90
    where = ds.replace("1h]", "1h][? CAMERA=2 ?]")
    assert [r.spec() for r in CATALOG.select(where, limit=-3)] == everything[-3:]


def test_segments_selection() -> None:
    """{} selects segments case-insensitively, in the order given; default is all."""
    sel = CATALOG.select("hmi.sharp_cea_720s[7302]{br,BP, magnetogram}")
    assert sel.explicit_segments
    assert [s.filename for s in sel.segments] == ["Br.fits", "Bp.fits", "magnetogram.fits"]
    aia = CATALOG.select("aia.lev1_euv_12s[2015.01.01_TAI]")
    assert not aia.explicit_segments
    assert [s.filename for s in aia.segments] == ["image_lev1.fits", "spikes.fits"]


@pytest.mark.parametrize(
    ("ds", "kind"),
    [
        ("hmi.nothing[2012.01.01_TAI]", "series"),
        ("HMI.NOPE", "series"),
        ("hmi.M_45s[2012.01.01_TAI]{bogus}", "segment"),
        ("hmi.M_45s[garbage]", "syntax"),
        ("hmi.M_45s[2012.01.01_TAI][2][3]", "syntax"),
        ("hmi.M_45s[2012.01.01_TAI", "syntax"),
        ("hmi.M_45s[2012.01.01_TAI/1h],hmi.V_45s[2012.01.01_TAI/1h]", "mixed"),
        ("hmi.M_45s[? NOSUCHKEY = 1 ?]", "syntax"),
        ("hmi.M_45s[? QUALITY = ?]", "syntax"),
        ("hmi.M_45s[HARPNUM=1]", "syntax"),
        ("hmi.M_45s x", "syntax"),
        ("", "syntax"),
        # Nested past the recursion limit: a bad query (status 4), not an HTTP 500.
        ("hmi.M_45s[? " + "(" * 5000 + "QUALITY = 0" + ")" * 5000 + " ?]", "syntax"),
    ],
)
def test_errors(ds: str, kind: str) -> None:
    """Bad specs raise DsError with the right kind."""
    with pytest.raises(DsError) as info:
        CATALOG.select(ds)
    assert info.value.kind == kind
    assert str(info.value)


_runs = st.lists(
    st.tuples(st.integers(0, 300), st.integers(0, 300), st.integers(1, 4), st.integers(1, 3)),
    min_size=1,
    max_size=4,
)


@given(runs=_runs)
@settings(max_examples=100, deadline=None)
def test_indexset_union_matches_sets(runs: list[tuple[int, int, int, int]]) -> None:
    """Unions, clipping, indexing and ranks of progressions agree with Python sets."""
    ix = IndexSet()
    want: set[int] = set()
    for lo, span, p, q in runs:
        stride = max(Fraction(p, q), Fraction(1))
        part = IndexSet.progression(lo, lo + span, stride)
        want |= set(_brute(lo, lo + span, stride))
        ix = ix.union(part)
    ordered = sorted(want)
    assert list(ix) == ordered
    assert len(ix) == len(ordered)
    for i, v in enumerate(ordered):
        assert ix[i] == v
        assert ix.rank(v) == i
    assert list(ix.clip(100, 200)) == [v for v in ordered if 100 <= v <= 200]
    assert ix.count_in(50, 250) == sum(1 for v in ordered if 50 <= v <= 250)
