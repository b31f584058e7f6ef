"""A transformation's input query at the edges: a long chain runs, an impossible date is refused on load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .toyworld import ToyWorld, toy_production

pytestmark = pytest.mark.integration


def _with_calibrate_query(query: str) -> dict[str, object]:
    production = toy_production()
    transformations = production["transformations"]
    assert isinstance(transformations, list)
    transformations[0]["input"]["query"] = query
    return production


def test_an_input_query_of_600_terms_runs_the_production(tmp_path: Path) -> None:
    # 600 `or` terms went past SQLite's 500-term compound SELECT: the shepherd crashed on every pass.
    world = ToyWorld(tmp_path)
    world.add_raw([1807, 1808], subruns=2)
    runs = " or ".join(f"run_id = {run}" for run in range(1200, 1800))
    query = f"data_level = R0 and run_type = DATA and (run_id = 1807 or run_id = 1808 or {runs})"
    production = world.write_production(_with_calibrate_query(query))
    result = world.osa_grid("production", "run", str(production), "--no-live")
    assert result.returncode == 0, result.stderr
    status = world.osa_grid("production", "status", "toy", "--json")
    counts = json.loads(status.stdout)["counts"]
    assert counts["calibrate"] == {"done": 4} and counts["summarize"] == {"done": 1}


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_an_input_query_with_a_date_out_of_range_is_refused_on_load(tmp_path: Path, moment: str) -> None:
    # The shepherd used to crash (OverflowError) when it converted the moment to UTC for the catalog.
    world = ToyWorld(tmp_path)
    world.add_raw([1807], subruns=1)
    production = world.write_production(_with_calibrate_query(f"data_level = R0 and start > {moment}"))
    result = world.osa_grid("production", "run", str(production), "--no-live")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "out of range" in result.stderr and "production.yaml" in result.stderr
    catalog = world.catalog()
    try:
        assert catalog.task_counts("toy") == {}
    finally:
        catalog.close()
