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
from functools import partial
from typing import Any, TypeGuard, cast

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
_SET_META = schema.set_metadata
_MEMBERS = schema.dataset_files
_NUMBER_TYPES = ("int", "float")
_TEXT_TYPES = ("str", "date", "datetime")
_LIKE_ESCAPE = "\\"
# Parts of one ``and`` whose rows are counted to choose its driver (the likeliest, by kind of condition).
MAX_COUNTED_DRIVERS = 16
ESTIMATE_CAP = 5000  # rows counted at most per condition when planning: enough to rank, cheap to count
# Sort and group keys: each is one or two outer joins and four ORDER BY terms. SQLite 3.40 crashes
# (segmentation fault) on 16 sort keys and refuses 64 joins; SQLAlchemy recurses once per join.
MAX_SORT_KEYS = 8
# Long and/or chains: SQLite refuses more than 500 terms in a compound SELECT and an expression deeper
# than 1000; PostgreSQL runs out of stack on a few thousand set operations. Chains are built from
# parenthesized chunks of at most this many terms: a depth of CHAIN_CHUNK per level, log(n) levels.
CHAIN_CHUNK = 50

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
class KeyPlaces:
    """Where each key has values: per file (file_metadata), in metadata sets (set_metadata), or both.

    A key in neither is treated as per-file: its conditions then match nothing, as they should.
    """

    in_files: frozenset[str] = frozenset()
    in_sets: frozenset[str] = frozenset()

    def in_files_of(self, key: str) -> bool:
        return key in self.in_files or key not in self.in_sets

    def only_in_sets(self, key: str) -> bool:
        return key in self.in_sets and key not in self.in_files


@dataclass(frozen=True)
class OnSets:
    """A positive condition on keys stored only in metadata sets, answered on the sets first.

    ``night in D1..D2 and data_level = DL3`` intersects the sets of those nights with the DL3 sets
    (one index entry per set each), then takes the files of the sets left: never the entries of every
    file of those nights. Made by ``prepare``; a file without a set has none of these keys, so a positive
    condition is false for it, which ``files.set_id IN (...)`` gives.
    """

    node: Node


@dataclass(frozen=True)
class Plan:
    """How to run one query: which nodes drive (by ``id()``), frozen datasets, the registration cursor."""

    drivers: frozenset[int] = frozenset()
    datasets: Mapping[str, int] = field(default_factory=dict)  # frozen dataset name -> datasets.id
    after_id: int = 0  # only files registered after this id (the planner's cursor)
    places: KeyPlaces = field(default_factory=KeyPlaces)


def prepare(node: Node, places: KeyPlaces) -> Node:
    """The query with its positive conditions on set-only keys grouped into ``OnSets`` nodes.

    Run once per query, before ``plan_query`` and ``compile_query``, which both take its result.
    """
    if _on_sets_only(node, places):
        return cast(Node, OnSets(node))  # a node of this module's own, handled wherever a leaf is
    if isinstance(node, And):
        grouped = [item for item in node.items if _on_sets_only(item, places)]
        rest = [prepare(item, places) for item in node.items if not _on_sets_only(item, places)]
        if not grouped:
            return And(tuple(rest))
        on_sets = cast(Node, OnSets(grouped[0] if len(grouped) == 1 else And(tuple(grouped))))
        return And((on_sets, *rest))
    if isinstance(node, Or):
        return Or(tuple(prepare(item, places) for item in node.items))
    if isinstance(node, Not):
        return Not(prepare(node.item, places))
    return node


def _on_sets_only(node: Node, places: KeyPlaces) -> bool:
    """Whether the node is positive and reads only keys stored only in metadata sets."""
    if isinstance(node, And | Or):
        return all(_on_sets_only(item, places) for item in node.items)
    if isinstance(node, Comparison | Exists) or (isinstance(node, InList | Range) and not node.negated):
        return places.only_in_sets(node.key)
    return False


def compile_query(node: Node, plan: Plan | None = None) -> ColumnElement[bool]:
    """A boolean SQL expression selecting the rows of ``schema.files`` that match the (prepared) query."""
    return _Compiler(plan or Plan()).compile(node)


