"""The emulator's built-in series, from recorded series_struct bodies (package data).

Recorded (real JSOC, 2020): hmi.M_45s, hmi.V_45s, hmi.sharp_720s, hmi.sharp_cea_720s,
aia.lev1_euv_12s. Derived from them with realistic changes: hmi.M_720s, hmi.Ic_45s,
hmi.B_720s, aia.lev1_uv_24s. All series hold data up to the end of 2025.
"""

from __future__ import annotations

import copy
import json
import math
from functools import cache
from importlib import resources
from typing import Any

from ._harps import harp_schedule
from ._model import Keyword, Link, PrimeKey, Segment, Series
from ._times import parse_time

__all__ = ["END_TAI", "builtin_series"]

#: Records exist up to (not including) this instant in every series.
END_TAI = parse_time("2026.01.01_00:00:00_TAI")
_HMI_EPOCH = parse_time("1993.01.01_00:00:00_TAI")
_AIA_WAVES_EUV = (94, 131, 171, 193, 211, 304, 335)
_AIA_WAVES_UV = (1600, 1700)
_AIA_FILES = {"image": "image_lev1.fits", "spikes": "spikes.fits"}
#: Storage unit numbers of series i are SUNUM_BLOCK * (i + 1) + recnum // unitsize.
SUNUM_BLOCK = 10_000_000_000


@cache
def _recorded() -> dict[str, Any]:
    """The recorded series_struct bodies, keyed by DB series name."""
    text = resources.files("asyncjsoc.emulator").joinpath("series_structs.json").read_text()
    data: dict[str, Any] = json.loads(text)
    data.pop("_source", None)
    return data


def _keywords(rows: list[list[Any]]) -> tuple[Keyword, ...]:
    """Keyword rows [name, type, recscope, defval, units, note(, linkinfo)] as Keywords."""
    return tuple(
        Keyword(r[0], r[1], r[4], r[5], r[2], r[3], r[6] if len(r) > 6 else None) for r in rows
    )


def _segments(rows: list[list[Any]], files: dict[str, str] | None = None) -> tuple[Segment, ...]:
    """Segment rows [name, type, units, protocol, dims, note] as Segments."""
    files = files or {}
    return tuple(
        Segment(r[0], r[3], r[1], r[2], r[4], r[5], files.get(r[0], f"{r[0]}.fits")) for r in rows
    )


def _slot_range(epoch: float, step: float, first: str) -> tuple[int, int]:
    """(first slot, last slot) from a first record time to END_TAI."""
    lo = math.floor((parse_time(first) - epoch) / step + 0.5)
    hi = math.ceil((END_TAI - epoch) / step) - 1
    return lo, hi


def _retype(rows: list[list[Any]], changes: dict[str, str]) -> list[list[Any]]:
    """Copy keyword rows, replacing the defval of the named keywords."""
    out = copy.deepcopy(rows)
    for r in out:
        if r[0] in changes:
            r[3] = changes[r[0]]
    return out


def _rename_seg_keys(rows: list[list[Any]], old: str, new: str) -> list[list[Any]]:
    """Rename per-segment keywords (``old_bzero`` → ``new_bzero``)."""
    out = copy.deepcopy(rows)
    for r in out:
        if r[0].startswith(old + "_"):
            r[0] = new + r[0][len(old) :]
    return out


def _seg_keys(segs: list[list[Any]]) -> list[list[Any]]:
    """cparms/bzero/bscale keyword rows for a list of segments."""
    rows: list[list[Any]] = []
    for i, s in enumerate(segs):
        rows.append([f"cparms_sg{i:03d}", "string", "variable", "compress Rice", "none", ""])
        rows.append([f"{s[0]}_bzero", "double", "variable", "0", "none", ""])
        rows.append([f"{s[0]}_bscale", "double", "variable", "0.01", "none", ""])
    return rows


def _make(
    name: str,
    body: dict[str, Any],
    pkeys: tuple[PrimeKey, ...],
    first: str,
    first_recnum: int,
    index: int,
    files: dict[str, str] | None = None,
) -> Series:
    """Build a Series from a (recorded or derived) body."""
    tk = next(p for p in pkeys if p.kind == "slot")
    lo, hi = _slot_range(tk.epoch, tk.step, first)
    harps = None
    if any(p.kind == "harp" for p in pkeys):
        harps = harp_schedule(hi)
        lo = min(harps.starts)
    head = body["head"]
    return Series(
        name=name,
        note=head["note"],
        pkeys=pkeys,
        keywords=_keywords(body["keywords"]),
        segments=_segments(body["segments"], files),
        links=tuple(Link(*row) for row in body["links"]),
        meta={k: head[k] for k in
              ("retention", "stagingretention", "unitsize", "archive", "tapegroup")},
        first_recnum=first_recnum,
        sunum_base=SUNUM_BLOCK * (index + 1),
        slot_lo=lo,
        slot_hi=hi,
        harps=harps,
    )  # fmt: skip


