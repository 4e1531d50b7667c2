"""Deterministic keyword values of emulated records, as jsoc_info strings.

Values derive only from the series and the record's prime keys: T_OBS near T_REC,
Carrington rotation from time, HARP geometry drifting across the disk, QUALITY
mostly 0. Keywords without a model print their constant default or ``MISSING``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

from ._harps import mix_hash, unit_hash
from ._model import Record
from ._times import DAY, format_iso_utc, format_tai, time_to_jd

__all__ = ["aia_file_time", "key_value", "time_key_names"]

_MISSING_DEFAULTS = frozenset({"nan", "-2147483648", "0x80000000", "-32768", "-128"})
#: AIA exposure offsets T_OBS - T_REC per wavelength (seconds; roughly like real data).
_AIA_TOBS = {94: 2.12, 131: 9.07, 171: 9.35, 193: 7.84, 211: 0.63, 304: 7.57, 335: 3.62,
             1600: 4.13, 1700: 16.72}  # fmt: skip
_AIA_EXPTIME = {94: 2.901, 131: 2.901, 171: 2.0, 193: 2.0, 211: 2.901, 304: 2.902,
                335: 2.901, 1600: 1.0, 1700: 1.0}  # fmt: skip
_AIA_CAMERA = {94: 4, 131: 1, 171: 3, 193: 2, 211: 2, 304: 4, 335: 1, 1600: 3, 1700: 3}
_CR_EPOCH_JD = 2398140.2270
_CR_DAYS = 27.2752316


def _is_aia(rec: Record) -> bool:
    """Whether the record belongs to an AIA series."""
    return rec.series.name.lower().startswith("aia.")


def _fmt_time(rec: Record, t: float, digits: int = 2) -> str:
    """A time in the series' zone style (ISO UTC for AIA, TAI otherwise)."""
    return format_iso_utc(t, digits) if _is_aia(rec) else format_tai(t, digits)


def _carrington(rec: Record) -> float:
    """Carrington rotation (fractional) of the record's time."""
    return (time_to_jd(rec.t_rec()) - _CR_EPOCH_JD) / _CR_DAYS


def _quality(rec: Record) -> int:
    """QUALITY word: 0 except for a deterministic ~1 % of records."""
    u = mix_hash(rec.series.sunum_base + 1, rec.recnum)
    if u < 0.01:
        return 0x00000400 if u < 0.007 else 0x80000000 | 0x400
    return 0


def _wavelnth(rec: Record) -> str:
    """WAVELNTH: prime key for AIA, constant for HMI."""
    if _is_aia(rec):
        return str(rec.value("WAVELNTH"))
    return "6173.0"


def _t_obs(rec: Record) -> str:
    """Observation time: a wavelength offset after T_REC for AIA, jitter for HMI."""
    t = rec.t_rec()
    if _is_aia(rec):
        w = rec.value("WAVELNTH")
        return _fmt_time(rec, t + _AIA_TOBS.get(w, 5.0) + 0.01 * mix_hash(2, rec.recnum))
    return _fmt_time(rec, t + 0.3 * mix_hash(2, rec.recnum) - 0.15)


def aia_file_time(rec: Record) -> str:
    """What an AIA export's file name prints for ``{T_REC:...}``: the observation time, cut to
    whole seconds. The 2020 recordings show it, not the slot: slot 13:30:02Z of 193 Å is file
    ``...T133009Z...`` (+7 s), of 335 Å ``+3 s``, the whole seconds of T_OBS - T_REC. Why the
    server prints it so is not known; the emulator reproduces what it sees."""
    w = rec.value("WAVELNTH")
    return format_iso_utc(math.floor(rec.t_rec() + _AIA_TOBS.get(w, 5.0)), 0)


def _harp(rec: Record) -> int:
    """The record's HARP number."""
    return rec.value("HARPNUM")


@cache
def _harp_shape(h: int) -> tuple[float, float, float, float]:
    """(latitude, width, height, longitude jitter) of a HARP, fixed over its life."""
    return (
        (unit_hash("harp-lat", h) * 2 - 1) * 30,
        4 + 12 * unit_hash("harp-w", h),
        3 + 8 * unit_hash("harp-hgt", h),
        (unit_hash("harp-lon", h) - 0.5) * 20,
    )


def _harp_geometry(rec: Record) -> tuple[float, float, float, float]:
    """(lat_min, lon_min, lat_max, lon_max) of the HARP at the record's time (Stonyhurst)."""
    sched = rec.series.harps
    assert sched is not None
    h = _harp(rec)
    start, end = sched.window(h)
    life_days = (end - start + 1) * 720 / DAY
    age_days = (rec.value("T_REC") - start) * 720 / DAY
    lat, width, height, jitter = _harp_shape(h)
    lon0 = max(-80.0, -13.2 * life_days / 2 + jitter)
    lon = min(85.0, lon0 + 13.2 * age_days)
    return lat - height / 2, lon - width / 2, lat + height / 2, lon + width / 2


def _noaa(rec: Record) -> int:
    """NOAA active region number matched to the HARP (0 when none)."""
    h = _harp(rec)
    if unit_hash("noaa-match", h) < 0.35:
        return 0
    # NOAA numbers ran from ~11060 in 2010 to ~12760 in 2020: tie them to the HARP number.
    return 11060 + round(h * 0.23)


def _usflux(rec: Record) -> str:
    """Total unsigned flux (Mx), varying smoothly with time."""
    h = _harp(rec)
    base = 10 ** (20.5 + 2 * unit_hash("flux", h))
    t = rec.value("T_REC")
    return f"{base * (1 + 0.2 * math.sin(t / 40.0)):.6e}"