class _Compiler:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def compile(self, node: Node) -> ColumnElement[bool]:
        if isinstance(node, OnSets):
            # One form whether it drives or checks: the sets answer first, PostgreSQL and SQLite then
            # probe or hash them (the files' set_id index drives).
            # Never NULL (files without a set have a NULL set_id), so that ``not`` inverts it exactly.
            return sa.and_(_FILES.c.set_id.is_not(None), _InSets(_FILES.c.set_id, set_rows(node.node)))
        if isinstance(node, LEAF_TYPES):
            return self.leaf(node)
        if isinstance(node, Not):
            return sa.not_(self.compile(node.item))
        if isinstance(node, And):
            return chained(sa.and_, self._conjuncts(node.items))
        return chained(sa.or_, [self.compile(item) for item in node.items])

    def _conjuncts(self, items: Sequence[Node]) -> list[ColumnElement[bool]]:
        """The parts of an ``and``, checked conditions on one key tested in one subquery.

        A file has one value per key (in its own metadata or its set's), so "a value with c1 and one with
        c2" is "a value with c1 and c2": 3000 ``subrun_id != n`` are one subquery, not 3000, which
        PostgreSQL took minutes to plan.
        """
        by_key: dict[str, list[CheckedLeaf]] = {}
        for item in items:
            if self._checked(item):
                by_key.setdefault(item.key, []).append(item)
        compiled: list[ColumnElement[bool]] = []
        for item in items:
            group = by_key[item.key] if self._checked(item) else []
            if len(group) < 2:
                compiled.append(self.compile(item))
            elif item is group[0]:
                compiled.append(_has(item.key, self.plan.places, partial(_all_of, group)))
        return compiled

    def _checked(self, node: Node) -> TypeGuard[CheckedLeaf]:
        """A condition checked on each file's value (not one that drives: that reads an index)."""
        return _checked_leaf(node) and id(node) not in self.plan.drivers

    def leaf(self, leaf: Leaf) -> ColumnElement[bool]:
        driven = id(leaf) in self.plan.drivers
        if isinstance(leaf, InDataset):
            return self.dataset(leaf, driven)
        places = self.plan.places
        if isinstance(leaf, InList | Range) and leaf.negated:
            # Two subqueries, not one with NOT inside: NOT of a NULL comparison would drop the row.
            return sa.and_(
                _has(leaf.key, places, lambda m: _comparable_rows(leaf, m)),
                sa.not_(_has(leaf.key, places, lambda m: _positive_condition(leaf, m))),
            )
        if driven:
            return _FILES.c.id.in_(leaf_rows(leaf, self.plan))
        return _has(leaf.key, places, lambda m: _positive_condition(leaf, m))

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


def leaf_rows(leaf: Leaf | OnSets, plan: Plan) -> sa.Select[Any] | sa.CompoundSelect:
    """The ids of the files a (non-negated) condition selects, straight from an index."""
    if isinstance(leaf, InDataset):
        rows = sa.select(_MEMBERS.c.file_id).where(_MEMBERS.c.dataset_id == dataset_id_of(leaf, plan))
        return rows.where(_MEMBERS.c.file_id > plan.after_id) if plan.after_id else rows
    if isinstance(leaf, OnSets):
        sets = sa.select(_FILES.c.id).where(_InSets(_FILES.c.set_id, set_rows(leaf.node)))
        return sets.where(_FILES.c.id > plan.after_id) if plan.after_id else sets
    places = plan.places
    selects: list[sa.Select[Any]] = []
    if places.in_files_of(leaf.key):
        rows = sa.select(_META.c.file_id).where(_META.c.key == leaf.key, _positive_condition(leaf, _META))
        selects.append(rows.where(_META.c.file_id > plan.after_id) if plan.after_id else rows)
    if leaf.key in places.in_sets:
        of_sets = _set_rows_of_leaf(leaf)
        rows = sa.select(_FILES.c.id).where(_InSets(_FILES.c.set_id, of_sets))
        selects.append(rows.where(_FILES.c.id > plan.after_id) if plan.after_id else rows)
    return selects[0] if len(selects) == 1 else sa.union_all(*selects)


