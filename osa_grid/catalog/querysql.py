"""Compile a metadata query (``osa_grid.core.query``) into a WHERE clause on the ``files`` table.

Every condition is a subquery over ``file_metadata`` (or ``dataset_files``) whose result is always
TRUE or FALSE (never NULL), so ``not`` behaves exactly like Python's ``not`` in ``query.evaluate``.
A condition takes one of two equivalent forms, chosen by a ``Plan`` for speed only:

- *driving*: ``files.id IN (SELECT file_id FROM file_metadata WHERE key = ? AND <value condition>)``,
  which reads the matching rows from the ``(key, value, file_id)`` index: good for a selective condition;
- *checking* (the default): ``EXISTS (... WHERE file_id = files.id AND key = ? AND ...)``, one
  primary-key probe per candidate file: good for every other condition of an ``and``.

``plan_query`` asks for (capped) row counts of the conditions and drives each ``and`` from its most
selective part; without a plan every condition checks, which scans ``files``.

Values are bound parameters; each literal kind uses its typed column so the partial indexes on
``(key, vnum, file_id)`` and ``(key, vstr, file_id)`` apply:

- int literal: ``vnum`` narrows (ints are stored there too, as doubles, and rounding is monotonic),
  then ``vint`` decides exactly for int rows (even beyond 2**53) and ``vnum`` for float rows;
- float literal: ``vnum`` (int rows hold their value as a double there too);
- str, date, datetime literal: ``vstr`` against ``metadata.sortable_text(literal)``. Ordering uses
  bytewise (code point) comparison on every database: ``vstr`` is a ``COLLATE "C"`` column on
  PostgreSQL (and ranges say so explicitly), SQLite's default BINARY collation elsewhere;
- glob ``~``: ``GLOB`` on SQLite (its ``LIKE`` ignores ASCII case), ``LIKE ... ESCAPE`` elsewhere.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal

from osa_grid.catalog import schema
from osa_grid.core.metadata import MetaValue, sortable_text
from osa_grid.core.query import (
    LEAF_TYPES,
    And,
    Comparison,
    Exists,
    InDataset,
    InList,
    Leaf,
    Node,
    Not,
    Op,
    Or,
    Range,
    value_kind,
)
from osa_grid.errors import BadInput

_FILES = schema.files
_META = schema.file_metadata
_MEMBERS = schema.dataset_files
_NUMBER_TYPES = ("int", "float")
_TEXT_TYPES = ("str", "date", "datetime")
_LIKE_ESCAPE = "\\"
ESTIMATE_CAP = 5000  # rows counted at most per condition when planning: enough to rank, cheap to count

_SQL_OPERATORS: dict[str, Callable[[Any, Any], ColumnElement[bool]]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
# The vnum condition every int row satisfying ``vint OP v`` also satisfies (it keeps the index usable).
_WIDENED: dict[str, str] = {"=": "=", "<": "<=", "<=": "<=", ">": ">=", ">=": ">="}


@dataclass(frozen=True)
class Plan:
    """How to run one query: which nodes drive (by ``id()``), frozen datasets, the registration cursor."""

    drivers: frozenset[int] = frozenset()
    datasets: Mapping[str, int] = field(default_factory=dict)  # frozen dataset name -> datasets.id
    after_id: int = 0  # only files registered after this id (the planner's cursor)


def compile_query(node: Node, plan: Plan | None = None) -> ColumnElement[bool]:
    """A boolean SQL expression selecting the rows of ``schema.files`` that match the query."""
    return _Compiler(plan or Plan()).compile(node)


class _Compiler:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def compile(self, node: Node) -> ColumnElement[bool]:
        if isinstance(node, LEAF_TYPES):
            return self.leaf(node)
        if isinstance(node, Not):
            return sa.not_(self.compile(node.item))
        items = [self.compile(item) for item in node.items]
        return sa.and_(*items) if isinstance(node, And) else sa.or_(*items)

    def leaf(self, leaf: Leaf) -> ColumnElement[bool]:
        driven = id(leaf) in self.plan.drivers
        if isinstance(leaf, InDataset):
            return self.dataset(leaf, driven)
        if isinstance(leaf, InList | Range) and leaf.negated:
            # Two subqueries, not one with NOT inside: NOT of a NULL comparison would drop the row.
            comparable = _comparable_rows(leaf)
            return sa.and_(_has(leaf.key, comparable), sa.not_(_has(leaf.key, _positive_condition(leaf))))
        condition = _positive_condition(leaf)
        if driven:
            return _FILES.c.id.in_(leaf_rows(leaf, self.plan))
        return _has(leaf.key, condition)

    def dataset(self, leaf: InDataset, driven: bool) -> ColumnElement[bool]:
        dataset_id = dataset_id_of(leaf, self.plan)
        if driven:
            return _FILES.c.id.in_(leaf_rows(leaf, self.plan))
        member = sa.exists().where(_MEMBERS.c.dataset_id == dataset_id, _MEMBERS.c.file_id == _FILES.c.id)
        return member.correlate(_FILES)


def dataset_id_of(leaf: InDataset, plan: Plan) -> int:
    try:
        return plan.datasets[leaf.name]
    except KeyError:
        raise BadInput(f"unknown dataset {leaf.name!r}") from None


def leaf_rows(leaf: Leaf, plan: Plan) -> sa.Select[Any]:
    """The ids of the files a (non-negated) condition selects, straight from an index."""
    if isinstance(leaf, InDataset):
        rows = sa.select(_MEMBERS.c.file_id).where(_MEMBERS.c.dataset_id == dataset_id_of(leaf, plan))
        return rows.where(_MEMBERS.c.file_id > plan.after_id) if plan.after_id else rows
    rows = sa.select(_META.c.file_id).where(_META.c.key == leaf.key, _positive_condition(leaf))
    return rows.where(_META.c.file_id > plan.after_id) if plan.after_id else rows


def _has(key: str, condition: ColumnElement[bool]) -> ColumnElement[bool]:
    """The file has a metadata row for ``key`` that satisfies ``condition``."""
    rows = sa.exists().where(_META.c.file_id == _FILES.c.id, _META.c.key == key, condition)
    return rows.correlate(_FILES)


def _positive_condition(leaf: Comparison | InList | Range | Exists) -> ColumnElement[bool]:
    """The condition on one metadata row, ignoring ``not in``."""
    if isinstance(leaf, Comparison):
        return _value_condition(leaf.op, leaf.value)
    if isinstance(leaf, InList):
        return _any_equal(leaf.values)
    if isinstance(leaf, Range):
        return sa.and_(_value_condition(">=", leaf.low), _value_condition("<=", leaf.high))
    # Every row has a number in vnum or text in vstr: this form can use both partial indexes.
    return sa.or_(_META.c.vnum.is_not(None), _META.c.vstr.is_not(None))


def _comparable_rows(leaf: InList | Range) -> ColumnElement[bool]:
    values = leaf.values if isinstance(leaf, InList) else (leaf.low,)
    return _META.c.vtype.in_(_types_of(values))


def _value_condition(op: Op, value: MetaValue) -> ColumnElement[bool]:
    if isinstance(value, str | date):
        return _text_condition(op, sortable_text(value))
    if isinstance(value, int):
        return _int_condition(op, value)
    return _SQL_OPERATORS[op](_META.c.vnum, value)  # the AST allows '~' with string values only


def _int_condition(op: Op, value: int) -> ColumnElement[bool]:
    """Exact on int rows (vint), as doubles on float rows (vnum), narrowed by vnum for the index."""
    compare = _SQL_OPERATORS[op]
    as_float = float(value)
    is_float = _META.c.vtype == "float"
    if op == "!=":
        return sa.or_(compare(_META.c.vint, value), sa.and_(is_float, compare(_META.c.vnum, as_float)))
    # For =, <= and >= the widened vnum condition already decides float rows.
    floats = is_float if op in ("=", "<=", ">=") else sa.and_(is_float, compare(_META.c.vnum, as_float))
    widened = _SQL_OPERATORS[_WIDENED[op]](_META.c.vnum, as_float)
    return sa.and_(widened, sa.or_(compare(_META.c.vint, value), floats))


def _text_condition(op: Op, text: str) -> ColumnElement[bool]:
    if op == "~":
        return _Glob(_META.c.vstr, text)
    # Equality is bytewise under any deterministic collation and keeps the index usable.
    column = _META.c.vstr if op in ("=", "!=") else _Bytewise(_META.c.vstr)
    return _SQL_OPERATORS[op](column, text)


def _any_equal(values: Sequence[MetaValue]) -> ColumnElement[bool]:
    ints = [v for v in values if isinstance(v, int)]
    floats = [v for v in values if isinstance(v, float)]
    texts = [sortable_text(v) for v in values if isinstance(v, str | date)]
    conditions: list[ColumnElement[bool]] = []
    if ints:
        exact = sa.or_(_META.c.vint.in_(ints), _META.c.vtype == "float")
        conditions.append(sa.and_(_META.c.vnum.in_([float(v) for v in ints]), exact))
    if floats:
        conditions.append(_META.c.vnum.in_(floats))
    if texts:
        conditions.append(_META.c.vstr.in_(texts))
    return sa.or_(*conditions)


def _types_of(values: Sequence[MetaValue]) -> list[str]:
    """The stored types a list of literals can compare with."""
    types: list[str] = []
    if any(value_kind(v) == "number" for v in values):
        types.extend(_NUMBER_TYPES)
    if any(value_kind(v) == "text" for v in values):
        types.extend(_TEXT_TYPES)
    return types


# ------------------------------------------------------------------------------------ planning

Estimate = Callable[[sa.Select[Any]], int]


def plan_query(
    node: Node, estimate: Estimate, datasets: Mapping[str, int] | None = None, after_id: int = 0
) -> Plan:
    """Drive the query from its most selective conditions; ``estimate`` counts a statement's rows.

    ``estimate`` is only asked about the parts of an ``and`` that could drive it (the smallest does);
    a lone condition or an ``or`` of conditions drives without asking. A query that cannot drive (a
    ``not`` at the top) checks every file.
    """
    base = Plan(datasets=dict(datasets or {}), after_id=after_id)
    if not drivable(node):
        return base
    drivers: set[int] = set()
    _mark(node, _Costs(base, estimate), drivers)
    return Plan(frozenset(drivers), base.datasets, after_id)


def drivable(node: Node) -> bool:
    """Whether the node's matches can be read from an index (not: a negation, which needs every file)."""
    if isinstance(node, Not) or (isinstance(node, InList | Range) and node.negated):
        return False
    if isinstance(node, LEAF_TYPES):
        return True
    if isinstance(node, Or):
        return all(drivable(item) for item in node.items)
    return any(drivable(item) for item in node.items)


