"""Metadata query language: parse, print, check against a catalog's keys, evaluate (pure, no I/O).

Grammar (EBNF; keywords ``and or not in`` are case-insensitive; precedence ``not`` > ``and`` > ``or``;
``docs/query.md`` is the reference with examples)::

    query      = or_expr ;
    or_expr    = and_expr , { "or" , and_expr } ;
    and_expr   = not_expr , { "and" , not_expr } ;
    not_expr   = "not" , not_expr | "(" , or_expr , ")" | condition ;
    condition  = KEY , OP , value
               | KEY , [ "not" ] , "in" , "(" , value , { "," , value } , ")"
               | KEY , [ "not" ] , "in" , value , ".." , value
               | "exists" , KEY
               | "in" , "dataset" , NAME ;
    OP         = "=" | "!=" | "<" | "<=" | ">" | ">=" | "~" ;

``exists`` and ``dataset`` are keywords only where the grammar expects them, so they remain usable as
metadata keys (``exists = 1``). Values are quoted strings (always strings) or bare words, typed like
``metadata.parse_literal``: int, float, date, datetime, else string (``DL1``, ``0.12.3``, ``dl1_*.h5``).

Semantics (``osa_grid.catalog.querysql`` compiles the same rules to SQL):

- Values have two kinds: *numbers* (int, float) and *text* (str, date, datetime). A comparison is
  true only if the file has the key and the stored value is of the literal's kind; otherwise it is
  false, ``!=`` included.
- Numbers: int against int compares exactly; any other pair compares as double-precision floats.
- Text: both sides are compared through ``metadata.sortable_text`` (ISO text for dates and
  datetimes) by code point, so ``night >= 2024-01-01`` and ``night = "2024-01-01"`` work on dates.
- ``~`` is a case-sensitive glob on text: ``*`` any run of characters, ``?`` one character.
- ``in`` is true if any equality is; ``not in`` is true if the stored value is of the kind of at
  least one listed value and equal to none (so ``k not in (v)`` is ``k != v``).
- ``k in a..b`` is ``k >= a and k <= b`` (both ends included, both bounds of one kind, ``a <= b``);
  ``k not in a..b`` is true if the stored value is of the bounds' kind and outside the range.
- ``exists k`` is true if the file has the key ``k``, whatever its value.
- ``in dataset NAME`` is true for the files of the dataset (a catalog concept: ``evaluate`` refuses it,
  the catalog resolves it).
- ``not`` is plain negation: ``not run_id = 5`` matches files without ``run_id``.

A *query template* (``parse_template``, the side inputs of a transformation) has placeholders where values
go, ``run_id = {drs4_run}``: it is parsed once and ``bind`` puts values in as typed literals, never as text.

``check_against_catalog`` refuses, with the position of the offending key or value, a key no file has
and a literal that can never compare with what the key holds (``run_id = DL1`` when run_id is an int).
"""

from __future__ import annotations

import difflib
import enum
import math
import operator
import re
import string
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any, Literal, cast

from osa_grid.core import templates
from osa_grid.core.metadata import KEY_PATTERN, MetaValue, parse_literal, sortable_text, value_type
from osa_grid.errors import BadInput, QuerySyntaxError, TemplateError

Op = Literal["=", "!=", "<", "<=", ">", ">=", "~"]
OPERATORS: tuple[Op, ...] = ("=", "!=", "<", "<=", ">", ">=", "~")
KEYWORDS = frozenset({"and", "or", "not", "in"})
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_DEPTH = 100
DATASET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$")
RANGE_MARK = ".."
Kind = Literal["number", "text"]


class QueryMismatch(QuerySyntaxError):
    """A well-formed query that does not fit the catalog: an unknown key, a value of the wrong type."""


# ---------------------------------------------------------------------------------------- AST


@dataclass(frozen=True)
class Span:
    """Where a condition was written (offsets in the query text), for carets under errors.

    Not part of a node's equality or hash: the same condition written elsewhere is the same condition.
    """

    key: int
    values: tuple[int, ...] = ()


@dataclass(frozen=True)
class Comparison:
    key: str
    op: Op
    value: MetaValue
    span: Span | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_query_key(self.key)
        if self.op not in OPERATORS:
            raise BadInput(f"unknown query operator {self.op!r}")
        check_query_value(self.value)
        if self.op == "~" and not isinstance(self.value, str):
            raise BadInput(f"glob '~' needs a string pattern, not {self.value!r}")


