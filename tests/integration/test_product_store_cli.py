"""`osa-grid production run` end to end: a registered product never changes on disk, a task whose product
cannot be stored (its LFN taken, a filesystem error, a symbolic link) fails alone, and the rest goes on."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from osa_grid.data.checksums import adler32

from .toyworld import ToyWorld, toy_production

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> ToyWorld:
    url = request.getfixturevalue("postgresql_url") if request.param == "postgresql" else None
    world = ToyWorld(tmp_path, url)
    world.add_raw([1807, 1808], subruns=3)
    return world


def _status(world: ToyWorld, production: str = "toy") -> dict[str, Any]:
    result = world.osa_grid("production", "status", production, "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def _calibrate_only(**changes: Any) -> dict[str, Any]:
    production = toy_production(retries=1)
    calibrate = copy.deepcopy(production["transformations"][0])  # type: ignore[index]
    calibrate["outputs"][0].update(changes)
    return {"name": "toy", "transformations": [calibrate]}


def _store_matches_catalog(world: ToyWorld) -> list[str]:
    """The LFNs of the catalog's products, after checking the store holds exactly them, with their adler32."""
    catalog = world.catalog()
    try:
        files = catalog.query("production = toy")
    finally:
        catalog.close()
    for found in files:
        assert adler32(Path(found.replicas[0].pfn)) == found.checksum, found.lfn
    data = world.home / "data"
    on_disk = sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file() or p.is_symlink())
    assert on_disk == sorted(f.lfn for f in files)
    return sorted(f.lfn for f in files)


def test_tasks_whose_outputs_share_an_lfn_fail_alone_and_the_first_product_stays(world: ToyWorld) -> None:
    # Three sub-runs of a run, one task each, all writing "same_Run<run>.csv".
    path = world.write_production(_calibrate_only(file_name="same_Run{run_id:05d}.csv"))
    result = world.osa_grid("production", "run", str(path), "--no-live")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    status = _status(world)
    assert status["counts"] == {"calibrate": {"done": 2, "vetoed": 4}}
    catalog = world.catalog()
    try:
        done = {f.lfn: f.task_id for f in catalog.query("production = toy")}
    finally:
        catalog.close()
    assert sorted(done) == ["toy/v1/same_Run01807.csv", "toy/v1/same_Run01808.csv"]
    for failure in status["failed"]:
        # Each names the task that made (or was storing) the product of its run.
        assert failure["error"].startswith("clash (exit code 0): toy/v1/same_Run0180"), failure
        maker = next(task for lfn, task in done.items() if lfn in failure["error"])
        assert f"task {maker} (toy/calibrate)" in failure["error"]
    assert _store_matches_catalog(world) == sorted(done)

    # Running again changes nothing and exits as a run with failures does, not with "already registered".
    again = world.osa_grid("production", "run", str(path), "--no-live")
    assert again.returncode == 1, again.stdout + again.stderr
    assert "already registered" not in again.stdout + again.stderr
    assert _status(world)["counts"] == status["counts"]
    assert _store_matches_catalog(world) == sorted(done)


def test_a_new_version_writes_new_lfns_and_leaves_the_old_products_alone(world: ToyWorld) -> None:
    production = _calibrate_only()
    path = world.write_production(production)
    assert world.osa_grid("production", "run", str(path), "--no-live").returncode == 0
    first = _store_matches_catalog(world)
    assert len(first) == 6 and all(lfn.startswith("toy/v1/") for lfn in first)

    production["transformations"][0]["version"] = "2"
    world.write_production(production)
    result = world.osa_grid("production", "run", str(path), "--no-live")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _status(world)["counts"] == {"calibrate": {"done": 12}}
    both = _store_matches_catalog(world)  # the version-1 products unchanged on disk
    assert sorted(set(both) - set(first)) == [lfn.replace("toy/v1/", "toy/v2/") for lfn in first]


def test_a_new_version_of_one_step_only_clashes_downstream_with_the_reason(world: ToyWorld) -> None:
    production = toy_production()
    path = world.write_production(production)
    assert world.osa_grid("production", "run", str(path), "--no-live").returncode == 0
    production["transformations"][0]["version"] = "2"  # type: ignore[index]
    world.write_production(production)
    result = world.osa_grid("production", "run", str(path), "--no-live")
    assert result.returncode == 1, result.stdout + result.stderr
    status = _status(world)
    assert status["counts"]["calibrate"] == {"done": 12}
    # merge (version 1) would write its products again from the new DL1 files: refused, with the reason.
    assert status["counts"]["merge"] == {"done": 2, "vetoed": 2}
    errors = [f["error"] for f in status["failed"]]
    assert len(errors) == 2 and all("registered already, made by task" in e for e in errors)
    _store_matches_catalog(world)


def test_a_storage_error_fails_its_tasks_and_the_others_go_on(world: ToyWorld) -> None:
    # Run 1807's products would go under toy/v1/1807, where a file is: NotADirectoryError.
    path = world.write_production(_calibrate_only(directory="{production}/v{version}/{run_id}"))
    blocker = world.home / "data" / "toy" / "v1" / "1807"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a directory")
    result = world.osa_grid("production", "run", str(path), "--no-live")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    status = _status(world)
    assert status["counts"] == {"calibrate": {"done": 3, "failed": 3}}
    for failure in status["failed"]:
        assert failure["error"].startswith("storage (exit code 0): cannot store toy/v1/1807/dl1_Run01807.")
    assert world.osa_grid("query", "data_level = DL1", "--count").stdout.strip() == "3"
    again = world.osa_grid("production", "run", str(path), "--no-live")
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert _status(world)["counts"] == status["counts"]


def test_a_step_output_that_is_a_symbolic_link_is_refused(world: ToyWorld) -> None:
    production = _calibrate_only()
    production["transformations"][0]["step"]["argv"] = [
        "{python}",
        "-c",
        "import os, sys; os.symlink('/etc/passwd', sys.argv[1])",
        "{output.dl1}",
    ]
    path = world.write_production(production)
    result = world.osa_grid("production", "run", str(path), "--no-live")
    assert result.returncode == 1
    errors = [f["error"] for f in _status(world)["failed"]]
    assert len(errors) == 6
    assert all("is a symbolic link (to /etc/passwd)" in e and e.startswith("output") for e in errors)
    assert world.osa_grid("query", "data_level = DL1", "--count").stdout.strip() == "0"
    assert not (world.home / "data" / "toy").exists()


def test_a_symbolic_link_in_the_store_cannot_send_products_out_of_it(world: ToyWorld, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (world.home / "data").mkdir(parents=True)
    (world.home / "data" / "toy").symlink_to(outside)
    path = world.write_production(_calibrate_only())
    result = world.osa_grid("production", "run", str(path), "--no-live")
    assert result.returncode == 1
    errors = [f["error"] for f in _status(world)["failed"]]
    assert len(errors) == 6 and all("outside the data root" in e for e in errors)
    assert list(outside.iterdir()) == []
    assert world.osa_grid("query", "data_level = DL1", "--count").stdout.strip() == "0"
