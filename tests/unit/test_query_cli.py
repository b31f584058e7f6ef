"""``osa-grid query | provenance | runs | datasets`` through CliRunner: every format, every mistake."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from osa_grid.catalog.store import Catalog
from osa_grid.cli.app import app
from osa_grid.services import provenance as prov
from tests.helpers import make_file
from tests.unit.provenance_chain import CALIBRATION, Chain, build_chain


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The catalog every test starts from, built once (tests get a copy)."""
    path = tmp_path_factory.mktemp("template") / "catalog.sqlite"
    catalog = Catalog.open(f"sqlite:///{path}")
    try:
        build_chain(catalog)
        catalog.register_files([make_file("/other/notes.txt", kind="notes", size=5)])
        with catalog.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")  # one self-contained file to copy
    finally:
        catalog.close()
    return path


@pytest.fixture
def home(tmp_path: Path, template: Path) -> Iterator[Path]:
    shutil.copyfile(template, tmp_path / "catalog.sqlite")
    yield tmp_path


@pytest.fixture
def chain() -> Chain:
    # The names build_chain gives (the catalog itself is made by the ``home`` fixture).
    raw = [f"/lst/R0/LST-1.1.Run{r:05d}.{s:04d}.fits.fz" for r in (1807, 1808) for s in range(2)]
    dl1 = [f"/lst/DL1/dl1_LST-1.Run{r:05d}.{s:04d}.h5" for r in (1807, 1808) for s in range(2)]
    merged = [f"/lst/DL1/dl1_LST-1.Run{r:05d}.h5" for r in (1807, 1808)]
    return Chain(raw, dl1, merged, "/lst/DL3/dl3_LST-1.2024-01-15.fits.gz")


def run(home: Path, *args: str) -> Result:
    env = {"OSA_GRID_HOME": str(home), "OSA_GRID_CATALOG_URL": f"sqlite:///{home / 'catalog.sqlite'}"}
    return CliRunner().invoke(app, list(args), env=env)


def ok(home: Path, *args: str) -> str:
    result = run(home, *args)
    assert result.exit_code == 0, result.output
    return result.stdout


def refused(home: Path, *args: str) -> str:
    """Exit 2, one message on stderr, no traceback."""
    result = run(home, *args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    return result.stderr


# ------------------------------------------------------------------------------------ query


def test_table(home: Path, chain: Chain) -> None:
    out = ok(home, "query", "data_level = R0")
    assert "4 file(s)" in out and all(lfn in out for lfn in chain.raw)
    assert "run_id" in out and "production" not in out


def test_json_keeps_the_shape_scripts_use(home: Path, chain: Chain) -> None:
    lines = ok(home, "query", "data_level = DL1 and run_id = 1807", "--json").splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["lfn"] for r in records] == chain.dl1[:2]
    assert set(records[0]) == {"lfn", "size", "adler32", "metadata", "replicas"}
    assert records[0]["metadata"]["night"] == "2024-01-15" and records[0]["metadata"]["run_id"] == 1807
    assert ok(home, "query", "data_level = DL1", "--format", "json") == ok(
        home, "query", "data_level = DL1", "--json"
    )


def test_json_with_fields(home: Path) -> None:
    lines = ok(
        home, "query", "data_level = R0", "-f", "json", "--fields", "lfn,subrun_id,size", "--limit", "1"
    )
    assert json.loads(lines) == {
        "lfn": "/lst/R0/LST-1.1.Run01807.0000.fits.fz",
        "subrun_id": 0,
        "size": 37000,
    }


def test_csv(home: Path, chain: Chain) -> None:
    rows = list(csv.reader(io.StringIO(ok(home, "query", "data_level = DL1_RUN", "--format", "csv"))))
    assert rows[0] == ["lfn", "data_level", "night", "run_id"]
    assert [r[0] for r in rows[1:]] == chain.merged
    chosen = ok(
        home, "query", "exists run_id", "-f", "csv", "--fields", "run_id,lfn,replicas", "--limit", "2"
    )
    assert chosen.splitlines()[0] == "run_id,lfn,replicas"


def test_lfn_sorted_and_limited(home: Path, chain: Chain) -> None:
    out = ok(home, "query", "data_level = R0", "--format", "lfn", "--sort=-run_id,subrun_id", "--limit", "3")
    assert out.splitlines() == [chain.raw[2], chain.raw[3], chain.raw[0]]
    by_lfn = ok(home, "query", "exists data_level", "-f", "lfn", "--sort", "lfn").splitlines()
    assert by_lfn == sorted(by_lfn)


def test_count(home: Path) -> None:
    assert ok(home, "query", "night in 2024-01-01..2024-01-31", "--count").strip() == "12"
    assert json.loads(ok(home, "query", "exists kind", "--count", "--json")) == {"count": 1}


