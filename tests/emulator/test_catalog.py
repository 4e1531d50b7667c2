"""Catalog facade: series lookup, selections against recorded real answers, SUMS paths."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import yaml  # type: ignore[import-untyped]

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


def _recorded_structs() -> dict[str, dict[str, Any]]:
    """series_struct bodies from the real-traffic recordings, keyed by lower-case name."""
    out: dict[str, dict[str, Any]] = {}
    for stem in _STRUCT_FILES:
        text = (RECORDINGS / f"{stem}.yaml").read_text()
        for inter in yaml.load(text, Loader=yaml.CSafeLoader)["interactions"]:
            uri = unquote(inter["request"]["uri"])
            if "op=series_struct" in uri:
                name = uri.split("ds=", 1)[1].lower()
                out.setdefault(name, json.loads(inter["response"]["body"]["string"]))
    return out


RECORDINGS = Path(
    os.environ.get("ASYNCJSOC_RECORDINGS")
    or Path(__file__).resolve().parents[3] / "shared" / "jsoc-recordings"
)
#: Recordings that between them hold every recorded series_struct body.
_STRUCT_FILES = ("test_build_table", "test_lookup_records_errors", "test_make_recordset",
                 "test_return_query_args")  # fmt: skip


@pytest.mark.skipif(not RECORDINGS.is_dir(), reason="recordings not available")
def test_series_struct_matches_recordings(catalog: Catalog) -> None:
    """Recorded series answer series_struct exactly like the real server (Interval start too)."""
    recorded = _recorded_structs()
    assert set(recorded) == {
        "hmi.m_45s", "hmi.v_45s", "hmi.sharp_720s", "hmi.sharp_cea_720s", "aia.lev1_euv_12s"
    }  # fmt: skip
    for name, real in recorded.items():
        series = catalog.find(name)
        assert series is not None
        ours = series.series_struct()
        assert list(ours) == list(real)
        for key in real:
            if key in ("Interval", "runtime"):
                continue
            assert ours[key] == real[key], (name, key)
        for key in ("FirstRecord", "FirstRecnum"):
            assert ours["Interval"][key] == real["Interval"][key], (name, key)
        assert set(ours["Interval"]) == set(real["Interval"])


@pytest.mark.parametrize("name", ["hmi.M_720s", "hmi.Ic_45s", "hmi.B_720s", "aia.lev1_uv_24s"])
def test_derived_series_are_consistent(catalog: Catalog, name: str) -> None:
    """Series without recordings still describe themselves coherently."""
    series = catalog.find(name)
    assert series is not None
    body = series.series_struct()
    names = [k["name"] for k in body["keywords"]]
    assert len(names) == len(set(names) - {"DATAVALS"}) or len(names) > 50
    for pk in body["primekeys"]:
        assert pk in names
    step = next(k["defval"] for k in body["keywords"] if k["name"] == "T_REC_step")
    assert float(step) == series.time_key.step
    assert body["Interval"]["FirstRecnum"] == series.first_recnum
    assert catalog.select(body["Interval"]["LastRecord"]).count() == 1
    for seg in body["segments"]:
        assert f"cparms_sg{body['segments'].index(seg):03d}" in names or name.startswith("aia")


def test_record_keys(catalog: Catalog) -> None:
    """Keyword strings look like jsoc_info's, are deterministic, and unknown keys fail."""
    rec = next(iter(catalog.select("hmi.sharp_cea_720s[7302][2018.09.08_14:24_TAI]")))
    assert rec.key("T_REC") == "2018.09.08_14:24:00_TAI"
    assert rec.key("harpnum") == "7302"
    assert rec.key("TELESCOP") == "SDO/HMI"
    assert rec.key("CAR_ROT") == "2208"
    assert rec.key("*recnum*") == str(rec.recnum)
    assert rec.key("*sunum*") == str(rec.sunum)
    assert rec.key("*online*") == "Y"
    lat_min, lat_max = float(rec.key("LAT_MIN")), float(rec.key("LAT_MAX"))
    lon_min, lon_max = float(rec.key("LON_MIN")), float(rec.key("LON_MAX"))
    assert -40 < lat_min < lat_max < 40
    assert -95 < lon_min < lon_max < 95
    assert float(rec.key("USFLUX")) > 1e19
    again = next(iter(Catalog().select("hmi.sharp_cea_720s[7302][2018.09.08_14:24_TAI]")))
    assert again.key("USFLUX") == rec.key("USFLUX")
    assert again.recnum == rec.recnum
    later = next(iter(catalog.select("hmi.sharp_cea_720s[7302][2018.09.10_14:24_TAI]")))
    assert float(later.key("LON_MIN")) > lon_min
    with pytest.raises(KeyError):
        rec.key("NOT_A_KEYWORD")
    aia = next(iter(catalog.select("aia.lev1_euv_12s[2014-01-01T00:00:01Z][304]")))
    assert aia.key("T_REC") == "2014-01-01T00:00:01Z"
    assert aia.key("T_OBS").startswith("2014-01-01T00:00:08.")
    assert aia.key("WAVELNTH") == "304"
    assert aia.key("QUALITY") in ("0x00000000", "0x00000400", "0x80000400")
    assert aia.key("T_REC_step") == "12.000000"


def test_filenamefmt_fields(catalog: Catalog) -> None:
    """Counters, printf layouts, :A/:D time layouts and unknown keys (ERROR)."""
    rec = next(iter(catalog.select("hmi.sharp_cea_720s[7310][2018.09.30_09:24_TAI]")))
    br = rec.series.segment("br")
    assert br is not None
    fmt = "hmi.sharp_cea_720s.{HARPNUM}.{T_REC:A}.{segment}"
    assert (
        expand_filenamefmt(fmt, rec, br, 0) == "hmi.sharp_cea_720s.7310.20180930_092400_TAI.Br.fits"
    )
    assert expand_filenamefmt("{#:%05d}_{recnum:%lld}", rec, br, 42) == f"00042_{rec.recnum}"
    assert expand_filenamefmt("{T_REC:D}", rec, br, 0) == "2018@09@30_092400_TAI"
    assert expand_filenamefmt("{seriesname}.{NOPE}.x", rec, br, 0) == "hmi.sharp_cea_720s.ERROR.x"
    aia = next(iter(catalog.select("aia.lev1_euv_12s[2010-07-30T13:30:02Z][193]")))
    image = aia.series.segment("image")
    assert image is not None
    got = expand_filenamefmt("aia.lev1_euv_12s.{T_REC:A}.{WAVELNTH}.{segment}", aia, image, 0)
    assert got == "aia.lev1_euv_12s.2010-07-30T133009Z.193.image_lev1.fits"


def test_resolve_rejects_tampered_paths(catalog: Catalog) -> None:
    """Wrong SUM number, slot, file name or sunum outside any series give None."""
    rec = next(iter(catalog.select("aia.lev1_euv_12s[2015.01.01_TAI][171]")))
    seg = rec.series.segments[0]
    path = rec.segment_path(seg)
    assert catalog.resolve_sums_path(path) == (rec, seg)
    sum_part, d_part, s_part, name = path.strip("/").split("/")
    assert catalog.resolve_sums_path(f"/SUM999/{d_part}/{s_part}/{name}") is None
    assert catalog.resolve_sums_path(f"/{sum_part}/{d_part}/S00001/{name}") is None
    assert catalog.resolve_sums_path(f"/{sum_part}/{d_part}/{s_part}/other.fits") is None
    assert catalog.resolve_sums_path(f"/{sum_part}/D1278070722/S00000/{name}") is None
