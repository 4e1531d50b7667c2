"""DRMS record-set strings: parse into typed values and render them back canonically.

Grammar (protocol doc §9; enough to render and split queries, not to evaluate them)::

    recordset := subset ("," subset)*               all subsets name the same series
    subset    := series filter* segments?
    filter    := "[]" | "[$]" | "[^]" | "[:#" recnums "]"
               | "[?" sql "?]" | "[!" sql "!]"       kept verbatim
               | "[" item ("," item)* "]"
    item      := scalar | scalar "-" scalar ["@" duration] | time "/" duration ["@" duration]
    scalar    := time | integer | number | word
    segments  := "{" [name ("," name)*] "}"

Whitespace between tokens is ignored; :func:`str` renders without it (where clauses are
written ``[? sql ?]``), and re-parsing a rendered record set gives an equal value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from asyncjsoc._times import TimeParts, format_duration, match_duration, match_time
from asyncjsoc.exceptions import InvalidInputError, RecordSetSyntaxError

__all__ = [
    "Filter",
    "First",
    "IntValue",
    "Item",
    "Last",
    "NumberValue",
    "Range",
    "Recnums",
    "RecordSet",
    "Scalar",
    "Select",
    "Skip",
    "Span",
    "Subset",
    "TimeValue",
    "Where",
    "WordValue",
    "canonical_recordset",
    "identity_recordset",
    "is_time_item",
    "parse_items",
    "parse_recordset",
]


@dataclass(frozen=True, slots=True)
class TimeValue:
    """A time value, kept as written (style and zone) in canonical long form."""

    parts: TimeParts

    def __str__(self) -> str:
        """``2010.07.25_13:00:00_UTC``-style canonical text."""
        return str(self.parts)


@dataclass(frozen=True, slots=True)
class IntValue:
    """An integer prime-key value such as a HARPNUM or a wavelength."""

    value: int

    def __str__(self) -> str:
        """Decimal digits."""
        return str(self.value)


@dataclass(frozen=True, slots=True)
class NumberValue:
    """A number written with a decimal point or an exponent (``1.5``, ``1e5``).

    ``text`` is the number as the user wrote it, sent to the server unchanged (DRMS parses
    it by the key's type); when empty, Python's shortest round-tripping form is used.
    """

    value: float
    text: str = field(default="", compare=False)

    def __str__(self) -> str:
        """The number as written, else Python's shortest round-tripping form."""
        return self.text or repr(self.value)


@dataclass(frozen=True, slots=True)
class WordValue:
    """A bare word value (string prime keys)."""

    text: str

    def __str__(self) -> str:
        """The word itself."""
        return self.text


Scalar = TimeValue | IntValue | NumberValue | WordValue


@dataclass(frozen=True, slots=True)
class Range:
    """``start-end``, both ends included, optionally subsampled ``@cadence``: seconds for
    a time range; for a range of numbers, a whole number of index steps (``7300-7310@2``),
    kept as written in ``step_text``."""

    start: Scalar
    end: Scalar
    cadence: float | None = None
    step_text: str = field(default="", compare=False)

    def __str__(self) -> str:
        """``a-b``, ``a-b@96m`` or ``7300-7310@2``."""
        if self.step_text:
            return f"{self.start}-{self.end}@{self.step_text}"
        if (self.cadence is not None and self.cadence.is_integer()
                and not isinstance(self.start, TimeValue)
                and not isinstance(self.end, TimeValue)):
            return f"{self.start}-{self.end}@{int(self.cadence)}"  # an index step: no unit
        return f"{self.start}-{self.end}{_at(self.cadence)}"


@dataclass(frozen=True, slots=True)
class Span:
    """``start/duration``: from ``start``, excluding ``start + duration``; optional cadence."""

    start: TimeValue
    duration: float
    cadence: float | None = None

    def __str__(self) -> str:
        """``a/1d`` or ``a/1d@6h``."""
        return f"{self.start}/{format_duration(self.duration)}{_at(self.cadence)}"


Item = Scalar | Range | Span


def _at(cadence: float | None) -> str:
    """The ``@cadence`` suffix, or nothing."""
    return "" if cadence is None else f"@{format_duration(cadence)}"


@dataclass(frozen=True, slots=True)
class Select:
    """A prime-key bracket with one value, range or span, or a comma list of them."""

    items: tuple[Item, ...]

    def __str__(self) -> str:
        """``[a,b-c,...]``."""
        return "[" + ",".join(str(i) for i in self.items) + "]"


@dataclass(frozen=True, slots=True)
class Skip:
    """``[]``: no constraint on this prime key."""

    def __str__(self) -> str:
        """``[]``."""
        return "[]"


@dataclass(frozen=True, slots=True)
class First:
    """``[^]``: the first record."""

    def __str__(self) -> str:
        """``[^]``."""
        return "[^]"


@dataclass(frozen=True, slots=True)
class Last:
    """``[$]``: the last record."""

    def __str__(self) -> str:
        """``[$]``."""
        return "[$]"


@dataclass(frozen=True, slots=True)
class Recnums:
    """``[:#123]``, ``[:#1-#5,#9]``: records by record number (the text after ``:#`` kept as
    written)."""

    spec: str

    def __str__(self) -> str:
        """``[:#spec]``."""
        return f"[:#{self.spec}]"


@dataclass(frozen=True, slots=True)
class Where:
    """``[? sql ?]`` (``negate=False``) or ``[! sql !]``; the SQL is kept verbatim."""

    sql: str
    negate: bool = False

    def __str__(self) -> str:
        """``[? sql ?]`` or ``[! sql !]``."""
        mark = "!" if self.negate else "?"
        return f"[{mark} {self.sql} {mark}]"


Filter = Select | Skip | First | Last | Recnums | Where


@dataclass(frozen=True, slots=True)
class Subset:
    """One comma-separated part of a record set: series, filters, optional segment list."""

    series: str
    filters: tuple[Filter, ...] = ()
    segments: tuple[str, ...] | None = None

    def __str__(self) -> str:
        """``series[...][...]{a,b}``."""
        segs = "" if self.segments is None else "{" + ",".join(self.segments) + "}"
        return self.series + "".join(str(f) for f in self.filters) + segs

    @property
    def positional(self) -> tuple[Filter, ...]:
        """The prime-key brackets in order (where clauses left out)."""
        return tuple(f for f in self.filters if not isinstance(f, Where))


@dataclass(frozen=True, slots=True)
class RecordSet:
    """A parsed record set: one or more subsets of one series.

    ``series``, ``filters`` and ``segments`` describe the first subset, which for the usual
    single-subset record set is the whole thing.
    """

    subsets: tuple[Subset, ...]

    def __post_init__(self) -> None:
        if not self.subsets:
            raise InvalidInputError("a record set needs at least one subset")

    def __str__(self) -> str:
        """The canonical DRMS string."""
        return ",".join(str(s) for s in self.subsets)

    @property
    def series(self) -> str:
        """The series name as written in the first subset."""
        return self.subsets[0].series

    @property
    def filters(self) -> tuple[Filter, ...]:
        """The filters of the first subset."""
        return self.subsets[0].filters

    @property
    def segments(self) -> tuple[str, ...] | None:
        """The segment list of the first subset (``None``: all segments)."""
        return self.subsets[0].segments


# ------------------------------------------------------------------------------------ parser

_SERIES = re.compile(r"[A-Za-z][A-Za-z0-9_]*\.[A-Za-z0-9_]+")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ISO_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}(?![\dT])")
"""An ISO date without a time, which DRMS does not read as a time (protocol doc §9)."""
_NUMBER = re.compile(r"\d+\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+")
_INT = re.compile(r"\d+")
_RECNUM_ITEM = r"(?:\^|\$|\d+(?:-#?\d+|/\d+)?(?:@\d+)?)"
# After ":#": the first item's '#' is consumed; every later one carries its own, as DRMS
# requires ([:#5-#9,#12], [:#5/3], [:#^]).
_RECNUMS = re.compile(rf"{_RECNUM_ITEM}(?:\s*,\s*#{_RECNUM_ITEM})*")
_SLOT_INDEX = re.compile(r"#\d+(?![\w.])")
"""A prime key's slot index (``[#13300000]``, ``[#13300000-#13300002]``): sent as written."""
# Concrete on purpose: a placeholder such as "end@cadence" reads as an email address, and
# error texts are shown through mask_emails.
_SYNTAX_HINT = ("record sets look like hmi.sharp_cea_720s[7302][2018.09.08_00:00_TAI/1d@96m]"
                "[? QUALITY=0 ?]{Bp,Br}; see http://jsoc.stanford.edu/ajax/RecordSetHelp.html")