def _fmt_g(x: float) -> str:
    """Default numeric formatting for float keywords."""
    return f"{x:.6f}"


_COMPUTED: dict[str, Callable[[Record], str]] = {
    "T_OBS": _t_obs,
    "DATE__OBS": _t_obs,
    "DATE": lambda r: format_iso_utc(r.t_rec() + 3 * DAY + 3600 * mix_hash(3, r.recnum)),
    "CAR_ROT": lambda r: str(math.floor(_carrington(r))),
    "CRLN_OBS": lambda r: _fmt_g(360.0 * (1.0 - (_carrington(r) % 1.0))),
    "CRLT_OBS": lambda r: _fmt_g(7.25 * math.sin(2 * math.pi * (time_to_jd(r.t_rec()) - 2456450.0)
                                                  / 365.25)),
    "QUALITY": lambda r: f"0x{_quality(r):08x}",
    "WAVELNTH": _wavelnth,
    "INSTRUME": lambda r: f"AIA_{_AIA_CAMERA.get(r.value('WAVELNTH'), 1)}" if _is_aia(r)
    else "HMI_FRONT2" if "45s" in r.series.name else "HMI_COMBINED",
    "CAMERA": lambda r: str(_AIA_CAMERA.get(r.value("WAVELNTH"), 1)) if _is_aia(r)
    else str(r.values[r.series.primekeys.index("CAMERA")]) if "CAMERA" in r.series.primekeys
    else "1",
    "EXPTIME": lambda r: f"{_AIA_EXPTIME.get(r.value('WAVELNTH'), 2.0):.6f}" if _is_aia(r)
    else "0.135",
    "FSN": lambda r: str(80982794 + (r.recnum % 10_000_000) * 8),
    "IMG_TYPE": lambda r: "LIGHT",
    "HARPNUM": lambda r: str(_harp(r)),
    "NOAA_AR": lambda r: str(_noaa(r)),
    "NOAA_NUM": lambda r: "1" if _noaa(r) else "0",
    "NOAA_ARS": lambda r: str(_noaa(r)) if _noaa(r) else "",
    "LAT_MIN": lambda r: _fmt_g(_harp_geometry(r)[0]),
    "LON_MIN": lambda r: _fmt_g(_harp_geometry(r)[1]),
    "LAT_MAX": lambda r: _fmt_g(_harp_geometry(r)[2]),
    "LON_MAX": lambda r: _fmt_g(_harp_geometry(r)[3]),
    "LAT_FWT": lambda r: _fmt_g((_harp_geometry(r)[0] + _harp_geometry(r)[2]) / 2),
    "LON_FWT": lambda r: _fmt_g((_harp_geometry(r)[1] + _harp_geometry(r)[3]) / 2),
    "USFLUX": _usflux,
    "T_FRST1": lambda r: format_tai(r.series.harps.window(_harp(r))[0] * 720.0)
    if r.series.harps else "MISSING",
    "T_LAST1": lambda r: format_tai(r.series.harps.window(_harp(r))[1] * 720.0)
    if r.series.harps else "MISSING",
    "T_FRST": lambda r: format_tai(r.series.harps.window(_harp(r))[0] * 720.0)
    if r.series.harps else "MISSING",
    "T_LAST": lambda r: format_tai(r.series.harps.window(_harp(r))[1] * 720.0)
    if r.series.harps else "MISSING",
    "N_PATCH": lambda r: str(r.series.harps.records(_harp(r))) if r.series.harps else "MISSING",
    "N_PATCH1": lambda r: str(r.series.harps.records(_harp(r))) if r.series.harps else "MISSING",
    "N_PATCHM": lambda r: "0",
    "DSUN_OBS": lambda r: f"{149597870691.0 * (1 - 0.0167 * math.cos(2 * math.pi * (time_to_jd(r.t_rec()) - 2451547.0) / 365.256)):.2f}",  # noqa: E501
    "RSUN_OBS": lambda r: _fmt_g(959.63 / (1 - 0.0167 * math.cos(2 * math.pi * (time_to_jd(r.t_rec()) - 2451547.0) / 365.256))),  # noqa: E501
}  # fmt: skip

_SPECIAL: dict[str, Callable[[Record], str]] = {
    "*recnum*": lambda r: str(r.recnum),
    "*sunum*": lambda r: str(r.sunum),
    "*online*": lambda r: "Y" if r.online else "N",
    "*spec*": lambda r: r.spec(),
    "*recdir*": lambda r: f"{r.sum_dir}/S{r.slot:05d}",
    "*logdir*": lambda r: "",
    "*retain*": lambda r: "2030.01.01",
    "*archive*": lambda r: "1" if r.series.meta.get("archive") else "0",
}


def time_key_names(rec: Record) -> frozenset[str]:
    """Upper-case names of the series' time-typed keywords."""
    return frozenset(k.name.upper() for k in rec.series.keywords if k.type == "time")


def key_value(rec: Record, name: str) -> str:
    """jsoc_info string value of keyword ``name`` of ``rec`` (KeyError when unknown)."""
    special = _SPECIAL.get(name.lower())
    if special is not None:
        return special(rec)
    kw = rec.series.keyword(name)
    if kw is None:
        raise KeyError(name)
    for p, v in zip(rec.series.pkeys, rec.values, strict=True):
        if p.name.upper() == kw.name.upper():
            return p.format(v)
    if kw.name.upper() == "T_REC_INDEX":
        return str(rec.value("T_REC"))
    fn = _COMPUTED.get(kw.name.upper())
    if fn is not None:
        return fn(rec)
    if kw.recscope == "constant":
        return kw.defval
    if kw.defval in _MISSING_DEFAULTS or kw.defval.startswith("-4712"):
        return "MISSING"
    return kw.defval
