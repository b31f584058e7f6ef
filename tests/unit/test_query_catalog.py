"""The catalog side of queries: key types, planning, sorting, grouping, datasets, nights, provenance.

Every test runs on SQLite, and on PostgreSQL with ``-m integration`` (the ``catalog`` fixture).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from osa_grid.catalog import migrate, schema, store
from osa_grid.catalog.engines import create_engine
from osa_grid.catalog.querysql import SortKey
from osa_grid.catalog.store import Catalog, Completion
from osa_grid.core.planner import FileRecord, PlannedTask
from osa_grid.core.query import parse
from osa_grid.errors import BadInput
from osa_grid.ports import NewFile
from tests.helpers import lst_subrun, make_file, provenance_record


@pytest.fixture
def night(catalog: Catalog) -> list[NewFile]:
    """Two nights: runs 1807 (3 sub-runs, R0 and DL1) and 1808 (2 sub-runs, R0) on 2024-01-15, 1901 later."""
    files = [lst_subrun(1807, s) for s in range(3)]
    files += [lst_subrun(1807, s, level="DL1") for s in range(3)]
    files += [lst_subrun(1808, s, n_subruns=2, source="Mrk421") for s in range(2)]
    files += [lst_subrun(1901, 0, night=date(2024, 2, 1), n_subruns=1, source="Mrk501")]
    catalog.register_files(files)
    return files


def lfns(
    catalog: Catalog, text: str, sort: list[SortKey] | None = None, limit: int | None = None
) -> list[str]:
    return [lfn for _, lfn in catalog.match(parse(text), sort or [], limit)]


# ------------------------------------------------------------------------------ keys and types


def test_metadata_keys_are_kept_with_their_types(catalog: Catalog) -> None:
    assert catalog.metadata_keys() == {}
    catalog.register_files([make_file("/a", run_id=1, night=date(2024, 1, 1), zenith=20.5)])
    catalog.register_files([make_file("/b", run_id="x", start=datetime(2024, 1, 1, tzinfo=UTC))])
    assert catalog.metadata_keys() == {
        "run_id": {"int", "str"},
        "night": {"date"},
        "zenith": {"float"},
        "start": {"datetime"},
    }


def test_values_shared_by_files_keep_their_own_types(catalog: Catalog) -> None:
    # A registration types each distinct value once: equal values of other types must not be confused.
    catalog.register_files(
        [
            make_file("/int", v=1, t=datetime(2024, 1, 1, 21, tzinfo=UTC)),
            make_file("/float", v=1.0, t=datetime(2024, 1, 1, 21, tzinfo=UTC)),
            make_file("/text", v="1", t=date(2024, 1, 1)),
        ]
    )
    found = {f.lfn: f.metadata for f in catalog.query("exists v")}
    assert [type(found[name]["v"]) for name in ("/int", "/float", "/text")] == [int, float, str]
    assert found["/text"]["t"] == date(2024, 1, 1) and found["/int"]["t"].tzinfo is not None
    with pytest.raises(BadInput, match="unsupported type"):
        catalog.register_files([make_file("/bad", v=[1])])


def test_a_refused_registration_leaves_no_keys(catalog: Catalog) -> None:
    catalog.register_files([make_file("/a", run_id=1)])
    with pytest.raises(BadInput):
        catalog.register_files([make_file("/b", other=1), make_file("/a", run_id=2)])
    assert catalog.metadata_keys() == {"run_id": {"int"}}


# ------------------------------------------------------------------------------ planned queries


def test_counts_and_matches_use_the_new_constructs(catalog: Catalog, night: list[NewFile]) -> None:
    assert catalog.count("night in 2024-01-01..2024-01-31") == 8
    assert catalog.count("run_id in 1808..1901") == 3
    assert catalog.count("exists subrun_id and not night = 2024-01-15") == 1
    assert catalog.count("source ~ 'Mrk*' and run_id in (1808, 1901)") == 3
    assert catalog.count("data_level = DL1 and run_id = 1807 and subrun_id in 1..2") == 2


def test_paging_after_a_cursor_with_a_planned_query(
    catalog: Catalog, night: list[NewFile], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tiny cap makes "many files after the cursor": the estimates, not the scan, then choose the plan.
    monkeypatch.setattr(store, "CAP", 2)
    everything = [f.lfn for f in catalog.query("night in 2024-01-01..2024-12-31")]
    seen: list[str] = []
    cursor = 0
    while page := catalog.query(
        "night in 2024-01-01..2024-12-31 and exists run_id", after_id=cursor, limit=3
    ):
        seen += [f.lfn for f in page]
        cursor = page[-1].id
    assert seen == everything and len(seen) == len(night)


def test_sorting_is_done_by_the_database(catalog: Catalog, night: list[NewFile]) -> None:
    sub = lfns(
        catalog, "data_level = R0 and night = 2024-01-15", [SortKey("run_id", True), SortKey("subrun_id")]
    )
    assert [lfn.split(".Run")[1][:10] for lfn in sub] == [
        "01808.0000",
        "01808.0001",
        "01807.0000",
        "01807.0001",
        "01807.0002",
    ]
    assert lfns(catalog, "exists run_id", [SortKey("lfn")], limit=2) == sorted(f.lfn for f in night)[:2]
    by_size = lfns(catalog, "exists run_id", [SortKey("size", True)])
    assert by_size == [f.lfn for f in sorted(night, key=lambda f: (-f.size, night.index(f)))]


def test_sorting_puts_numbers_then_text_then_missing_keys(catalog: Catalog) -> None:
    catalog.register_files(
        [
            make_file("/text_b", v="b"),
            make_file("/missing"),
            make_file("/num_10", v=10),
            make_file("/text_a", v="a"),
            make_file("/num_2_5", v=2.5),
            make_file("/big", v=2**53 + 1),
            make_file("/big_minus", v=2**53),
        ]
    )
    ascending = lfns(catalog, "exists v or not exists v", [SortKey("v")])
    assert ascending == ["/num_2_5", "/num_10", "/big_minus", "/big", "/text_a", "/text_b", "/missing"]
    descending = lfns(catalog, "exists v or not exists v", [SortKey("v", True)])
    assert descending == ["/big", "/big_minus", "/num_10", "/num_2_5", "/text_b", "/text_a", "/missing"]


def test_groups(catalog: Catalog, night: list[NewFile]) -> None:
    groups = catalog.group_counts(parse("exists run_id"), ["night", "data_level"])
    assert [(g.values, g.files) for g in groups] == [
        ((date(2024, 1, 15), "DL1"), 3),
        ((date(2024, 1, 15), "R0"), 5),
        ((date(2024, 2, 1), "R0"), 1),
    ]
    assert groups[0].size == sum(f.size for f in night[3:6])
    missing = catalog.group_counts(parse("exists run_id"), ["no_such_key"])
    assert [(g.values, g.files) for g in missing] == [((None,), 9)]


def test_keys_of_the_matching_files(catalog: Catalog, night: list[NewFile]) -> None:
    catalog.register_files([make_file("/other", special=1)])
    assert "special" not in catalog.match_keys(parse("exists run_id"))
    assert catalog.match_keys(parse("exists special")) == ["special"]


# ------------------------------------------------------------------------------------ datasets


def test_live_and_frozen_datasets(catalog: Catalog, night: list[NewFile]) -> None:
    live = catalog.create_dataset("crab", "source = Crab and data_level = R0", description="Crab raw")
    frozen = catalog.create_dataset("january", "night in 2024-01-01..2024-01-31", frozen=True)
    assert (live.files, live.frozen_at, live.description) == (3, None, "Crab raw")
    assert frozen.files == 8 and frozen.frozen_at is not None
    assert frozen.size == sum(f.size for f in night[:8])
    catalog.register_files([lst_subrun(1809, 0), lst_subrun(1809, 1)])
    assert catalog.dataset("crab").files == 5  # a live dataset is its query
    assert catalog.dataset("january").files == 8  # a frozen one keeps its list
    assert catalog.count("in dataset january") == 8
    assert catalog.count("in dataset crab and not in dataset january") == 2
    assert catalog.count("not in dataset january") == len(night) + 2 - 8


def test_datasets_nest_and_freeze(catalog: Catalog, night: list[NewFile]) -> None:
    catalog.create_dataset("r0", "data_level = R0")
    catalog.create_dataset("r0-1807", "in dataset r0 and run_id = 1807")
    assert catalog.count("in dataset r0-1807") == 3
    catalog.freeze_dataset("r0")
    catalog.register_files([lst_subrun(1807, 9)])
    assert catalog.count("in dataset r0-1807") == 3  # through the frozen r0
    with pytest.raises(BadInput, match=r"frozen at .* already"):
        catalog.freeze_dataset("r0")
    kinds = [e["kind"] for e in catalog.events() if e["kind"].startswith("dataset")]
    assert kinds == ["dataset_created", "dataset_created", "dataset_frozen"]


def test_dataset_mistakes_are_bad_input(catalog: Catalog, night: list[NewFile]) -> None:
    catalog.create_dataset("a", "data_level = R0")
    with pytest.raises(BadInput, match="exists already"):
        catalog.create_dataset("a", "data_level = R0")
    with pytest.raises(BadInput, match="unknown dataset 'nope'"):
        catalog.create_dataset("b", "in dataset nope")
    with pytest.raises(BadInput, match="by itself"):
        catalog.create_dataset("c", "in dataset c")
    with pytest.raises(BadInput, match="not a valid dataset name"):
        catalog.create_dataset("1x", "data_level = R0")
    with pytest.raises(BadInput, match="unknown dataset"):
        catalog.count("in dataset nope")
    with pytest.raises(BadInput, match="unknown dataset"):
        catalog.dataset("nope")
    catalog.create_dataset("user", "in dataset a and run_id = 1807")
    with pytest.raises(BadInput, match="used by dataset"):
        catalog.delete_dataset("a")
    catalog.delete_dataset("user")
    catalog.delete_dataset("a")
    assert catalog.datasets() == []


def test_a_cycle_made_by_recreating_a_dataset_is_caught(catalog: Catalog, night: list[NewFile]) -> None:
    catalog.create_dataset("a", "data_level = R0")
    catalog.create_dataset("b", "in dataset a")
    with catalog.transaction() as conn:  # what an edited catalog could hold
        conn.execute(
            sa.update(schema.datasets).where(schema.datasets.c.name == "a").values(query="in dataset b")
        )
    with pytest.raises(BadInput, match="cycle: b -> a -> b"):
        catalog.count("in dataset b")


def test_a_frozen_dataset_as_a_planner_input(catalog: Catalog, night: list[NewFile]) -> None:
    catalog.create_dataset("batch", "run_id = 1807 and data_level = R0", frozen=True)
    new = [f.lfn for f in catalog.query("in dataset batch and subrun_id >= 1", after_id=0)]
    assert new == [night[1].lfn, night[2].lfn]
    assert catalog.query("in dataset batch", after_id=catalog.max_file_id()) == []


# ---------------------------------------------------------------------------------- nights


def test_run_summary(catalog: Catalog, night: list[NewFile]) -> None:
    rows = catalog.run_summary("2024-01-15")
    assert [(r.run_id, r.data_level, r.files, r.subruns, r.n_subruns, r.source) for r in rows] == [
        (1807, "DL1", 3, 3, 3, "Crab"),
        (1807, "R0", 3, 3, 3, "Crab"),
        (1808, "R0", 2, 2, 2, "Mrk421"),
    ]
    assert rows[0].run_type == "DATA" and rows[0].size == sum(f.size for f in night[3:6])
    assert catalog.run_summary("2024-03-01") == []


# ---------------------------------------------------------------------------------- provenance


def test_upstream_level_reads_tasks_edges_and_attempts(catalog: Catalog, night: list[NewFile]) -> None:
    catalog.save_production("p", {"transformations": [{"name": "t", "version": "1"}]}, "d", None)
    tid, _ = catalog.transformation_cursor("p", "t")
    inputs = [FileRecord(i, f.lfn, {}) for i, f in enumerate(night[:2], start=1)]
    catalog.record_plan("p", tid, [PlannedTask("task-1", "t", "g", tuple(inputs))], [], cursor=2)
    catalog.reserve_submissions("local", {"task-1": "/w"})
    catalog.complete(Completion("task-1", [make_file("/out", data_level="DL1")], provenance_record()))
    level = catalog.upstream_level(["task-1", "unknown"])
    assert [t.task_id for t in level.tasks] == ["task-1"]
    assert sorted(level.inputs) == [("task-1", 1, "input"), ("task-1", 2, "input")]
    assert [a["attempt"] for a in level.attempts] == [1]
    assert catalog.file_ids(["/out", "/nope"]) == {"/out": catalog.max_file_id()}


# ----------------------------------------------------------------------------------- migration


def test_upgrade_from_the_first_schema_keeps_files_and_learns_their_keys(catalog_url: str) -> None:
    engine = create_engine(catalog_url)
    with engine.begin() as conn:
        command.upgrade(migrate._config(conn), "0001")
    now = datetime(2024, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO files (lfn, size, checksum, created_at) VALUES ('/old', 1, '00000001', :t)"),
            {"t": now},
        )
        old_id = conn.scalar(sa.text("SELECT id FROM files"))
        rows: list[dict[str, Any]] = [
            {"f": old_id, "k": "run_id", "t": "int", "i": 1807, "n": 1807.0, "s": None},
            {"f": old_id, "k": "night", "t": "date", "i": None, "n": None, "s": "2024-01-15"},
        ]
        conn.execute(
            sa.text("INSERT INTO file_metadata VALUES (:f, :k, :t, :i, :n, :s)"),
            rows,
        )
    engine.dispose()
    catalog = Catalog.open(catalog_url)
    try:
        assert catalog.metadata_keys() == {"run_id": {"int"}, "night": {"date"}}
        assert catalog.count("run_id in 1800..1810 and night = 2024-01-15") == 1
        assert catalog.file("/old").metadata == {"run_id": 1807, "night": date(2024, 1, 15)}  # type: ignore[union-attr]
        catalog.register_files([make_file("/new", run_id=1808)])
        assert catalog.count("run_id in 1807..1808") == 2
        with catalog.engine.connect() as conn:
            indexes = {ix["name"] for ix in sa.inspect(conn).get_indexes("file_metadata")}
            assert indexes == {"ix_file_metadata_key_vnum", "ix_file_metadata_key_vstr"}
            if conn.dialect.name == "sqlite":
                ddl = conn.scalar(sa.text("SELECT sql FROM sqlite_master WHERE name = 'file_metadata'"))
                assert "WITHOUT ROWID" in ddl
    finally:
        catalog.close()


# ------------------------------------------------------------------------------ metadata sets


def set_rows(catalog: Catalog) -> tuple[int, int, dict[str, int | None]]:
    """Metadata sets, their rows, and each file's set id by LFN."""
    with catalog.engine.connect() as conn:
        sets = conn.scalar(sa.select(sa.func.count()).select_from(schema.metadata_sets))
        rows = conn.scalar(sa.select(sa.func.count()).select_from(schema.set_metadata))
        files = dict(conn.execute(sa.select(schema.files.c.lfn, schema.files.c.set_id)).all())
    return int(sets or 0), int(rows or 0), files


