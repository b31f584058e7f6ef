"""Query language v1 in SQL: ``compile_query`` selects exactly the files ``evaluate`` accepts."""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql, sqlite

from osa_grid.catalog import schema
from osa_grid.catalog.querysql import (
    KeyPlaces,
    Plan,
    capped_count,
    compile_query,
    drivable,
    like_pattern,
    plan_query,
    prepare,
    sqlite_glob_pattern,
)
from osa_grid.core.metadata import MetaValue, sortable_text, value_type
from osa_grid.core.query import (
    OPERATORS,
    And,
    Comparison,
    Exists,
    InList,
    Node,
    Not,
    Or,
    Range,
    evaluate,
    leaves,
    parse,
)
from osa_grid.core.query import _comparable as comparable_pair

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

# ------------------------------------------------------------------------------------ helpers


def insert_file(conn: sa.Connection, lfn: str, metadata: Mapping[str, MetaValue]) -> int:
    """A file row and its typed metadata rows, stored the way the catalog stores them."""
    row = {"lfn": lfn, "size": 0, "checksum": "00000001", "created_at": datetime.now(UTC)}
    file_id = conn.execute(sa.insert(schema.files).values(row)).inserted_primary_key[0]
    rows = [metadata_row(file_id, key, value) for key, value in metadata.items()]
    if rows:
        conn.execute(sa.insert(schema.file_metadata), rows)
    return int(file_id)


def metadata_row(file_id: int, key: str, value: MetaValue) -> dict[str, object]:
    vtype = value_type(value)
    row: dict[str, object] = {"file_id": file_id, "key": key, "vtype": vtype}
    row.update(vint=None, vnum=None, vstr=None)
    if vtype == "int":
        row.update(vint=value, vnum=value)  # the database turns vnum into a double
    elif vtype == "float":
        row.update(vnum=value)
    else:
        row.update(vstr=sortable_text(value))  # type: ignore[arg-type]
    return row


def selected(conn: sa.Connection, node: Node, plan: Plan | None = None) -> set[int]:
    statement = sa.select(schema.files.c.id).where(compile_query(node, plan))
    if plan is not None and plan.after_id:
        statement = statement.where(schema.files.c.id > plan.after_id)
    return set(conn.execute(statement).scalars())