def _plain_number(value: Scalar) -> Scalar:
    """``value`` with a number's text as written dropped (its canonical form)."""
    return replace(value, text="") if isinstance(value, NumberValue) else value


def _plain_item(item: Item) -> Item:
    """``item`` with every number in its canonical form."""
    if isinstance(item, Range):
        return replace(item, start=_plain_number(item.start), end=_plain_number(item.end))
    if isinstance(item, Span):
        return item
    return _plain_number(item)


def canonical_recordset(rs: RecordSet) -> str:
    """``rs`` rendered with every number in Python's shortest form (``1e5`` as
    ``100000.0``, ``1.50`` as ``1.5``): one text for one selection however its numbers were
    written, as asyncjsoc rendered every record set before numbers were sent as written
    (state fingerprints are taken from it)."""
    subsets = tuple(
        replace(sub, filters=tuple(
            replace(f, items=tuple(_plain_item(i) for i in f.items)) if isinstance(f, Select)
            else f for f in sub.filters))
        for sub in rs.subsets)
    return str(replace(rs, subsets=subsets))


def identity_recordset(rs: RecordSet) -> str:
    """:func:`canonical_recordset` with what DRMS does not tell apart folded too: series
    and segment names in lower case (DRMS reads both case-insensitively), segments in one
    order, no spaces inside record-number lists. Two spellings of one selection give one
    text; different selections never do."""
    subsets = []
    for sub in parse_recordset(canonical_recordset(rs)).subsets:
        filters = tuple(Recnums("".join(f.spec.split())) if isinstance(f, Recnums) else f
                        for f in sub.filters)
        segments = (None if sub.segments is None
                    else tuple(sorted({s.lower() for s in sub.segments})))
        subsets.append(replace(sub, series=sub.series.lower(), filters=filters,
                               segments=segments))
    return str(replace(rs, subsets=tuple(subsets)))