@dataclass(frozen=True)
class InList:
    key: str
    values: tuple[MetaValue, ...]
    negated: bool = False
    span: Span | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_query_key(self.key)
        object.__setattr__(self, "values", tuple(self.values))
        if not self.values:
            raise BadInput(f"'{self.key} in (...)' needs at least one value")
        for value in self.values:
            check_query_value(value)


@dataclass(frozen=True)
class Range:
    """``key in low..high``: both ends included."""

    key: str
    low: MetaValue
    high: MetaValue
    negated: bool = False
    span: Span | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_query_key(self.key)
        check_query_value(self.low)
        check_query_value(self.high)
        if value_kind(self.low) != value_kind(self.high):
            raise BadInput(
                f"range bounds must both be numbers or both be text: {literal_text(self.low)} is "
                f"{_kind_text(self.low)}, {literal_text(self.high)} is {_kind_text(self.high)}"
            )
        low, high = cast(tuple[Any, Any], _comparable(self.low, self.high))
        if low > high:
            raise BadInput(
                f"empty range: {literal_text(self.low)} comes after {literal_text(self.high)} "
                "(write the lower bound first)"
            )


@dataclass(frozen=True)
class Exists:
    key: str
    span: Span | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_query_key(self.key)


@dataclass(frozen=True)
class InDataset:
    """The files of a named dataset (its frozen file list, or its query)."""

    name: str
    span: Span | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_dataset_name(self.name)


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", _check_items("and", self.items))


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", _check_items("or", self.items))


@dataclass(frozen=True)
class Not:
    item: Node


Leaf = Comparison | InList | Range | Exists | InDataset
KeyedLeaf = Comparison | InList | Range | Exists
Node = Comparison | InList | Range | Exists | InDataset | And | Or | Not
LEAF_TYPES = (Comparison, InList, Range, Exists, InDataset)


def _check_items(name: str, items: tuple[Node, ...]) -> tuple[Node, ...]:
    # A one-item And/Or would print as its item and not parse back to itself.
    items = tuple(items)
    if len(items) < 2:
        raise BadInput(f"'{name}' needs at least two items, got {len(items)}")
    return items


def check_query_key(key: str) -> str:
    """A key usable in a query: a valid metadata key that is not a keyword."""
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        raise BadInput(
            f"{key!r} is not a valid key: letters, digits, '_' and '.', starting with a letter or '_'"
        )
    if key.lower() in KEYWORDS:
        raise BadInput(f"{key!r} is a keyword of the query language and cannot be used as a key")
    return key


def check_dataset_name(name: str) -> str:
    """A dataset name: a letter, then letters, digits, '_', '-' or '.'; not a keyword."""
    if not isinstance(name, str) or not DATASET_NAME.match(name):
        raise BadInput(
            f"{name!r} is not a valid dataset name: a letter, then up to 127 letters, digits, '_', '-' or '.'"
        )
    if name.lower() in KEYWORDS:
        raise BadInput(f"{name!r} is a keyword of the query language and cannot name a dataset")
    return name