def plans(conn: sa.Connection, node: Node, ids: Sequence[int], places: KeyPlaces | None = None) -> list[Plan]:
    """Every way the catalog may run the query: checking only, planned, all driving, after a cursor."""
    middle = sorted(ids)[len(ids) // 2] if ids else 0
    everything = frozenset(id(n) for n in nodes_of(node))
    places = places or KeyPlaces()

    def estimate(rows: sa.Select[object]) -> int:
        return int(conn.scalar(capped_count(rows)) or 0)

    return [
        Plan(places=places),
        plan_query(node, estimate, places=places),
        Plan(drivers=everything, places=places),
        plan_query(node, estimate, after_id=middle, places=places),
        Plan(drivers=everything, after_id=middle, places=places),
    ]


def nodes_of(node: Node) -> list[Node]:
    """Every node of the tree, the root first (an OnSets group counts as one)."""
    found = [node]
    if isinstance(node, Not):
        found += nodes_of(node.item)
    elif isinstance(node, And | Or):
        for item in node.items:
            found += nodes_of(item)
    return found


# How the keys of a test catalog are stored: every key per file (as before metadata sets), "a" in
# metadata sets, or "a" in sets for every other file and per file for the rest (a catalog migrated to
# 0007 with files from before it).
PLACEMENTS = {
    "per file": (frozenset(), False),
    "a in sets": (frozenset({"a"}), False),
    "mixed": (frozenset({"a"}), True),
}


def insert_files(
    conn: sa.Connection, catalog: Sequence[Mapping[str, MetaValue]], shared: frozenset[str], mixed: bool
) -> tuple[dict[int, Mapping[str, MetaValue]], KeyPlaces]:
    """The files, with their ``shared`` keys in metadata sets (one per distinct combination)."""
    ids: dict[int, Mapping[str, MetaValue]] = {}
    sets: dict[tuple[tuple[str, str], ...], int] = {}
    in_files: set[str] = set()
    in_sets: set[str] = set()
    for i, md in enumerate(catalog):
        to_set = {k: v for k, v in md.items() if k in shared and not (mixed and i % 2)}
        own = {k: v for k, v in md.items() if k not in to_set}
        file_id = insert_file(conn, f"file{i}", own)
        in_files |= set(own)
        ids[file_id] = md
        if not to_set:
            continue
        rows = [metadata_row(0, k, v) for k, v in sorted(to_set.items())]
        signature = tuple((str(row), "") for row in rows)
        if signature not in sets:
            set_id = conn.execute(
                sa.insert(schema.metadata_sets).values(digest=f"{len(sets):064d}")
            ).inserted_primary_key[0]
            for row in rows:
                row.pop("file_id")
            conn.execute(sa.insert(schema.set_metadata), [{"set_id": set_id, **row} for row in rows])
            sets[signature] = int(set_id)
        conn.execute(
            sa.update(schema.files).where(schema.files.c.id == file_id).values(set_id=sets[signature])
        )
        in_sets |= set(to_set)
    return ids, KeyPlaces(frozenset(in_files), frozenset(in_sets))


def check_equivalence(
    engine: sa.Engine,
    catalog: Sequence[Mapping[str, MetaValue]],
    nodes: Sequence[Node],
    shared: frozenset[str] = frozenset(),
    mixed: bool = False,
) -> None:
    """Insert the files, compare SQL (under every plan) and Python, leave the database as it was."""
    with engine.connect() as conn, conn.begin() as transaction:
        ids, places = insert_files(conn, catalog, shared, mixed)
        for query in nodes:
            node = prepare(query, places)
            for plan in plans(conn, node, list(ids), places):
                expected = {i for i, md in ids.items() if i > plan.after_id and evaluate(query, md)}
                assert selected(conn, node, plan) == expected, (query, plan)
        transaction.rollback()


# ---------------------------------------------------------------------------------- engines


@pytest.fixture(scope="module")
def sqlite_engine() -> Iterator[sa.Engine]:
    engine = sa.create_engine("sqlite://")
    schema.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def pg_engine() -> Iterator[sa.Engine]:
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"osagrid_qtest_{secrets.token_hex(6)}"
    try:
        create_database(admin, name)
    except sa.exc.OperationalError as exc:
        admin.dispose()
        reason = f"PostgreSQL is not reachable at {PG_URL}: {exc.orig}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    engine = sa.create_engine(PG_URL.rsplit("/", 1)[0] + "/" + name)
    try:
        schema.metadata.create_all(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def create_database(admin: sa.Engine, name: str) -> None:
    """Prefer a linguistic default collation, to prove that ordering does not depend on it."""
    with admin.connect() as conn:
        try:
            conn.execute(
                sa.text(
                    f"CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
                )
            )
        except sa.exc.ProgrammingError:  # built without ICU: the server's default collation
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))


# ------------------------------------------------------------------------ example catalogue

CATALOG: list[dict[str, MetaValue]] = [
    {
        "run_id": 1807,
        "data_level": "DL1",
        "night": date(2024, 1, 1),
        "zenith": 20.5,
        "name": "dl1_LST-1.Run01807.h5",
    },
    {
        "run_id": 1808,
        "data_level": "DL2",
        "night": date(2024, 1, 2),
        "zenith": 20,
        "name": "DL2_LST-1.Run01808.h5",
    },
    {"run_id": "1809", "data_level": "dl1", "night": "2024-01-01", "name": "dl1_100%_a.h5"},
    {"run_id": 2**53 + 1, "start": datetime(2024, 1, 1, 20, tzinfo=UTC), "name": "dl1-x[1].h5"},
    {"run_id": 2.0**53, "start": datetime(2024, 1, 1, 21, 30), "name": "b", "version": "0.12.3"},
    {"data_level": "Ä", "name": "a\\b", "version": "0.9"},
    {"data_level": "a", "name": "A_B", "zenith": float("inf")},
    {},
]