def test_group_by(home: Path) -> None:
    table = ok(home, "query", "exists run_id", "--group-by", "data_level")
    assert "DL1_RUN" in table and "in 4 group(s)" in table
    lines = [
        json.loads(x)
        for x in ok(home, "query", "exists night", "--group-by", "data_level,run_id", "--json").splitlines()
    ]
    assert {"data_level": "R0", "run_id": 1807, "files": 2, "size": 74000} in lines
    assert {"data_level": "DL3", "run_id": None, "files": 1, "size": 37000} in lines
    rows = list(
        csv.reader(io.StringIO(ok(home, "query", "exists run_id", "--group-by", "run_id", "-f", "csv")))
    )
    assert rows[0] == ["run_id", "files", "size"] and rows[1][:2] == ["1806", "1"]


def test_datasets_in_queries(home: Path, chain: Chain) -> None:
    ok(home, "datasets", "create", "r0-1807", "--query", "data_level = R0 and run_id = 1807")
    assert ok(home, "query", "in dataset r0-1807", "-f", "lfn").splitlines() == chain.raw[:2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run_id = = 5"], "missing value after '='"),
        (["nigth = 2024-01-15"], "did you mean 'night'"),
        (["run_id = DL1"], "run_id holds int values"),
        (["run_id in 1..b"], "must both be numbers or both be text"),
        (["in dataset nope"], "unknown dataset 'nope'"),
        (["exists run_id", "--json", "--format", "csv"], "contradict"),
        (["exists run_id", "--count", "--fields", "lfn"], "--fields does not apply"),
        (["exists run_id", "--count", "--sort", "lfn", "--limit", "2"], "--sort, --limit do not apply"),
        (["exists run_id", "--group-by", "run_id", "--sort", "lfn"], "--sort does not apply"),
        (["exists run_id", "--group-by", "run_id", "-f", "lfn"], "not LFNs"),
        (["exists run_id", "--group-by", "nope"], "unknown field 'nope'"),
        (["exists run_id", "-f", "lfn", "--fields", "lfn"], "LFNs only"),
        (["exists run_id", "--fields", "lfn,,size"], "separated by commas"),
        (["exists run_id", "--fields", "colour"], "unknown field 'colour'"),
        (["exists run_id", "--sort=-colour"], "unknown field 'colour'"),
        (["exists run_id", "--sort", "replicas"], "cannot be sorted by their replicas"),
        (["exists run_id", "--where", "rucio"], "rucio data manager is not configured"),
        (["exists run_id", "--where", "dirac"], "expected one of catalog, rucio"),
    ],
)
def test_bad_queries_exit_2_with_one_message(home: Path, args: list[str], message: str) -> None:
    stderr = refused(home, "query", *args)
    assert message in stderr and stderr.startswith("error:")


def test_the_caret_is_under_the_offending_value(home: Path) -> None:
    stderr = refused(home, "query", "data_level = R0 and run_id = '1807'")
    text, caret = stderr.splitlines()[-2:]
    assert text[caret.index("^")] == "'"