_JSOC_INFO_WORD = re.compile(r"\*\*[A-Za-z]*\*\*")
_SEGMENT_WORD_HINT = ("to get every segment, leave out the segment list ({...}, --segments, "
                      "segments=); to name some, list them, e.g. {Br,Bp,Bt}")


def segment_word_hint(name: str) -> str | None:
    """The fix to offer when a segment is given as ``**ALL**``, ``**NONE**`` or the like
    (words of jsoc_info's ``seg`` parameter, not segment names); ``None`` for other names."""
    return _SEGMENT_WORD_HINT if _JSOC_INFO_WORD.match(name) else None


class _Parser:
    """A hand-written recursive-descent parser keeping track of the offset for errors."""

    def __init__(self, text: str, *, bracketed: bool = True) -> None:
        self.text = text
        self.pos = 0
        self.bracketed = bracketed  # values inside [...] (a record set), or alone (--primekey)

    def fail(self, message: str, pos: int | None = None,
             hint: str | None = None) -> RecordSetSyntaxError:
        """An error pointing at ``pos`` (default: the current offset)."""
        return RecordSetSyntaxError(message, text=self.text,
                                    position=self.pos if pos is None else pos,
                                    hint=hint or _SYNTAX_HINT)

    def peek(self) -> str:
        """The current character, or ``""`` at the end."""
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_space(self) -> None:
        """Step over whitespace."""
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def expect(self, char: str, what: str, opened_at: int | None = None) -> None:
        """Consume ``char`` or fail naming what was expected."""
        self.skip_space()
        if self.peek() == char:
            self.pos += 1
            return
        if opened_at is not None and self.peek() == "":
            raise self.fail(f"unbalanced {self.text[opened_at]!r}: missing {char!r}", opened_at)
        raise self.fail(f"expected {what}, found {self._found()}")

    def _found(self) -> str:
        """A description of the current character for messages."""
        return "end of text" if self.peek() == "" else repr(self.peek())

    def parse(self) -> RecordSet:
        """The whole text."""
        self.skip_space()
        if self.peek() == "":
            raise self.fail("empty record set")
        subsets = [self.subset()]
        while True:
            self.skip_space()
            if self.peek() == "":
                break
            if self.peek() != ",":
                raise self.fail(f"unexpected character {self.peek()!r}")
            self.pos += 1
            self.skip_space()
            start = self.pos
            subset = self.subset()
            if subset.series.lower() != subsets[0].series.lower():
                raise self.fail(f"subsets of one record set must name the same series "
                                f"({subsets[0].series!r} vs {subset.series!r})", start)
            subsets.append(subset)
        return RecordSet(tuple(subsets))

    def subset(self) -> Subset:
        """``series filter* segments?``."""
        m = _SERIES.match(self.text, self.pos)
        if m is None:
            if self.peek() in ("", "[", "{", ","):
                raise self.fail("empty series name")
            raise self.fail(f"bad series name starting at {self._found()}",
                            hint="series names look like hmi.sharp_cea_720s or aia.lev1_euv_12s")
        series = m.group(0)
        self.pos = m.end()
        filters: list[Filter] = []
        segments: tuple[str, ...] | None = None
        while True:
            self.skip_space()
            char = self.peek()
            if char == "[":
                if segments is not None:
                    raise self.fail("filters must come before the {segment} list")
                filters.append(self.filter())
            elif char == "{":
                if segments is not None:
                    raise self.fail("only one {segment} list is allowed")
                segments = self.segment_list()
            elif char in ("", ","):
                return Subset(series, tuple(filters), segments)
            elif char in "]}":
                raise self.fail(f"unbalanced {char!r}: no matching opening bracket")
            else:
                raise self.fail(f"unexpected character {char!r} after {series!r}")

    def filter(self) -> Filter:
        """One bracket, starting at its ``[``."""
        opened = self.pos
        self.pos += 1
        char = self.peek()
        if char in ("?", "!"):
            return self.where(opened, char)
        self.skip_space()
        char = self.peek()
        if char == "]":
            self.pos += 1
            return Skip()
        if char in ("$", "^"):
            self.pos += 1
            self.expect("]", f"']' after {char!r}", opened)
            return Last() if char == "$" else First()
        if self.text.startswith(":#", self.pos):
            self.pos += 2
            m = _RECNUMS.match(self.text, self.pos)
            if m is None:
                raise self.fail("expected record numbers after ':#'")
            self.pos = m.end()
            if self.peek() == ",":
                raise self.fail("each record number starts with '#': [:#1-#5,#9]")
            self.expect("]", "']' after the record numbers", opened)
            return Recnums(m.group(0))
        items = [self.item(opened)]
        while True:
            self.skip_space()
            if self.peek() == ",":
                self.pos += 1
                items.append(self.item(opened))
                continue
            if self.peek() == "=" and len(items) == 1 and isinstance(items[0], WordValue):
                raise self.fail(
                    f"'{items[0]}=...' brackets are not read here: give the prime keys' "
                    "values in their order, one bracket each ([7302][2018.09.08_00:00_TAI]), "
                    f"or use a where clause ([? {items[0]}=... ?])")
            self.expect("]", "',' or ']'", opened)
            return Select(tuple(items))

    def where(self, opened: int, mark: str) -> Where:
        """``[? sql ?]`` or ``[! sql !]``; ``pos`` is on the mark."""
        end = self.text.find(mark + "]", self.pos + 1)
        if end < 0:
            raise self.fail(f"unbalanced '[{mark}': missing '{mark}]'", opened)
        sql = self.text[self.pos + 1:end].strip()
        if not sql:
            raise self.fail("empty where clause", opened)
        self.pos = end + 2
        return Where(sql, negate=mark == "!")

    def item(self, opened: int) -> Item:
        """A value, ``a-b[@c]`` or ``t/d[@c]``."""
        self.skip_space()
        start_pos = self.pos
        start = self.scalar(opened)
        self.skip_space()
        char = self.peek()
        if char == "-":
            self.pos += 1
            self.skip_space()
            end = self.scalar(opened)
            if not isinstance(start, TimeValue) and not isinstance(end, TimeValue):
                step = self.index_step()
                return Range(start, end, None if step is None else float(step),
                             "" if step is None else str(step))
            return Range(start, end, self.cadence())
        if char == "/":
            if not isinstance(start, TimeValue):
                raise self.fail("'/' spans need a time before the '/'", start_pos)
            self.pos += 1
            self.skip_space()
            return Span(start, self.duration("a duration after '/'"), self.cadence())
        if char == "@":
            raise self.fail("a cadence ('@12m') needs a range: "
                            "2012.01.01_TAI-2012.01.02_TAI@12m or 2012.01.01_TAI/1d@12m")
        return start

    def cadence(self) -> float | None:
        """An optional ``@cadence``."""
        self.skip_space()
        if self.peek() != "@":
            return None
        self.pos += 1
        self.skip_space()
        return self.duration("a cadence after '@' such as 12s, 96m, 6h or 1d")

    def index_step(self) -> int | None:
        """An optional ``@N`` after a range of numbers: every N-th value (no unit)."""
        self.skip_space()
        if self.peek() != "@":
            return None
        self.pos += 1
        self.skip_space()
        at = self.pos
        match = re.compile(r"\d+(?![\w.])").match(self.text, self.pos)
        if match is None or int(match.group()) < 1:
            raise self.fail(f"expected a whole number of steps after '@' in a range of "
                            f"numbers (7300-7310@2), found {self._found()}", at)
        self.pos = match.end()
        return int(match.group())

    def duration(self, what: str) -> float:
        """A duration token such as ``96m``."""
        at = self.pos
        try:
            found = match_duration(self.text, self.pos)
        except InvalidInputError as exc:
            raise self.fail(f"bad duration: {exc.message}", at, hint=exc.hint) from None
        if found is None:
            raise self.fail(f"expected {what}, found {self._found()}", at)
        value, self.pos = found
        return value

    def scalar(self, opened: int) -> Scalar:
        """A time, number or word."""
        at = self.pos
        try:
            found = match_time(self.text, self.pos)
        except InvalidInputError as exc:
            raise self.fail(exc.message, at, hint=exc.hint) from None
        if found is not None:
            self.pos = found[1]
            return TimeValue(found[0])
        date = _ISO_DATE_ONLY.match(self.text, self.pos)
        if date is not None:  # else read as the integer range 2012-01 and refused later
            raise self.fail(
                f"the ISO time {date.group(0)!r} needs at least the hour in a record set",
                at, hint=f"write {date.group(0)}T00:00Z (UTC), or "
                         f"{date.group(0).replace('-', '.')}_00:00_TAI")
        for pattern in (_NUMBER, _INT, _NAME, _SLOT_INDEX):
            m = pattern.match(self.text, self.pos)
            if m is not None:
                self.pos = m.end()
                text = m.group(0)
                if pattern is _NUMBER:
                    return NumberValue(float(text), text)
                if pattern is _INT:
                    return IntValue(int(text))
                return WordValue(text)
        if self.peek() == "":
            if not self.bracketed:
                raise self.fail("a value is missing at the end")
            raise self.fail("unbalanced '[': missing ']'", opened)
        raise self.fail(f"bad character {self.peek()!r} in a prime-key value")

    def segment_list(self) -> tuple[str, ...]:
        """``{a,b}``; ``pos`` is on the ``{``. A name given twice counts once (segment names
        are case-insensitive in DRMS), so plans count each file once."""
        opened = self.pos
        self.pos += 1
        self.skip_space()
        names: list[str] = []
        if self.peek() == "}":
            self.pos += 1
            return ()
        while True:
            self.skip_space()
            m = _NAME.match(self.text, self.pos)
            if m is None:
                if self.peek() == "":
                    raise self.fail("unbalanced '{': missing '}'", opened)
                word = _JSOC_INFO_WORD.match(self.text, self.pos)
                if word is not None:  # **ALL**, **NONE**: jsoc_info's words, not record-set syntax
                    raise self.fail(f"{word.group(0)!r} is not a segment name",
                                    hint=_SEGMENT_WORD_HINT)
                raise self.fail(f"bad segment name starting at {self._found()}")
            if m.group(0).lower() not in (n.lower() for n in names):
                names.append(m.group(0))
            self.pos = m.end()
            self.skip_space()
            if self.peek() == ",":
                self.pos += 1
                continue
            self.expect("}", "',' or '}'", opened)
            return tuple(names)