QUERIES = [
    "run_id = 1807",
    "run_id = 1807.0",
    "run_id = '1809'",
    "run_id != 1807",
    "run_id > 1807 and run_id < 1809",
    "run_id = 9007199254740993",
    "run_id = 9007199254740992",
    "run_id = 9007199254740992.0",
    "run_id >= 9007199254740992",
    "run_id in (1807, 1809, '1809')",
    "run_id not in (1807)",
    "run_id not in (x)",
    "run_id not in (1807, x)",
    "not run_id = 1807",
    "data_level = DL1",
    "data_level ~ 'DL*'",
    "data_level ~ 'dl?'",
    "data_level < a",
    "data_level > Z",
    "data_level >= DL1 and data_level <= DL2",
    "data_level in (DL1, dl1) or zenith > 20",
    "night = 2024-01-01",
    "night >= 2024-01-01 and night < 2024-01-02",
    "night ~ '2024-01-0?'",
    "start >= 2024-01-01 and start < 2024-01-02",
    "start = 2024-01-01T21:00:00+01:00",
    "start > 2024-01-01T21:00:00Z",
    "zenith = 20",
    "zenith > 20",
    "zenith >= 1e308",
    "name ~ 'dl1_*'",
    "name ~ 'DL?_*'",
    "name ~ '*100%*'",
    "name ~ 'A_B'",
    "name ~ 'a_b'",
    "name ~ 'dl1-x[1].h5'",
    "name ~ 'a\\\\b'",
    "name ~ '*'",
    "version ~ '0.*' and not version = 0.9",
    "not (name ~ '*.h5' or missing = 1)",
    "run_id in 1807..1808",
    "run_id in 1807.5..1808",
    "run_id in 9007199254740992..9007199254740992",
    "run_id in 9007199254740993..9007199254740993",
    "run_id in 9007199254740992.0..9007199254740992.0",
    "run_id not in 1807..1808",
    "run_id in '1800'..'1810'",
    "night in 2024-01-01..2024-01-01",
    "night in 2023-12-31..2024-01-31 and data_level in (DL1, dl1)",
    "night not in 2024-01-02..2024-12-31",
    "start in 2024-01-01..2024-01-02",
    "start in 2024-01-01T20:00:00Z..2024-01-01T20:30:00Z",
    "zenith in 20..20.5",
    "zenith not in -1e308..1e308",
    "data_level in A..Z",
    "exists run_id",
    "exists version and not exists zenith",
    "not exists missing",
    "exists run_id and run_id in 1..2000 and data_level = DL1",
    "(run_id = 1807 or exists version) and not name ~ 'b*'",
]


@pytest.mark.parametrize("text", QUERIES)
def test_examples_match_python(sqlite_engine: sa.Engine, text: str) -> None:
    check_equivalence(sqlite_engine, CATALOG, [parse(text)])


def test_examples_select_what_they_should(sqlite_engine: sa.Engine) -> None:
    with sqlite_engine.connect() as conn, conn.begin() as transaction:
        ids = [insert_file(conn, f"file{i}", md) for i, md in enumerate(CATALOG)]

        def files(text: str) -> set[int]:
            return {ids.index(file_id) for file_id in selected(conn, parse(text))}

        assert files("run_id = 1807") == {0}
        # Exact between ints; an int against a float compares as doubles (float(2**53 + 1) == 2**53).
        assert files("run_id = 9007199254740993") == {3, 4}
        assert files("run_id = 9007199254740992") == {4}
        assert files("run_id = 9007199254740992.0") == {3, 4}
        assert files("data_level ~ 'dl?'") == {2}  # case-sensitive on SQLite too
        assert files("name ~ 'A_B'") == {6}  # '_' is not a wildcard
        assert files("name ~ '*100%*'") == {2}  # '%' is not a wildcard
        assert files("night = 2024-01-01") == {0, 2}
        assert files("not run_id = 1807") == {1, 2, 3, 4, 5, 6, 7}
        assert files("run_id not in (1807, x)") == {1, 2, 3, 4}
        transaction.rollback()