def set_rows(node: Node) -> sa.Select[Any] | sa.CompoundSelect:
    """The ids of the metadata sets a positive condition on set keys selects: and = intersect, or = union."""
    if isinstance(node, And | Or):
        combine = sa.intersect if isinstance(node, And) else sa.union
        parts = [_simple(set_rows(item)) for item in node.items]
        while len(parts) > CHAIN_CHUNK:  # a compound of compounds, each of a bounded number of terms
            parts = [_simple(combine(*chunk)) for chunk in _chunks_of(parts)]
        return combine(*parts) if len(parts) > 1 else parts[0]
    assert isinstance(node, Comparison | InList | Range | Exists)
    return _set_rows_of_leaf(node)


def chained(
    combine: Callable[..., ColumnElement[bool]], items: Sequence[ColumnElement[bool]]
) -> ColumnElement[bool]:
    """``a AND b AND ...`` (or OR) as a tree of parenthesized chunks: bounded depth for any length.

    Databases parse a flat chain into a left-deep tree, one level per term.
    """
    while len(items) > CHAIN_CHUNK:
        items = [_Parenthesized(combine(*chunk)) for chunk in _chunks_of(items)]
    return combine(*items)


def _chunks_of(items: Sequence[Any]) -> list[Sequence[Any]]:
    return [items[start : start + CHAIN_CHUNK] for start in range(0, len(items), CHAIN_CHUNK)]


def _simple(rows: sa.Select[Any] | sa.CompoundSelect) -> sa.Select[Any]:
    """A compound select as a plain one: SQLite refuses a compound nested in another."""
    return rows if isinstance(rows, sa.Select) else sa.select(rows.subquery().c.set_id)


def _set_rows_of_leaf(leaf: Comparison | InList | Range | Exists) -> sa.Select[Any]:
    return sa.select(_SET_META.c.set_id).where(
        _SET_META.c.key == leaf.key, _positive_condition(leaf, _SET_META)
    )


ValueCondition = Callable[[sa.Table], ColumnElement[bool]]


def _has(key: str, places: KeyPlaces, condition: ValueCondition) -> ColumnElement[bool]:
    """The file has a value for ``key`` that satisfies ``condition``, in its own metadata or its set's."""
    found: list[ColumnElement[bool]] = []
    if places.in_files_of(key):
        rows = sa.exists().where(_META.c.file_id == _FILES.c.id, _META.c.key == key, condition(_META))
        found.append(rows.correlate(_FILES))
    if key in places.in_sets:
        in_set = sa.exists().where(
            _SET_META.c.set_id == _FILES.c.set_id, _SET_META.c.key == key, condition(_SET_META)
        )
        found.append(in_set.correlate(_FILES))
    return found[0] if len(found) == 1 else sa.or_(*found)


CheckedLeaf = Comparison | InList | Range | Exists


def _checked_leaf(node: Node) -> TypeGuard[CheckedLeaf]:
    """A condition on one value of one key (a negated list or range also needs the value's type)."""
    return isinstance(node, Comparison | Exists) or (isinstance(node, InList | Range) and not node.negated)


def _all_of(leaves: Sequence[CheckedLeaf], m: sa.Table) -> ColumnElement[bool]:
    return chained(sa.and_, [_positive_condition(leaf, m) for leaf in leaves])


def _positive_condition(leaf: Comparison | InList | Range | Exists, m: sa.Table) -> ColumnElement[bool]:
    """The condition on one metadata row of ``m`` (file_metadata or set_metadata), ignoring ``not in``."""
    if isinstance(leaf, Comparison):
        return _value_condition(m, leaf.op, leaf.value)
    if isinstance(leaf, InList):
        return _any_equal(m, leaf.values)
    if isinstance(leaf, Range):
        return sa.and_(_value_condition(m, ">=", leaf.low), _value_condition(m, "<=", leaf.high))
    # Every row has a number in vnum or text in vstr: this form can use both partial indexes.
    return sa.or_(m.c.vnum.is_not(None), m.c.vstr.is_not(None))


def _comparable_rows(leaf: InList | Range, m: sa.Table) -> ColumnElement[bool]:
    values = leaf.values if isinstance(leaf, InList) else (leaf.low,)
    return m.c.vtype.in_(_types_of(values))


def _value_condition(m: sa.Table, op: Op, value: MetaValue) -> ColumnElement[bool]:
    if isinstance(value, str | date):
        return _text_condition(m, op, sortable_text(value))
    if isinstance(value, int):
        return _int_condition(m, op, value)
    return _SQL_OPERATORS[op](m.c.vnum, value)  # the AST allows '~' with string values only


