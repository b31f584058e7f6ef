"""`osa-grid campaign plan|submit|status|stop|resume|retry|cancel` end to end, in subprocesses, on two nights.

The toy steps record each execution (``--record``), so "stopping and resuming never reprocesses what is done"
is checked on what really ran, and the catalog is checked for every product registered exactly once.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from osa_grid.services.files import register_paths
from osa_grid.steps.toy import make_inputs

from .test_slurm_backend import slurm_conf  # noqa: F401 - the fixture
from .toyworld import ToyWorld, toy_production

pytestmark = pytest.mark.integration

NIGHTS = {"2026-11-21": [1807, 1808], "2026-11-22": [1811, 1812], "2026-11-23": [1815]}
SUBRUNS = 3


def add_nights(world: ToyWorld) -> None:
    """Three nights of raw toy data; the campaigns take the first two."""
    catalog = world.catalog()
    try:
        for night, runs in NIGHTS.items():
            paths = make_inputs(world.root / "raw" / night, runs, SUBRUNS, 30)
            register_paths(
                catalog,
                paths,
                {"data_level": "R0", "n_subruns": SUBRUNS, "run_type": "DATA", "night": night},
                name_pattern="LST-1.Run{run_id:d}.{subrun_id:d}.r0.csv",
                lfn_prefix=f"raw/{night}",
            )
    finally:
        catalog.close()


def write_campaign(world: ToyWorld, name: str = "two-nights", **knobs: Any) -> Path:
    limits = knobs.pop("limits", {"max_jobs_in_flight": 2})
    production = toy_production(name="toy", **knobs)
    (world.root / "toy_production.yaml").write_text(yaml.safe_dump(production, sort_keys=False))
    campaign = {
        "name": name,
        "production": "toy_production.yaml",
        "scope": {"nights": {"from": "2026-11-21", "to": "2026-11-22"}},
        "backend": "local",
        "limits": limits,
        "software": {"packages": {"osa-grid": "0.1.0"}},
        "products": {"dataset": f"{name}-dl2", "query": "data_level = DL2"},
    }
    path = world.root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(campaign, sort_keys=False))
    return path


def status(world: ToyWorld, name: str = "two-nights") -> dict[str, Any]:
    result = world.osa_grid("campaign", "status", name, "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def done(state: dict[str, Any]) -> int:
    return sum(int(step["done"]) for step in state["steps"])


EXPECTED = {"calibrate": 12, "merge": 4, "reconstruct": 4, "summarize": 1}


def assert_complete_once(world: ToyWorld, record: Path, name: str = "two-nights") -> None:
    state = status(world, name)
    assert state["status"] == "done" and state["remaining"] == 0
    assert {s["name"]: s["counts"] for s in state["steps"]} == {k: {"done": n} for k, n in EXPECTED.items()}
    runs = sorted(r for night, rs in NIGHTS.items() if night != "2026-11-23" for r in rs)
    catalog = world.catalog()
    try:
        dl1 = catalog.query(f"production = {name} and data_level = DL1")
        assert len(dl1) == 12 and len({f.lfn for f in dl1}) == 12
        assert sorted({int(f.metadata["run_id"]) for f in dl1}) == runs  # night 2026-11-23 is out of scope
        assert len(catalog.query(f"production = {name} and data_level = DL2")) == 4
        assert catalog.dataset(f"{name}-dl2").files == 4
        for task in catalog.tasks(name):
            outputs = catalog.task_outputs(task.task_id)
            assert outputs and all(Path(r.pfn).is_file() for f in outputs for r in f.replicas)
            # Scratch files are cleared once the products are stored; the logs stay.
            assert sorted(p.name for p in Path(task.workdir or "").iterdir()) == ["stderr.log", "stdout.log"]
            assert catalog.provenance(task.task_id)[-1]["software"]["osa-grid"] == "0.1.0"
    finally:
        catalog.close()
    executions = Counter(record.read_text().splitlines())
    assert sum(executions.values()) == sum(EXPECTED.values())
    assert max(executions.values()) == 1, executions


def submit_then_stop(world: ToyWorld, path: Path, name: str, backend: str, after_done: int) -> None:
    """``campaign submit --backend B`` in the background, ``campaign stop`` once ``after_done`` tasks are
    done; the shepherd must then leave cleanly (a batch system's jobs carry on without it)."""
    shepherd = world.start("campaign", "submit", str(path), "--backend", backend, "--no-live")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.3)
            if (
                world.osa_grid("campaign", "status").returncode == 0
                and done(status(world, name)) >= after_done
            ):
                break
        assert world.osa_grid("campaign", "stop", name).returncode == 0
        _, err = shepherd.communicate(timeout=60)
    finally:
        if shepherd.poll() is None:
            shepherd.kill()
    assert shepherd.returncode == 0, err