def _hmi_slot(step: float) -> PrimeKey:
    """The HMI T_REC prime key."""
    return PrimeKey("T_REC", "slot", epoch=_HMI_EPOCH, step=step)


def _aia_slot(step: float) -> PrimeKey:
    """The AIA T_REC prime key (slots on whole TAI multiples, shown as ISO UTC)."""
    return PrimeKey("T_REC", "slot", epoch=_HMI_EPOCH, step=step, utc=True)


def _derived_bodies(rec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Bodies of the series that have no recording, derived from recorded ones."""
    m45, v45, sharp, euv = rec["hmi.M_45s"], rec["hmi.V_45s"], rec["hmi.sharp_720s"], rec[
        "aia.lev1_euv_12s"]  # fmt: skip
    m720 = copy.deepcopy(m45)
    m720["head"].update(note="magnetograms with a cadence of 720 seconds.", unitsize=16)
    m720["keywords"] = _retype(m45["keywords"], {"T_REC_step": "720.0", "CADENCE": "720.0"})
    m720["head"]["primekeysinfo"][0]["step"] = "720.0"

    ic45 = copy.deepcopy(v45)
    ic45["head"]["note"] = "continuum intensities with a cadence of 45 seconds."
    ic45["segments"] = [["continuum", "short", "DN/s", "fits", "4096x4096", "continuum intensity"]]
    ic45["keywords"] = _retype(
        _rename_seg_keys(v45["keywords"], "Dopplergram", "continuum"),
        {"CONTENT": "CONTINUUM INTENSITY", "BUNIT": "DN/s"},
    )

    b720 = copy.deepcopy(m45)
    b720["head"].update(
        note="Milne-Eddington inversion results with disambiguation, 720 s cadence", unitsize=1
    )
    skip = {"magnetogram", "bitmap", "Dopplergram", "continuum"}
    b720["segments"] = [
        [s[0], s[1], s[2], s[3], "4096x4096", s[5]] for s in sharp["segments"] if s[0] not in skip
    ]
    base = [r for r in m45["keywords"] if not r[0].startswith(("cparms_", "magnetogram_"))]
    inv = [r for r in sharp["keywords"] if r[0].startswith(("INV", "AMB"))]
    b720["keywords"] = (
        _seg_keys(b720["segments"])
        + _retype(
            base, {"T_REC_step": "720.0", "CADENCE": "720.0", "CONTENT": "INVERSION", "BUNIT": ""}
        )
        + inv
    )

    uv24 = copy.deepcopy(euv)
    uv24["head"]["note"] = "AIA Level 1, 24 second cadence"
    uv24["keywords"] = _retype(euv["keywords"], {"T_REC_step": "24.000000"})
    return {"hmi.M_720s": m720, "hmi.Ic_45s": ic45, "hmi.B_720s": b720, "aia.lev1_uv_24s": uv24}


@cache
def builtin_series() -> tuple[Series, ...]:
    """Every built-in series (built once per process; Series objects are immutable in use)."""
    rec = _recorded()
    der = _derived_bodies(rec)
    cam2 = PrimeKey("CAMERA", "int", values=(2,))
    cam1 = PrimeKey("CAMERA", "int", values=(1,))
    harp = PrimeKey("HARPNUM", "harp")
    out = [
        _make("hmi.M_45s", rec["hmi.M_45s"], (_hmi_slot(45), cam2),
              "2010.03.29_08:00:00_TAI", 3760477, 0),
        _make("hmi.V_45s", rec["hmi.V_45s"], (_hmi_slot(45), cam2),
              "2010.03.29_08:00:00_TAI", 3760347, 1),
        _make("hmi.Ic_45s", der["hmi.Ic_45s"], (_hmi_slot(45), cam2),
              "2010.04.30_00:00:00_TAI", 3760211, 2),
        _make("hmi.M_720s", der["hmi.M_720s"], (_hmi_slot(720), cam1),
              "2010.04.30_19:48:00_TAI", 184951, 3),
        _make("hmi.B_720s", der["hmi.B_720s"], (_hmi_slot(720),),
              "2010.05.01_00:00:00_TAI", 96, 4),
        _make("hmi.sharp_720s", rec["hmi.sharp_720s"], (harp, _hmi_slot(720)),
              "2010.05.01_00:00:00_TAI", 6284846, 5),
        _make("hmi.sharp_cea_720s", rec["hmi.sharp_cea_720s"], (harp, _hmi_slot(720)),
              "2010.05.01_00:00:00_TAI", 6300254, 6),
        _make("aia.lev1_euv_12s", rec["aia.lev1_euv_12s"],
              (_aia_slot(12), PrimeKey("WAVELNTH", "int", values=_AIA_WAVES_EUV)),
              "2010-05-13T00:00:02Z", 27842744, 7, _AIA_FILES),
        _make("aia.lev1_uv_24s", der["aia.lev1_uv_24s"],
              (_aia_slot(24), PrimeKey("WAVELNTH", "int", values=_AIA_WAVES_UV)),
              "2010-05-13T00:00:14Z", 27842701, 8, _AIA_FILES),
    ]  # fmt: skip
    return tuple(out)
