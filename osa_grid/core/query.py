"""Metadata query language v1: parse, print, evaluate (pure, no I/O).

Grammar (keywords ``and or not in`` are case-insensitive; precedence ``not`` > ``and`` > ``or``)::

    query     := or_expr
    or_expr   := and_expr ("or" and_expr)*
    and_expr  := not_expr ("and" not_expr)*
    not_expr  := "not" not_expr | "(" or_expr ")" | condition
    condition := KEY OP value | KEY ["not"] "in" "(" value ("," value)* ")"
    OP        := "=" | "!=" | "<" | "<=" | ">" | ">=" | "~"

Values are quoted strings (always strings) or bare words, typed like ``metadata.parse_literal``:
int, float, date, datetime, else string (``DL1``, ``0.12.3``, ``dl1_*.h5``).

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
- ``not`` is plain negation: ``not run_id = 5`` matches files without ``run_id``.
"""

from __future__ import annotations

import enum
import math
import operator
import re
import string
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any, Literal, cast

from osa_grid.core.metadata import KEY_PATTERN, MetaValue, parse_literal, sortable_text, value_type
from osa_grid.errors import BadInput, QuerySyntaxError

Op = Literal["=", "!=", "<", "<=", ">", ">=", "~"]
OPERATORS: tuple[Op, ...] = ("=", "!=", "<", "<=", ">", ">=", "~")
KEYWORDS = frozenset({"and", "or", "not", "in"})
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_DEPTH = 100

# ---------------------------------------------------------------------------------------- AST


@dataclass(frozen=True)
class Comparison:
    key: str
    op: Op
    value: MetaValue

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

    def __post_init__(self) -> None:
        check_query_key(self.key)
        object.__setattr__(self, "values", tuple(self.values))
        if not self.values:
            raise BadInput(f"'{self.key} in (...)' needs at least one value")
        for value in self.values:
            check_query_value(value)


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


Node = Comparison | InList | And | Or | Not


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


# ------------------------------------------------------------------------------------ tokenizer

WORD_CHARS = frozenset(string.ascii_letters + string.digits + "_-.*?/:+")
_OP_CHARS = frozenset("=!<>~")
_QUOTES = "\"'"
_PUNCTUATION: dict[str, Literal["(", ")", ","]] = {"(": "(", ")": ")", ",": ","}
_OP_HINTS = {"==": "use '='", "=>": "did you mean '>='?", "=<": "did you mean '<='?", "<>": "use '!='"}


@dataclass(frozen=True)
class _Token:
    kind: Literal["word", "string", "op", "(", ")", ",", "end"]
    text: str  # source text; for strings, the unescaped value
    pos: int

    def is_keyword(self, word: str) -> bool:
        return self.kind == "word" and self.text.lower() == word

    def describe(self) -> str:
        if self.kind == "end":
            return "the end of the query"
        if self.kind == "string":
            return f"the string {self.text!r}"
        return repr(self.text)


def _tokenize(text: str) -> Iterator[_Token]:
    """Tokens on demand, so that the leftmost error is the one reported."""
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char.isspace():
            pos += 1
            continue
        if char in _PUNCTUATION:
            token, end = _Token(_PUNCTUATION[char], char, pos), pos + 1
        elif char in _QUOTES:
            token, end = _read_string(text, pos)
        elif char in _OP_CHARS:
            token, end = _read_operator(text, pos)
        elif char in WORD_CHARS:
            token, end = _read_word(text, pos)
        else:
            raise QuerySyntaxError(f"unexpected character {char!r}", text, pos)
        yield token
        pos = end
    yield _Token("end", "", len(text))


