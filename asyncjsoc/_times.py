"""JSOC time strings and durations: parse, convert (TAI/UTC with leap seconds), format.

Time strings come in the shapes the JSOC uses (protocol doc §8-§9):

* HMI style ``2010.07.25_13:30:00_TAI``, with trailing parts optional (``2010.07.25_13``);
* ISO style ``2010-07-25T13:30:00Z`` (at least the hour);
* the compact ``:A`` layouts of both, ``20170524_222400_TAI`` and ``2010-07-30T133009Z``.

The zone suffix is ``_TAI``, ``_UTC``/``_UT`` or ``Z``; **no suffix means UTC**. Parsing a string
into its parts (:func:`match_time`) is pure text work, except that a second 60 (``23:59:60``
UTC) is checked against ERFA's leap-second table; the conversion to
:class:`astropy.time.Time` knows about leap seconds.

Durations (cadences) are ``12s``, ``96m``, ``6h``, ``1d``, a bare number of seconds, an astropy
``Quantity`` with a time unit, a :class:`datetime.timedelta` or a plain number of seconds.
"""

from __future__ import annotations

import calendar
import math
import numbers
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Literal, TypeAlias, TypeGuard

if TYPE_CHECKING:
    from astropy.time import Time, TimeDelta

from asyncjsoc.exceptions import InvalidInputError

__all__ = [
    "DurationLike",
    "TimeLike",
    "TimeParts",
    "format_duration",
    "format_trec",
    "match_duration",
    "match_time",
    "parse_duration",
    "parse_time",
    "parse_time_parts",
    "to_tai_parts",
]

TimeLike: TypeAlias = "Time | datetime | str"
"""Anything :func:`parse_time` accepts."""

DurationLike: TypeAlias = object
"""Anything :func:`parse_duration` accepts: str, number, timedelta, astropy Quantity/TimeDelta."""

Zone = Literal["TAI", "UTC"]
Style = Literal["hmi", "iso"]

_ZONE = r"(?:_(?P<zone>TAI|UTC|UT)|(?P<z>Z))?"
_FRAC = r"(?P<frac>\.\d+)?"
_PATTERNS: tuple[tuple[Style, re.Pattern[str]], ...] = (
    # compact :A forms first: their digit runs would otherwise half-match the long forms
    ("hmi", re.compile(
        r"(?P<y>\d{4})(?P<mo>\d{2})(?P<d>\d{2})_(?P<h>\d{2})(?P<mi>\d{2})(?P<s>\d{2})"
        + _FRAC + _ZONE, re.IGNORECASE)),
    ("iso", re.compile(
        r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})T(?P<h>\d{2})(?P<mi>\d{2})(?P<s>\d{2})"
        + _FRAC + _ZONE, re.IGNORECASE)),
    ("hmi", re.compile(
        r"(?P<y>\d{4})\.(?P<mo>\d{1,2})\.(?P<d>\d{1,2})"
        r"(?:_(?P<h>\d{1,2})(?::(?P<mi>\d{1,2})(?::(?P<s>\d{1,2})" + _FRAC + r")?)?)?"
        + _ZONE, re.IGNORECASE)),
    ("iso", re.compile(
        r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
        r"T(?P<h>\d{2})(?::(?P<mi>\d{2})(?::(?P<s>\d{2})" + _FRAC + r")?)?"
        + _ZONE, re.IGNORECASE)),
)
# accepted by parse_time only: DRMS wants at least the hour in ISO times inside a record set
_ISO_DATE = re.compile(r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})" + _ZONE, re.IGNORECASE)

_TIME_FORMS = (
    "accepted forms: 2010.07.25_13:30:00_TAI (trailing parts optional), 2010-07-25T13:30:00Z, "
    "20100725_133000_TAI; suffix _TAI, _UTC or Z (none means UTC)"
)