def test_shared_keys_are_stored_once_per_combination(catalog: Catalog, night: list[NewFile]) -> None:
    sets, rows, files = set_rows(catalog)
    # Run 1807 at R0 and at DL1, 1808, 1901: four combinations of the shared keys, stored once each.
    assert sets == 4
    one_per_set = {files[f.lfn]: f for f in night}.values()
    assert rows == sum(len(f.metadata) - 2 for f in one_per_set)  # all but subrun_id and start
    with catalog.engine.connect() as conn:
        own_keys = set(conn.scalars(sa.select(schema.file_metadata.c.key).distinct()))
    assert own_keys == {"subrun_id", "start"}  # the per-file keys of these files
    # A later registration with the same shared values joins the existing set; no shared key, no set.
    catalog.register_files([lst_subrun(1807, 9), make_file("/bare", subrun_id=1)])
    sets_after, _, files_after = set_rows(catalog)
    assert sets_after == 4
    assert files_after[lst_subrun(1807, 9).lfn] == files[night[0].lfn]
    assert files_after["/bare"] is None
    # Everything reads both places: the file's metadata, queries, sorting, grouping, keys.
    assert catalog.file(night[0].lfn).metadata == night[0].metadata  # type: ignore[union-attr]
    assert catalog.count("run_id = 1807 and data_level = R0") == 4
    assert catalog.count("not run_id = 1807") == 4  # 1808 (2), 1901 and the bare file
    assert catalog.match_keys(parse("exists subrun_id")) == sorted({*night[0].metadata})
    assert [g.values for g in catalog.group_counts(parse("exists run_id"), ["data_level"])] == [
        ("DL1",),
        ("R0",),
    ]