def check_query_value(value: object, written: str | None = None) -> MetaValue:
    """A literal usable in a query: a metadata value that every catalog database can bind."""
    value_type(value)  # refuses bools and foreign types
    shown = written or repr(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise BadInput(f"number {shown} is out of range (finite double-precision numbers only)")
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise BadInput(f"integer {shown} is out of range (64-bit signed integers only)")
    if isinstance(value, str) and "\x00" in value:
        raise BadInput("query strings cannot contain a NUL character")
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")  # lone surrogates (undecodable bytes from a shell) cannot be bound
        except UnicodeEncodeError as exc:
            raise BadInput(f"query string {shown} is not valid text: {exc.reason}") from exc
    return cast(MetaValue, value)


def value_kind(value: MetaValue) -> Kind:
    """Numbers compare with numbers, text (strings, dates, datetimes) with text."""
    return "number" if isinstance(value, int | float) else "text"


def type_kind(vtype: str) -> Kind:
    return "number" if vtype in ("int", "float") else "text"


def _kind_text(value: MetaValue) -> str:
    return "a number" if value_kind(value) == "number" else "text"


# ------------------------------------------------------------------------------------ tokenizer

WORD_CHARS = frozenset(string.ascii_letters + string.digits + "_-.*?/:+")
_OP_CHARS = frozenset("=!<>~")
_QUOTES = "\"'"
_PUNCTUATION: dict[str, Literal["(", ")", ","]] = {"(": "(", ")": ")", ",": ","}
_OP_HINTS = {"==": "use '='", "=>": "did you mean '>='?", "=<": "did you mean '<='?", "<>": "use '!='"}
_SLOT = re.compile(r"(?P<slot>\{[^{}]*\})")
_QUOTED_SLOT = re.compile(r"(?P<quote>[\"'])(?P<slot>\{[^{}]*\})(?P=quote)")


@dataclass(frozen=True)
class _Token:
    # "slot": a placeholder of a query template; "literal": the typed value bound to it.
    kind: Literal["word", "string", "op", "(", ")", ",", "slot", "literal", "end"]
    text: str  # source text; for strings, the unescaped value; for slots and literals, the placeholder
    pos: int
    as_text: bool = False  # a slot whose value enters as text ("{name}" quoted, or {name:spec})
    value: object = None  # a literal's value

    def is_keyword(self, word: str) -> bool:
        return self.kind == "word" and self.text.lower() == word

    def describe(self) -> str:
        if self.kind == "end":
            return "the end of the query"
        if self.kind == "string":
            return f"the string {self.text!r}"
        if self.kind in ("slot", "literal"):
            return f"the placeholder {self.text}"
        return repr(self.text)


def _tokenize(text: str, template: bool = False) -> Iterator[_Token]:
    """Tokens on demand, so that the leftmost error is the one reported.

    In a ``template``, ``{name}`` and ``{name:spec}`` (alone or as a whole quoted string) are slots.
    """
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char.isspace():
            pos += 1
            continue
        if char in _PUNCTUATION:
            token, end = _Token(_PUNCTUATION[char], char, pos), pos + 1
        elif template and (slot := _read_slot(text, pos)) is not None:
            token, end = slot
        elif char in _QUOTES:
            token, end = _read_string(text, pos, template)
        elif char in _OP_CHARS:
            token, end = _read_operator(text, pos)
        elif char in WORD_CHARS:
            token, end = _read_word(text, pos)
        else:
            raise QuerySyntaxError(f"unexpected character {char!r}", text, pos)
        yield token
        pos = end
    yield _Token("end", "", len(text))


def _read_slot(text: str, start: int) -> tuple[_Token, int] | None:
    """A placeholder, bare (``{run_id}``) or quoted whole (``"{source}"``); None if there is none here."""
    quoted = _QUOTED_SLOT.match(text, start)
    match = quoted or _SLOT.match(text, start)
    if match is None:
        if text[start] in "{}":
            raise QuerySyntaxError(f"unmatched {text[start]!r} (a placeholder is {{name}})", text, start)
        return None
    placeholder = match.group("slot")
    try:
        (found,) = templates.fields(placeholder)
    except TemplateError as exc:
        raise QuerySyntaxError(f"bad placeholder {placeholder}: {exc}", text, start) from exc
    end = match.end()
    if not quoted and (_glued(text, start - 1) or _glued(text, end)):
        raise QuerySyntaxError(
            f"placeholder {placeholder} is part of a word: a placeholder stands for a whole value "
            "(key = {name}), whose type it keeps",
            text,
            start,
        )
    return _Token("slot", placeholder, start, as_text=bool(quoted or found.spec)), end


def _glued(text: str, pos: int) -> bool:
    # Dots may touch a placeholder: they make ranges ({low}..{high}).
    return 0 <= pos < len(text) and text[pos] in WORD_CHARS and text[pos] != "."


def _read_string(text: str, start: int, template: bool = False) -> tuple[_Token, int]:
    quote, pos, chars = text[start], start + 1, []
    while pos < len(text) and text[pos] != quote:
        char = text[pos]
        if template and char in "{}":
            if text[pos + 1 : pos + 2] != char:
                raise QuerySyntaxError(
                    'a placeholder in quotes must be the whole string ("{name}"); write {{ and }} for braces',
                    text,
                    pos,
                )
            pos += 1  # {{ and }} are braces
        elif char == "\\" and pos + 1 < len(text):
            char = text[pos + 1]
            if char not in _QUOTES + "\\":
                raise QuerySyntaxError(
                    f"unknown escape '\\{char}' (only \\\\, \\\" and \\' are allowed)", text, pos
                )
            pos += 1
        if char == "\x00":
            raise QuerySyntaxError("NUL character in a string", text, pos)
        chars.append(char)
        pos += 1
    if pos >= len(text):
        raise QuerySyntaxError("unterminated string", text, start)
    return _Token("string", "".join(chars), start), pos + 1


def _read_operator(text: str, start: int) -> tuple[_Token, int]:
    end = start
    while end < len(text) and text[end] in _OP_CHARS:
        end += 1
    op = text[start:end]
    if op not in OPERATORS:
        hint = _OP_HINTS.get(op, "operators are = != < <= > >= ~")
        raise QuerySyntaxError(f"unknown operator {op!r}: {hint}", text, start)
    return _Token("op", op, start), end


def _read_word(text: str, start: int) -> tuple[_Token, int]:
    end = start
    while end < len(text) and text[end] in WORD_CHARS:
        end += 1
    return _Token("word", text[start:end], start), end


# --------------------------------------------------------------------------------------- parser


def parse(text: str) -> Node:
    """Parse a query; raises ``QuerySyntaxError`` with the position of the offending token."""
    return _Parser(text, _tokenize(text)).query()


def _split_range(token: _Token) -> tuple[_Token, _Token] | None:
    """A word holding ``..`` as the text before and after it (either may be empty)."""
    if token.kind != "word" or RANGE_MARK not in token.text:
        return None
    at = token.text.index(RANGE_MARK)
    after = at + len(RANGE_MARK)
    return (
        _Token("word", token.text[:at], token.pos),
        _Token("word", token.text[after:], token.pos + after),
    )


class _Parser:
    def __init__(self, text: str, tokens: Iterator[_Token]) -> None:
        self.text = text
        self.tokens = tokens
        self.current = next(self.tokens)
        self.following: _Token | None = None  # one more token of look-ahead, read on demand
        self.depth = 0

    def peek(self) -> _Token:
        return self.current

    def peek_second(self) -> _Token:
        if self.following is None:
            self.following = self.current if self.current.kind == "end" else next(self.tokens)
        return self.following

    def advance(self) -> _Token:
        token = self.current
        if token.kind != "end":
            self.current = self.following if self.following is not None else next(self.tokens)
            self.following = None
        return token

    def error(self, message: str, token: _Token) -> QuerySyntaxError:
        return QuerySyntaxError(message, self.text, token.pos)

    def query(self) -> Node:
        if self.peek().kind == "end":
            raise QuerySyntaxError("empty query", self.text, 0)
        node = self.or_expr()
        token = self.peek()
        if token.kind == ")":
            raise self.error("unbalanced parentheses: ')' without a matching '('", token)
        if token.kind != "end":
            raise self.error(f"trailing input {token.describe()}: expected 'and', 'or' or the end", token)
        return node

    def or_expr(self) -> Node:
        items = [self.and_expr()]
        while self.peek().is_keyword("or"):
            self.advance()
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_expr(self) -> Node:
        items = [self.not_expr()]
        while self.peek().is_keyword("and"):
            self.advance()
            items.append(self.not_expr())
        return items[0] if len(items) == 1 else And(tuple(items))

    def not_expr(self) -> Node:
        token = self.peek()
        if not (token.is_keyword("not") or token.kind == "("):
            return self.condition()
        # Bounded so that a pathological query gives a syntax error, not a RecursionError.
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"query nested deeper than {MAX_DEPTH} levels", token)
        self.advance()
        node = Not(self.not_expr()) if token.kind == "word" else self.group_rest(token)
        self.depth -= 1
        return node

    def group_rest(self, opening: _Token) -> Node:
        node = self.or_expr()
        token = self.advance()
        if token.kind == ")":
            return node
        if token.kind == "end":
            raise self.error("unbalanced parentheses: '(' is never closed", opening)
        raise self.error(f"expected 'and', 'or' or ')', found {token.describe()}", token)

    def condition(self) -> Node:
        token = self.peek()
        if token.is_keyword("in"):
            return self.dataset(self.advance())
        if token.is_keyword("exists") and self._is_key_word(self.peek_second()):
            self.advance()
            key_token = self.advance()
            return Exists(self.key(key_token), span=Span(key_token.pos))
        key_token = self.advance()
        key = self.key(key_token)
        token = self.advance()
        if token.kind == "op":
            return self.comparison(key, key_token, token)
        if token.is_keyword("in"):
            return self.membership(key, key_token, token, negated=False)
        if token.is_keyword("not"):
            in_token = self.advance()
            if in_token.is_keyword("in"):
                return self.membership(key, key_token, in_token, negated=True)
            raise self.error(f"expected 'in' after 'not', found {in_token.describe()}", in_token)
        raise self.error(
            f"expected an operator (= != < <= > >= ~ in, not in) after {key!r}, found {token.describe()}",
            token,
        )

    @staticmethod
    def _is_key_word(token: _Token) -> bool:
        return token.kind == "word" and token.text.lower() not in KEYWORDS

    def key(self, token: _Token) -> str:
        if token.kind != "word":
            what = "keys are not quoted" if token.kind == "string" else f"found {token.describe()}"
            raise self.error(f"expected a key, {what}", token)
        try:
            return check_query_key(token.text)
        except BadInput as exc:
            raise self.error(str(exc), token) from exc

    def dataset(self, in_token: _Token) -> InDataset:
        word = self.advance()
        if not word.is_keyword("dataset"):
            raise self.error(
                "expected 'dataset' after 'in' (a condition that starts with 'in' is 'in dataset NAME'), "
                f"found {word.describe()}",
                word,
            )
        name = self.advance()
        if name.kind not in ("word", "string"):
            raise self.error(f"expected a dataset name after 'in dataset', found {name.describe()}", name)
        try:
            return InDataset(check_dataset_name(name.text), span=Span(name.pos))
        except BadInput as exc:
            raise self.error(str(exc), name) from exc

    def comparison(self, key: str, key_token: _Token, op_token: _Token) -> Comparison:
        value_token = self.advance()
        value = self.value(value_token, op_token)
        if op_token.text == "~" and not isinstance(value, str):
            raise self.error(
                f"glob '~' needs a string pattern, not {value_type(value)} {value_token.text!r}; "
                "quote it to match text",
                value_token,
            )
        span = Span(key_token.pos, (value_token.pos,))
        return Comparison(key, cast(Op, op_token.text), value, span=span)

    def membership(self, key: str, key_token: _Token, in_token: _Token, negated: bool) -> InList | Range:
        if self.peek().kind == "(":
            values, positions = self.value_list()
            return InList(key, values, negated=negated, span=Span(key_token.pos, positions))
        return self.range_rest(key, key_token, in_token, negated)

    def value_list(self) -> tuple[tuple[MetaValue, ...], tuple[int, ...]]:
        opening = self.advance()
        first = self.advance()
        values, positions = [self.value(first, opening)], [first.pos]
        while (token := self.advance()).kind == ",":
            item = self.advance()
            values.append(self.value(item, token))
            positions.append(item.pos)
        if token.kind == "end":
            raise self.error("unbalanced parentheses: '(' is never closed", opening)
        if token.kind != ")":
            raise self.error(f"expected ',' or ')' in the list, found {token.describe()}", token)
        return tuple(values), tuple(positions)

    def range_rest(self, key: str, key_token: _Token, in_token: _Token, negated: bool) -> Range:
        """``low..high``: the tokenizer reads ``2024-01-01..2024-03-31`` as one word, split here."""
        first = self.advance()
        split = _split_range(first)
        if split is not None:
            low_token, after = split
            if not low_token.text:
                raise self.error(f"missing the lower bound before {RANGE_MARK!r}", first)
        else:
            low_token, marker = first, self.peek()
            if first.kind not in ("word", "string", "literal") or not marker.text.startswith(RANGE_MARK):
                raise self.error(
                    f"expected '(' or a range low..high after 'in', found {first.describe()}", first
                )
            after = cast(tuple[_Token, _Token], _split_range(self.advance()))[1]
        dots = _Token("word", RANGE_MARK, after.pos - len(RANGE_MARK))
        high_token = after if after.text else self.advance()
        low = self.value(low_token, in_token)
        high = self.value(high_token, dots)
        try:
            return Range(key, low, high, negated, span=Span(key_token.pos, (low_token.pos, high_token.pos)))
        except BadInput as exc:
            raise self.error(str(exc), low_token) from exc

    def value(self, token: _Token, after: _Token) -> MetaValue:
        if token.kind == "string":
            return token.text
        if token.kind == "literal":
            try:
                return check_query_value(token.value)
            except BadInput as exc:
                raise self.error(
                    f"{token.text} = {_shown(token.value)} is no query value: {exc}", token
                ) from exc
        if token.kind != "word" or token.text.lower() in KEYWORDS:
            raise self.error(f"missing value after {after.text!r}, found {token.describe()}", token)
        try:
            return check_query_value(parse_literal(token.text), written=token.text)
        except BadInput as exc:
            raise self.error(str(exc), token) from exc