@dataclass(frozen=True, slots=True, order=True)
class TimeParts:
    """A calendar time as written in a JSOC time string, validated but not converted.

    ``frac`` holds the decimal digits after the seconds (``""`` when none); ``style`` records
    whether it was written HMI-style (dots) or ISO-style, so it can be written back alike.
    """

    year: int
    month: int
    day: int
    hour: int = 0
    minute: int = 0
    second: int = 0
    frac: str = ""
    zone: Zone = "UTC"
    style: Style = "hmi"

    def __str__(self) -> str:
        """The canonical long form: every part present, zone explicit."""
        frac = f".{self.frac}" if self.frac else ""
        if self.style == "iso":
            zone = "Z" if self.zone == "UTC" else "_TAI"
            return (f"{self.year:04d}-{self.month:02d}-{self.day:02d}T"
                    f"{self.hour:02d}:{self.minute:02d}:{self.second:02d}{frac}{zone}")
        return (f"{self.year:04d}.{self.month:02d}.{self.day:02d}_"
                f"{self.hour:02d}:{self.minute:02d}:{self.second:02d}{frac}_{self.zone}")

    def to_datetime(self) -> datetime:
        """The calendar reading as a naive datetime (microseconds; not for leap seconds)."""
        micro = int((self.frac + "000000")[:6])
        return datetime(self.year, self.month, self.day, self.hour, self.minute, self.second,
                        micro)

    @classmethod
    def from_datetime(cls, value: datetime, *, zone: Zone = "TAI",
                      style: Style = "hmi") -> TimeParts:
        """The parts of a naive datetime read in ``zone``; microseconds kept, zeros trimmed."""
        frac = f"{value.microsecond:06d}".rstrip("0") if value.microsecond else ""
        return cls(value.year, value.month, value.day, value.hour, value.minute, value.second,
                   frac, zone, style)

    def to_time(self) -> Time:
        """This reading as an :class:`astropy.time.Time` in its own scale."""
        from astropy.time import Time

        seconds = self.second + (float("0." + self.frac) if self.frac else 0.0)
        with _quiet_erfa():
            try:
                return Time({"year": self.year, "month": self.month, "day": self.day,
                             "hour": self.hour, "minute": self.minute, "second": seconds},
                            format="ymdhms", scale=self.zone.lower())
            except ValueError as exc:
                raise InvalidInputError(f"invalid time {str(self)!r}: {exc}") from None


def match_time(text: str, pos: int = 0, *, allow_date_only: bool = False
               ) -> tuple[TimeParts, int] | None:
    """Match a JSOC time string at ``text[pos:]``; return its parts and the end offset.

    Returns ``None`` when no time starts there. Raises :class:`InvalidInputError` when the
    text has the shape of a time but a field is out of range (month 13, minute 61, ...).
    """
    best: tuple[Style, re.Match[str]] | None = None
    for style, pattern in _PATTERNS:
        m = pattern.match(text, pos)
        if m is not None and (best is None or m.end() > best[1].end()):
            best = (style, m)
    if best is None and allow_date_only:
        m = _ISO_DATE.match(text, pos)
        if m is not None:
            best = ("iso", m)
    if best is None:
        return None
    style, m = best
    return _parts_from_match(m, style), m.end()


def _parts_from_match(m: re.Match[str], style: Style) -> TimeParts:
    """Validate the fields of a matched time string and build its parts."""
    groups = m.groupdict()

    def num(name: str) -> int:
        """One optional numeric field (missing means 0)."""
        value = groups.get(name)
        return int(value) if value else 0

    zone_text = (groups.get("zone") or "").upper()
    zone: Zone = "TAI" if zone_text == "TAI" else "UTC"
    year, month, day = num("y"), num("mo"), num("d")
    hour, minute, second = num("h"), num("mi"), num("s")
    frac = (groups.get("frac") or "")[1:].rstrip("0")
    text = m.group(0)
    if not 1 <= year <= 9999 or not 1 <= month <= 12:
        raise InvalidInputError(f"invalid date in time {text!r}", hint=_TIME_FORMS)
    if not 1 <= day <= calendar.monthrange(year, month)[1]:
        raise InvalidInputError(f"invalid day of month in time {text!r}", hint=_TIME_FORMS)
    leap = second == 60 and zone == "UTC" and hour == 23 and minute == 59
    if hour > 23 or minute > 59 or (second > 59 and not leap):
        raise InvalidInputError(f"invalid time of day in {text!r}", hint=_TIME_FORMS)
    if leap and not _has_leap_second(year, month, day):
        raise InvalidInputError(
            f"{text!r}: UTC had no leap second at the end of {year:04d}-{month:02d}-{day:02d}",
            hint="second 60 exists only on the days a leap second was added (such as "
                 "2016-12-31); write 23:59:59 or the next day's 00:00:00")
    return TimeParts(year, month, day, hour, minute, second, frac, zone, style)