def test_equal_values_of_different_types_make_different_sets(catalog: Catalog) -> None:
    catalog.register_files([make_file("/int", run_id=1), make_file("/float", run_id=1.0)])
    sets, _, files = set_rows(catalog)
    assert sets == 2 and files["/int"] != files["/float"]
    assert catalog.file("/float").metadata == {"run_id": 1.0}  # type: ignore[union-attr]
    assert type(catalog.file("/int").metadata["run_id"]) is int  # type: ignore[union-attr]


def test_a_key_in_both_places_is_found_in_both(catalog_url: str) -> None:
    """A catalog from before migration 0007 keeps its files' keys per file; new files use sets."""
    engine = create_engine(catalog_url)
    with engine.begin() as conn:
        command.upgrade(migrate._config(conn), "0006")
    engine.dispose()
    old = Catalog.open(catalog_url)
    try:
        with old.engine.begin() as conn:
            conn.execute(sa.delete(schema.shared_metadata_keys))  # as registered before 0007
        old.register_files([lst_subrun(1807, s) for s in range(2)])
        with old.engine.begin() as conn:
            conn.execute(sa.insert(schema.shared_metadata_keys), [{"key": "run_id"}, {"key": "night"}])
        old.register_files([lst_subrun(1808, s) for s in range(2)])
        with old.engine.connect() as conn:
            in_files = set(conn.scalars(sa.select(schema.metadata_keys.c.key)))
            in_sets = set(conn.scalars(sa.select(schema.set_metadata_keys.c.key)))
        assert "run_id" in in_files and "run_id" in in_sets
        assert old.count("run_id in 1807..1808") == 4
        assert old.count("run_id = 1808 and night = 2024-01-15") == 2
        assert old.count("not run_id = 1807") == 2
        assert lfns(old, "exists run_id", [SortKey("run_id", descending=True)])[:2] == [
            lst_subrun(1808, 0).lfn,
            lst_subrun(1808, 1).lfn,
        ]
        assert [g.values for g in old.group_counts(parse("exists run_id"), ["run_id"])] == [(1807,), (1808,)]
        assert [r.run_id for r in old.run_summary("2024-01-15")] == [1807, 1808]
    finally:
        old.close()


