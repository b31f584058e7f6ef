"""Numbers and datetimes out of range: one message and exit 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from osa_grid.catalog.store import Catalog
from osa_grid.cli.app import app
from tests.helpers import make_file

HUGE = "7" * 5000


@pytest.fixture
def home(tmp_path: Path) -> Path:
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    try:
        catalog.register_files([make_file("/a", run_id=1807, start="x")])
    finally:
        catalog.close()
    (tmp_path / "data.txt").write_text("data")
    return tmp_path


def run(home: Path, *args: str) -> Result:
    env = {"OSA_GRID_HOME": str(home), "OSA_GRID_CATALOG_URL": f"sqlite:///{home / 'catalog.sqlite'}"}
    return CliRunner().invoke(app, list(args), env=env)


def refused(result: Result) -> str:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    return result.output


@pytest.mark.parametrize(
    "value", [HUGE, str(2**63), "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"]
)
def test_out_of_range_values_are_refused(home: Path, value: str) -> None:
    assert "out of range" in refused(
        run(home, "files", "register", str(home / "data.txt"), "-m", f"k={value}")
    )
    assert "out of range" in refused(run(home, "query", f"run_id = {value}"))


def test_a_huge_limit_is_refused(home: Path) -> None:
    assert "--limit" in refused(run(home, "query", "exists run_id", "--limit", str(10**30)))
    assert "--limit" in refused(run(home, "query", "exists run_id", "--limit", HUGE))


def test_too_many_sort_keys_are_refused(home: Path) -> None:
    assert "at most 8 keys" in refused(
        run(home, "query", "exists run_id", "--sort", ",".join(["run_id"] * 16))
    )
    assert "at most 8 keys" in refused(
        run(home, "query", "exists run_id", "--group-by", ",".join(["run_id"] * 9))
    )
