"""DRMS time values for the emulator: parsing, formatting, TAI/UTC and durations.

Times are plain floats: seconds of TAI since 1993.01.01_00:00:00_TAI (the MDI/HMI
epoch). All arithmetic is integer/float arithmetic on that scale; leap seconds come
from a built-in table (no new leap second has been announced after 2017-01-01).
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right

__all__ = [
    "DAY",
    "TimeSyntaxError",
    "format_iso_utc",
    "format_tai",
    "parse_duration",
    "parse_time",
    "time_to_jd",
]

DAY = 86400

#: (UTC date of change, TAI-UTC from that date on), from the IERS leap-second list.
_LEAPS: tuple[tuple[int, int, int, int], ...] = (
    (1972, 1, 1, 10), (1972, 7, 1, 11), (1973, 1, 1, 12), (1974, 1, 1, 13),
    (1975, 1, 1, 14), (1976, 1, 1, 15), (1977, 1, 1, 16), (1978, 1, 1, 17),
    (1979, 1, 1, 18), (1980, 1, 1, 19), (1981, 7, 1, 20), (1982, 7, 1, 21),
    (1983, 7, 1, 22), (1985, 7, 1, 23), (1988, 1, 1, 24), (1990, 1, 1, 25),
    (1991, 1, 1, 26), (1992, 7, 1, 27), (1993, 7, 1, 28), (1994, 7, 1, 29),
    (1996, 1, 1, 30), (1997, 7, 1, 31), (1999, 1, 1, 32), (2006, 1, 1, 33),
    (2009, 1, 1, 34), (2012, 7, 1, 35), (2015, 7, 1, 36), (2017, 1, 1, 37),
)  # fmt: skip

_TT_MINUS_TAI = 32.184


class TimeSyntaxError(ValueError):
    """A time or duration string that DRMS would not accept."""


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days from 1993-01-01 to the proleptic Gregorian date y-m-d."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468 - 8401


def _civil_from_days(z: int) -> tuple[int, int, int]:
    """Inverse of :func:`_days_from_civil`."""
    z += 719468 + 8401
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return (y + (m <= 2), m, d)


#: UTC "naive" seconds (days*86400 + seconds of day) at which each offset starts.
_LEAP_UTC = [_days_from_civil(y, m, d) * DAY for (y, m, d, _) in _LEAPS]
_LEAP_OFF = [off for (*_, off) in _LEAPS]
#: The same instants on the TAI scale.
_LEAP_TAI = [u + off for u, off in zip(_LEAP_UTC, _LEAP_OFF, strict=True)]


def _tai_minus_utc_at_utc(naive_utc: float) -> int:
    """TAI-UTC for a UTC instant given as naive seconds since 1993-01-01."""
    i = bisect_right(_LEAP_UTC, naive_utc) - 1
    return _LEAP_OFF[i] if i >= 0 else _LEAP_OFF[0]


def utc_to_tai(naive_utc: float) -> float:
    """Convert naive UTC seconds since 1993-01-01 (leap seconds not counted) to TAI."""
    return naive_utc + _tai_minus_utc_at_utc(naive_utc)


def _split_tai_to_utc(t: float) -> tuple[float, bool]:
    """Naive UTC seconds for TAI ``t``, and whether ``t`` falls inside a leap second."""
    i = bisect_right(_LEAP_TAI, t) - 1
    if i < 0:
        return t - _LEAP_OFF[0], False
    # The leap second inserted just before _LEAP_UTC[i] occupies TAI [_LEAP_TAI[i]-1, _LEAP_TAI[i]).
    if i + 1 < len(_LEAP_TAI) and t >= _LEAP_TAI[i + 1] - 1:
        return _LEAP_UTC[i + 1] - 1, True
    return t - _LEAP_OFF[i], False


def tai_from_fields(
    y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: float = 0.0, zone: str = "UTC"
) -> float:
    """TAI seconds for calendar fields in ``zone`` (TAI, TT, UTC/UT/Z)."""
    naive = _days_from_civil(y, mo, d) * DAY + h * 3600 + mi * 60 + s
    zone = zone.upper()
    if zone == "TAI":
        return float(naive)
    if zone == "TT":
        return naive - _TT_MINUS_TAI
    if zone in ("UTC", "UT", "Z"):
        # A leap second written as :60 belongs to the offset in force before the change.
        if s >= 60:
            return utc_to_tai(naive - 1) + 1
        return utc_to_tai(naive)
    raise TimeSyntaxError(f"unknown time zone {zone!r}")


def _fields(naive: float, digits: int) -> tuple[int, int, int, int, int, str]:
    """Calendar fields of naive seconds, seconds rounded and formatted to ``digits``."""
    scale = 10**digits
    total = math.floor(naive * scale + 0.5)
    days, rem = divmod(total, DAY * scale)
    y, m, d = _civil_from_days(days)
    h, rem = divmod(rem, 3600 * scale)
    mi, rem = divmod(rem, 60 * scale)
    sec, frac = divmod(rem, scale)
    secs = f"{sec:02d}" + (f".{frac:0{digits}d}" if digits else "")
    return y, m, d, h, mi, secs


def format_tai(t: float, digits: int = 0) -> str:
    """Format TAI seconds as DRMS does for HMI: ``2017.05.24_22:24:00_TAI``."""
    y, m, d, h, mi, secs = _fields(t, digits)
    return f"{y:04d}.{m:02d}.{d:02d}_{h:02d}:{mi:02d}:{secs}_TAI"


def format_iso_utc(t: float, digits: int = 0) -> str:
    """Format TAI seconds as an ISO UTC string: ``2010-07-30T13:30:02Z`` (``:60`` in leaps)."""
    naive, leap = _split_tai_to_utc(t)
    if leap:
        frac = t - math.floor(t)
        y, m, d, h, mi, secs = _fields(naive, 0)
        sfrac = f"{frac:.{digits}f}"[1:] if digits else ""
        return f"{y:04d}-{m:02d}-{d:02d}T{h:02d}:{mi:02d}:60{sfrac}Z"
    y, m, d, h, mi, secs = _fields(naive, digits)
    return f"{y:04d}-{m:02d}-{d:02d}T{h:02d}:{mi:02d}:{secs}Z"


_NUM = r"(\d+(?:\.\d*)?)"
_HMI_RE = re.compile(
    r"(?P<y>-?\d{1,4})\.(?P<mo>\d{1,2})(?:\.(?P<d>\d{1,2})"
    r"(?:_(?P<h>\d{1,2})(?::(?P<mi>\d{1,2})(?::(?P<s>\d{1,2}(?:\.\d*)?))?)?)?)?"
    r"(?:_?(?P<zone>[A-Za-z]+))?"
)
_ISO_RE = re.compile(
    r"(?P<y>\d{4})-(?P<mo>\d{1,2})-(?P<d>\d{1,2})"
    r"(?:[T ](?P<h>\d{1,2})(?::(?P<mi>\d{1,2})(?::(?P<s>\d{1,2}(?:\.\d*)?))?)?)?"
    r"(?:(?P<z>Z)|_(?P<zone>[A-Za-z]+))?"
)


def match_time(text: str, pos: int = 0) -> tuple[float, int] | None:
    """Match a DRMS time at ``text[pos:]``; return (TAI seconds, end position) or None."""
    for rx in (_ISO_RE, _HMI_RE):
        m = rx.match(text, pos)
        if m is None:
            continue
        g = m.groupdict()
        zone = "Z" if g.get("z") else (g.get("zone") or "UTC")
        try:
            t = tai_from_fields(
                int(g["y"]),
                int(g["mo"]),
                int(g["d"] or 1),
                int(g["h"] or 0),
                int(g["mi"] or 0),
                float(g["s"] or 0.0),
                zone,
            )
        except TimeSyntaxError:
            return None
        if not (1 <= int(g["mo"]) <= 12 and 1 <= int(g["d"] or 1) <= 31):
            return None
        return t, m.end()
    return None


def parse_time(text: str) -> float:
    """Parse a whole DRMS time string (HMI style, partial, or ISO; no zone means UTC)."""
    s = text.strip()
    got = match_time(s)
    if got is None or got[1] != len(s):
        raise TimeSyntaxError(f"invalid time {text!r}")
    return got[0]


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": float(DAY), "w": 7.0 * DAY}
_DUR_RE = re.compile(_NUM + r"([smhdw]?)")


def match_duration(text: str, pos: int = 0) -> tuple[float, int] | None:
    """Match a duration such as ``30m``, ``1d``, ``90.0s`` at ``text[pos:]``."""
    m = _DUR_RE.match(text, pos)
    if m is None:
        return None
    return float(m.group(1)) * _UNITS[m.group(2) or "s"], m.end()


def parse_duration(text: str) -> float:
    """Parse a whole duration string into seconds (units s, m, h, d, w; bare = seconds)."""
    s = text.strip()
    got = match_duration(s)
    if got is None or got[1] != len(s):
        raise TimeSyntaxError(f"invalid duration {text!r}")
    return got[0]


#: Julian date of 1993-01-01T00:00:00 on the TAI scale.
_JD_EPOCH = 2448988.5


def time_to_jd(t: float) -> float:
    """Approximate Julian date of TAI seconds (good to well under a second)."""
    return _JD_EPOCH + t / DAY