def test_downgrade_from_0007_keeps_the_shared_keys(catalog_url: str) -> None:
    catalog = Catalog.open(catalog_url)
    files = [lst_subrun(1807, s) for s in range(2)]
    catalog.register_files(files)
    catalog.close()
    engine = create_engine(catalog_url)
    with engine.begin() as conn:
        command.downgrade(migrate._config(conn), "0006")
    engine.dispose()
    reopened = Catalog.open(catalog_url)  # back to head: the keys are per file now, and found
    try:
        assert reopened.file(files[1].lfn).metadata == files[1].metadata  # type: ignore[union-attr]
        assert reopened.count("run_id = 1807 and data_level = R0") == 2
    finally:
        reopened.close()


def test_values_told_apart_in_python_but_stored_alike_share_one_set(catalog: Catalog) -> None:
    """Two sides of a fold are different datetimes to Python but the same stored text: one set, no clash."""
    with catalog.engine.begin() as conn:
        conn.execute(sa.insert(schema.shared_metadata_keys), [{"key": "start"}])
    first = datetime(2024, 1, 15, 21, tzinfo=UTC)
    catalog.register_files([make_file("/a", start=first), make_file("/b", start=first.replace(fold=1))])
    sets, rows, files = set_rows(catalog)
    assert (sets, rows) == (1, 1) and files["/a"] == files["/b"]
    assert catalog.count("start = 2024-01-15T21:00:00+00:00") == 2