def _read_string(text: str, start: int) -> tuple[_Token, int]:
    quote, pos, chars = text[start], start + 1, []
    while pos < len(text) and text[pos] != quote:
        char = text[pos]
        if char == "\\" and pos + 1 < len(text):
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
    return _Parser(text).query()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.current = next(self.tokens)
        self.depth = 0

    def peek(self) -> _Token:
        return self.current

    def advance(self) -> _Token:
        token = self.current
        if token.kind != "end":
            self.current = next(self.tokens)
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
        key = self.key(self.advance())
        token = self.advance()
        if token.kind == "op":
            return self.comparison(key, token)
        if token.is_keyword("in"):
            return InList(key, self.value_list(), negated=False)
        if token.is_keyword("not"):
            token = self.advance()
            if token.is_keyword("in"):
                return InList(key, self.value_list(), negated=True)
            raise self.error(f"expected 'in' after 'not', found {token.describe()}", token)
        raise self.error(
            f"expected an operator (= != < <= > >= ~ in, not in) after {key!r}, found {token.describe()}",
            token,
        )

    def key(self, token: _Token) -> str:
        if token.kind != "word":
            what = "keys are not quoted" if token.kind == "string" else f"found {token.describe()}"
            raise self.error(f"expected a key, {what}", token)
        try:
            return check_query_key(token.text)
        except BadInput as exc:
            raise self.error(str(exc), token) from exc

    def comparison(self, key: str, op_token: _Token) -> Comparison:
        value_token = self.advance()
        value = self.value(value_token, op_token)
        if op_token.text == "~" and not isinstance(value, str):
            raise self.error(
                f"glob '~' needs a string pattern, not {value_type(value)} {value_token.text!r}; "
                "quote it to match text",
                value_token,
            )
        return Comparison(key, cast(Op, op_token.text), value)

    def value_list(self) -> tuple[MetaValue, ...]:
        opening = self.advance()
        if opening.kind != "(":
            raise self.error(f"expected '(' after 'in', found {opening.describe()}", opening)
        values = [self.value(self.advance(), opening)]
        while (token := self.advance()).kind == ",":
            values.append(self.value(self.advance(), token))
        if token.kind == "end":
            raise self.error("unbalanced parentheses: '(' is never closed", opening)
        if token.kind != ")":
            raise self.error(f"expected ',' or ')' in the list, found {token.describe()}", token)
        return tuple(values)

    def value(self, token: _Token, after: _Token) -> MetaValue:
        if token.kind == "string":
            return token.text
        if token.kind != "word" or token.text.lower() in KEYWORDS:
            raise self.error(f"missing value after {after.text!r}, found {token.describe()}", token)
        try:
            return check_query_value(parse_literal(token.text), written=token.text)
        except BadInput as exc:
            raise self.error(str(exc), token) from exc


# ----------------------------------------------------------------------------------- printing


def to_text(node: Node) -> str:
    """Canonical text of a query; ``parse(to_text(node)) == node``."""
    if isinstance(node, Comparison):
        return f"{node.key} {node.op} {literal_text(node.value)}"
    if isinstance(node, InList):
        keyword = "not in" if node.negated else "in"
        return f"{node.key} {keyword} ({', '.join(literal_text(v) for v in node.values)})"
    if isinstance(node, Not):
        return f"not {_operand_text(node.item, parent=node)}"
    joiner = " and " if isinstance(node, And) else " or "
    return joiner.join(_operand_text(item, parent=node) for item in node.items)


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
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def _is_bare_string(text: str) -> bool:
    if not text or text.lower() in KEYWORDS or not set(text) <= WORD_CHARS:
        return False
    try:
        return parse_literal(text) == text
    except BadInput:  # looks like a date but is not one: must be quoted
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
    """Whether a file with this metadata matches the query."""
    return _evaluate3(node, lambda key: metadata.get(key, _Absent.MISSING)) is True


def satisfiable(node: Node, known: Mapping[str, MetaValue], open_keys: bool) -> bool:
    """False only if the query is definitely false for every file with these ``known`` values.

    Keys outside ``known`` are unknown when ``open_keys`` (inherited metadata we cannot see), else
    missing. Kleene three-valued logic: sound (never False for a satisfiable query) but not
    complete (``k = 1 and k = 2`` with ``k`` unknown is reported satisfiable).
    """
    absent = _Absent.UNKNOWN if open_keys else _Absent.MISSING
    return _evaluate3(node, lambda key: known.get(key, absent)) is not False


def keys(node: Node) -> set[str]:
    """Every metadata key the query uses."""
    return {leaf.key for leaf in _leaves(node)}


def _leaves(node: Node) -> Iterator[Comparison | InList]:
    if isinstance(node, Comparison | InList):
        yield node
    elif isinstance(node, Not):
        yield from _leaves(node.item)
    else:
        for item in node.items:
            yield from _leaves(item)


def _evaluate3(node: Node, lookup: _Lookup) -> bool | None:
    """Kleene evaluation: True, False or None (unknown)."""
    if isinstance(node, Comparison | InList):
        stored = lookup(node.key)
        if isinstance(stored, _Absent):
            return None if stored is _Absent.UNKNOWN else False
        return _leaf_matches(node, stored)
    if isinstance(node, Not):
        inner = _evaluate3(node.item, lookup)
        return None if inner is None else not inner
    results = [_evaluate3(item, lookup) for item in node.items]
    decisive = isinstance(node, Or)  # True decides an Or, False decides an And
    if any(result is decisive for result in results):
        return decisive
    return None if any(result is None for result in results) else not decisive


def _leaf_matches(node: Comparison | InList, stored: MetaValue) -> bool:
    if isinstance(node, Comparison):
        return compare(stored, node.op, node.value)
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