def test_cached_statements_use_each_querys_values(sqlite_engine: sa.Engine) -> None:
    # Same shape, different glob and bound values: the compiled-SQL cache must not mix them up.
    with sqlite_engine.connect() as conn, conn.begin() as transaction:
        first = insert_file(conn, "first", {"name": "alpha", "night": date(2024, 1, 1)})
        second = insert_file(conn, "second", {"name": "beta", "night": date(2024, 1, 2)})
        for _ in range(3):
            assert selected(conn, parse("name ~ 'a*' and night < 2024-01-02")) == {first}
            assert selected(conn, parse("name ~ 'b*' and night < 2024-01-03")) == {second}
        transaction.rollback()


def test_values_are_bound_parameters() -> None:
    node = parse("""source = "Crab'; DROP TABLE files; --" or name ~ 'x*' or night < 2024-01-01""")
    statement = sa.select(schema.files.c.id).where(compile_query(node))
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        sql = str(statement.compile(dialect=dialect))
        assert "DROP" not in sql and "2024" not in sql and "x%" not in sql and "'x" not in sql


def test_typed_columns_are_used() -> None:
    def sql(text: str) -> str:
        return str(compile_query(parse(text)).compile(dialect=postgresql.dialect()))

    assert "vint =" in sql("run_id = 1807") and "vnum =" in sql("run_id = 1807")  # vnum: the index
    assert "vint" not in sql("zenith = 20.5") and "vnum =" in sql("zenith = 20.5")
    assert "vstr =" in sql("night = 2024-01-01") and 'COLLATE "C"' not in sql("night = 2024-01-01")
    assert 'vstr COLLATE "C" <' in sql("night < 2024-01-01")
    assert "LIKE" in sql("name ~ 'x*'")


@pytest.mark.parametrize(
    ("glob", "like", "sqlite_glob"),
    [
        ("dl1_*.h5", "dl1\\_%.h5", "dl1_*.h5"),
        ("100%?", "100\\%_", "100%?"),
        ("a\\b", "a\\\\b", "a\\b"),
        ("[x]", "[x]", "[[]x]"),
    ],
)
def test_glob_translation(glob: str, like: str, sqlite_glob: str) -> None:
    assert like_pattern(glob) == like
    assert sqlite_glob_pattern(glob) == sqlite_glob


# ---------------------------------------------------------------- random queries and catalogs

# Small pools, so that random files and queries often meet on the same key and close values.
KEYS = ["a", "b"]
INTS = st.sampled_from([-1, 0, 1, 2, 2**53, 2**53 + 1, 2**63 - 1, -(2**63)])
FLOATS = st.sampled_from([-0.0, 0.5, 1.0, 2.0, 2.0**53, 2.0**63, 1e300]) | st.floats(
    allow_nan=False, allow_infinity=False
)
TEXTS = st.text(st.sampled_from("aA*?_%\\[é😀"), max_size=3) | st.sampled_from(
    ["DL1", "dl1", "2024-01-01", "2024-01-01T20:00:00+00:00"]
)
DATES = st.sampled_from([date(2023, 12, 31), date(2024, 1, 1)])
DATETIMES = st.sampled_from(
    [
        datetime(2024, 1, 1, tzinfo=UTC),
        datetime(2024, 1, 1, 20, tzinfo=UTC),
        datetime(2024, 1, 1, 21, tzinfo=timezone(timedelta(hours=1))),
        datetime(2024, 1, 1, 20),
        datetime(2024, 1, 1, 20, 0, 0, 500000, tzinfo=UTC),
    ]
)
LITERALS: st.SearchStrategy[MetaValue] = st.one_of(INTS, FLOATS, TEXTS, DATES, DATETIMES)
STORED = LITERALS | st.sampled_from([float("inf"), float("-inf")])