# ------------------------------------------------------------------------------------ templates

# What a placeholder reads as when a template is checked without values (a production on load).
UNKNOWN_VALUE = "x"


@dataclass(frozen=True)
class QueryTemplate:
    """A query with placeholders for values (``data_level = CAL and run_id = {drs4_run}``), parsed once.

    A placeholder stands for one whole value: ``{name}`` enters as the value itself, of its own type;
    ``{name:spec}`` and ``"{name}"`` (the whole quoted string) enter as the value's text. ``bind`` puts
    each value into the query as a literal token: a value is never read as query text, so whatever it
    holds (quotes, ``or``, ``not``) it is compared as one value and cannot change the query's shape.
    """

    text: str
    tokens: tuple[_Token, ...]
    # The query with every placeholder read as the text "x": what checks on load see.
    shape: Node

    def bind(self, values: Mapping[str, object], what: str = "query template") -> Node:
        """The query with each placeholder's value as a typed literal; ``BadInput`` names what cannot be."""
        return _Parser(self.text, iter(_bound(self.tokens, values, what))).query()


@lru_cache(maxsize=256)
def parse_template(text: str) -> QueryTemplate:
    """Parse a query template; a syntax error, or a placeholder where no value goes, is a QuerySyntaxError."""
    tokens = tuple(_tokenize(text, template=True))
    shape = _Parser(text, iter(_bound(tokens, None, "query template"))).query()
    return QueryTemplate(text, tokens, shape)


