"""The catalog store (``osa_grid.catalog.store.Catalog``) on SQLite and, with ``-m integration``, PostgreSQL.

Every test takes the ``catalog`` (or ``catalog_url``) fixture of ``tests/conftest.py``, so each runs on a
fresh SQLite file always and on a fresh PostgreSQL database when integration tests are selected.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from osa_grid.catalog import migrate, schema
from osa_grid.catalog.store import Catalog, CatalogFile, Completion, Failure
from osa_grid.core.models import Production
from osa_grid.core.planner import PlannedTask, plan_groups
from osa_grid.core.query import evaluate, parse
from osa_grid.core.rendering import render_outputs
from osa_grid.core.states import TaskState
from osa_grid.errors import (
    BadInput,
    CatalogError,
    InvalidTransition,
    LeaseHeld,
    OsaGridError,
    UnknownProduction,
)
from osa_grid.ports import NewFile, Replica
from osa_grid.services.productions import definition_of, digest_of
from tests.helpers import (
    lst_subrun,
    lst_subrun_lfn,
    make_file,
    production_from_yaml,
    provenance_record,
    toy_production_yaml,
)

PRODUCTION = "test-chain"

# ------------------------------------------------------------------------------------------ helpers


def row_count(catalog: Catalog, table: sa.Table) -> int:
    with catalog.engine.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


def table_rows(catalog: Catalog, table: sa.Table) -> list[dict[str, Any]]:
    """Every row of a table, in primary-key order: a snapshot to prove that nothing changed."""
    with catalog.engine.connect() as conn:
        statement = sa.select(table).order_by(*table.primary_key.columns)
        return [dict(row._mapping) for row in conn.execute(statement)]


def snapshot(catalog: Catalog) -> dict[str, list[dict[str, Any]]]:
    return {name: table_rows(catalog, table) for name, table in schema.metadata.tables.items()}


def save(catalog: Catalog, production: Production) -> bool:
    return catalog.save_production(
        production.name, definition_of(production), digest_of(production), "test-chain.yaml"
    )


def plan(
    catalog: Catalog, production: Production, name: str, flush: bool = False
) -> tuple[int, list[PlannedTask]]:
    """One planning pass of one transformation, the way the shepherd does it."""
    transformation = production.transformation(name)
    tid, cursor = catalog.transformation_cursor(production.name, name)
    new = catalog.query(transformation.input.query, after_id=cursor)
    candidates = catalog.pending_files(tid) + [f.record() for f in new]
    outcome = plan_groups(production.name, transformation, candidates, flush)
    new_cursor = max([cursor, *(f.id for f in new)])
    created = catalog.record_plan(production.name, tid, outcome.tasks, outcome.pending, new_cursor)
    return created, outcome.tasks


@pytest.fixture
def production() -> Production:
    return production_from_yaml()


@pytest.fixture
def ready_tasks(catalog: Catalog, production: Production) -> list[str]:
    """Three READY calibrate tasks (one per R0 sub-run of run 1807), in sub-run order."""
    save(catalog, production)
    catalog.register_files([lst_subrun(1807, subrun) for subrun in range(3)])
    created, tasks = plan(catalog, production, "calibrate")
    assert created == 3
    return [t.task_id for t in sorted(tasks, key=lambda t: t.inputs[0].lfn)]


def submit(catalog: Catalog, task_id: str, job_id: str = "4242", running: bool = True) -> None:
    catalog.reserve_submissions("local", {task_id: f"/work/{task_id}"})
    catalog.record_job_ids({task_id: job_id})
    if running:
        catalog.mark_running([task_id])


def outputs_of(catalog: Catalog, production: Production, task_id: str) -> list[NewFile]:
    """The files a finished calibrate task leaves, rendered from its inputs as the shepherd does."""
    task = catalog.task(task_id)
    assert task is not None
    transformation = production.transformation(task.transformation)
    inputs = [f.record() for f in catalog.task_inputs([task_id])[task_id]]
    rendered = render_outputs(production.name, transformation, task_id, inputs)
    return [
        make_file(o.lfn, replicas=[Replica(o.lfn, "local", f"/store/{o.lfn}")], **o.metadata)
        for o in rendered
    ]


def state_of(catalog: Catalog, task_id: str) -> TaskState:
    task = catalog.task(task_id)
    assert task is not None
    return task.state


def kinds(catalog: Catalog, task_id: str) -> list[str]:
    return [e["kind"] for e in catalog.events(task_id=task_id)]


# ---------------------------------------------------------------------------------------- migration


def test_migrated_database_matches_the_schema_exactly(catalog_url: str) -> None:
    catalog = Catalog.open(catalog_url)
    try:
        with catalog.engine.connect() as conn:
            # compare_type=True: alembic renders both types with the dialect's DDL compiler and compares
            # the text. UTCDateTime is a TypeDecorator, so it renders as its impl DateTime(timezone=True):
            # "TIMESTAMP WITH TIME ZONE" on PostgreSQL, which the reflected column must match (a
            # TIMESTAMP WITHOUT TIME ZONE would be a difference). SQLite has no zone in its DDL
            # ("DATETIME" either way), so there the zone is not comparable; UTCDateTime itself keeps
            # values aware, which the round-trip tests check. BigId renders as BIGINT on PostgreSQL and
            # INTEGER on SQLite (its variant), exactly what 0001 creates. No custom comparator is needed.
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            assert compare_metadata(context, schema.metadata) == []

            # The comparison is not vacuous: an extra column and a wider type are both seen.
            changed = sa.MetaData()
            for table in schema.metadata.tables.values():
                table.to_metadata(changed)
            changed.tables["files"].append_column(sa.Column("extra", sa.Integer, nullable=True))
            changed.tables["files"].c.checksum.type = sa.String(32)
            found = {
                diff[0] if isinstance(diff, tuple) else diff[0][0]
                for diff in compare_metadata(context, changed)
            }
            assert found == {"add_column", "modify_type"}

            if conn.dialect.name == "postgresql":
                inspector = sa.inspect(conn)
                for table in schema.metadata.tables.values():
                    reflected = {c["name"]: c["type"] for c in inspector.get_columns(table.name)}
                    for column in table.columns:
                        if isinstance(column.type, schema.UTCDateTime):
                            assert reflected[column.name].timezone is True, f"{table.name}.{column.name}"
    finally:
        catalog.close()


def test_the_numbered_head_is_alembic_head_of_one_line_of_revisions() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from osa_grid.resources import shipped

    config = Config()
    config.set_main_option("script_location", str(shipped("catalog") / "migrations"))
    script = ScriptDirectory.from_config(config)
    assert script.get_heads() == [migrate.head_revision()]
    revisions = list(script.walk_revisions())
    assert [r.revision for r in reversed(revisions)] == [f"{n:04d}" for n in range(1, len(revisions) + 1)]


def test_commands_opening_a_new_catalog_at_once_all_succeed(catalog_url: str) -> None:
    # `nightly run` and `nightly status` started together used to fail one of them with "database is
    # locked": both read the empty catalog, then both tried to migrate it.
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def open_it() -> None:
        start.wait()
        try:
            Catalog.open(catalog_url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    catalog = Catalog.open(catalog_url)
    try:
        with catalog.engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
        assert versions == [migrate.head_revision()]
    finally:
        catalog.close()


def test_opening_twice_is_a_no_op(catalog_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    first = Catalog.open(catalog_url)
    try:
        with first.engine.connect() as conn:
            assert migrate.current_revision(conn) == migrate.head_revision()
            assert migrate.head_revision() is not None
        first.register_files([make_file("/kept.fits", run_id=1)])
    finally:
        first.close()

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the catalog is at head: opening it again must not run a migration")

    import alembic.command

    monkeypatch.setattr(alembic.command, "upgrade", must_not_run)
    second = Catalog.open(catalog_url)
    try:
        with second.engine.connect() as conn:
            assert migrate.current_revision(conn) == migrate.head_revision()
            versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
        assert versions == [migrate.head_revision()]
        kept = second.file("/kept.fits")
        assert kept is not None and kept.metadata == {"run_id": 1}
    finally:
        second.close()


# ---------------------------------------------------------------------------------- register_files


def typed_metadata(i: int) -> dict[str, Any]:
    return {
        "run_id": 1800 + i // 100,
        "subrun_id": i % 100,
        "big": 2**62 + i,  # beyond 2**53: must stay exact (vint), not pass through a double
        "negative": -i,
        "zenith": i / 7,
        "whole_float": float(i),  # a float that looks like an int stays a float
        "tiny": 1e-300 * (i + 1),
        "data_level": "R0" if i % 2 else "DL1",
        "comment": f"Crab Nebula — ü {i}" if i % 3 else "",
        "night": date(2024, 1, 1) + timedelta(days=i % 40),
        "start": datetime(2024, 1, 1, 21, 0, tzinfo=UTC) + timedelta(seconds=i, microseconds=i * 7),
    }


def assert_same_metadata(found: dict[str, Any], expected: dict[str, Any]) -> None:
    assert found == expected
    for key, value in expected.items():
        assert type(found[key]) is type(value), (key, found[key], value)
        if isinstance(value, datetime):
            assert found[key].utcoffset() == timedelta(0)


def test_bulk_registration_round_trips_typed_metadata(catalog: Catalog) -> None:
    new_files = [
        make_file(
            f"/lst/test/file_{i:05d}.h5",
            size=1000 + i,
            checksum=f"{i:08x}",
            replicas=[Replica(f"/lst/test/file_{i:05d}.h5", "disk", f"/data/file_{i:05d}.h5")],
            **typed_metadata(i),
        )
        for i in range(2000)
    ]
    ids = catalog.register_files(new_files)
    assert len(ids) == 2000
    assert ids == sorted(ids) and len(set(ids)) == 2000  # registration order
    assert catalog.max_file_id() == ids[-1]

    found = catalog.files_by_id(ids)
    assert [f.id for f in found] == ids
    for new, got in zip(new_files, found, strict=True):
        assert (got.lfn, got.size, got.checksum, got.task_id) == (new.lfn, new.size, new.checksum, None)
        assert got.created_at.tzinfo is not None and got.created_at.utcoffset() == timedelta(0)
        assert_same_metadata(got.metadata, dict(new.metadata))
        assert got.replicas == (Replica(new.lfn, "disk", f"/data/{new.lfn.rsplit('/', 1)[1]}", "available"),)

    # files_by_id keeps the order it is given, including across its 500-id chunks.
    shuffled = ids[::-3]
    assert [f.id for f in catalog.files_by_id(shuffled)] == shuffled

    one = catalog.file("/lst/test/file_01234.h5")
    assert one is not None and one.id == ids[1234]
    assert_same_metadata(one.metadata, typed_metadata(1234))
    assert catalog.file("/lst/test/not_there.h5") is None

    queried = catalog.query("data_level = R0 and run_id = 1812")
    assert [f.lfn for f in queried] == [f"/lst/test/file_{i:05d}.h5" for i in range(1201, 1300, 2)]
    for got in queried:
        assert_same_metadata(got.metadata, typed_metadata(int(got.lfn[-8:-3])))
    assert catalog.count(f"big >= {2**62 + 1999}") == 1
    assert catalog.count(f"big = {2**62 + 1}") == 1  # 2**62 and 2**62 + 1 are the same double
    assert catalog.count("whole_float = 7") == 1
    assert catalog.count(f"start = {typed_metadata(5)['start'].isoformat()}") == 1


def test_other_time_zones_come_back_as_the_same_instant_in_utc(catalog: Catalog) -> None:
    cet = datetime(2024, 1, 1, 22, 30, tzinfo=timezone(timedelta(hours=1)))
    catalog.register_files([make_file("/tz.h5", start=cet)])
    found = catalog.file("/tz.h5")
    assert found is not None
    assert found.metadata["start"] == cet
    assert found.metadata["start"].utcoffset() == timedelta(0)


def test_equal_values_stored_differently_stay_apart_in_one_registration(catalog: Catalog) -> None:
    # One registration types each distinct value once and shares the row it makes: values that compare
    # equal but are stored differently must not share it.
    madrid = ZoneInfo("Europe/Madrid")
    first_half_hour = datetime(2024, 10, 27, 2, 30, tzinfo=madrid)  # the clocks go back at 03:00
    values: list[Any] = [1, 1.0, 0.0, -0.0, first_half_hour, first_half_hour.replace(fold=1)]
    catalog.register_files([make_file(f"/same_{i}.h5", x=value) for i, value in enumerate(values)])
    found = [catalog.file(f"/same_{i}.h5") for i in range(len(values))]
    stored = [f.metadata["x"] for f in found if f is not None]
    assert [type(v) for v in stored] == [int, float, float, float, datetime, datetime]
    assert stored[4] == datetime(2024, 10, 27, 0, 30, tzinfo=UTC)
    assert stored[5] == datetime(2024, 10, 27, 1, 30, tzinfo=UTC)
    if catalog.engine.dialect.name == "postgresql":  # SQLite stores a whole REAL as an integer: no -0.0
        assert [math.copysign(1, v) for v in stored[2:4]] == [1.0, -1.0]
    assert catalog.metadata_keys() == {"x": {"int", "float", "datetime"}}


def test_registration_keeps_each_files_producing_task(catalog: Catalog, production: Production) -> None:
    save(catalog, production)
    catalog.register_files([lst_subrun(1807, 0)])
    created, tasks = plan(catalog, production, "calibrate")
    assert created == 1
    task_id = tasks[0].task_id
    catalog.register_files([make_file("/made.h5", run_id=1)], task_id=task_id)
    catalog.register_files([make_file("/found.h5", run_id=1)])
    made, found = catalog.file("/made.h5"), catalog.file("/found.h5")
    assert made is not None and made.task_id == task_id
    assert found is not None and found.task_id is None


def test_the_first_value_too_long_is_named_in_a_large_batch(catalog: Catalog) -> None:
    good = [make_file(f"/ok_{i}.h5", replicas=[Replica(f"/ok_{i}.h5", "disk", "/d")]) for i in range(1000)]
    long_pfn = make_file("/long_pfn.h5", replicas=[Replica("/long_pfn.h5", "disk", "/" + "p" * 2048)])
    long_state = make_file("/long_state.h5", replicas=[Replica("/long_state.h5", "disk", "/d", "s" * 17)])
    long_lfn = make_file("/" + "x" * 1024)
    batch = [*good[:500], long_pfn, *good[500:], long_lfn, long_state]
    message = "replicas.pfn of '/long_pfn.h5' is longer than 2048 characters"
    with pytest.raises(BadInput, match=re.escape(message)):
        catalog.register_files(batch)
    with pytest.raises(BadInput, match=re.escape("replicas.state of '/long_state.h5' is longer than 16")):
        catalog.register_files([*good, long_state, long_lfn])
    with pytest.raises(BadInput, match=re.escape(f"files.lfn of {long_lfn.lfn[:80]!r} is longer than 1024")):
        catalog.register_files([*good, long_lfn, long_state])
    assert row_count(catalog, schema.files) == 0
    assert len(catalog.register_files(good)) == 1000


def test_empty_registration_does_nothing(catalog: Catalog) -> None:
    assert catalog.register_files([]) == []
    assert row_count(catalog, schema.files) == 0


def test_duplicate_lfn_in_one_call_registers_nothing(catalog: Catalog) -> None:
    files = [make_file(f"/f{i}.h5", run_id=i) for i in range(3)] + [make_file("/f1.h5", run_id=99)]
    with pytest.raises(BadInput, match="twice"):
        catalog.register_files(files)
    assert row_count(catalog, schema.files) == 0
    assert row_count(catalog, schema.file_metadata) == 0


@pytest.mark.parametrize("position", [0, 1100], ids=["first-chunk", "third-chunk"])
def test_already_registered_lfn_registers_nothing(catalog: Catalog, position: int) -> None:
    catalog.register_files([make_file("/old.h5", run_id=1)])
    before = snapshot(catalog)
    batch = [make_file(f"/new_{i:04d}.h5", run_id=i) for i in range(1200)]
    batch.insert(position, make_file("/old.h5", run_id=2))
    with pytest.raises(BadInput, match=re.escape("1 file(s) are already registered: /old.h5")):
        catalog.register_files(batch)
    assert snapshot(catalog) == before


def test_a_refused_registration_leaves_the_catalog_usable_and_ids_ascending(catalog: Catalog) -> None:
    """The UNIQUE constraint refuses a clash inside the bulk insert: the rest of the batch goes with it."""
    first = catalog.register_files([make_file(f"/a_{i}.h5", run_id=i) for i in range(3)])
    clash = [make_file(f"/b_{i}.h5", run_id=i) for i in range(600)] + [make_file("/a_1.h5", run_id=1)]
    before = snapshot(catalog)
    for _ in range(2):  # twice: the refused batch leaves no state behind that breaks the next try
        with pytest.raises(BadInput, match=re.escape("/a_1.h5")):
            catalog.register_files(clash)
        assert snapshot(catalog) == before
    later = catalog.register_files(clash[:-1])
    assert later == sorted(later) and later[0] > first[-1]
    assert [f.lfn for f in catalog.files_by_id(later)] == [f.lfn for f in clash[:-1]]
    assert catalog.count("run_id = 1") == 2  # /a_1.h5 and /b_1.h5, with their metadata rows
    assert catalog.metadata_keys() == {"run_id": {"int"}}


@pytest.mark.parametrize(
    "bad",
    [
        {"calibrated": True},
        {"calibrated": False},
        {"1bad_key": 1},
        {"nan": float("nan")},
        {"text": "nul\x00inside"},
        {"text": "x" * 1025},
        {"values": [1, 2]},
    ],
    ids=["bool-true", "bool-false", "bad-key", "nan", "nul", "too-long", "list"],
)
def test_invalid_metadata_registers_nothing(catalog: Catalog, bad: dict[str, Any]) -> None:
    # The bad file comes last: its metadata is checked after the files rows are inserted, so only the
    # transaction keeps the good files out.
    batch = [make_file(f"/good_{i}.h5", run_id=i) for i in range(3)] + [make_file("/bad.h5", run_id=9, **bad)]
    with pytest.raises(BadInput):
        catalog.register_files(batch)
    assert row_count(catalog, schema.files) == 0
    assert row_count(catalog, schema.file_metadata) == 0
    assert catalog.register_files(batch[:3])  # the catalog is still usable


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1], ids=["2**63", "-2**63-1"])
def test_int_metadata_outside_int64_is_bad_input(catalog: Catalog, value: int) -> None:
    # The query language refuses ints outside int64 (core.query.INT64_MIN/MAX); registration must too,
    # with BadInput, instead of a driver error (OverflowError on SQLite, DataError on PostgreSQL).
    catalog.register_files([make_file("/limit.h5", big=2**63 - 1, small=-(2**63))])
    limit = catalog.file("/limit.h5")
    assert limit is not None and limit.metadata == {"big": 2**63 - 1, "small": -(2**63)}
    with pytest.raises(BadInput):
        catalog.register_files([make_file("/too_big.h5", big=value)])
    assert catalog.file("/too_big.h5") is None


@pytest.mark.parametrize(
    "new_file",
    [
        make_file("/" + "x" * 1024, run_id=1),
        make_file("/ok.h5", checksum="0" * 17, run_id=1),
        make_file("/ok.h5", replicas=[Replica("/ok.h5", "s" * 65, "/data/ok.h5")], run_id=1),
    ],
    ids=["lfn-1025-chars", "checksum-17-chars", "store-65-chars"],
)
def test_values_longer_than_their_columns_are_bad_input_on_every_database(
    catalog: Catalog, new_file: NewFile
) -> None:
    # The columns are String(1024) / String(16) / String(64). PostgreSQL enforces the length (a raw
    # DataError), SQLite silently stores anything: the same input must give the same answer on both.
    with pytest.raises(BadInput):
        catalog.register_files([new_file])
    assert row_count(catalog, schema.files) == 0


# ------------------------------------------------------------------------------------------- queries


@pytest.fixture
def lst_night(catalog: Catalog) -> list[NewFile]:
    """Three nights of LST-1 files at two data levels, several sources."""
    files: list[NewFile] = []
    layout = [
        (date(2023, 12, 31), 1790, "Mrk421"),
        (date(2024, 1, 1), 1807, "Crab Nebula"),
        (date(2024, 1, 1), 1808, "CrabPulsar"),
        (date(2024, 1, 2), 1809, "crab"),  # lower case: the glob is case-sensitive
        (date(2024, 1, 2), 1810, "Crab*Weird"),
    ]
    for night, run_id, source in layout:
        for subrun in range(4):
            for level in ("R0", "DL1"):
                files.append(lst_subrun(run_id, subrun, night=night, level=level, n_subruns=4, source=source))
    catalog.register_files(files)
    return files


@pytest.mark.parametrize(
    ("text", "expected_runs", "expected_levels"),
    [
        ("data_level = DL1 and run_id in (1807, 1808)", {1807, 1808}, {"DL1"}),
        ("night >= 2024-01-01", {1807, 1808, 1809, 1810}, {"R0", "DL1"}),
        ('source ~ "Crab*"', {1807, 1808, 1810}, {"R0", "DL1"}),
        ('data_level = R0 and night = "2024-01-02" and subrun_id < 2', {1809, 1810}, {"R0"}),
        ("zenith > 22.5 and not source = Mrk421", {1808, 1809, 1810}, {"R0", "DL1"}),
        ("run_id not in (1807, 1808, 1809) and data_level != R0", {1790, 1810}, {"DL1"}),
        ("start >= 2024-01-02T00:00:00+00:00", {1809, 1810}, {"R0", "DL1"}),
        ("run_type = PEDCALIB", set(), set()),
    ],
)
def test_query_and_count(
    catalog: Catalog, lst_night: list[NewFile], text: str, expected_runs: set[int], expected_levels: set[str]
) -> None:
    found = catalog.query(text)
    assert {f.metadata["run_id"] for f in found} == expected_runs
    assert {f.metadata["data_level"] for f in found} == expected_levels
    # Exactly the files the pure evaluator accepts, in registration (id) order.
    node = parse(text)
    assert [f.lfn for f in found] == [f.lfn for f in lst_night if evaluate(node, f.metadata)]
    assert [f.id for f in found] == sorted(f.id for f in found)
    assert catalog.count(text) == len(found)


def test_glob_takes_like_wildcards_literally(catalog: Catalog, lst_night: list[NewFile]) -> None:
    # '_' and '%' are LIKE wildcards on PostgreSQL: a glob must treat them literally.
    catalog.register_files(
        [make_file("/x1.h5", tag="a_c"), make_file("/x2.h5", tag="abc"), make_file("/x3.h5", tag="a%c")]
    )
    assert [f.lfn for f in catalog.query('tag ~ "a_c"')] == ["/x1.h5"]
    assert [f.lfn for f in catalog.query('tag ~ "a%c"')] == ["/x3.h5"]
    assert [f.lfn for f in catalog.query('tag ~ "a?c"')] == ["/x1.h5", "/x2.h5", "/x3.h5"]
    assert catalog.count('source ~ "Crab[*]Weird"') == 0


def test_after_id_paging_visits_every_file_once_in_order(catalog: Catalog, lst_night: list[NewFile]) -> None:
    text = "data_level = R0"
    everything = catalog.query(text)
    assert len(everything) == 20
    pages: list[list[CatalogFile]] = []
    after = 0
    while page := catalog.query(text, after_id=after, limit=7):
        pages.append(page)
        after = page[-1].id
    assert [len(p) for p in pages] == [7, 7, 6]
    assert [f.id for p in pages for f in p] == [f.id for f in everything]
    # A planner's cursor: files registered later are found after it, earlier ones are not seen again.
    cursor = catalog.max_file_id()
    assert catalog.query(text, after_id=cursor) == []
    catalog.register_files([lst_subrun(1811, 0, level="R0")])
    assert [f.lfn for f in catalog.query(text, after_id=cursor)] == [lst_subrun_lfn(1811, 0)]


def test_a_query_that_does_not_parse_is_bad_input(catalog: Catalog) -> None:
    with pytest.raises(BadInput):
        catalog.query("data_level = = DL1")
    with pytest.raises(BadInput):
        catalog.count("run_id in ()")


def test_paging_cursor_never_skips_a_file_whose_registration_commits_late(catalog: Catalog) -> None:
    """The planner keeps the largest ``files.id`` it has seen as its cursor, then asks for ``id > cursor``.

    That is only safe if no file with a smaller id can become visible after one with a larger id. A slow
    registration takes its id and pauses before committing; a second one is started meanwhile. SQLite
    has one writer at a time, so the second waits and ids become visible in order. On PostgreSQL ids
    come from a sequence at INSERT time, the second registration commits first with the larger id, and
    a planning pass in between moves the cursor past the slow file for good.
    """
    inserted, release = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def pause_slow_registration(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # Once the id is taken: the files insert on SQLite, the sequence on PostgreSQL (the rows go by COPY).
        takes_id = statement.startswith("INSERT INTO files") or "nextval" in statement
        if threading.current_thread().name == "slow" and takes_id:
            inserted.set()
            release.wait(timeout=30)

    def register(new_file: NewFile) -> None:
        try:
            catalog.register_files([new_file])
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    slow = threading.Thread(target=register, args=(lst_subrun(1807, 0),), name="slow")
    fast = threading.Thread(target=register, args=(lst_subrun(1807, 1),), name="fast")
    sa.event.listen(catalog.engine, "after_cursor_execute", pause_slow_registration)
    try:
        slow.start()
        assert inserted.wait(timeout=10)
        fast.start()
        fast.join(timeout=3)  # still running if registrations are serialized: that is fine too
        first_pass = catalog.query("data_level = R0")  # a planning pass while the slow one is in flight
        cursor = max([0, *(f.id for f in first_pass)])
    finally:
        release.set()
        slow.join(timeout=90)
        fast.join(timeout=90)
        sa.event.remove(catalog.engine, "after_cursor_execute", pause_slow_registration)
    assert not failures
    assert catalog.count("data_level = R0") == 2
    second_pass = catalog.query("data_level = R0", after_id=cursor)
    seen = sorted(f.lfn for f in first_pass + second_pass)
    assert seen == sorted([lst_subrun_lfn(1807, 0), lst_subrun_lfn(1807, 1)]), "the cursor skipped a file"


# ------------------------------------------------------------------------------------------ planning


def test_save_production(catalog: Catalog, production: Production) -> None:
    assert save(catalog, production) is True
    assert save(catalog, production) is False  # same digest: nothing to do
    assert catalog.production_names() == [PRODUCTION]
    assert catalog.production_definition(PRODUCTION) == definition_of(production)
    assert catalog.transformation_cursor(PRODUCTION, "calibrate")[1] == 0
    assert catalog.transformation_cursor(PRODUCTION, "merge")[1] == 0
    assert [e["kind"] for e in catalog.events(production=PRODUCTION)] == ["production_created"]

    with pytest.raises(UnknownProduction):
        catalog.production_definition("nope")
    with pytest.raises(UnknownProduction):
        catalog.transformation_cursor(PRODUCTION, "nope")


def test_new_transformation_version_sees_every_file_again(catalog: Catalog, production: Production) -> None:
    save(catalog, production)
    catalog.register_files([lst_subrun(1807, s, level="DL1") for s in range(2)])
    plan(catalog, production, "merge")  # run incomplete: both files wait
    merge_id, cursor = catalog.transformation_cursor(PRODUCTION, "merge")
    calibrate_before = catalog.transformation_cursor(PRODUCTION, "calibrate")
    assert cursor > 0 and catalog.waiting_counts(PRODUCTION) == {"merge": 2}

    changed = production_from_yaml(toy_production_yaml(merge_version="1.1"))
    assert save(catalog, changed) is True
    assert catalog.transformation_cursor(PRODUCTION, "merge") == (merge_id, 0)
    assert catalog.transformation_cursor(PRODUCTION, "calibrate") == calibrate_before  # same version: kept
    assert catalog.waiting_counts(PRODUCTION) == {}
    assert catalog.pending_files(merge_id) == []
    assert [e["kind"] for e in catalog.events(production=PRODUCTION)] == [
        "production_created",
        "production_updated",
    ]
    assert catalog.events(production=PRODUCTION)[1]["detail"] == {
        "old_digest": digest_of(production),
        "digest": digest_of(changed),
    }


def test_record_plan_is_idempotent(catalog: Catalog, production: Production) -> None:
    save(catalog, production)
    ids = catalog.register_files([lst_subrun(1807, s) for s in range(3)])
    tid, cursor = catalog.transformation_cursor(PRODUCTION, "calibrate")
    assert cursor == 0
    candidates = [f.record() for f in catalog.query("data_level = R0 and run_type = DATA")]
    outcome = plan_groups(PRODUCTION, production.transformation("calibrate"), candidates, flush=False)
    assert len(outcome.tasks) == 3 and outcome.pending == []

    assert catalog.record_plan(PRODUCTION, tid, outcome.tasks, [], max(ids)) == 3
    before = snapshot(catalog)
    assert catalog.record_plan(PRODUCTION, tid, outcome.tasks, [], max(ids)) == 0
    assert snapshot(catalog) == before  # nothing new: no task, no input, no event

    assert catalog.transformation_cursor(PRODUCTION, "calibrate") == (tid, max(ids))
    tasks = catalog.tasks(PRODUCTION)
    assert sorted(t.task_id for t in tasks) == sorted(t.task_id for t in outcome.tasks)
    assert {t.state for t in tasks} == {TaskState.READY}
    assert {(t.attempt, t.failures, t.job_id) for t in tasks} == {(0, 0, None)}
    inputs = catalog.task_inputs([t.task_id for t in outcome.tasks])
    for planned in outcome.tasks:
        assert [f.lfn for f in inputs[planned.task_id]] == [f.lfn for f in planned.inputs]
        assert catalog.task(planned.task_id).group_key == planned.inputs[0].lfn  # type: ignore[union-attr]
    assert catalog.task_counts(PRODUCTION) == {"calibrate": {"ready": 3}}
    created = [e for e in catalog.events(production=PRODUCTION) if e["kind"] == "created"]
    assert sorted(e["task_id"] for e in created) == sorted(t.task_id for t in outcome.tasks)
    assert {(e["from_state"], e["to_state"]) for e in created} == {(None, "ready")}

    # A planning pass over the same files again (cursor moved back) creates nothing either.
    catalog.record_plan(PRODUCTION, tid, [], [], 0)
    assert catalog.transformation_cursor(PRODUCTION, "calibrate") == (tid, 0)
    created_again, planned_again = plan(catalog, production, "calibrate")
    assert created_again == 0
    assert sorted(t.task_id for t in planned_again) == sorted(t.task_id for t in outcome.tasks)
    assert len(catalog.events(production=PRODUCTION)) == len(before["events"])


def test_record_plan_with_initial_state(catalog: Catalog, production: Production) -> None:
    save(catalog, production)
    catalog.register_files([lst_subrun(1807, 0)])
    tid, _ = catalog.transformation_cursor(PRODUCTION, "calibrate")
    candidates = [f.record() for f in catalog.query("data_level = R0")]
    outcome = plan_groups(PRODUCTION, production.transformation("calibrate"), candidates, flush=False)
    catalog.record_plan(PRODUCTION, tid, outcome.tasks, [], 1, initial_state=TaskState.CREATED)
    assert catalog.task_counts(PRODUCTION) == {"calibrate": {"created": 1}}


def test_record_plan_over_tasks_that_partly_exist_creates_only_the_new_ones(
    catalog: Catalog, production: Production
) -> None:
    """A plan that overlaps recorded tasks (a cursor moved back over more files) adds the others only."""
    save(catalog, production)
    ids = catalog.register_files([lst_subrun(1807, s) for s in range(4)])
    tid, _ = catalog.transformation_cursor(PRODUCTION, "calibrate")
    candidates = [f.record() for f in catalog.query("data_level = R0 and run_type = DATA")]
    outcome = plan_groups(PRODUCTION, production.transformation("calibrate"), candidates, flush=False)
    first, rest = outcome.tasks[:2], outcome.tasks[2:]
    assert catalog.record_plan(PRODUCTION, tid, first, [], ids[1]) == 2
    before = snapshot(catalog)

    assert catalog.record_plan(PRODUCTION, tid, outcome.tasks, [], max(ids)) == 2
    after = snapshot(catalog)
    added = {name: [r for r in rows if r not in before[name]] for name, rows in after.items()}
    assert sorted(r["task_id"] for r in added["tasks"]) == sorted(t.task_id for t in rest)
    assert sorted((r["task_id"], r["file_id"]) for r in added["task_inputs"]) == sorted(
        (t.task_id, t.inputs[0].id) for t in rest
    )
    assert sorted((r["task_id"], r["kind"], r["to_state"]) for r in added["events"]) == sorted(
        (t.task_id, "created", "ready") for t in rest
    )
    assert [r for r in after["tasks"] if r in before["tasks"]] == before["tasks"]  # the first two untouched
    assert catalog.transformation_cursor(PRODUCTION, "calibrate") == (tid, max(ids))


def test_planning_batch_reads_the_metadata_grouping_needs(catalog: Catalog) -> None:
    ids = catalog.register_files([lst_subrun(1807, s) for s in range(3)] + [lst_subrun(1807, 0, level="DL1")])
    query = "data_level = R0"
    records, read_up_to = catalog.planning_batch(query, 0, max(ids), 10, ("run_id", "n_subruns"))
    assert read_up_to == max(ids)
    assert [(r.id, r.lfn) for r in records] == [(i, lst_subrun_lfn(1807, s)) for s, i in enumerate(ids[:3])]
    assert [r.metadata for r in records] == [{"run_id": 1807, "n_subruns": 3}] * 3
    assert [r.metadata for r in catalog.planning_batch(query, 0, max(ids), 10, ())[0]] == [{}] * 3
    everything = catalog.planning_batch(query, 0, max(ids), 10)[0]
    assert [r.metadata for r in everything] == [f.metadata for f in catalog.files_by_id(ids[:3])]
    # A full batch stops at its last file: the next one starts after it.
    batch, read_up_to = catalog.planning_batch(query, 0, max(ids), 2, ())
    assert [r.id for r in batch] == ids[:2] and read_up_to == ids[1]


def test_pending_files_are_replaced_and_the_cursor_moves(catalog: Catalog, production: Production) -> None:
    save(catalog, production)
    merge_id, _ = catalog.transformation_cursor(PRODUCTION, "merge")
    first = catalog.register_files([lst_subrun(1807, s, level="DL1", n_subruns=3) for s in range(2)])
    other_run = catalog.register_files([lst_subrun(1808, 0, level="DL1", n_subruns=2)])

    created, _ = plan(catalog, production, "merge")
    assert created == 0
    assert catalog.transformation_cursor(PRODUCTION, "merge") == (merge_id, other_run[0])
    assert catalog.waiting_counts(PRODUCTION) == {"merge": 3}
    assert sorted(f.id for f in catalog.pending_files(merge_id)) == sorted(first + other_run)
    with catalog.engine.connect() as conn:
        statement = sa.select(schema.pending_inputs.c.file_id, schema.pending_inputs.c.group_key)
        groups = {file_id: key for file_id, key in conn.execute(statement)}
    assert groups == {first[0]: "run_id=1807", first[1]: "run_id=1807", other_run[0]: "run_id=1808"}

    # The last sub-run of 1807 arrives: one task with all three, run 1808 still waits.
    last = catalog.register_files([lst_subrun(1807, 2, level="DL1", n_subruns=3)])
    created, tasks = plan(catalog, production, "merge")
    assert created == 1
    assert catalog.transformation_cursor(PRODUCTION, "merge") == (merge_id, last[0])
    assert catalog.waiting_counts(PRODUCTION) == {"merge": 1}
    assert [f.id for f in catalog.pending_files(merge_id)] == other_run
    (task,) = tasks
    assert task.group_key == "run_id=1807"
    assert [f.id for f in catalog.task_inputs([task.task_id])[task.task_id]] == [*first, *last]

    # Flushing closes the incomplete run; nothing waits any more.
    created, _ = plan(catalog, production, "merge", flush=True)
    assert created == 1
    assert catalog.waiting_counts(PRODUCTION) == {}
    assert catalog.pending_files(merge_id) == []
    assert catalog.task_counts(PRODUCTION) == {"merge": {"ready": 2}}


def test_task_counts_and_waiting_counts_are_per_production(catalog: Catalog, production: Production) -> None:
    save(catalog, production)
    other = production_from_yaml(toy_production_yaml(name="other-chain"))
    save(catalog, other)
    catalog.register_files([lst_subrun(1807, s) for s in range(2)])
    catalog.register_files([lst_subrun(1807, s, level="DL1", n_subruns=3) for s in range(2)])
    plan(catalog, production, "calibrate")
    plan(catalog, production, "merge")
    plan(catalog, other, "calibrate")
    assert catalog.task_counts(PRODUCTION) == {"calibrate": {"ready": 2}}
    assert catalog.task_counts("other-chain") == {"calibrate": {"ready": 2}}
    assert catalog.waiting_counts(PRODUCTION) == {"merge": 2}
    assert catalog.waiting_counts("other-chain") == {}
    assert catalog.task_counts("nobody") == {} and catalog.waiting_counts("nobody") == {}


# ------------------------------------------------------------------------------------ task lifecycle


def test_full_lifecycle_to_done(catalog: Catalog, production: Production, ready_tasks: list[str]) -> None:
    task_id = ready_tasks[0]
    reserved = catalog.reserve_submissions("local", {task_id: f"/work/{task_id}/1"})
    assert len(reserved) == 1
    row = reserved[0]
    assert (row.task_id, row.state, row.attempt, row.backend, row.job_id, row.workdir) == (
        task_id,
        TaskState.SUBMITTED,
        1,
        "local",
        None,
        f"/work/{task_id}/1",
    )
    catalog.record_job_ids({task_id: "4242"})
    assert catalog.task(task_id).job_id == "4242"  # type: ignore[union-attr]
    catalog.mark_running([task_id])
    assert state_of(catalog, task_id) == TaskState.RUNNING

    outputs = outputs_of(catalog, production, task_id)
    assert [o.lfn for o in outputs] == ["test-chain/DL1/2024-01-15/dl1_LST-1.Run01807.0000.csv"]
    catalog.complete(Completion(task_id, outputs, provenance_record(1, job_id="4242")))

    done = catalog.task(task_id)
    assert done is not None
    assert (done.state, done.exit_code, done.attempt, done.failures) == (TaskState.DONE, 0, 1, 0)
    (output,) = catalog.task_outputs(task_id)
    assert output.task_id == task_id
    assert output.metadata["data_level"] == "DL1"
    assert output.metadata["run_id"] == 1807 and output.metadata["night"] == date(2024, 1, 15)
    assert output.replicas == tuple(outputs[0].replicas)
    assert [f.lfn for f in catalog.query("data_level = DL1 and run_id = 1807")] == [output.lfn]

    (prov,) = catalog.provenance(task_id)
    expected = provenance_record(1, job_id="4242")
    assert {k: prov[k] for k in expected} == expected
    assert prov["task_id"] == task_id

    events = catalog.events(task_id=task_id)
    assert [e["kind"] for e in events] == ["created", "submitting", "submitted", "running", "done"]
    assert [(e["from_state"], e["to_state"]) for e in events] == [
        (None, "ready"),
        ("ready", "submitted"),
        (None, None),  # the job id: not a state change
        ("submitted", "running"),
        ("running", "done"),
    ]
    assert events[1]["detail"] == {"attempt": 1}
    assert events[2]["detail"] == {"job_id": "4242"}
    assert events[4]["detail"] == {"outputs": [output.lfn]}
    assert catalog.task_counts(PRODUCTION) == {"calibrate": {"done": 1, "ready": 2}}


def test_reserve_submissions_in_bulk(catalog: Catalog, ready_tasks: list[str]) -> None:
    workdirs = {t: f"/work/{t}" for t in reversed(ready_tasks)}
    rows = catalog.reserve_submissions("slurm", workdirs)
    assert [r.task_id for r in rows] == list(workdirs)  # in the order asked
    assert {(r.state, r.attempt, r.backend) for r in rows} == {(TaskState.SUBMITTED, 1, "slurm")}
    catalog.record_job_ids({t: str(100 + i) for i, t in enumerate(ready_tasks)})
    assert [catalog.task(t).job_id for t in ready_tasks] == ["100", "101", "102"]  # type: ignore[union-attr]


def test_complete_straight_from_submitted(
    catalog: Catalog, production: Production, ready_tasks: list[str]
) -> None:
    task_id = ready_tasks[0]
    submit(catalog, task_id, running=False)  # a job that ran between two polls
    catalog.complete(Completion(task_id, outputs_of(catalog, production, task_id), provenance_record()))
    assert state_of(catalog, task_id) == TaskState.DONE
    assert catalog.events(task_id=task_id)[-1]["from_state"] == "submitted"


@pytest.mark.parametrize("target", [TaskState.READY, TaskState.FAILED, TaskState.VETOED])
def test_fail(catalog: Catalog, ready_tasks: list[str], target: TaskState) -> None:
    task_id = ready_tasks[0]
    submit(catalog, task_id)
    resources = {"cores": 1, "memory_gb": 0.4, "walltime": "PT10M"}
    catalog.fail(
        Failure(
            task_id, target, 137, "oom (exit code 137): killed", resources, provenance_record(exit_code=137)
        )
    )
    task = catalog.task(task_id)
    assert task is not None
    assert (task.state, task.failures, task.exit_code, task.job_id, task.attempt) == (target, 1, 137, None, 1)
    assert task.error == "oom (exit code 137): killed"
    assert task.resources == resources
    assert [p["exit_code"] for p in catalog.provenance(task_id)] == [137]
    assert catalog.task_outputs(task_id) == []
    events = catalog.events(task_id=task_id)
    failed = events[-1] if target == TaskState.FAILED else events[-2]
    assert (failed["kind"], failed["from_state"], failed["to_state"]) == ("failed", "running", "failed")
    assert failed["detail"] == {"exit_code": 137, "error": "oom (exit code 137): killed"}
    if target != TaskState.FAILED:
        assert (events[-1]["kind"], events[-1]["from_state"], events[-1]["to_state"]) == (
            target.value,
            "failed",
            target.value,
        )

    if target == TaskState.READY:  # the retry: a second attempt, a second failure counted
        submit(catalog, task_id, job_id="4343")
        assert catalog.task(task_id).attempt == 2  # type: ignore[union-attr]
        catalog.fail(Failure(task_id, TaskState.FAILED, 1, "x" * 5000, None, None))
        again = catalog.task(task_id)
        assert again is not None
        assert (again.state, again.failures, again.attempt) == (TaskState.FAILED, 2, 2)
        assert again.error == "x" * 4000  # truncated
        assert again.resources == resources  # kept when the failure gives none
        assert len(catalog.provenance(task_id)) == 1  # no provenance given this time


def test_requeue_lost(catalog: Catalog, ready_tasks: list[str]) -> None:
    unsent, running = ready_tasks[0], ready_tasks[1]
    catalog.reserve_submissions("local", {unsent: "/w/0"})  # crash before the backend was called
    submit(catalog, running)
    catalog.requeue_lost([unsent, running], "reserved but never submitted")
    for task_id, previous in ((unsent, "submitted"), (running, "running")):
        task = catalog.task(task_id)
        assert task is not None
        assert (task.state, task.job_id, task.failures, task.attempt) == (TaskState.READY, None, 0, 1)
        last = catalog.events(task_id=task_id)[-1]
        assert (last["kind"], last["from_state"], last["to_state"]) == ("lost", previous, "ready")
        assert last["detail"] == {"reason": "reserved but never submitted"}
    # A requeued task is submitted again with the next attempt number.
    assert catalog.reserve_submissions("local", {unsent: "/w/1"})[0].attempt == 2


def test_set_states_retry_and_cancel(catalog: Catalog, ready_tasks: list[str]) -> None:
    failed, cancelled, untouched = ready_tasks
    submit(catalog, failed)
    catalog.fail(Failure(failed, TaskState.FAILED, 2, "boom", None, None))

    retried = catalog.set_states(
        PRODUCTION, [TaskState.FAILED], TaskState.READY, "retry", reset_failures=True
    )
    assert [r.task_id for r in retried] == [failed]
    assert retried[0].state == TaskState.FAILED  # the rows as they were before the change
    task = catalog.task(failed)
    assert task is not None and (task.state, task.failures, task.error) == (TaskState.READY, 0, None)

    changed = catalog.set_states(
        PRODUCTION,
        [TaskState.READY, TaskState.SUBMITTED],
        TaskState.CANCELLED,
        "cancel",
        task_ids=[cancelled],
    )
    assert [r.task_id for r in changed] == [cancelled]
    assert state_of(catalog, cancelled) == TaskState.CANCELLED
    assert state_of(catalog, untouched) == TaskState.READY
    assert (
        catalog.events(task_id=cancelled)[-1]["kind"],
        catalog.events(task_id=cancelled)[-1]["to_state"],
    ) == (
        "cancel",
        "cancelled",
    )
    assert catalog.set_states(PRODUCTION, [TaskState.FAILED], TaskState.READY, "retry") == []
    assert (
        catalog.set_states(PRODUCTION, [TaskState.READY], TaskState.VETOED, "veto", transformation="merge")
        == []
    )
    assert catalog.task_counts(PRODUCTION) == {"calibrate": {"ready": 2, "cancelled": 1}}


# Each case: (set-up of the first task, a call that must fail, the error it raises).
Action = Callable[[Catalog, list[str], Production], None]


def _complete_ready(catalog: Catalog, ids: list[str], production: Production) -> None:
    catalog.complete(Completion(ids[0], outputs_of(catalog, production, ids[0]), provenance_record()))


def _complete_with_existing_output(catalog: Catalog, ids: list[str], production: Production) -> None:
    # The state is already DONE in the transaction when the output registration fails.
    outputs = outputs_of(catalog, production, ids[0])
    catalog.complete(Completion(ids[0], [*outputs, make_file(lst_subrun_lfn(1807, 0))], provenance_record()))


def _complete_with_bad_output_metadata(catalog: Catalog, ids: list[str], production: Production) -> None:
    outputs = outputs_of(catalog, production, ids[0])
    catalog.complete(Completion(ids[0], [*outputs, make_file("/bad.h5", ok=True)], provenance_record()))


def _fail_to_invalid_target(catalog: Catalog, ids: list[str], production: Production) -> None:
    # FAILED is written (state, failures, provenance, event) before FAILED -> SUBMITTED is refused.
    catalog.fail(
        Failure(ids[0], TaskState.SUBMITTED, 1, "boom", {"cores": 2}, provenance_record(exit_code=1))
    )


def _mark_running_mixed(catalog: Catalog, ids: list[str], production: Production) -> None:
    catalog.mark_running([ids[0], ids[1]])  # the first is SUBMITTED, the second READY


def _reserve_mixed(catalog: Catalog, ids: list[str], production: Production) -> None:
    catalog.reserve_submissions("local", {ids[1]: "/w/1", ids[0]: "/w/0"})  # the second is not READY


def _reserve_unknown(catalog: Catalog, ids: list[str], production: Production) -> None:
    catalog.reserve_submissions("local", {ids[1]: "/w/1", "0" * 32: "/w/x"})


def _requeue_ready(catalog: Catalog, ids: list[str], production: Production) -> None:
    catalog.requeue_lost([ids[0], ids[1]], "gone")


def _set_states_invalid(catalog: Catalog, ids: list[str], production: Production) -> None:
    catalog.set_states(PRODUCTION, [TaskState.READY, TaskState.SUBMITTED], TaskState.DONE, "oops")


@pytest.mark.parametrize(
    ("first_state", "action", "error"),
    [
        (TaskState.READY, _complete_ready, CatalogError),
        (TaskState.RUNNING, _complete_with_existing_output, BadInput),
        (TaskState.RUNNING, _complete_with_bad_output_metadata, BadInput),
        (TaskState.RUNNING, _fail_to_invalid_target, InvalidTransition),
        (TaskState.SUBMITTED, _mark_running_mixed, CatalogError),
        (TaskState.SUBMITTED, _reserve_mixed, CatalogError),
        (TaskState.READY, _reserve_unknown, BadInput),
        (TaskState.SUBMITTED, _requeue_ready, CatalogError),
        (TaskState.SUBMITTED, _set_states_invalid, InvalidTransition),
    ],
    ids=lambda value: getattr(value, "__name__", str(value)).strip("_"),
)
def test_a_refused_change_changes_nothing(
    catalog: Catalog,
    production: Production,
    ready_tasks: list[str],
    first_state: TaskState,
    action: Action,
    error: type[OsaGridError],
) -> None:
    if first_state != TaskState.READY:
        submit(catalog, ready_tasks[0], running=first_state == TaskState.RUNNING)
    assert state_of(catalog, ready_tasks[0]) == first_state
    before = snapshot(catalog)
    with pytest.raises(error):
        action(catalog, ready_tasks, production)
    assert snapshot(catalog) == before  # states, files, metadata, provenance and events: rolled back


# -------------------------------------------------------------------------------------------- leases

LEASE = "production/test-chain"


def test_lease_acquire_renew_refuse_release(catalog: Catalog) -> None:
    assert catalog.lease_holder(LEASE) is None
    catalog.acquire_lease(LEASE, "host-a:101", timedelta(minutes=2))
    holder = catalog.lease_holder(LEASE)
    assert holder is not None and holder[0] == "host-a:101"
    assert holder[1].utcoffset() == timedelta(0)
    assert timedelta(minutes=1) < holder[1] - datetime.now(UTC) <= timedelta(minutes=2)

    catalog.acquire_lease(LEASE, "host-a:101", timedelta(minutes=10))  # renewal by the holder
    renewed = catalog.lease_holder(LEASE)
    assert renewed is not None and renewed[0] == "host-a:101" and renewed[1] > holder[1]

    with pytest.raises(LeaseHeld, match="host-a:101"):
        catalog.acquire_lease(LEASE, "host-b:202", timedelta(minutes=2))
    assert catalog.lease_holder(LEASE) == renewed

    catalog.release_lease(LEASE, "host-b:202")  # not the holder: nothing happens
    assert catalog.lease_holder(LEASE) == renewed
    catalog.release_lease(LEASE, "host-a:101")
    assert catalog.lease_holder(LEASE) is None
    catalog.acquire_lease(LEASE, "host-b:202", timedelta(minutes=2))
    assert catalog.lease_holder(LEASE)[0] == "host-b:202"  # type: ignore[index]

    # Leases are independent of each other.
    catalog.acquire_lease("production/other", "host-a:101", timedelta(minutes=2))
    assert catalog.lease_holder("production/other")[0] == "host-a:101"  # type: ignore[index]

    lease_events = [(e["kind"], e["detail"]) for e in catalog.events() if e["kind"].startswith("lease")]
    assert lease_events == [
        ("lease_acquired", {"holder": "host-a:101", "lease": LEASE}),
        ("lease_acquired", {"holder": "host-b:202", "lease": LEASE}),
        ("lease_acquired", {"holder": "host-a:101", "lease": "production/other"}),
    ]


def test_expired_lease_is_taken_over(catalog: Catalog) -> None:
    catalog.acquire_lease(LEASE, "host-a:101", timedelta(seconds=-1))  # already expired
    catalog.acquire_lease(LEASE, "host-b:202", timedelta(minutes=2))
    assert catalog.lease_holder(LEASE)[0] == "host-b:202"  # type: ignore[index]
    last = catalog.events()[-1]
    assert (last["kind"], last["detail"]) == (
        "lease_taken_over",
        {"holder": "host-b:202", "previous": "host-a:101", "lease": LEASE},
    )
    # The old holder, back to life, is refused now.
    with pytest.raises(LeaseHeld):
        catalog.acquire_lease(LEASE, "host-a:101", timedelta(minutes=2))


def test_stale_lease_is_taken_over(catalog: Catalog) -> None:
    catalog.acquire_lease(LEASE, "host-a:101", timedelta(hours=1))
    with pytest.raises(LeaseHeld):
        catalog.acquire_lease(LEASE, "host-a:102", timedelta(minutes=2))
    catalog.acquire_lease(LEASE, "host-a:102", timedelta(minutes=2), dead_holder="host-a:101")
    assert catalog.lease_holder(LEASE)[0] == "host-a:102"  # type: ignore[index]


@contextmanager
def both_read_the_lease_first(catalog: Catalog) -> Iterator[None]:
    """Two threads both finish reading the lease row before either writes (if the database lets them).

    With a real row lock (SELECT ... FOR UPDATE on PostgreSQL) the second reader blocks instead, the
    barrier times out and the first goes on alone: the serialized order a correct lease needs.
    """
    barrier = threading.Barrier(2)

    def after_read(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM leases" in statement:
            with suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=3)

    sa.event.listen(catalog.engine, "after_cursor_execute", after_read)
    try:
        yield
    finally:
        sa.event.remove(catalog.engine, "after_cursor_execute", after_read)


def race_for_lease(catalog: Catalog, holders: Sequence[str]) -> dict[str, str]:
    outcome: dict[str, str] = {}

    def take(holder: str) -> None:
        try:
            catalog.acquire_lease(LEASE, holder, timedelta(minutes=2))
            outcome[holder] = "acquired"
        except LeaseHeld:
            outcome[holder] = "refused"
        except Exception as exc:  # reported in the assertion message
            outcome[holder] = f"{type(exc).__name__}: {exc}"[:200]

    with both_read_the_lease_first(catalog):
        threads = [threading.Thread(target=take, args=(h,)) for h in holders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    return outcome


def test_two_shepherds_racing_for_a_new_lease(catalog: Catalog) -> None:
    outcome = race_for_lease(catalog, ["host-a:1", "host-b:2"])
    assert sorted(outcome.values()) == ["acquired", "refused"], outcome
    winner = next(h for h, result in outcome.items() if result == "acquired")
    assert catalog.lease_holder(LEASE)[0] == winner  # type: ignore[index]


def test_two_shepherds_racing_for_an_expired_lease(catalog: Catalog) -> None:
    catalog.acquire_lease(LEASE, "host-dead:0", timedelta(seconds=-1))
    outcome = race_for_lease(catalog, ["host-a:1", "host-b:2"])
    assert sorted(outcome.values()) == ["acquired", "refused"], outcome
    winner = next(h for h, result in outcome.items() if result == "acquired")
    assert catalog.lease_holder(LEASE)[0] == winner  # type: ignore[index]


# ---------------------------------------------------------------------------------------- event log


def test_event_log_is_append_only_and_explains_every_state(
    catalog: Catalog, production: Production, ready_tasks: list[str]
) -> None:
    done, retried, cancelled = ready_tasks
    seen: list[dict[str, Any]] = catalog.events()

    def grew() -> None:
        """Earlier events are unchanged, new ones come after them with larger ids."""
        nonlocal seen
        now = catalog.events()
        assert now[: len(seen)] == seen
        assert len(now) > len(seen)
        seen = now

    submit(catalog, done)
    grew()
    catalog.complete(Completion(done, outputs_of(catalog, production, done), provenance_record()))
    grew()
    submit(catalog, retried)
    grew()
    catalog.fail(Failure(retried, TaskState.READY, 1, "boom", None, None))
    grew()
    catalog.reserve_submissions("local", {retried: "/w/2"})
    grew()
    catalog.requeue_lost([retried], "shepherd restarted")
    grew()
    catalog.set_states(PRODUCTION, [TaskState.READY], TaskState.CANCELLED, "cancel", task_ids=[cancelled])
    grew()

    ids = [e["id"] for e in seen]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    times = [e["at"] for e in seen]
    assert all(t.utcoffset() == timedelta(0) for t in times)
    assert times == sorted(times)

    # Replaying each task's state changes from its events gives its current state, with no gap.
    for task_id in ready_tasks:
        state: str | None = None
        for event in catalog.events(task_id=task_id):
            if event["to_state"] is None:
                continue
            assert event["from_state"] == state, (task_id, event)
            state = event["to_state"]
        assert state == state_of(catalog, task_id).value
    assert kinds(catalog, retried) == [
        "created",
        "submitting",
        "submitted",
        "running",
        "failed",
        "ready",
        "submitting",
        "lost",
    ]


def test_every_task_event_names_its_production(
    catalog: Catalog, production: Production, ready_tasks: list[str]
) -> None:
    """``events(production=...)`` must give the whole history of the production's tasks."""
    done, failed, lost = ready_tasks
    submit(catalog, done)
    catalog.complete(Completion(done, outputs_of(catalog, production, done), provenance_record()))
    submit(catalog, failed)
    catalog.fail(Failure(failed, TaskState.READY, 1, "boom", None, None))
    submit(catalog, lost)
    catalog.requeue_lost([lost], "gone")
    task_events = [e for e in catalog.events() if e["task_id"] is not None]
    missing = sorted({e["kind"] for e in task_events if e["production"] != PRODUCTION})
    assert missing == [], f"task events without their production: {missing}"
    assert len(catalog.events(production=PRODUCTION)) == len(task_events) + 1  # + production_created


def test_one_transaction_completes_some_tasks_and_marks_others_running(
    catalog: Catalog, production: Production, ready_tasks: list[str]
) -> None:
    finished, started, untouched = ready_tasks
    for task_id in ready_tasks:
        submit(catalog, task_id, running=False)
    outputs = outputs_of(catalog, production, finished)
    catalog.complete_many([Completion(finished, outputs, provenance_record())], started=[started])
    assert [state_of(catalog, t) for t in ready_tasks] == [
        TaskState.DONE,
        TaskState.RUNNING,
        TaskState.SUBMITTED,
    ]
    assert kinds(catalog, started)[-1] == "running" and kinds(catalog, finished)[-1] == "done"
    assert catalog.file(outputs[0].lfn) is not None
    # A task that is not submitted any more cannot be marked running: nothing of the transaction stays.
    with pytest.raises(CatalogError):
        catalog.complete_many(
            [Completion(untouched, outputs_of(catalog, production, untouched), provenance_record())],
            started=[finished],
        )
    assert state_of(catalog, untouched) == TaskState.SUBMITTED