def _mark(node: Node, costs: _Costs, drivers: set[int]) -> None:
    drivers.add(id(node))
    if isinstance(node, Or):
        for item in node.items:
            _mark(item, costs, drivers)
    elif isinstance(node, And):
        candidates = [item for item in node.items if drivable(item)]
        best = candidates[0] if len(candidates) == 1 else min(candidates, key=costs.of)
        _mark(best, costs, drivers)


class _Costs:
    """Estimated rows of each drivable node, each condition counted at most once."""

    def __init__(self, plan: Plan, estimate: Estimate) -> None:
        self.plan = plan
        self.estimate = estimate
        self.known: dict[int, int] = {}

    def of(self, node: Node) -> int:
        if id(node) not in self.known:
            self.known[id(node)] = self._compute(node)
        return self.known[id(node)]

    def _compute(self, node: Node) -> int:
        if isinstance(node, LEAF_TYPES):
            return self.estimate(leaf_rows(node, self.plan))
        if isinstance(node, Or):
            return sum(self.of(item) for item in node.items)
        assert isinstance(node, And)
        return min(self.of(item) for item in node.items if drivable(item))


def capped_count(rows: sa.Select[Any], cap: int = ESTIMATE_CAP) -> sa.Select[Any]:
    """``count(*)`` of at most ``cap`` rows: bounded work however unselective the condition."""
    return sa.select(sa.func.count()).select_from(rows.limit(cap).subquery())