@st.composite
def comparisons(draw: st.DrawFn) -> Comparison:
    op = draw(st.sampled_from(OPERATORS))
    value = draw(TEXTS) if op == "~" else draw(LITERALS)
    return Comparison(draw(st.sampled_from([*KEYS, "missing"])), op, value)


@st.composite
def ranges(draw: st.DrawFn) -> Range:
    kind = draw(st.sampled_from([INTS | FLOATS, TEXTS | DATES | DATETIMES]))
    low, high = draw(kind), draw(kind)
    pair = comparable_pair(low, high)
    assert pair is not None
    if pair[0] > pair[1]:
        low, high = high, low
    return Range(draw(st.sampled_from([*KEYS, "missing"])), low, high, draw(st.booleans()))


LEAF = (
    comparisons()
    | st.builds(
        InList, st.sampled_from(KEYS), st.lists(LITERALS, min_size=1, max_size=3).map(tuple), st.booleans()
    )
    | ranges()
    | st.builds(Exists, st.sampled_from([*KEYS, "missing"]))
)


def _extend(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    items = st.lists(children, min_size=2, max_size=3).map(tuple)
    return st.builds(Not, children) | st.builds(And, items) | st.builds(Or, items)


NODES = st.recursive(LEAF, _extend, max_leaves=5)


def literals(node: Node) -> list[MetaValue]:
    if isinstance(node, Comparison):
        return [node.value]
    if isinstance(node, InList):
        return list(node.values)
    if isinstance(node, Range):
        return [node.low, node.high]
    if isinstance(node, Exists):
        return []
    if isinstance(node, Not):
        return literals(node.item)
    return [value for item in node.items for value in literals(item)]


def neighbours(value: MetaValue) -> list[MetaValue]:
    """Stored values that a literal tells apart only if SQL and Python agree on the edge cases."""
    if isinstance(value, str):
        return [value, value.swapcase(), value.replace("*", "x").replace("?", "y")]
    if isinstance(value, int):
        return [
            v for v in (value, value - 1, value + 1, float(value)) if isinstance(v, float) or abs(v) < 2**63
        ]
    if isinstance(value, float):
        return [value, math.nextafter(value, math.inf), int(value) if abs(value) < 2**63 else value]
    return [value, sortable_text(value)]


@st.composite
def catalogs_and_queries(draw: st.DrawFn) -> tuple[list[dict[str, MetaValue]], list[Node]]:
    """Queries, then files holding every value on and around their literals, plus random files."""
    nodes = draw(st.lists(NODES, min_size=1, max_size=3))
    near = [v for node in nodes for literal in literals(node) for v in neighbours(literal)]
    catalog: list[dict[str, MetaValue]] = [{key: value} for key in KEYS for value in near]
    stored = st.sampled_from(near) | STORED if near else STORED  # 'exists' has no literal
    catalog += draw(st.lists(st.dictionaries(st.sampled_from(KEYS), stored), max_size=6))
    return catalog, nodes


@settings(max_examples=200, deadline=None)
@given(catalogs_and_queries())
def test_random_queries_match_python_on_sqlite(
    sqlite_engine: sa.Engine, case: tuple[list[dict[str, MetaValue]], list[Node]]
) -> None:
    check_equivalence(sqlite_engine, *case)


@pytest.mark.parametrize("placement", ["a in sets", "mixed"])
def test_examples_match_python_with_metadata_sets_on_sqlite(sqlite_engine: sa.Engine, placement: str) -> None:
    check_equivalence(sqlite_engine, CATALOG, [parse(text) for text in QUERIES], *PLACEMENTS[placement])


@settings(max_examples=150, deadline=None)
@given(catalogs_and_queries(), st.sampled_from(sorted(PLACEMENTS)))
def test_random_queries_match_python_with_metadata_sets_on_sqlite(
    sqlite_engine: sa.Engine, case: tuple[list[dict[str, MetaValue]], list[Node]], placement: str
) -> None:
    check_equivalence(sqlite_engine, *case, *PLACEMENTS[placement])


@pytest.mark.integration
@pytest.mark.parametrize("text", QUERIES)
def test_examples_match_python_on_postgresql(pg_engine: sa.Engine, text: str) -> None:
    check_equivalence(pg_engine, CATALOG, [parse(text)])


@pytest.mark.integration
@settings(max_examples=200, deadline=None)
@given(catalogs_and_queries())
def test_random_queries_match_python_on_postgresql(
    pg_engine: sa.Engine, case: tuple[list[dict[str, MetaValue]], list[Node]]
) -> None:
    check_equivalence(pg_engine, *case)


@pytest.mark.integration
@settings(max_examples=100, deadline=None)
@given(catalogs_and_queries(), st.sampled_from(sorted(PLACEMENTS)))
def test_random_queries_match_python_with_metadata_sets_on_postgresql(
    pg_engine: sa.Engine, case: tuple[list[dict[str, MetaValue]], list[Node]], placement: str
) -> None:
    check_equivalence(pg_engine, *case, *PLACEMENTS[placement])


# ---------------------------------------------------------------------------------- planning


def test_planning_drives_an_and_from_its_most_selective_part(sqlite_engine: sa.Engine) -> None:
    with sqlite_engine.connect() as conn, conn.begin() as transaction:
        for i in range(40):
            insert_file(conn, f"f{i}", {"data_level": "DL1", "run_id": i, "night": date(2024, 1, 1 + i % 3)})
        node = parse("data_level = DL1 and run_id = 7 and not night = 2024-01-02")
        counted: list[str] = []

        def estimate(rows: sa.Select[object]) -> int:
            counted.append(str(rows))
            return int(conn.scalar(capped_count(rows)) or 0)

        plan = plan_query(node, estimate)
        data_level, run_id, negation = node.items  # type: ignore[union-attr]
        assert id(run_id) in plan.drivers and id(data_level) not in plan.drivers
        assert id(negation) not in plan.drivers
        assert len(counted) == 2  # the negation cannot drive: never counted
        sql = str(compile_query(node, plan).compile(dialect=sqlite.dialect()))
        assert sql.count("files.id IN") == 1 and sql.count("EXISTS") == 2
        transaction.rollback()


def test_lone_conditions_and_ors_drive_without_counting() -> None:
    def never(rows: sa.Select[object]) -> int:
        raise AssertionError("nothing to choose: no estimate needed")

    for text in ("a = 1", "a = 1 or b in 1..2", "exists a or (a = 1 or b = 2)"):
        node = parse(text)
        plan = plan_query(node, never)
        assert all(id(leaf) in plan.drivers for leaf in leaves(node))


@pytest.mark.parametrize(
    ("text", "can_drive"),
    [
        ("a = 1", True),
        ("not a = 1", False),
        ("a not in (1)", False),
        ("a not in 1..2", False),
        ("a = 1 and not b = 1", True),
        ("a = 1 or not b = 1", False),
        ("exists a", True),
        ("in dataset d", True),
    ],
)
def test_drivable(text: str, can_drive: bool) -> None:
    assert drivable(parse(text)) is can_drive


@settings(max_examples=200, deadline=None)
@given(NODES)
def test_no_literal_reaches_sql_unparameterised(node: Node) -> None:
    drivers = Plan(drivers=frozenset(id(n) for n in nodes_of(node)))
    for plan in (Plan(), drivers):
        statement = sa.select(schema.files.c.id).where(compile_query(node, plan))
        for dialect in (sqlite.dialect(), postgresql.dialect()):
            compiled = statement.compile(dialect=dialect)
            # Every key and value is a bound parameter: the SQL text holds no quoted literal at all
            # (but LIKE's fixed escape character).
            assert "'" not in str(compiled).replace("ESCAPE '\\'", "")