@pytest.fixture
def world(tmp_path: Path) -> ToyWorld:
    world = ToyWorld(tmp_path)
    add_nights(world)
    return world


def test_plan_shows_the_whole_chain_and_submits_nothing(world: ToyWorld) -> None:
    path = write_campaign(world)
    result = world.osa_grid("campaign", "plan", str(path), "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert {s["name"]: s["tasks"] for s in plan["steps"]} == EXPECTED
    assert plan["input_files"] == 12 and plan["stores"]["local"]["to_stage_files"] == 0
    assert plan["slots"] == 2  # the campaign's limit
    assert plan["cpu_hours"] == pytest.approx(21 * 120 / 3600)  # declared 2m per task: nothing measured yet
    table = world.osa_grid("campaign", "plan", str(path))
    assert table.returncode == 0 and "21 task(s) over 12 input file(s)" in table.stdout
    assert world.osa_grid("campaign", "status").stdout.startswith("no campaigns")
    assert world.osa_grid("query", "data_level = DL1", "--count").stdout.strip() == "0"


def test_stop_in_the_middle_then_resume_ends_with_every_product_once(world: ToyWorld) -> None:
    record = world.root / "executions.log"
    path = write_campaign(world, record=record, sleep=1.0)  # long enough to stop it on a loaded machine
    shepherd = world.start("campaign", "submit", str(path), "--no-live")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.3)
            if (world.home / "catalog.sqlite").exists() and world.osa_grid(
                "campaign", "status"
            ).returncode == 0:
                state = status(world)
                if done(state) >= 3:
                    break
        running = [int(s["running"]) for s in status(world)["steps"]]
        # At most max_jobs_in_flight jobs at once.
        assert sum(running) <= 2
        stop = world.osa_grid("campaign", "stop", "two-nights")
        assert stop.returncode == 0, stop.stderr
        assert "stops submitting" in stop.stdout
        out, err = shepherd.communicate(timeout=60)
    finally:
        if shepherd.poll() is None:
            shepherd.kill()
    assert shepherd.returncode == 0, err
    assert "stopped" in out
    stopped = status(world)
    assert stopped["status"] == "stopped"
    # Running jobs were allowed to finish: nothing is in flight, and work is left.
    assert all(int(s["running"]) == 0 for s in stopped["steps"])
    assert 3 <= done(stopped) < sum(EXPECTED.values())
    before = Counter(record.read_text().splitlines())
    assert sum(before.values()) == done(stopped)

    resumed = world.osa_grid("campaign", "resume", "two-nights", "--no-live")
    assert resumed.returncode == 0, resumed.stderr
    assert_complete_once(world, record)
    # Submitting the unchanged file again repeats nothing.
    again = world.osa_grid("campaign", "submit", str(path), "--no-live")
    assert again.returncode == 0, again.stderr
    assert_complete_once(world, record)


def test_stop_with_kill_requeues_running_tasks_and_resume_finishes(world: ToyWorld) -> None:
    record = world.root / "executions.log"
    path = write_campaign(world, record=record, sleep=2.0)
    shepherd = world.start("campaign", "submit", str(path), "--no-live")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.3)
            if world.osa_grid("campaign", "status").returncode == 0:
                state = status(world)
                if sum(int(s["running"]) for s in state["steps"]) > 0 and done(state) >= 1:
                    break
        stop = world.osa_grid("campaign", "stop", "two-nights", "--kill")
        assert stop.returncode == 0, stop.stderr
        _, err = shepherd.communicate(timeout=60)
    finally:
        if shepherd.poll() is None:
            shepherd.kill()
    assert shepherd.returncode == 0, err
    stopped = status(world)
    assert stopped["status"] == "stopped" and all(int(s["running"]) == 0 for s in stopped["steps"])
    assert not stopped["failures"]  # killed by the operator: back to ready, not failed
    catalog = world.catalog()
    try:
        kinds = [e["kind"] for e in catalog.events(production="two-nights")]
    finally:
        catalog.close()
    assert "campaign_killed" in kinds and "lost" in kinds
    resumed = world.osa_grid("campaign", "resume", "two-nights", "--no-live")
    assert resumed.returncode == 0, resumed.stderr
    assert_complete_once(world, record)