def _int_condition(m: sa.Table, op: Op, value: int) -> ColumnElement[bool]:
    """Exact on int rows (vint), as doubles on float rows (vnum), narrowed by vnum for the index."""
    compare = _SQL_OPERATORS[op]
    as_float = float(value)
    is_float = m.c.vtype == "float"
    if op == "!=":
        return sa.or_(compare(m.c.vint, value), sa.and_(is_float, compare(m.c.vnum, as_float)))
    # For =, <= and >= the widened vnum condition already decides float rows.
    floats = is_float if op in ("=", "<=", ">=") else sa.and_(is_float, compare(m.c.vnum, as_float))
    widened = _SQL_OPERATORS[_WIDENED[op]](m.c.vnum, as_float)
    return sa.and_(widened, sa.or_(compare(m.c.vint, value), floats))


def _text_condition(m: sa.Table, op: Op, text: str) -> ColumnElement[bool]:
    if op == "~":
        return _Glob(m.c.vstr, text)
    # Equality is bytewise under any deterministic collation and keeps the index usable.
    column = m.c.vstr if op in ("=", "!=") else _Bytewise(m.c.vstr)
    return _SQL_OPERATORS[op](column, text)


def _any_equal(m: sa.Table, values: Sequence[MetaValue]) -> ColumnElement[bool]:
    ints = [v for v in values if isinstance(v, int)]
    floats = [v for v in values if isinstance(v, float)]
    texts = [sortable_text(v) for v in values if isinstance(v, str | date)]
    conditions: list[ColumnElement[bool]] = []
    if ints:
        exact = sa.or_(m.c.vint.in_(ints), m.c.vtype == "float")
        conditions.append(sa.and_(m.c.vnum.in_([float(v) for v in ints]), exact))
    if floats:
        conditions.append(m.c.vnum.in_(floats))
    if texts:
        conditions.append(m.c.vstr.in_(texts))
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

Estimate = Callable[[sa.Select[Any] | sa.CompoundSelect], int]


def plan_query(
    node: Node,
    estimate: Estimate,
    datasets: Mapping[str, int] | None = None,
    after_id: int = 0,
    places: KeyPlaces | None = None,
) -> Plan:
    """Drive the query from its most selective conditions; ``estimate`` counts a statement's rows.

    ``estimate`` is only asked about the parts of an ``and`` that could drive it (the smallest does);
    a lone condition or an ``or`` of conditions drives without asking. A query that cannot drive (a
    ``not`` at the top) checks every file.
    """
    base = Plan(datasets=dict(datasets or {}), after_id=after_id, places=places or KeyPlaces())
    if not drivable(node):
        return base
    drivers: set[int] = set()
    _mark(node, _Costs(base, estimate), drivers)
    return Plan(frozenset(drivers), base.datasets, after_id, base.places)


def drivable(node: Node) -> bool:
    """Whether the node's matches can be read from an index (not: a negation, which needs every file)."""
    if isinstance(node, Not) or (isinstance(node, InList | Range) and node.negated):
        return False
    if isinstance(node, (*LEAF_TYPES, OnSets)):
        return True
    if isinstance(node, Or):
        return all(drivable(item) for item in node.items)
    assert isinstance(node, And)
    return any(drivable(item) for item in node.items)


def _mark(node: Node, costs: _Costs, drivers: set[int]) -> None:
    drivers.add(id(node))
    if isinstance(node, Or):
        for item in node.items:
            _mark(item, costs, drivers)
    elif isinstance(node, And):
        candidates = _likely_drivers([item for item in node.items if drivable(item)])
        best = candidates[0] if len(candidates) == 1 else min(candidates, key=costs.of)
        _mark(best, costs, drivers)


def _likely_drivers(candidates: list[Node]) -> list[Node]:
    """The parts of an ``and`` worth counting: each count is a query, and a chain of 3000 conditions
    made 3000 of them. Equalities and lists select least as a rule, ``!=`` and globs most."""
    if len(candidates) <= MAX_COUNTED_DRIVERS:
        return candidates
    return sorted(candidates, key=_selectivity_rank)[:MAX_COUNTED_DRIVERS]