def _has_leap_second(year: int, month: int, day: int) -> bool:
    """Whether UTC added a leap second at the end of this day (ERFA's table); ``False``
    past the table's end, where no leap second is known."""
    if (year, month, day) == (9999, 12, 31):
        return False  # the day after is past what datetime holds, and past any table
    following = date(year, month, day) + timedelta(days=1)
    before = _tai_minus_utc(year, month, day)
    after = _tai_minus_utc(following.year, following.month, following.day)
    return after - before == 1.0


@lru_cache(maxsize=4096)
def _tai_minus_utc(year: int, month: int, day: int) -> float:
    """TAI - UTC in seconds at the start of a day (ERFA's leap-second table; past its end,
    the last value). ERFA's ufunc reports a dubious year in a status it returns, not as a
    warning: this runs in worker threads too, where changing the warning filters is not
    safe."""
    import erfa  # type: ignore[import-untyped]

    value, _status = erfa.ufunc.dat(year, month, day, 0.0)
    return float(value)


def fast_tai_datetime(text: str) -> datetime | None:
    """A JSOC time string as a naive TAI datetime, to the microsecond, where that needs no
    astropy: TAI times, and UTC times from 1972 on (whole-second TAI - UTC offsets from
    ERFA's table, leap seconds included); ``None`` for the rest (earlier UTC, finer
    fractions: ``to_tai_parts`` reads those). Planning reads every slot time of a listing
    (tens of thousands of UTC times for AIA) this way, in a worker thread, where it is
    safe.

    Raises
    ------
    InvalidInputError
        When the string is not a JSOC time, or is past year 9999 in TAI.
    """
    parts = parse_time_parts(text)
    if len(parts.frac) > 6 or (parts.zone == "UTC" and parts.year < 1972):
        return None
    micro = int(parts.frac.ljust(6, "0"))
    if parts.zone == "TAI":
        return datetime(parts.year, parts.month, parts.day, parts.hour, parts.minute,
                        parts.second, micro)
    leap = parts.second == 60
    utc = datetime(parts.year, parts.month, parts.day, parts.hour, parts.minute,
                   59 if leap else parts.second, micro)
    offset = _tai_minus_utc(parts.year, parts.month, parts.day)
    try:
        return utc + timedelta(seconds=offset + (1 if leap else 0))
    except OverflowError:
        raise InvalidInputError(f"{text!r} is after year 9999 in TAI",
                                hint=_TIME_FORMS) from None


def parse_time_parts(text: str) -> TimeParts:
    """Parse a whole string as a JSOC time into its parts (no conversion).

    Raises
    ------
    InvalidInputError
        When the string is not one of the accepted forms.
    """
    stripped = text.strip()
    found = match_time(stripped, allow_date_only=True)
    if found is None or found[1] != len(stripped):
        raise InvalidInputError(f"not a JSOC time: {text!r}", hint=_TIME_FORMS)
    return found[0]


def parse_time(value: TimeLike) -> Time:
    """Turn a time given as a JSOC string, ``datetime`` or astropy ``Time`` into a ``Time``.

    Parameters
    ----------
    value
        A JSOC time string (see the module docstring; no zone suffix means UTC), a
        ``datetime`` (naive means UTC; aware ones are converted) or a scalar astropy ``Time``
        (returned unchanged).

    Returns
    -------
    astropy.time.Time
        In the scale the input was written in (``tai`` for ``_TAI``, otherwise ``utc``).

    Raises
    ------
    InvalidInputError
        For anything that is not a valid time.
    """
    if _is_time(value):
        if not value.isscalar:
            raise InvalidInputError("expected a single time, got an array Time")
        return value
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return TimeParts.from_datetime(value, zone="UTC", style="iso").to_time()
    if isinstance(value, str):
        return parse_time_parts(value).to_time()
    raise InvalidInputError(f"not a time: {value!r}", hint=_TIME_FORMS)


