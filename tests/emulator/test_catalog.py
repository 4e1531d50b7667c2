"""Catalog facade: series lookup, selections against recorded real answers, SUMS paths."""

from __future__ import annotations

import pytest

from asyncjsoc.emulator._catalog import (
    Catalog,
    DsError,
    default_filenamefmt,
    expand_filenamefmt,
)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    """One catalog for the module (building it is cheap but not free)."""
    return Catalog()


def test_find_is_case_insensitive(catalog: Catalog) -> None:
    """Lower-case names resolve to the DB spelling."""
    s = catalog.find("hmi.m_45s")
    assert s is not None
    assert s.name == "hmi.M_45s"
    assert catalog.find("nope.series") is None
    assert "hmi.sharp_cea_720s" in catalog.names()


@pytest.mark.parametrize(
    ("ds", "count", "first", "last"),
    [
        (
            "hmi.M_45s[2012.01.01_00:00:34_TAI-2012.01.01_00:01:19_TAI]",
            2,
            "hmi.M_45s[2012.01.01_00:00:45_TAI][2]",
            "hmi.M_45s[2012.01.01_00:01:30_TAI][2]",
        ),
        (
            "hmi.M_45s[2012.01.01_00:00:34_TAI-2012.01.01_00:02:04_TAI@90.0s]",
            2,
            "hmi.M_45s[2012.01.01_00:00:45_TAI][2]",
            "hmi.M_45s[2012.01.01_00:02:15_TAI][2]",
        ),
        (
            "aia.lev1_euv_12s[2010.07.30_13:30:34_TAI-2010.07.30_14:00:34_TAI][193]",
            151,
            "aia.lev1_euv_12s[2010-07-30T13:30:02Z][193]",
            "aia.lev1_euv_12s[2010-07-30T14:00:02Z][193]",
        ),
        (
            "aia.lev1_euv_12s[2014.01.01_00:00:35_TAI-2014.01.01_00:02:35_TAI][304]",
            11,
            "aia.lev1_euv_12s[2014-01-01T00:00:01Z][304]",
            "aia.lev1_euv_12s[2014-01-01T00:02:01Z][304]",
        ),
        (
            "hmi.sharp_cea_720s[3604]{Bp,magnetogram}",
            1223,
            "hmi.sharp_cea_720s[3604][2014.01.08_03:12:00_TAI]",
            None,
        ),
    ],
)
def test_recorded_queries(
    catalog: Catalog, ds: str, count: int, first: str, last: str | None
) -> None:
    """Counts and record strings match what the real JSOC answered in the recordings."""
    sel = catalog.select(ds)
    recs = list(sel)
    assert sel.count() == count == len(recs)
    assert recs[0].spec() == first
    if last is not None:
        assert recs[-1].spec() == last


def test_unknown_series_kind(catalog: Catalog) -> None:
    """Unknown series raise DsError of kind 'series'."""
    with pytest.raises(DsError) as info:
        catalog.select("hmi.nothing[2012.01.01]")
    assert info.value.kind == "series"


def test_sums_path_round_trip(catalog: Catalog) -> None:
    """segment_path and resolve_sums_path are inverse."""
    rec = next(iter(catalog.select("hmi.sharp_cea_720s[7302][2018.09.08_14:24_TAI]")))
    for seg in rec.series.segments:
        path = rec.segment_path(seg)
        assert catalog.resolve_sums_path(path) == (rec, seg)
    assert catalog.resolve_sums_path("/SUM1/D123/S00000/x.fits") is None


def test_filenamefmt_recorded_names(catalog: Catalog) -> None:
    """drms-style templates give the recorded export file names."""
    rec = next(iter(catalog.select("hmi.M_45s[2012.01.01_01:01:30_TAI]")))
    seg = rec.series.segments[0]
    fmt = "hmi.m_45s.{T_REC:A}.{CAMERA}.{segment}"
    want = "hmi.m_45s.20120101_010130_TAI.2.magnetogram.fits"
    assert expand_filenamefmt(fmt, rec, seg, 0) == want
    assert expand_filenamefmt(default_filenamefmt(), rec, seg, 0) == (
        f"hmi.M_45s.{rec.recnum}.magnetogram.fits"
    )
