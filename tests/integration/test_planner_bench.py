"""The planner benchmark's catalog pass on PostgreSQL, side by side with another source tree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import PG_ADMIN_URL

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def bench_databases() -> set[str]:
    engine = sa.create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as conn:
            names = conn.scalars(
                sa.text("SELECT datname FROM pg_database WHERE datname LIKE 'osagrid_bench_%'")
            )
            return set(names)
    finally:
        engine.dispose()


def test_the_catalog_pass_plans_one_registered_catalog_with_each_tree_on_postgresql(tmp_path: Path) -> None:
    before = bench_databases()
    figures = tmp_path / "figures.json"
    command = [sys.executable, "bench/planner.py", "--pure", "none", "--history", "none", "--catalog", "1500"]
    command += ["--osa-grid-tree", str(REPO), "--catalog-url", PG_ADMIN_URL, "--json", str(figures)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "catalog-backed planning pass (PostgreSQL)" in result.stdout
    rows = json.loads(figures.read_text())["catalog"]
    assert [r["tree"] for r in rows] == ["this tree", str(REPO)]
    # Each tree planned its own copy of the same 1500 sub-runs (the worker fails on any other count).
    assert [r["created"] for r in rows] == [1500, 1500]
    assert bench_databases() == before  # the registered database and its copies are dropped