def _bound(tokens: tuple[_Token, ...], values: Mapping[str, object] | None, what: str) -> Iterator[_Token]:
    """The tokens with each slot as a literal: its value (``UNKNOWN_VALUE`` without ``values``)."""
    for token in tokens:
        if token.kind != "slot":
            yield token
            continue
        value: object = UNKNOWN_VALUE if values is None else _slot_value(token, values, what)
        yield _Token("literal", token.text, token.pos, token.as_text, value)


def _slot_value(token: _Token, values: Mapping[str, object], what: str) -> object:
    name = templates.fields(token.text)[0].name
    if token.as_text or name not in values:
        # The value's text; or the template module's error naming what is missing.
        return templates.render(token.text, values, what)
    return values[name]


def _shown(value: object) -> str:
    """A value in an error message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ----------------------------------------------------------------------------------- printing


def to_text(node: Node) -> str:
    """Canonical text of a query; ``parse(to_text(node)) == node``."""
    if isinstance(node, Comparison):
        return f"{node.key} {node.op} {literal_text(node.value)}"
    if isinstance(node, InList):
        return f"{node.key} {_in(node.negated)} ({', '.join(literal_text(v) for v in node.values)})"
    if isinstance(node, Range):
        return f"{node.key} {_in(node.negated)} {_bound_text(node.low)}{RANGE_MARK}{_bound_text(node.high)}"
    if isinstance(node, Exists):
        return f"exists {node.key}"
    if isinstance(node, InDataset):
        return f"in dataset {node.name}"
    if isinstance(node, Not):
        return f"not {_operand_text(node.item, parent=node)}"
    joiner = " and " if isinstance(node, And) else " or "
    return joiner.join(_operand_text(item, parent=node) for item in node.items)


def _in(negated: bool) -> str:
    return "not in" if negated else "in"


def _operand_text(child: Node, parent: Node) -> str:
    text = to_text(child)
    # Parentheses keep the tree's shape: lower precedence, or the same operator nested.
    if isinstance(child, Or) or (isinstance(child, And) and not isinstance(parent, Or)):
        return f"({text})"
    return text


def literal_text(value: MetaValue) -> str:
    """A literal as a query writes it; parses back to an equal value of the same type."""
    check_query_value(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.isoformat()
        # Aware datetimes compare by instant: UTC text is equal and always within the grammar.
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str) and not _is_bare_string(value):
        return _quoted(value)
    return str(value)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _bound_text(value: MetaValue) -> str:
    # 'a.' then '..' would read as 'a' and '.b': a bare bound never starts or ends with a dot.
    text = literal_text(value)
    if isinstance(value, str) and not text.startswith('"') and (text[0] == "." or text[-1] == "."):
        return _quoted(value)
    return text


def _is_bare_string(text: str) -> bool:
    if not text or text.lower() in KEYWORDS or not set(text) <= WORD_CHARS or RANGE_MARK in text:
        return False
    try:
        return parse_literal(text) == text
    except BadInput:  # looks like a date but is not one: must be quoted
        return False


# ------------------------------------------------------------------- checks against a catalog


def check_against_catalog(node: Node, key_types: Mapping[str, Collection[str]], text: str = "") -> None:
    """Refuse keys no file has and literals that can never compare with what their key holds.

    ``key_types`` maps each key the catalog knows to the stored types of its values (``int``,
    ``float``, ``str``, ``date``, ``datetime``). Errors point at the key or value in ``text`` (the
    query as written; its canonical text if not given).
    """
    shown = text or to_text(node)
    for leaf in leaves(node):
        if isinstance(leaf, InDataset):
            continue
        span = leaf.span or Span(0)
        types = key_types.get(leaf.key)
        if not types:
            raise QueryMismatch(_unknown_key(leaf.key, key_types), shown, span.key)
        for index, value in enumerate(_literals(leaf)):
            problem = _type_problem(leaf, value, set(types))
            if problem:
                at = span.values[index] if index < len(span.values) else span.key
                raise QueryMismatch(problem, shown, at)


def _unknown_key(key: str, key_types: Mapping[str, Collection[str]]) -> str:
    message = f"unknown key {key!r}: no file in the catalog has it"
    if not key_types:
        return message + " (the catalog holds no metadata yet)"
    close = difflib.get_close_matches(key, list(key_types), n=1, cutoff=0.6)
    lowered = [k for k in key_types if k.lower() == key.lower()]
    suggestions = lowered or close
    return message + (f" (did you mean {suggestions[0]!r}?)" if suggestions else "")


def _literals(leaf: KeyedLeaf) -> tuple[MetaValue, ...]:
    if isinstance(leaf, Comparison):
        return (leaf.value,)
    if isinstance(leaf, InList):
        return leaf.values
    if isinstance(leaf, Range):
        return (leaf.low, leaf.high)
    return ()


_TYPE_NAMES = {
    "int": "an integer",
    "float": "a float",
    "str": "a string",
    "date": "a date",
    "datetime": "a datetime",
}


def _type_problem(leaf: KeyedLeaf, value: MetaValue, types: set[str]) -> str | None:
    held = " and ".join(sorted(types))
    kinds = {type_kind(t) for t in types}
    if isinstance(leaf, Comparison) and leaf.op == "~" and "text" not in kinds:
        return f"type mismatch: {leaf.key} holds {held} values and a glob '~' matches text only"
    if value_kind(value) not in kinds:
        shown = literal_text(value)
        return (
            f"type mismatch: {leaf.key} holds {held} values, {shown} is {_TYPE_NAMES[value_type(value)]}"
            + (_hint(value))
        )
    return _never_equal(leaf, value, types)


def _hint(value: MetaValue) -> str:
    if _is_number_text(value):
        return " (write it without quotes to compare numbers)"
    if value_kind(value) == "number":
        return " (quote it to compare text)"
    return ""


def _never_equal(leaf: KeyedLeaf, value: MetaValue, types: set[str]) -> str | None:
    """Dates and datetimes are text that sorts in time, but a date never equals a datetime."""
    equality = isinstance(leaf, InList) or (isinstance(leaf, Comparison) and leaf.op in ("=", "!="))
    vtype = value_type(value)
    if not equality or vtype not in ("date", "datetime"):
        return None
    other = "datetime" if vtype == "date" else "date"
    if types != {other}:
        return None
    message = f"type mismatch: {leaf.key} holds {other} values, never equal to {_TYPE_NAMES[vtype]}"
    if isinstance(value, datetime) or not isinstance(value, date):
        return message
    next_day = date.fromordinal(value.toordinal() + 1) if value < date.max else value
    return f"{message} (a range selects the day: {leaf.key} in {value}..{next_day})"


def _is_number_text(value: MetaValue) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return isinstance(parse_literal(value), int | float)
    except BadInput:
        return False


# --------------------------------------------------------------------------------- evaluation


class _Absent(enum.Enum):
    MISSING = "missing"  # the file has no such key
    UNKNOWN = "unknown"  # the key may or may not be there (satisfiability)


_Lookup = Callable[[str], MetaValue | _Absent]

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def evaluate(node: Node, metadata: Mapping[str, MetaValue]) -> bool:
    """Whether a file with this metadata matches the query (``in dataset`` needs the catalog: refused)."""
    return _evaluate3(node, lambda key: metadata.get(key, _Absent.MISSING), strict=True) is True


def satisfiable(node: Node, known: Mapping[str, MetaValue], open_keys: bool) -> bool:
    """False only if the query is definitely false for every file with these ``known`` values.

    Keys outside ``known`` are unknown when ``open_keys`` (inherited metadata we cannot see), else
    missing; dataset membership is always unknown. Kleene three-valued logic: sound (never False for
    a satisfiable query) but not complete (``k = 1 and k = 2`` with ``k`` unknown is reported satisfiable).
    """
    absent = _Absent.UNKNOWN if open_keys else _Absent.MISSING
    return _evaluate3(node, lambda key: known.get(key, absent), strict=False) is not False


def keys(node: Node) -> set[str]:
    """Every metadata key the query uses."""
    return {leaf.key for leaf in leaves(node) if not isinstance(leaf, InDataset)}


def datasets(node: Node) -> set[str]:
    """Every dataset the query names."""
    return {leaf.name for leaf in leaves(node) if isinstance(leaf, InDataset)}


def leaves(node: Node) -> Iterator[Leaf]:
    """The conditions of a query, left to right."""
    if isinstance(node, LEAF_TYPES):
        yield node
    elif isinstance(node, Not):
        yield from leaves(node.item)
    else:
        for item in node.items:
            yield from leaves(item)


def replace_datasets(node: Node, replace: Callable[[InDataset], Node]) -> Node:
    """The query with each ``in dataset`` condition replaced (the catalog inlines dataset queries)."""
    if isinstance(node, InDataset):
        return replace(node)
    if isinstance(node, Not):
        return Not(replace_datasets(node.item, replace))
    if isinstance(node, And | Or):
        return type(node)(tuple(replace_datasets(item, replace) for item in node.items))
    return node


def _evaluate3(node: Node, lookup: _Lookup, strict: bool) -> bool | None:
    """Kleene evaluation: True, False or None (unknown)."""
    if isinstance(node, InDataset):
        if strict:
            raise BadInput(f"'in dataset {node.name}' can only be evaluated by the catalog")
        return None
    if isinstance(node, LEAF_TYPES):
        stored = lookup(node.key)
        if isinstance(stored, _Absent):
            return None if stored is _Absent.UNKNOWN else False
        return _leaf_matches(node, stored)
    if isinstance(node, Not):
        inner = _evaluate3(node.item, lookup, strict)
        return None if inner is None else not inner
    results = [_evaluate3(item, lookup, strict) for item in node.items]
    decisive = isinstance(node, Or)  # True decides an Or, False decides an And
    if any(result is decisive for result in results):
        return decisive
    return None if any(result is None for result in results) else not decisive


def _leaf_matches(node: KeyedLeaf, stored: MetaValue) -> bool:
    if isinstance(node, Comparison):
        return compare(stored, node.op, node.value)
    if isinstance(node, Exists):
        value_type(stored)  # refuses bools, as every other condition does
        return True
    if isinstance(node, Range):
        inside = compare(stored, ">=", node.low) and compare(stored, "<=", node.high)
        return not inside and _comparable(stored, node.low) is not None if node.negated else inside
    if any(compare(stored, "=", value) for value in node.values):
        return not node.negated
    return node.negated and any(_comparable(stored, value) is not None for value in node.values)


def compare(stored: MetaValue, op: Op, literal: MetaValue) -> bool:
    """One comparison of a stored value with a literal; false when their kinds differ."""
    value_type(stored)  # refuses bools, which would otherwise pass for ints
    if op == "~":
        if not (isinstance(stored, str | date) and isinstance(literal, str)):
            return False
        return _glob_regex(literal).fullmatch(sortable_text(stored)) is not None
    pair = _comparable(stored, literal)
    return pair is not None and _COMPARE[op](*pair)


def _comparable(stored: MetaValue, literal: MetaValue) -> tuple[Any, Any] | None:
    """The two sides as they compare (text, exact ints or doubles); None if the kinds differ."""
    if isinstance(stored, str | date) and isinstance(literal, str | date):
        return sortable_text(stored), sortable_text(literal)
    if isinstance(stored, int) and isinstance(literal, int):
        return stored, literal
    if isinstance(stored, int | float) and isinstance(literal, int | float):
        # Mixed int/float compares in double precision, exactly what the catalog's vnum column does.
        return float(stored), float(literal)
    return None


@lru_cache(maxsize=1024)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """The regular expression of a glob: ``*`` any run, ``?`` one character, the rest literal."""
    parts = (".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern)
    return re.compile("".join(parts), re.DOTALL)