def _selectivity_rank(node: Node) -> int:
    if isinstance(node, InDataset | OnSets | InList) or (isinstance(node, Comparison) and node.op == "="):
        return 0
    if isinstance(node, Range) or (isinstance(node, Comparison) and node.op in ("<", "<=", ">", ">=")):
        return 1
    if isinstance(node, And | Or | Exists):
        return 2
    return 3  # != and globs


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
        if isinstance(node, (*LEAF_TYPES, OnSets)):
            return self.estimate(leaf_rows(node, self.plan))
        if isinstance(node, Or):
            return sum(self.of(item) for item in node.items)
        assert isinstance(node, And)
        return min(self.of(item) for item in node.items if drivable(item))


def capped_count(rows: sa.Select[Any] | sa.CompoundSelect, cap: int = ESTIMATE_CAP) -> sa.Select[Any]:
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


@dataclass(frozen=True)
class JoinedValue:
    """The typed value columns of one key joined to each file (all NULL when the file lacks the key)."""

    vtype: ColumnElement[Any]
    vint: ColumnElement[Any]
    vnum: ColumnElement[Any]
    vstr: ColumnElement[Any]

    def columns(self) -> list[ColumnElement[Any]]:
        return [self.vtype, self.vint, self.vnum, self.vstr]


def join_value(
    source: sa.FromClause, key: str, name: str, places: KeyPlaces, files: sa.FromClause = _FILES
) -> tuple[sa.FromClause, JoinedValue]:
    """``source`` outer-joined to the value of ``key`` of each of its ``files``, wherever it is stored."""
    tables: list[sa.FromClause] = []
    if places.in_files_of(key):
        own = _META.alias(f"{name}_own")
        source = source.outerjoin(own, sa.and_(own.c.file_id == files.c.id, own.c.key == key))
        tables.append(own)
    if key in places.in_sets:
        shared = _SET_META.alias(f"{name}_set")
        source = source.outerjoin(shared, sa.and_(shared.c.set_id == files.c.set_id, shared.c.key == key))
        tables.append(shared)
    names = ("vtype", "vint", "vnum", "vstr")
    if len(tables) == 1:
        return source, JoinedValue(*(tables[0].c[column] for column in names))
    # A file has the key in one place at most: its own row, else its set's.
    present = tables[0].c.vtype.is_not(None)
    return source, JoinedValue(
        *(sa.case((present, tables[0].c[column]), else_=tables[1].c[column]) for column in names)
    )


def sorted_files(
    sort: Sequence[SortKey], places: KeyPlaces | None = None
) -> tuple[sa.FromClause, list[ColumnElement[Any]]]:
    """The files joined to the metadata they are sorted by, and the ORDER BY (registration order last)."""
    _check_key_count("sort", len(sort))
    source: sa.FromClause = _FILES
    order: list[ColumnElement[Any]] = []
    columns = file_columns()
    for index, item in enumerate(sort):
        if item.key in columns:
            column = columns[item.key]
            order.append(column.desc() if item.descending else column.asc())
            continue
        source, value = join_value(source, item.key, f"sort{index}", places or KeyPlaces())
        order += _value_order(value, item.descending)
    order.append(_FILES.c.id.asc())
    return source, order


def grouped_files(keys: Sequence[str], places: KeyPlaces | None = None) -> sa.Select[Any]:
    """Files and bytes per combination of values of ``keys``: four columns per key, then files, bytes."""
    _check_key_count("group", len(keys))
    source: sa.FromClause = _FILES
    columns: list[ColumnElement[Any]] = []
    order: list[ColumnElement[Any]] = []
    for index, key in enumerate(keys):
        source, value = join_value(source, key, f"group{index}", places or KeyPlaces())
        columns += value.columns()
        order += _value_order(value, descending=False)
    totals = [sa.func.count().label("files"), sa.func.sum(_FILES.c.size).label("bytes")]
    return sa.select(*columns, *totals).select_from(source).group_by(*columns).order_by(*order)


def _check_key_count(what: str, count: int) -> None:
    if count > MAX_SORT_KEYS:
        raise BadInput(f"files can be {what}ed by at most {MAX_SORT_KEYS} keys, not {count}")