def test_a_failing_step_is_retried_reported_with_its_log_and_retried_again(world: ToyWorld) -> None:
    path = write_campaign(world, fail="reconstruct", retries=2)
    result = world.osa_grid("campaign", "submit", str(path), "--no-live")
    assert result.returncode == 1
    state = status(world)
    assert state["status"] == "done"
    failures = state["failures"]
    assert len(failures) == 4 and {f["transformation"] for f in failures} == {"reconstruct"}
    assert all(f["attempts"] == 2 and f["exit_code"] == 3 for f in failures)
    log = Path(failures[0]["log"])
    assert log.name == "stderr.log" and "toy step asked to fail" in log.read_text()
    assert "tasks that did not succeed" in result.stdout

    retry = world.osa_grid("campaign", "retry", "two-nights", "--failed")
    assert retry.returncode == 0 and "4 task(s) ready again" in retry.stdout
    assert status(world)["status"] == "active"
    again = world.osa_grid("campaign", "resume", "two-nights", "--no-live")
    assert again.returncode == 1
    # Attempts started over: two more tries each, then reported again.
    catalog = world.catalog()
    try:
        for failure in failures:
            assert len(catalog.provenance(failure["task_id"])) == 4
    finally:
        catalog.close()
    assert world.osa_grid("campaign", "retry", "two-nights").returncode == 2  # says what to retry


def test_a_product_that_does_not_open_fails_its_task(world: ToyWorld) -> None:
    path = write_campaign(world)
    campaign = yaml.safe_load(path.read_text())
    production = yaml.safe_load((world.root / "toy_production.yaml").read_text())
    production["transformations"][2]["outputs"][0]["verify"] = "hdf5"  # reconstruct writes CSV
    (world.root / "toy_production.yaml").write_text(yaml.safe_dump(production, sort_keys=False))
    path.write_text(yaml.safe_dump(campaign, sort_keys=False))
    result = world.osa_grid("campaign", "submit", str(path), "--no-live")
    assert result.returncode == 1
    failures = status(world)["failures"]
    assert {f["transformation"] for f in failures} == {"reconstruct"}
    assert all("is not a valid hdf5 file" in f["error"] and f["error"].startswith("output") for f in failures)
    catalog = world.catalog()
    try:
        assert catalog.query("data_level = DL2") == []  # nothing unverified was registered
    finally:
        catalog.close()


def test_cancel_and_bad_input(world: ToyWorld) -> None:
    path = write_campaign(world)
    plan = world.osa_grid("campaign", "submit", str(path), "--once", "--no-live")
    assert plan.returncode == 0, plan.stderr
    cancelled = world.osa_grid("campaign", "cancel", "two-nights")
    assert cancelled.returncode == 0, cancelled.stderr
    state = status(world)
    assert state["status"] == "cancelled"
    assert world.osa_grid("campaign", "resume", "two-nights").returncode == 2
    # A changed campaign under the same name is refused; so are mixed software versions.
    changed = yaml.safe_load(path.read_text())
    changed["limits"] = {"max_jobs_in_flight": 3}
    path.write_text(yaml.safe_dump(changed))
    refused = world.osa_grid("campaign", "submit", str(path), "--no-live")
    assert refused.returncode == 2 and "another definition" in refused.stderr
    changed["software"] = {"packages": {"osa-grid": "9.9"}}
    changed["name"] = "other"
    path.write_text(yaml.safe_dump(changed))
    wrong = world.osa_grid("campaign", "submit", str(path), "--no-live")
    assert wrong.returncode == 2 and "osa-grid==9.9, this environment has 0.1.0" in wrong.stderr


# -- the same campaign file on the real SLURM cluster (scripts/slurm/start.sh) -----------------------------


class SlurmWorld(ToyWorld):
    def __init__(self, root: Path, conf: Path) -> None:
        super().__init__(root)
        self.conf = conf

    def env(self) -> dict[str, str]:
        return {**super().env(), "OSA_GRID_SLURM_CONF": str(self.conf), "OSA_GRID_SLURM_POLL_SECONDS": "0.3"}


def test_the_same_file_runs_unchanged_on_slurm_and_survives_a_stop(
    tmp_path: Path,
    slurm_conf: Path,  # noqa: F811 - the fixture of test_slurm_backend
) -> None:
    import secrets

    world = SlurmWorld(tmp_path, slurm_conf)
    add_nights(world)
    record = world.root / "executions.log"
    # A fresh name: sacct keeps every job ever run.
    name = f"nights{secrets.token_hex(3)}"
    path = write_campaign(world, name=name, record=record, sleep=1.0, limits={"max_jobs_in_flight": 3})
    assert yaml.safe_load(path.read_text())["backend"] == "local"
    submit_then_stop(world, path, name, "slurm", after_done=2)
    stopped = status(world, name)
    assert stopped["status"] == "stopped" and stopped["backend"] == "slurm"
    # A batch system keeps its jobs when the shepherd leaves; resume collects them and carries on.
    resumed = world.osa_grid("campaign", "resume", name, "--no-live", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_complete_once(world, record, name)
    catalog = world.catalog()
    try:
        assert {t.backend for t in catalog.tasks(name)} == {"slurm"}
        attempts = [e for e in catalog.events(production=name) if e["kind"] == "submitted"]
        assert len(attempts) == sum(EXPECTED.values())  # nothing was submitted twice
    finally:
        catalog.close()