def to_tai_parts(value: TimeLike | TimeParts) -> TimeParts:
    """The TAI HMI-style reading of a time, to the microsecond (no astropy for TAI input)."""
    parts = parse_time_parts(value) if isinstance(value, str) else value
    if isinstance(parts, TimeParts):
        if parts.zone == "TAI" and len(parts.frac) <= 6:
            return TimeParts(parts.year, parts.month, parts.day, parts.hour, parts.minute,
                             parts.second, parts.frac, "TAI", "hmi")
        return _parts_of(parts.to_time(), "tai")
    return _parts_of(parse_time(parts), "tai")


def _parts_of(time: Time, scale: Literal["tai", "utc"]) -> TimeParts:
    """Read a Time's calendar in ``scale`` to the microsecond (leap seconds read as :60)."""
    from astropy.time import Time

    if not time.isscalar:
        raise InvalidInputError("expected a single time, got an array Time")
    with _quiet_erfa():
        converted = getattr(time, scale)
        copy = Time(converted, precision=6)
        iso = copy.isot  # e.g. 2016-12-31T23:59:60.000000 during a leap second
    date, clock = iso.split("T")
    y, mo, d = (int(x) for x in date.split("-"))
    if not 1 <= y <= 9999:  # 9999.12.31_23:59:59_UTC is already in year 10000 in TAI
        raise InvalidInputError(
            f"a time that reads {iso.rstrip('0').rstrip('.')} in {scale.upper()} is outside "
            "the years DRMS writes (0001 to 9999)",
            hint="use an earlier end time: no data are that late")
    hms, _, micro = clock.partition(".")
    h, mi, s = (int(x) for x in hms.split(":"))
    zone: Zone = "TAI" if scale == "tai" else "UTC"
    return TimeParts(y, mo, d, h, mi, s, micro.rstrip("0"), zone, "hmi")


def format_trec(value: TimeLike | TimeParts, *, style: Literal["tai", "utc", "iso"] = "tai",
                compact: bool = False) -> str:
    """Format a time exactly as the JSOC writes ``T_REC`` values.

    Parameters
    ----------
    value
        Anything :func:`parse_time` accepts, or :class:`TimeParts`.
    style
        ``"tai"`` gives ``2017.05.24_22:24:00_TAI`` (HMI); ``"utc"`` gives
        ``2017.05.24_22:23:23_UTC``; ``"iso"`` gives ``2010-07-30T13:30:02Z`` (UTC, AIA).
        Fractional seconds are written to the microsecond with trailing zeros dropped.
    compact
        Apply the ``:A`` layout, which removes ``.`` and ``:`` (``20170524_222400_TAI``,
        ``2010-07-30T133002Z``), as used in job files and exported file names.

    Returns
    -------
    str
    """
    if isinstance(value, TimeParts):
        if style == "tai" and value.zone == "TAI" and len(value.frac) <= 6:
            parts = value
        else:
            parts = _parts_of(value.to_time(), "tai" if style == "tai" else "utc")
    else:
        parts = _parts_of(parse_time(value), "tai" if style == "tai" else "utc")
    long = TimeParts(parts.year, parts.month, parts.day, parts.hour, parts.minute, parts.second,
                     "", parts.zone, "iso" if style == "iso" else "hmi")
    text = str(long)
    if compact:
        text = text.replace(":", "") if style == "iso" else text.replace(".", "").replace(":", "")
    if parts.frac:
        # the decimal point of a fraction is kept even in the compact form, so it reads back
        cut = text.index("Z") if style == "iso" else text.rindex("_")
        text = f"{text[:cut]}.{parts.frac}{text[cut:]}"
    return text