def runs_of_night(places: KeyPlaces | None = None) -> sa.Select[Any]:
    """Per run and data level: files, distinct sub-runs, bytes, and the run's type, source, sub-run count."""
    source: sa.FromClause = _FILES
    values: dict[str, JoinedValue] = {}
    for key in ("run_id", "data_level", "subrun_id", "n_subruns", "source", "run_type"):
        source, values[key] = join_value(source, key, key, places or KeyPlaces())
    run, level = values["run_id"], values["data_level"]
    run_value = [
        run.vtype.label("run_vtype"),
        run.vint.label("run_vint"),
        run.vnum.label("run_vnum"),
        run.vstr.label("run_vstr"),
    ]
    return (
        sa.select(
            *run_value,
            level.vstr.label("data_level"),
            sa.func.count().label("files"),
            sa.func.count(values["subrun_id"].vnum.distinct()).label("subruns"),
            sa.func.sum(_FILES.c.size).label("bytes"),
            sa.func.max(values["n_subruns"].vint).label("n_subruns"),
            sa.func.max(values["source"].vstr).label("source"),
            sa.func.max(values["run_type"].vstr).label("run_type"),
        )
        .select_from(source)
        .where(run.vtype.is_not(None))
        .group_by(run.vtype, run.vint, run.vnum, run.vstr, level.vstr)
        .order_by(*_value_order(run, descending=False), _Bytewise(level.vstr))
    )


def _value_order(value: JoinedValue, descending: bool) -> list[ColumnElement[Any]]:
    """Numbers, then text (bytewise), then files without the key; ``descending`` reverses each kind."""
    kind = sa.case((value.vnum.is_not(None), 0), (value.vstr.is_not(None), 1), else_=2)
    ordered = [value.vnum, value.vint, _Bytewise(value.vstr)]
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


class _InSets(ColumnElement[bool]):
    """``files.set_id`` among the sets a subquery selects, read through the files' set_id index.

    On PostgreSQL as ``= ANY(ARRAY(subquery))``: the sets are computed first (an InitPlan) and the files
    of each read from the index. As ``IN (subquery)``, PostgreSQL weighs a hash join against a scan of
    every file by its estimate of files per set, which ANALYZE's sample puts 3-4 times too high (25,000
    distinct sets seen among 90,000): at 9 million files it scanned them all (2.5 s for 1,248 files).
    """

    __visit_name__ = "osa_grid_in_sets"
    inherit_cache = True
    _is_implicitly_boolean = True
    type = sa.Boolean()
    _traverse_internals = [  # noqa: RUF012
        ("column", InternalTraversal.dp_clauseelement),
        ("sets", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, column: ColumnElement[Any], sets: sa.Select[Any] | sa.CompoundSelect) -> None:
        self.column = column
        self.sets = sets


@compiles(_InSets)
def _in_sets_default(element: _InSets, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.column.in_(element.sets), **kw)


@compiles(_InSets, "postgresql")
def _in_sets_on_postgresql(element: _InSets, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    return f"{column} = ANY(ARRAY({compiler.process(element.sets.scalar_subquery(), **kw)}))"


class _Parenthesized(ColumnElement[bool]):
    """A condition in parentheses that SQLAlchemy keeps (it flattens a chain nested in the same operator)."""

    __visit_name__ = "osa_grid_parenthesized"
    inherit_cache = True
    _is_implicitly_boolean = True
    type = sa.Boolean()
    _traverse_internals = [("element", InternalTraversal.dp_clauseelement)]  # noqa: RUF012

    def __init__(self, element: ColumnElement[bool]) -> None:
        self.element = element


@compiles(_Parenthesized)
def _parenthesized(element: _Parenthesized, compiler: SQLCompiler, **kw: Any) -> str:
    return f"({compiler.process(element.element, **kw)})"


@compiles(_Parenthesized, "postgresql")
def _parenthesized_on_postgresql(element: _Parenthesized, compiler: SQLCompiler, **kw: Any) -> str:
    # IS TRUE (the same: conditions are never NULL) keeps PostgreSQL from pulling the chunk's EXISTS up into
    # joins: planning hundreds of semi-joins took hours. The chunk's subqueries are then probed per file.
    return f"(({compiler.process(element.element, **kw)}) IS TRUE)"


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