def parse_recordset(text: str) -> RecordSet:
    """Parse a DRMS record-set string.

    Parameters
    ----------
    text
        For example ``hmi.sharp_cea_720s[7302][2018.09.08_00:00:00_TAI/1d@96m]{Br}``.

    Returns
    -------
    RecordSet
        ``str()`` of it is the canonical form, which parses back to an equal value.

    Raises
    ------
    RecordSetSyntaxError
        With the 0-based ``position`` of the problem and a ``hint``.
    """
    if not isinstance(text, str):
        raise InvalidInputError(f"a record set must be a string, not {type(text).__name__}")
    return _Parser(text).parse()


def parse_items(text: str) -> tuple[Item, ...]:
    """Parse the inside of a prime-key bracket (``7300-7310`` or ``171,193``) into items.

    Raises
    ------
    RecordSetSyntaxError
        With the position inside ``text``.
    """
    parser = _Parser(text, bracketed=False)
    items = [parser.item(0)]
    while True:
        parser.skip_space()
        if parser.peek() == "":
            return tuple(items)
        if parser.peek() != ",":
            raise parser.fail(f"unexpected character {parser.peek()!r} in a prime-key value")
        parser.pos += 1
        parser.skip_space()
        if parser.peek() == "":
            raise parser.fail("a value is missing after the last ','")
        items.append(parser.item(0))


def is_time_item(item: Item) -> bool:
    """Whether an item is a time value, a time range or a span."""
    if isinstance(item, Span | TimeValue):
        return True
    return isinstance(item, Range) and isinstance(item.start, TimeValue)
