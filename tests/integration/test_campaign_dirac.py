"""The campaign of ``test_campaign_cli`` (two nights of toy DL0), unchanged, with ``--backend dirac``.

The real DiracX 0.7 server of ``scripts/dirac/start.sh`` with ``osa-grid site pilot`` as the worker node
(the fixtures of ``test_dirac_backend``): a campaign stopped in the middle, the server down for several
shepherd passes and started again, the campaign resumed to the end with every product registered once and
no task run or submitted twice; and a failing step retried, then reported by ``campaign status`` with the
log that came back in the job's output sandbox.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .test_campaign_cli import (
    EXPECTED,
    add_nights,
    assert_complete_once,
    done,
    status,
    submit_then_stop,
    write_campaign,
)
from .test_dirac_backend import SCRIPTS, DiracWorld, _by_step
from .test_dirac_backend import dirac_env as dirac_env  # the fixture

pytestmark = pytest.mark.integration


class CampaignDiracWorld(DiracWorld):
    """The campaign's backend comes from ``--backend dirac`` only: the file says ``local``."""

    def env(self) -> dict[str, str]:
        env = super().env()
        env.pop("OSA_GRID_BACKEND")
        return env


@pytest.fixture
def world(tmp_path: Path, dirac_env: dict[str, str]) -> Iterator[CampaignDiracWorld]:
    world = CampaignDiracWorld(tmp_path, dirac_env)
    add_nights(world)
    world.start_pilot()
    try:
        yield world
    finally:
        world.stop_pilots()


def _server(script: str) -> None:
    subprocess.run(["bash", str(SCRIPTS / script)], check=True, capture_output=True, timeout=180)


def test_a_campaign_on_dirac_stops_survives_the_server_going_away_and_resumes_to_every_product_once(
    world: CampaignDiracWorld,
) -> None:
    name = world.production  # fresh: DiracX keeps every job, ours are counted by JobGroup
    record = world.root / "executions.log"
    path = write_campaign(world, name=name, record=record, sleep=0.5, limits={"max_jobs_in_flight": 4})
    assert yaml.safe_load(path.read_text())["backend"] == "local"
    submit_then_stop(world, path, name, "dirac", after_done=3)
    stopped = status(world, name)
    assert stopped["status"] == "stopped" and stopped["backend"] == "dirac"
    assert 3 <= done(stopped) < sum(EXPECTED.values())

    # The server goes away for several passes of the resumed shepherd, with jobs of the stopped campaign
    # still in DIRAC (the pilot runs them and reports once the server is back), then comes back.
    _server("stop.sh")
    resumed = world.start("campaign", "resume", name, "--no-live")
    try:
        time.sleep(5)
        assert resumed.poll() is None, resumed.communicate()
        _server("start.sh")
        _, err = resumed.communicate(timeout=240)
    finally:
        if resumed.poll() is None:
            resumed.kill()
        _server("start.sh")  # whatever happened, leave the server up for the next tests
    assert resumed.returncode == 0, err
    # The operator is told once that DiracX went (and what that means) and once that it is back, however
    # many passes the outage lasted; no task failed because of it (below).
    assert err.count("dirac_server_down") == 1 and "no task fails for it" in err, err
    assert err.count("dirac_server_back") == 1, err
    assert_complete_once(world, record, name)
    jobs = world.jobs()
    assert _by_step(jobs) == EXPECTED  # every task exactly one DIRAC job: nothing submitted twice
    assert {j["Status"] for j in jobs} == {"Done"}
    catalog = world.catalog()
    try:
        assert {t.backend for t in catalog.tasks(name)} == {"dirac"}
        events = catalog.events(production=name)
        # No task failed (a failure is a "ready" or "failed" event); every DIRAC job id recorded once.
        assert not [e for e in events if e["kind"] in ("ready", "failed", "vetoed")]
        sent = [e["detail"]["job_id"] for e in events if e["kind"] == "submitted"]
        real = [job_id for job_id in sent if job_id.isdigit()]
        assert len(real) == len(set(real)) == sum(EXPECTED.values())
    finally:
        catalog.close()


def test_a_failing_step_on_dirac_is_retried_then_reported_with_its_sandbox_log(
    world: CampaignDiracWorld,
) -> None:
    name = world.production
    path = write_campaign(world, name=name, fail="merge", retries=2, limits={"max_jobs_in_flight": 8})
    result = world.osa_grid("campaign", "submit", str(path), "--backend", "dirac", "--no-live", timeout=240)
    assert result.returncode == 1, result.stderr
    assert "tasks that did not succeed" in result.stdout
    state = status(world, name)
    assert state["status"] == "done" and state["backend"] == "dirac"
    assert {s["name"]: s["counts"] for s in state["steps"] if s["counts"]} == {
        "calibrate": {"done": 12},
        "merge": {"failed": 4},
    }
    failures = state["failures"]
    assert len(failures) == 4
    for failure in failures:
        assert failure["attempts"] == 2 and failure["exit_code"] == 3
        assert "toy step asked to fail" in failure["error"]  # the stderr tail, from the sandbox
        # The pilot ran the payload in its own scratch: this log can only have come from the sandbox.
        assert "toy step asked to fail" in Path(failure["log"]).read_text()
    jobs = world.jobs()
    assert _by_step(jobs) == {"calibrate": 12, "merge": 8}  # two attempts each, nothing downstream
    assert {j["Status"] for j in jobs if str(j["JobGroup"]).endswith(".merge")} == {"Failed"}
