"""`osa-grid production run|status|retry|cancel`, `query` and `files register`, end to end in subprocesses."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from .toyworld import ToyWorld, toy_production

pytestmark = pytest.mark.integration


@pytest.fixture
def world(tmp_path: Path) -> ToyWorld:
    world = ToyWorld(tmp_path)
    world.add_raw([1807, 1808], subruns=3)
    return world


def _status(world: ToyWorld, production: str = "toy") -> dict[str, object]:
    result = world.osa_grid("production", "status", production, "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_a_chain_runs_to_the_end_with_products_and_provenance(world: ToyWorld) -> None:
    production = world.write_production(toy_production())
    result = world.osa_grid("production", "run", str(production), "--no-live")
    assert result.returncode == 0, result.stderr
    assert "nothing left to do" in result.stdout
    counts = _status(world)["counts"]
    assert counts == {
        "calibrate": {"done": 6},
        "merge": {"done": 2},
        "reconstruct": {"done": 2},
        "summarize": {"done": 1},
    }
    listed = world.osa_grid("query", "production = toy and data_level = DL2", "--json")
    assert listed.returncode == 0, listed.stderr
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted(r["metadata"]["run_id"] for r in records) == [1807, 1808]
    assert all(Path(r["replicas"][0]).is_file() for r in records)

    catalog = world.catalog()
    try:
        summary = catalog.file("toy/v1/summary.csv")
        assert summary is not None and summary.task_id is not None
        provenance = catalog.provenance(summary.task_id)[-1]
        assert provenance["exit_code"] == 0 and provenance["software"]["osa-grid"]
        assert provenance["argv"][3] == "summarize"
        inputs = catalog.task_inputs([summary.task_id])[summary.task_id]
        assert [f.lfn for f in inputs] == ["toy/v1/dl2_Run01807.csv", "toy/v1/dl2_Run01808.csv"]
        assert summary.metadata["data_level"] == "DL3" and "run_id" not in summary.metadata
    finally:
        catalog.close()
    # Running again finds nothing new to do and repeats nothing.
    again = world.osa_grid("production", "run", str(production), "--no-live")
    assert again.returncode == 0 and _status(world)["counts"] == counts


def test_a_chain_runs_with_a_postgresql_catalog(tmp_path: Path, postgresql_url: str) -> None:
    world = ToyWorld(tmp_path, postgresql_url)
    world.add_raw([1807, 1808], subruns=3)
    production = world.write_production(toy_production())
    result = world.osa_grid("production", "run", str(production), "--no-live")
    assert result.returncode == 0, result.stderr
    assert _status(world)["counts"]["summarize"] == {"done": 1}
    assert world.osa_grid("query", "data_level = DL1", "--count").stdout.strip() == "6"
    assert not (world.home / "catalog.sqlite").exists()


def test_side_inputs_wait_for_the_calibration_and_are_recorded(tmp_path: Path) -> None:
    world = ToyWorld(tmp_path)
    world.add_raw([1807, 1808], subruns=3)
    world.add_raw([1806], subruns=2, run_type="PEDCALIB")
    path = world.write_production(toy_production(calibration=True))
    result = world.osa_grid("production", "run", str(path), "--no-live")
    assert result.returncode == 0, result.stderr
    assert _status(world)["counts"]["calibrate"] == {"done": 6}
    catalog = world.catalog()
    try:
        calibration = catalog.file("toy/v1/calibration_Run01806.csv")
        dl1 = catalog.file("toy/v1/dl1_Run01807.0000.csv")
        assert calibration is not None and dl1 is not None and dl1.task_id is not None
        needs = catalog.task_needs([dl1.task_id])[dl1.task_id]
        assert needs["calibration"].lfn == calibration.lfn
        argv = catalog.provenance(dl1.task_id)[-1]["argv"]
        assert argv[-2:] == ["--calibration", calibration.replicas[0].pfn]
        assert [e["kind"] for e in catalog.events(task_id=dl1.task_id)][:2] == ["created", "ready"]
    finally:
        catalog.close()


def test_a_failed_calibration_lets_no_data_task_run(tmp_path: Path) -> None:
    world = ToyWorld(tmp_path)
    world.add_raw([1807], subruns=3)
    world.add_raw([1806], subruns=2, run_type="PEDCALIB")
    record = tmp_path / "executions.log"
    path = world.write_production(toy_production(calibration=True, fail="pedestal", record=record))
    result = world.osa_grid("production", "run", str(path), "--no-live")
    assert result.returncode == 1
    status = _status(world)
    assert status["counts"]["pedestal"] == {"failed": 1}
    assert status["counts"]["calibrate"] == {"vetoed": 3}
    reasons = {f["error"] for f in status["failed"] if f["transformation"] == "calibrate"}  # type: ignore[union-attr]
    assert reasons == {
        "needs calibration: no file matches 'data_level = CALIB' and nothing left can make one"
    }
    assert not record.exists() or "calibrate" not in record.read_text()


def test_a_failing_step_is_retried_then_reported_and_can_be_retried_after_a_fix(world: ToyWorld) -> None:
    broken = world.write_production(toy_production(fail="reconstruct", retries=2))
    result = world.osa_grid("production", "run", str(broken), "--no-live")
    assert result.returncode == 1
    status = _status(world)
    assert status["counts"]["reconstruct"] == {"failed": 2}
    assert "summarize" not in status["counts"]
    failed = status["failed"]
    assert len(failed) == 2 and all("exit code 3" in f["error"] for f in failed)
    assert all("toy step asked to fail" in (Path(f["workdir"]) / "stderr.log").read_text() for f in failed)

    fixed = world.write_production(toy_production(retries=2))
    retried = world.osa_grid("production", "retry", "toy", "--transformation", "reconstruct")
    assert retried.returncode == 0 and "2 task(s) ready again" in retried.stdout
    result = world.osa_grid("production", "run", str(fixed), "--no-live")
    assert result.returncode == 0, result.stderr
    assert _status(world)["counts"]["summarize"] == {"done": 1}


def test_a_step_that_leaves_no_output_fails_with_a_clear_reason(world: ToyWorld) -> None:
    production = toy_production(retries=1)
    production["transformations"][0]["step"]["argv"] = ["{python}", "-c", "pass"]  # type: ignore[index]
    path = world.write_production(production)
    result = world.osa_grid("production", "run", str(path), "--no-live")
    assert result.returncode == 1
    errors = [f["error"] for f in _status(world)["failed"]]  # type: ignore[union-attr]
    assert len(errors) == 6 and all("was not written" in e for e in errors)


def test_wall_time_is_enforced(world: ToyWorld) -> None:
    production = toy_production(retries=1, sleep=30)
    production["transformations"][0]["step"]["resources"]["walltime"] = "1s"  # type: ignore[index]
    path = world.write_production(production)
    started = time.monotonic()
    result = world.osa_grid("production", "run", str(path), "--no-live", timeout=60)
    assert result.returncode == 1
    assert time.monotonic() - started < 30
    assert all(f["error"].startswith("timeout") for f in _status(world)["failed"])  # type: ignore[union-attr]


def test_once_makes_one_pass_and_a_cron_of_passes_finishes(world: ToyWorld) -> None:
    path = world.write_production(toy_production())
    first = world.osa_grid("production", "run", str(path), "--once", "--no-live", "--max-cores", "2")
    assert first.returncode == 0, first.stderr
    assert "still to do" in first.stdout
    # One pass on a 2-core pool (with its queue): the six sub-runs calibrated, the merges of their runs
    # planned and waiting for the next pass.
    assert _status(world)["counts"] == {"calibrate": {"done": 6}, "merge": {"ready": 2}}
    passes = 1
    while "summarize" not in _status(world)["counts"] or _status(world)["counts"]["summarize"] != {"done": 1}:
        result = world.osa_grid("production", "run", str(path), "--once", "--no-live", "--max-cores", "2")
        assert result.returncode == 0, result.stderr
        passes += 1
        assert passes <= 10
    # Then merge, reconstruct and summarize one pass each (tasks appear with the data).
    assert passes == 4


def test_a_second_shepherd_on_the_same_production_is_refused(world: ToyWorld) -> None:
    path = world.write_production(toy_production(sleep=1.0))
    first = world.start("production", "run", str(path), "--no-live")
    try:
        time.sleep(1.5)
        second = world.osa_grid("production", "run", str(path), "--no-live")
        assert second.returncode == 1
        assert "another shepherd is running it" in second.stderr
    finally:
        first.wait(timeout=120)
    assert first.returncode == 0


def test_cancel_stops_what_has_not_run(world: ToyWorld) -> None:
    path = world.write_production(toy_production())
    world.osa_grid("production", "run", str(path), "--once", "--no-live")
    world.add_raw([1809], subruns=2)
    planned = world.osa_grid("production", "run", str(path), "--once", "--no-live")
    assert planned.returncode == 0
    cancelled = world.osa_grid("production", "cancel", "toy")
    assert cancelled.returncode == 0, cancelled.stderr
    counts = _status(world)["counts"]
    assert "ready" not in json.dumps(counts)


def test_bad_production_file_is_reported_with_file_line_and_field(world: ToyWorld) -> None:
    path = world.root / "broken.yaml"
    path.write_text(
        "name: broken\ntransformations:\n  - name: a\n    input: {query: 'x = 1'}\n    step: {argv: []}\n"
    )
    result = world.osa_grid("production", "run", str(path), "--no-live")
    assert result.returncode == 2
    assert f"{path}:5: transformations[0].step.argv" in result.stderr
    assert "Traceback" not in result.stderr
    listing = world.osa_grid("status")
    assert "no productions" in listing.stdout


def test_bad_query_is_reported_with_a_caret(world: ToyWorld) -> None:
    result = world.osa_grid("query", "run_id = = 5")
    assert result.returncode == 2
    assert "^" in result.stderr and "Traceback" not in result.stderr


def test_registering_a_missing_file_registers_nothing(world: ToyWorld) -> None:
    existing = next((world.root / "raw").iterdir())
    extra = world.root / "extra.csv"
    extra.write_text("x\n")
    result = world.osa_grid(
        "files", "register", str(extra), str(world.root / "nope.csv"), "-m", "data_level=R0"
    )
    assert result.returncode == 2 and "nope.csv" in result.stderr
    count = world.osa_grid("query", "data_level = R0", "--count")
    assert count.stdout.strip() == "6"
    again = world.osa_grid("files", "register", str(existing), "-m", "data_level=R0", "--lfn-prefix", "raw")
    assert again.returncode == 2 and "already registered" in again.stderr


def test_a_missing_input_file_vetoes_its_task(world: ToyWorld) -> None:
    victim = sorted((world.root / "raw").iterdir())[0]
    victim.unlink()
    path = world.write_production(toy_production())
    result = world.osa_grid("production", "run", str(path), "--no-live")
    assert result.returncode == 1
    failed = _status(world)["failed"]
    assert len(failed) == 1 and failed[0]["state"] == "vetoed"  # type: ignore[index]
    assert victim.name in failed[0]["error"]  # type: ignore[index]


def test_measured_metadata_is_added_and_a_bad_metadata_file_fails_the_task(world: ToyWorld) -> None:
    production = toy_production(retries=1)
    reconstruct = production["transformations"][2]  # type: ignore[index]
    reconstruct["step"]["argv"] += ["--quality", "{output.dl2.metadata}"]
    reconstruct["outputs"][0]["metadata_file"] = "quality_{run_id}.json"
    path = world.write_production(production)
    result = world.osa_grid("production", "run", str(path), "--no-live")
    assert result.returncode == 0, result.stderr
    listed = world.osa_grid("query", "data_level = DL2 and gamma_fraction > 0", "--json")
    assert len(listed.stdout.splitlines()) == 2
    assert all(json.loads(line)["metadata"]["events"] == 90 for line in listed.stdout.splitlines())

    other = toy_production(name="toy2", retries=1)
    other["transformations"][2]["outputs"][0]["metadata_file"] = "never_written.json"  # type: ignore[index]
    path = world.write_production(other, "other.yaml")
    result = world.osa_grid("production", "run", str(path), "--no-live")
    assert result.returncode == 1
    errors = [f["error"] for f in _status(world, "toy2")["failed"]]  # type: ignore[union-attr]
    # Only toy2's own runs: children take their parents' outputs in their own production.
    assert len(errors) == 2 and all("never_written.json is unreadable" in e for e in errors)