# ------------------------------------------------------------------------ sorting and grouping


@dataclass(frozen=True)
class SortKey:
    key: str  # a metadata key or one of FILE_COLUMNS
    descending: bool = False


def file_columns() -> dict[str, sa.ColumnElement[Any]]:
    """The file attributes a listing can show and sort by, besides metadata keys."""
    return {
        "lfn": _FILES.c.lfn,
        "size": _FILES.c.size,
        "adler32": _FILES.c.checksum,
        "created_at": _FILES.c.created_at,
        "task_id": _FILES.c.task_id,
    }


def sorted_files(sort: Sequence[SortKey]) -> tuple[sa.FromClause, list[ColumnElement[Any]]]:
    """The files joined to the metadata they are sorted by, and the ORDER BY (registration order last)."""
    source: sa.FromClause = _FILES
    order: list[ColumnElement[Any]] = []
    columns = file_columns()
    for index, item in enumerate(sort):
        if item.key in columns:
            column = columns[item.key]
            order.append(column.desc() if item.descending else column.asc())
            continue
        values = _META.alias(f"sort{index}")
        source = source.outerjoin(values, _joined(values, item.key))
        order += _value_order(values, item.descending)
    order.append(_FILES.c.id.asc())
    return source, order


def grouped_files(keys: Sequence[str]) -> sa.Select[Any]:
    """Files and bytes per combination of values of ``keys``: four columns per key, then files, bytes."""
    source: sa.FromClause = _FILES
    columns: list[ColumnElement[Any]] = []
    order: list[ColumnElement[Any]] = []
    for index, key in enumerate(keys):
        values = _META.alias(f"group{index}")
        source = source.outerjoin(values, _joined(values, key))
        columns += [values.c.vtype, values.c.vint, values.c.vnum, values.c.vstr]
        order += _value_order(values, descending=False)
    totals = [sa.func.count().label("files"), sa.func.sum(_FILES.c.size).label("bytes")]
    return sa.select(*columns, *totals).select_from(source).group_by(*columns).order_by(*order)


