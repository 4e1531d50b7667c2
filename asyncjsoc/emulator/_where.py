"""``[? where ?]`` filters: a small SQL-like expression language over keyword values.

Supported: comparisons ``= == != <> < <= > >=`` between keywords, numbers, quoted
strings and ``$(time)``; ``AND``/``OR``/``NOT`` and parentheses; and
``drms.image_exists(KEY)`` (the filter jsoc_fetch adds for QUALITY).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._model import DsError, Record, Series
from ._times import TimeSyntaxError, parse_time

__all__ = ["Predicate", "compile_where"]

Predicate = Callable[[Record], bool]
Value = float | str

_TOKEN = re.compile(
    r"\s*(?:(?P<num>[-+]?(?:0[xX][0-9a-fA-F]+|\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+))"
    r"|(?P<str>'[^']*'|\"[^\"]*\")"
    r"|(?P<time>\$\([^)]*\))"
    r"|(?P<op><=|>=|<>|!=|==|=|<|>)"
    r"|(?P<paren>[(),])"
    r"|(?P<name>[A-Za-z_*][\w.*]*))"
)
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq, "==": operator.eq, "!=": operator.ne, "<>": operator.ne,
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}  # fmt: skip


@dataclass
class _Tok:
    kind: str
    text: str


def _tokenize(text: str) -> list[_Tok]:
    """Split a where clause into tokens."""
    out: list[_Tok] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise DsError(f"invalid where clause near '{text[pos:]}'")
        kind = m.lastgroup or ""
        out.append(_Tok(kind, m.group(kind)))
        pos = m.end()
    return out


def _number(text: str) -> float:
    """A keyword string as a number (hex allowed; MISSING is NaN)."""
    s = text.strip()
    try:
        return float(int(s, 16)) if s.lower().startswith(("0x", "-0x")) else float(s)
    except ValueError:
        return math.nan


class _Parser:
    """Recursive-descent parser producing a predicate."""

    def __init__(self, series: Series, toks: list[_Tok]) -> None:
        self.series = series
        self.toks = toks
        self.i = 0
        self.time_keys = {k.name.upper() for k in series.keywords if k.type == "time"}

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise DsError("unexpected end of where clause")
        self.i += 1
        return tok

    def word(self, w: str) -> bool:
        tok = self.peek()
        if tok is not None and tok.kind == "name" and tok.text.upper() == w:
            self.i += 1
            return True
        return False

    def expr(self) -> Predicate:
        left = self.term()
        while self.word("OR"):
            right = self.term()
            left = (lambda a, b: lambda r: a(r) or b(r))(left, right)
        return left

    def term(self) -> Predicate:
        left = self.factor()
        while self.word("AND"):
            right = self.factor()
            left = (lambda a, b: lambda r: a(r) and b(r))(left, right)
        return left

    def factor(self) -> Predicate:
        if self.word("NOT"):
            inner = self.factor()
            return lambda r: not inner(r)
        tok = self.peek()
        if tok is not None and tok.kind == "paren" and tok.text == "(":
            self.i += 1
            inner = self.expr()
            self.expect(")")
            return inner
        if tok is not None and tok.kind == "name" and tok.text.lower() == "drms.image_exists":
            self.i += 1
            self.expect("(")
            key = self.take()
            self.expect(")")
            get = self.operand(key, None)
            return lambda r: not math.isnan(v := float(get(r))) and int(v) & 0x80000000 == 0
        return self.comparison()

    def expect(self, text: str) -> None:
        tok = self.take()
        if tok.text != text:
            raise DsError(f"expected '{text}' in where clause, found '{tok.text}'")

    def comparison(self) -> Predicate:
        a_tok = self.take()
        op_tok = self.take()
        if op_tok.kind != "op":
            raise DsError(f"expected a comparison after '{a_tok.text}'")
        b_tok = self.take()
        timeish = any(t.kind == "name" and t.text.upper() in self.time_keys for t in (a_tok, b_tok))
        a = self.operand(a_tok, timeish)
        b = self.operand(b_tok, timeish)
        op = _OPS[op_tok.text]

        def pred(r: Record) -> bool:
            x, y = a(r), b(r)
            if isinstance(x, float) and isinstance(y, float):
                if math.isnan(x) or math.isnan(y):
                    return False
                return op(x, y)
            return op(str(x), str(y))

        return pred

    def operand(self, tok: _Tok, timeish: bool | None) -> Callable[[Record], Value]:
        """A function giving the operand's value for a record."""
        if tok.kind == "num":
            v = _number(tok.text)
            return lambda r: v
        if tok.kind in ("str", "time"):
            raw = tok.text[2:-1] if tok.kind == "time" else tok.text[1:-1]
            if timeish or tok.kind == "time":
                try:
                    tv = parse_time(raw)
                except TimeSyntaxError as exc:
                    raise DsError(f"invalid time '{raw}' in where clause") from exc
                return lambda r: tv
            return lambda r: raw
        if tok.kind == "name":
            kw = self.series.keyword(tok.text)
            if kw is None:
                raise DsError(f"'{tok.text}' is not a keyword of series '{self.series.name}'")
            name = kw.name
            if kw.type == "time":
                return lambda r: _time_or_nan(r.key(name))
            if kw.type == "string":
                return lambda r: r.key(name)
            return lambda r: _number(r.key(name))
        raise DsError(f"unexpected '{tok.text}' in where clause")


def _time_or_nan(text: str) -> float:
    """Parse a keyword time value; MISSING and garbage are NaN."""
    try:
        return parse_time(text)
    except TimeSyntaxError:
        return math.nan


def compile_where(series: Series, clause: str) -> Predicate:
    """Compile a where clause for ``series`` into a record predicate (DsError if invalid)."""
    parser = _Parser(series, _tokenize(clause))
    if not parser.toks:
        return lambda r: True
    try:
        pred = parser.expr()
    except RecursionError:  # thousands of nested parentheses: a bad query, not a crash
        raise DsError("where clause nested too deeply") from None
    if parser.peek() is not None:
        raise DsError(f"unexpected '{parser.take().text}' in where clause")
    return pred