@pytest.mark.parametrize("args", [["--limit", "0"], ["--format", "xml"], ["--group-by"]])
def test_usage_errors_exit_2(home: Path, args: list[str]) -> None:
    result = run(home, "query", "exists run_id", *args)
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_where_asks_a_data_manager_that_can_search(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeRucio:
        def search(self, node: object, limit: int | None) -> list[str]:
            return ["/a", "/b"][:limit]

    from osa_grid.cli import query_cmds

    monkeypatch.setenv("OSA_GRID_DATA_MANAGER", "rucio")
    monkeypatch.setattr(query_cmds, "_data_manager", lambda workspace, where: FakeRucio())
    assert ok(home, "query", "run_id = 1", "--where", "rucio", "--limit", "1").splitlines() == ["/a"]
    assert ok(home, "query", "run_id = 1", "--where", "rucio", "--count").strip() == "2"


# ------------------------------------------------------------------------------- provenance


def test_provenance_tree(home: Path, chain: Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prov, "FOLD_AFTER", 1)
    out = ok(home, "provenance", chain.dl3)
    for expected in ("dl3 task", "merge task", "r0_to_dl1 task", "attempt 2 on testhost", "lstchain 0.10.5"):
        assert expected in out
    assert "$ python -m osa_grid.steps.toy" in out and "(calibration)" in out
    assert "more input" in out and "more input" not in ok(home, "provenance", chain.dl3, "--all")


def test_provenance_tree_to_a_file(home: Path, chain: Chain, tmp_path: Path) -> None:
    target = tmp_path / "tree.txt"
    assert ok(home, "provenance", chain.merged[0], "-o", str(target)) == ""
    assert CALIBRATION in target.read_text() and "\x1b[" not in target.read_text()


def test_provenance_json(home: Path, chain: Chain) -> None:
    document = json.loads(ok(home, "provenance", chain.dl3, "--format", "prov-json"))
    assert len([e for e in document["entity"].values() if e["prov:type"] == "osa:File"]) == 12


def test_provenance_dot_and_pictures(
    home: Path, chain: Chain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert ok(home, "provenance", chain.dl3, "-f", "dot").startswith("digraph provenance")
    monkeypatch.setattr(prov, "graphviz_dot", lambda: None)
    assert ok(home, "provenance", chain.dl3, "-f", "svg").startswith("<svg")
    result = run(home, "provenance", chain.dl3, "-f", "png", "-o", str(tmp_path / "p.png"))
    assert result.exit_code == 1 and "Graphviz" in result.stderr and "Traceback" not in result.output


@pytest.mark.skipif(prov.graphviz_dot() is None, reason="Graphviz is not installed")
def test_provenance_png_through_graphviz(home: Path, chain: Chain, tmp_path: Path) -> None:
    ok(home, "provenance", chain.dl3, "-f", "png", "-o", str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nope"], "no file '/nope'"),
        (["/x", "-f", "pdf"], "pdf"),
        (["/x", "--all", "--format"], "requires an argument"),
    ],
)
def test_provenance_mistakes(home: Path, args: list[str], message: str) -> None:
    result = run(home, "provenance", *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------------- runs


def test_runs(home: Path) -> None:
    table = ok(home, "runs", "--night", "2024-01-15")
    assert "night 2024-01-15: 3 run(s)" in table and "DL1 2  DL1_RUN 1  R0 2" in table and "2/2" in table
    summary = json.loads(ok(home, "runs", "--night", "20240115", "--format", "json"))
    assert [r["run_id"] for r in summary["runs"]] == [1806, 1807, 1808]
    run = summary["runs"][1]
    assert run["levels"]["R0"] == {"files": 2, "subruns": 2, "size": 74000}
    assert (run["source"], run["n_subruns"], run["subruns"], run["run_type"]) == ("Crab", 2, 2, "DATA")
    assert "no runs of night 2023-01-01" in ok(home, "runs", "--night", "2023-01-01")


@pytest.mark.parametrize("night", ["2024-13-01", "yesterday", "2024/01/15"])
def test_runs_refuses_bad_nights(home: Path, night: str) -> None:
    assert "expected YYYY-MM-DD" in refused(home, "runs", "--night", night)


# --------------------------------------------------------------------------------- datasets


def test_datasets_lifecycle(home: Path) -> None:
    assert "no datasets yet" in ok(home, "datasets")
    assert "live, 4 file(s)" in ok(
        home, "datasets", "create", "raw", "-q", "data_level = R0", "--description", "R0"
    )
    assert "frozen" in ok(home, "datasets", "create", "dl1", "--query", "data_level = DL1", "--frozen")
    listing = ok(home, "datasets")
    assert "2 dataset(s)" in listing and "data_level = R0" in listing
    assert listing == ok(home, "datasets", "list")
    records = [json.loads(line) for line in ok(home, "datasets", "list", "-f", "json").splitlines()]
    assert [(r["name"], r["kind"], r["files"]) for r in records] == [("dl1", "frozen", 4), ("raw", "live", 4)]
    assert "in dataset raw" in ok(home, "datasets", "show", "raw")
    assert json.loads(ok(home, "datasets", "show", "raw", "-f", "json"))["description"] == "R0"
    assert "frozen with 4 file(s)" in ok(home, "datasets", "freeze", "raw")
    assert "deleted" in ok(home, "datasets", "delete", "raw")
    assert [json.loads(x)["name"] for x in ok(home, "datasets", "list", "--format", "json").splitlines()] == [
        "dl1"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create", "1x", "-q", "data_level = R0"], "not a valid dataset name"),
        (["create", "a", "-q", "data_levl = R0"], "did you mean 'data_level'"),
        (["create", "a", "-q", "data_level = "], "missing value"),
        (["create", "a", "-q", "in dataset b"], "unknown dataset 'b'"),
        (["create", "dl1", "-q", "data_level = R0"], "exists already"),
        (["show", "nope"], "unknown dataset 'nope'"),
        (["freeze", "nope"], "unknown dataset 'nope'"),
        (["freeze", "dl1"], "already"),
        (["delete", "nope"], "unknown dataset 'nope'"),
    ],
)
def test_dataset_mistakes_exit_2(home: Path, args: list[str], message: str) -> None:
    ok(home, "datasets", "create", "dl1", "--query", "data_level = DL1", "--frozen")
    assert message in refused(home, "datasets", *args)
