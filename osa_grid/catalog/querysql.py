"""Compile a metadata query (``osa_grid.core.query``) into a WHERE clause on the ``files`` table.

Every condition is an EXISTS over ``file_metadata`` correlated on ``files.id``, so the result is
always TRUE or FALSE (never NULL) and ``not`` behaves exactly like Python's ``not`` in
``query.evaluate``. Values are bound parameters; each literal kind uses its typed column so the
``(key, vint)``, ``(key, vnum)`` and ``(key, vstr)`` indexes apply:

- int literal: ``vint`` for int rows (exact, even beyond 2**53), ``vnum`` for float rows (double);
- float literal: ``vnum`` (int rows hold their value as a double there too);
- str, date, datetime literal: ``vstr`` against ``metadata.sortable_text(literal)``. Ordering uses
  bytewise (code point) comparison on every database: ``COLLATE "C"`` on PostgreSQL, whose default
  collation may be linguistic, SQLite's default BINARY collation elsewhere;
- glob ``~``: ``GLOB`` on SQLite (its ``LIKE`` ignores ASCII case), ``LIKE ... ESCAPE`` elsewhere.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal

from osa_grid.catalog import schema
from osa_grid.core.metadata import MetaValue, sortable_text
from osa_grid.core.query import And, Comparison, InList, Node, Not, Op

_FILES = schema.files
_META = schema.file_metadata
_NUMBER_TYPES = ("int", "float")
_TEXT_TYPES = ("str", "date", "datetime")
_LIKE_ESCAPE = "\\"

_SQL_OPERATORS: dict[str, Callable[[Any, Any], ColumnElement[bool]]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def compile_query(node: Node) -> ColumnElement[bool]:
    """A boolean SQL expression selecting the rows of ``schema.files`` that match the query."""
    if isinstance(node, Comparison):
        return _has(node.key, _value_condition(node.op, node.value))
    if isinstance(node, InList):
        return _in_list(node)
    if isinstance(node, Not):
        return sa.not_(compile_query(node.item))
    items = [compile_query(item) for item in node.items]
    return sa.and_(*items) if isinstance(node, And) else sa.or_(*items)


def _has(key: str, condition: ColumnElement[bool]) -> ColumnElement[bool]:
    """The file has a metadata row for ``key`` that satisfies ``condition``."""
    rows = sa.exists().where(_META.c.file_id == _FILES.c.id, _META.c.key == key, condition)
    return rows.correlate(_FILES)


def _value_condition(op: Op, value: MetaValue) -> ColumnElement[bool]:
    if isinstance(value, str | date):
        return _text_condition(op, sortable_text(value))
    compare = _SQL_OPERATORS[op]  # the AST allows '~' with string values only
    if isinstance(value, int):
        float_rows = sa.and_(_META.c.vtype == "float", compare(_META.c.vnum, float(value)))
        return sa.or_(compare(_META.c.vint, value), float_rows)
    return compare(_META.c.vnum, value)


def _text_condition(op: Op, text: str) -> ColumnElement[bool]:
    if op == "~":
        return _Glob(_META.c.vstr, text)
    # Equality is bytewise under any deterministic collation and keeps the index usable.
    column = _META.c.vstr if op in ("=", "!=") else _Bytewise(_META.c.vstr)
    return _SQL_OPERATORS[op](column, text)


def _in_list(node: InList) -> ColumnElement[bool]:
    equal = _any_equal(node.values)
    if not node.negated:
        return _has(node.key, equal)
    # Two EXISTS, not one with NOT inside: NOT of a NULL comparison would drop the row.
    comparable = _META.c.vtype.in_(_types_of(node.values))
    return sa.and_(_has(node.key, comparable), sa.not_(_has(node.key, equal)))


def _any_equal(values: Sequence[MetaValue]) -> ColumnElement[bool]:
    ints = [v for v in values if isinstance(v, int)]
    floats = [v for v in values if isinstance(v, float)]
    texts = [sortable_text(v) for v in values if isinstance(v, str | date)]
    conditions: list[ColumnElement[bool]] = []
    if ints:
        conditions.append(_META.c.vint.in_(ints))
        float_rows = _META.c.vnum.in_([float(v) for v in ints])
        conditions.append(sa.and_(_META.c.vtype == "float", float_rows))
    if floats:
        conditions.append(_META.c.vnum.in_(floats))
    if texts:
        conditions.append(_META.c.vstr.in_(texts))
    return sa.or_(*conditions)


def _types_of(values: Sequence[MetaValue]) -> list[str]:
    """The stored types a list of literals can compare with."""
    types: list[str] = []
    if any(isinstance(v, int | float) for v in values):
        types.extend(_NUMBER_TYPES)
    if any(isinstance(v, str | date) for v in values):
        types.extend(_TEXT_TYPES)
    return types


# ------------------------------------------------------------------- dialect-specific constructs


def like_pattern(glob: str) -> str:
    """A glob as a LIKE pattern with ``\\`` as the escape character."""
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def sqlite_glob_pattern(glob: str) -> str:
    """A glob for SQLite's GLOB operator: ``*`` and ``?`` as they are, ``[`` made literal."""
    return glob.replace("[", "[[]")


class _Glob(ColumnElement[bool]):
    """Case-sensitive glob match of a text column (``*`` and ``?`` only)."""

    __visit_name__ = "osa_grid_glob"
    inherit_cache = True
    _is_implicitly_boolean = True  # a predicate: no "= 1" appended on SQLite
    type = sa.Boolean()
    # SQLAlchemy's traversal protocol (a class-level list). Both patterns are bound parameters in
    # it, so a cached compiled statement is executed with each query's own values.
    _traverse_internals = [  # noqa: RUF012
        ("operand", InternalTraversal.dp_clauseelement),
        ("like_pattern", InternalTraversal.dp_clauseelement),
        ("glob_pattern", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, operand: ColumnElement[str], pattern: str) -> None:
        self.operand = operand
        self.like_pattern = sa.bindparam(None, like_pattern(pattern), type_=sa.String())
        self.glob_pattern = sa.bindparam(None, sqlite_glob_pattern(pattern), type_=sa.String())


@compiles(_Glob)
def _glob_as_like(element: _Glob, compiler: SQLCompiler, **kw: Any) -> str:
    like = element.operand.like(element.like_pattern, escape=_LIKE_ESCAPE)
    return compiler.process(like, **kw)


@compiles(_Glob, "sqlite")
def _glob_on_sqlite(element: _Glob, compiler: SQLCompiler, **kw: Any) -> str:
    glob = element.operand.op("GLOB", is_comparison=True)(element.glob_pattern)
    return compiler.process(glob, **kw)


class _Bytewise(ColumnElement[str]):
    """A text column compared by code point (bytes of UTF-8) whatever the database's collation."""

    __visit_name__ = "osa_grid_bytewise"
    inherit_cache = True
    _traverse_internals = [("element", InternalTraversal.dp_clauseelement)]  # noqa: RUF012

    def __init__(self, element: ColumnElement[str]) -> None:
        self.element = element
        self.type = element.type


@compiles(_Bytewise)
def _bytewise_default(element: _Bytewise, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.element, **kw)


@compiles(_Bytewise, "postgresql")
def _bytewise_on_postgresql(element: _Bytewise, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(sa.collate(element.element, "C"), **kw)