@contextmanager
def _quiet_erfa() -> Iterator[None]:
    """Silence ERFA's 'dubious year' for dates past the leap-second table (2100s are fine)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*dubious year.*")
        warnings.filterwarnings("ignore", message=r".*leap-second.*")
        yield


# ---------------------------------------------------------------------------------- durations

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(
    r"\s*(?P<num>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)\s*(?P<unit>[smhd])?\s*")
_DURATION_FORMS = ("accepted forms (--cadence, or cadence= in Python): '12s', '96m', '6h', "
                   "'1d', a number of seconds; in Python also an astropy Quantity with a time "
                   "unit or a datetime.timedelta")
_DURATION_TOKEN = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?[smhd]?")
_MAX_SECONDS = 1e11  # about 3000 years; anything bigger is a typo


def match_duration(text: str, pos: int = 0) -> tuple[float, int] | None:
    """Match a duration like ``96m`` at ``text[pos:]`` (no spaces); return seconds and end."""
    m = _DURATION_TOKEN.match(text, pos)
    if m is None:
        return None
    return parse_duration(m.group(0)), m.end()


def _numpy_timedelta_seconds(value: object) -> float | None:
    """Seconds of a ``numpy.timedelta64`` (``None`` for NaT or one without a unit)."""
    import numpy as np

    assert isinstance(value, np.timedelta64)
    if np.isnat(value) or np.datetime_data(value.dtype)[0] == "generic":
        return None
    return float(value / np.timedelta64(1, "us")) / 1e6


def parse_duration(value: DurationLike) -> float:
    """Turn a cadence or duration into a positive number of seconds.

    Parameters
    ----------
    value
        ``"12s"``, ``"96m"``, ``"6h"``, ``"1d"`` (a bare number string means seconds),
        an astropy ``Quantity`` with a time unit or ``TimeDelta``, a ``timedelta``, or an
        ``int``/``float`` number of seconds.

    Returns
    -------
    float
        Seconds, > 0.

    Raises
    ------
    InvalidInputError
        Naming the value and the accepted forms when it is none of them, not positive, or
        absurdly large.
    """
    seconds: float | None = None
    if isinstance(value, bool):
        seconds = None
    elif isinstance(value, str):
        m = _DURATION.fullmatch(value)
        if m is not None:
            num, unit = m.group("num"), (m.group("unit") or "s").lower()
            if re.fullmatch(r"\d+", num) and len(num) < 20:
                seconds = float(int(num) * _UNITS[unit])
            else:
                seconds = float(num) * _UNITS[unit]
    elif type(value).__name__ == "timedelta64":  # numpy's: a Real by registration
        seconds = _numpy_timedelta_seconds(value)
    elif isinstance(value, numbers.Real):  # int, float, and numpy's scalars
        seconds = float(value)
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif _is_timedelta(value):
        seconds = float(value.to_value("s"))
    else:
        seconds = _quantity_seconds(value)
    if seconds is None or not math.isfinite(seconds) or not 0 < seconds <= _MAX_SECONDS:
        raise InvalidInputError(f"invalid cadence or duration {value!r}", hint=_DURATION_FORMS)
    return seconds


def _astropy_time_class(name: Literal["Time", "TimeDelta"]) -> type | None:
    """``astropy.time.Time`` or ``TimeDelta`` if astropy.time is imported, else ``None``.

    Looking it up instead of importing it keeps astropy.time (about 0.2 s, a third of the
    command line's start-up) out of runs that never meet a Time: a value can only be one if
    its maker imported astropy.time already.
    """
    module = sys.modules.get("astropy.time")
    return getattr(module, name, None) if module is not None else None


def _is_time(value: object) -> TypeGuard[Time]:
    """Whether ``value`` is an astropy ``Time`` (see :func:`_astropy_time_class`)."""
    cls = _astropy_time_class("Time")
    return cls is not None and isinstance(value, cls)


def _is_timedelta(value: object) -> TypeGuard[TimeDelta]:
    """Whether ``value`` is an astropy ``TimeDelta`` (see :func:`_astropy_time_class`)."""
    cls = _astropy_time_class("TimeDelta")
    return cls is not None and isinstance(value, cls)


def _quantity_seconds(value: object) -> float | None:
    """Seconds in an astropy Quantity with a time unit, or None for anything else."""
    from astropy import units as u

    if isinstance(value, u.Quantity) and value.isscalar:
        try:
            return float(value.to_value(u.s))
        except u.UnitConversionError:
            return None
    return None


def format_duration(seconds: float) -> str:
    """Write seconds the way DRMS reads durations: ``1d``, ``6h``, ``96m``, ``12s``, ``0.5s``.

    The largest unit that divides the value exactly is used; :func:`parse_duration` reads the
    result back to the same float.
    """
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidInputError(f"invalid duration {seconds!r} seconds")
    if float(seconds).is_integer():
        whole = int(seconds)
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if whole % size == 0:
                return f"{whole // size}{unit}"
        return f"{whole}s"
    return f"{seconds!r}s"
