"""Queries, datasets and provenance end to end: a real production run in subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import make_file

from .toyworld import ToyWorld, toy_production

pytestmark = pytest.mark.integration


def test_a_frozen_dataset_is_the_input_of_a_production(tmp_path: Path) -> None:
    world = ToyWorld(tmp_path)
    world.add_raw([1807, 1808], subruns=2)
    created = world.osa_grid(
        "datasets", "create", "batch", "--query", "data_level = R0 and run_id = 1807", "--frozen"
    )
    assert created.returncode == 0, created.stderr
    production = toy_production()
    calibrate = production["transformations"][0]  # type: ignore[index]
    # The data level keeps the validator sure that outputs never feed back: a dataset could hold anything.
    calibrate["input"]["query"] = "in dataset batch and data_level = R0"
    production["transformations"] = [calibrate]
    path = world.write_production(production)
    result = world.osa_grid("production", "run", str(path), "--no-live")
    assert result.returncode == 0, result.stderr
    made = world.osa_grid("query", "data_level = DL1", "--format", "lfn", "--sort", "lfn")
    assert made.stdout.split() == ["toy/v1/dl1_Run01807.0000.csv", "toy/v1/dl1_Run01807.0001.csv"]
    # Files registered later do not join a frozen dataset: nothing more to do.
    catalog = world.catalog()
    try:
        late = make_file(
            "raw/late.csv", data_level="R0", run_id=1807, subrun_id=2, run_type="DATA", n_subruns=3
        )
        catalog.register_files([late])
    finally:
        catalog.close()
    again = world.osa_grid("production", "run", str(path), "--no-live")
    assert (
        again.returncode == 0 and world.osa_grid("query", "data_level = DL1", "--count").stdout.strip() == "2"
    )


def test_provenance_of_a_real_product(tmp_path: Path) -> None:
    world = ToyWorld(tmp_path)
    world.add_raw([1807], subruns=2)
    world.add_raw([1806], subruns=1, run_type="PEDCALIB")
    path = world.write_production(toy_production(calibration=True))
    assert world.osa_grid("production", "run", str(path), "--no-live").returncode == 0
    tree = world.osa_grid("provenance", "toy/v1/summary.csv")
    assert tree.returncode == 0, tree.stderr
    for step in ("summarize", "reconstruct", "merge", "calibrate", "pedestal", "(calibration)"):
        assert step in tree.stdout
    document = json.loads(world.osa_grid("provenance", "toy/v1/summary.csv", "-f", "prov-json").stdout)
    raw = [e for e in document["entity"].values() if e.get("osa:data_level") == "R0"]
    assert len(raw) == 3  # two data sub-runs and the pedestal run's one
    picture = world.osa_grid("provenance", "toy/v1/summary.csv", "-f", "svg", "-o", str(tmp_path / "p.svg"))
    assert picture.returncode == 0 and "<svg" in (tmp_path / "p.svg").read_text()
    runs = json.loads(
        world.osa_grid("query", "exists run_id", "--group-by", "run_id", "--json").stdout.split("\n")[0]
    )
    assert runs["run_id"] == 1806


def test_the_catalog_benchmark_runs_at_a_small_size(tmp_path: Path) -> None:
    # CI runs the benchmark at a small size: it must fill both databases and print its table.
    figures = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, "bench/catalog.py", "--quick", "--json", str(figures)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "catalog benchmark" in result.stdout and "register_files" in result.stdout
    measured = json.loads(figures.read_text())
    assert [m["database"] for m in measured] == ["sqlite", "postgresql"]
    assert all(m["files"] >= 20_000 and m["queries"]["provenance"]["rows"] > 100 for m in measured)