def runs_of_night() -> sa.Select[Any]:
    """Per run and data level: files, distinct sub-runs, bytes, and the run's type, source, sub-run count."""
    run, level, subrun, expected, source, run_type = (
        _META.alias(name) for name in ("run", "level", "subrun", "expected", "source", "run_type")
    )
    joined = (
        _FILES.join(run, _joined(run, "run_id"))
        .outerjoin(level, _joined(level, "data_level"))
        .outerjoin(subrun, _joined(subrun, "subrun_id"))
        .outerjoin(expected, _joined(expected, "n_subruns"))
        .outerjoin(source, _joined(source, "source"))
        .outerjoin(run_type, _joined(run_type, "run_type"))
    )
    run_value = [
        run.c.vtype.label("run_vtype"),
        run.c.vint.label("run_vint"),
        run.c.vnum.label("run_vnum"),
        run.c.vstr.label("run_vstr"),
    ]
    return (
        sa.select(
            *run_value,
            level.c.vstr.label("data_level"),
            sa.func.count().label("files"),
            sa.func.count(subrun.c.vnum.distinct()).label("subruns"),
            sa.func.sum(_FILES.c.size).label("bytes"),
            sa.func.max(expected.c.vint).label("n_subruns"),
            sa.func.max(source.c.vstr).label("source"),
            sa.func.max(run_type.c.vstr).label("run_type"),
        )
        .select_from(joined)
        .group_by(*run_value, level.c.vstr)
        .order_by(*_value_order(run, descending=False), _Bytewise(level.c.vstr))
    )


def _joined(values: sa.FromClause, key: str) -> ColumnElement[bool]:
    return sa.and_(values.c.file_id == _FILES.c.id, values.c.key == key)


def _value_order(values: sa.FromClause, descending: bool) -> list[ColumnElement[Any]]:
    """Numbers, then text (bytewise), then files without the key; ``descending`` reverses each kind."""
    kind = sa.case((values.c.vnum.is_not(None), 0), (values.c.vstr.is_not(None), 1), else_=2)
    ordered = [values.c.vnum, values.c.vint, _Bytewise(values.c.vstr)]
    return [kind, *(sa.nulls_last(c.desc() if descending else c.asc()) for c in ordered)]


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
