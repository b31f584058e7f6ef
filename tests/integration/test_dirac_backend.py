"""The DIRAC backend on the real DiracX 0.7 server of ``scripts/dirac/start.sh``, with the site pilot.

Productions of the toy chain run through the CLI (``production run --backend dirac``) while ``osa-grid site
pilot`` plays the worker node; DiracX's own job records are counted to show that nothing ran twice.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from osa_grid.backends.dirac_client import DiracSession

from .toyworld import OSA_GRID, ToyWorld, toy_production

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "dirac"
STEPS = ("calibrate", "merge", "reconstruct", "summarize")
ALL_DONE = {
    "calibrate": {"done": 6},
    "merge": {"done": 2},
    "reconstruct": {"done": 2},
    "summarize": {"done": 1},
}


def _dirac_dir() -> Path:
    return Path(os.environ.get("OSA_GRID_DIRAC_DIR") or REPO / ".services" / "dirac")


def _read_env(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export ") :].partition("=")
            values[name] = value.strip("'\"")
    return values


@pytest.fixture(scope="module")
def dirac_env() -> dict[str, str]:
    """DIRACX_URL and DIRACX_CREDENTIALS_PATH of a live server; skipped (failed under CI) without one."""
    env_file = _dirac_dir() / "env"
    problem = None
    values: dict[str, str] = {}
    if not env_file.is_file():
        problem = f"{env_file} does not exist"
    else:
        values = _read_env(env_file)
        try:
            with urllib.request.urlopen(
                f"{values['DIRACX_URL']}/.well-known/openid-configuration", timeout=5
            ):
                pass
        except (OSError, KeyError) as exc:
            problem = str(exc)
    if problem is not None:
        reason = f"DiracX server not reachable (start it with scripts/dirac/start.sh): {problem}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return values


class DiracWorld(ToyWorld):
    def __init__(self, root: Path, dirac: dict[str, str]) -> None:
        super().__init__(root)
        self.dirac = dirac
        # A fresh production name per test: the server keeps every job, and we count ours by JobGroup.
        self.production = f"d{secrets.token_hex(4)}"
        self.pilots: list[subprocess.Popen[str]] = []

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            **self.dirac,
            "OSA_GRID_BACKEND": "dirac",
            "OSA_GRID_DIRAC_POLL_SECONDS": "0.3",
        }

    def run(self, production: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return self.osa_grid(
            "production", "run", str(production), "--no-live", "--backend", "dirac", timeout=timeout
        )

    def start_pilot(self) -> subprocess.Popen[str]:
        groups = [arg for step in STEPS for arg in ("--job-group", f"{self.production}.{step}")]
        pilot = subprocess.Popen(
            [*OSA_GRID, "site", "pilot", *groups, "--slots", "4", "--heartbeat", "1", "--interval", "0.2"],
            env=self.env(),
            cwd=self.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pilots.append(pilot)
        return pilot

    def status(self) -> dict[str, object]:
        result = self.osa_grid("production", "status", self.production, "--json")
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def jobs(self) -> list[dict[str, object]]:
        """Every DIRAC job of this production, as DiracX has it."""
        session = DiracSession(self.dirac["DIRACX_URL"], Path(self.dirac["DIRACX_CREDENTIALS_PATH"]))
        try:
            return session.search(
                [
                    {
                        "parameter": "JobGroup",
                        "operator": "in",
                        "values": [f"{self.production}.{s}" for s in STEPS],
                    }
                ],
                ["JobID", "JobName", "JobGroup", "Status", "MinorStatus"],
            )
        finally:
            session.close()

    def stop_pilots(self) -> None:
        for pilot in self.pilots:
            if pilot.poll() is None:
                pilot.send_signal(signal.SIGINT)
                try:
                    pilot.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pilot.kill()
                    pilot.wait()


@pytest.fixture
def world(tmp_path: Path, dirac_env: dict[str, str]) -> Iterator[DiracWorld]:
    world = DiracWorld(tmp_path, dirac_env)
    world.add_raw([1807, 1808], subruns=3)
    world.start_pilot()
    try:
        yield world
    finally:
        world.stop_pilots()


def _by_step(jobs: list[dict[str, object]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in jobs:
        step = str(job["JobGroup"]).rsplit(".", 1)[1]
        counts[step] = counts.get(step, 0) + 1
    return counts


def test_a_production_runs_to_the_end_on_dirac_with_the_pilot(world: DiracWorld) -> None:
    path = world.write_production(toy_production(world.production))
    result = world.run(path)
    assert result.returncode == 0, result.stderr
    assert world.status()["counts"] == ALL_DONE
    jobs = world.jobs()
    assert _by_step(jobs) == {"calibrate": 6, "merge": 2, "reconstruct": 2, "summarize": 1}
    assert {j["Status"] for j in jobs} == {"Done"}
    catalog = world.catalog()
    try:
        # Products registered once each.
        summary = catalog.file(f"{world.production}/v1/summary.csv")
        assert summary is not None and summary.task_id is not None
        provenance = catalog.provenance(summary.task_id)[-1]
        assert provenance["backend"] == "dirac"
        assert int(provenance["job_id"]) in {int(str(j["JobID"])) for j in jobs}
        # The JobName is the task id.
        assert {str(j["JobName"]) for j in jobs if str(j["JobGroup"]).endswith(".summarize")} == {
            summary.task_id
        }
    finally:
        catalog.close()


def test_a_failing_job_is_retried_then_reported_with_its_log_from_the_sandbox(world: DiracWorld) -> None:
    path = world.write_production(toy_production(world.production, fail="calibrate", retries=2))
    result = world.run(path)
    assert result.returncode == 1
    status = world.status()
    assert status["counts"] == {"calibrate": {"failed": 6}}
    failed = status["failed"]
    assert isinstance(failed, list) and len(failed) == 6
    for task in failed:
        assert "exit code 3" in task["error"]
        # The log came back from the job's output sandbox: the pilot ran the payload in its own scratch.
        assert "toy step asked to fail" in (Path(task["workdir"]) / "stderr.log").read_text()
    jobs = world.jobs()
    # Two attempts per task, each a DIRAC job that failed; nothing downstream was submitted.
    assert _by_step(jobs) == {"calibrate": 12}
    assert {j["Status"] for j in jobs} == {"Failed"}
    assert {j["MinorStatus"] for j in jobs} == {"exit code 3"}


def test_the_production_survives_a_restart_of_the_dirac_server(world: DiracWorld) -> None:
    path = world.write_production(toy_production(world.production, sleep=2))
    shepherd = world.start("production", "run", str(path), "--no-live", "--backend", "dirac")
    try:
        time.sleep(4)  # the calibration jobs run
        subprocess.run(["bash", str(SCRIPTS / "stop.sh")], check=True, capture_output=True, timeout=60)
        time.sleep(3)  # the shepherd and the pilot find nobody
        subprocess.run(["bash", str(SCRIPTS / "start.sh")], check=True, capture_output=True, timeout=180)
        _, stderr = shepherd.communicate(timeout=240)
    finally:
        if shepherd.poll() is None:
            shepherd.kill()
    assert shepherd.returncode == 0, stderr
    assert world.status()["counts"] == ALL_DONE
    assert _by_step(world.jobs()) == {"calibrate": 6, "merge": 2, "reconstruct": 2, "summarize": 1}


def test_a_shepherd_killed_with_its_submission_unanswered_adopts_the_job_and_submits_nothing_twice(
    world: DiracWorld,
) -> None:
    """Deterministic: the shepherd dies after its bulk submission reached DiracX and before the answer.

    The merge submission is the target: by then the shepherd's client exists, so the request that follows
    its pending files is the submission itself (a fresh client would first read the server's OpenID
    configuration). The shepherd is frozen as its pending files appear, the server frozen, the shepherd let
    go (its request waits in the server's socket), killed, and the server let go: DiracX creates the jobs
    of a shepherd that never learnt their ids.
    """
    path = world.write_production(toy_production(world.production))
    merge = f"{world.production}.merge"
    server = int((_dirac_dir() / "run" / "diracx.pid").read_text())
    shepherd = world.start("production", "run", str(path), "--no-live", "--backend", "dirac")
    pending_dir = world.home / "work" / ".dirac-backend" / "pending"
    try:
        _wait_for_pending(pending_dir, merge, timeout=90)
        os.kill(shepherd.pid, signal.SIGSTOP)
        # The two runs' merges may go in one batch or two: the frozen batch is the pending files not recorded.
        catalog = world.catalog()
        try:
            recorded = {t.task_id for t in catalog.tasks(world.production) if t.job_id is not None}
        finally:
            catalog.close()
        tasks = _wait_for_pending(pending_dir, merge, timeout=1) - recorded
        assert tasks, "the shepherd had its answer before it was frozen"
        os.kill(server, signal.SIGSTOP)
        try:
            os.kill(shepherd.pid, signal.SIGCONT)
            _wait_for_request(shepherd.pid, int(world.dirac["DIRACX_URL"].rsplit(":", 1)[1]), timeout=10)
            os.kill(shepherd.pid, signal.SIGKILL)
            shepherd.wait(timeout=10)
        finally:
            os.kill(server, signal.SIGCONT)
    finally:
        if shepherd.poll() is None:
            shepherd.kill()
    # The killed shepherd's jobs exist in DIRAC and are nowhere in the catalog.
    orphans = _wait_for_jobs(world, merge, tasks, timeout=30)
    catalog = world.catalog()
    try:
        assert {t.task_id: t.job_id for t in catalog.tasks(world.production) if t.task_id in tasks} == {
            task: None for task in tasks
        }
    finally:
        catalog.close()

    result = world.osa_grid(
        "-v", "production", "run", str(path), "--no-live", "--backend", "dirac", timeout=240
    )
    assert result.returncode == 0, result.stderr
    assert f"jobs_adopted count={len(tasks)}" in result.stderr
    assert world.status()["counts"] == ALL_DONE
    jobs = world.jobs()
    assert _by_step(jobs) == {"calibrate": 6, "merge": 2, "reconstruct": 2, "summarize": 1}
    assert {j["Status"] for j in jobs} == {"Done"}
    # One DIRAC job per task (by JobName), and the merge tasks ran as the jobs the killed shepherd submitted.
    names = Counter(str(j["JobName"]) for j in jobs)
    assert max(names.values()) == 1, names
    catalog = world.catalog()
    try:
        assert {t.task_id: t.job_id for t in catalog.tasks(world.production) if t.task_id in tasks} == orphans
        kinds = [e["kind"] for e in catalog.events(production=world.production)]
        assert "lost" not in kinds  # adopted, not run again
    finally:
        catalog.close()


def _wait_for_pending(directory: Path, group: str, timeout: float) -> set[str]:
    """Task ids of the JobGroup's pending files, as soon as there is one."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = set()
        for path in directory.glob("*.json"):
            try:
                if json.loads(path.read_text())["group"] == group:
                    found.add(path.stem)
            except (OSError, ValueError):
                continue  # replaced or removed while read
        if found:
            return found
        time.sleep(0.001)
    raise AssertionError(f"no pending submission of {group} within {timeout}s")


def _wait_for_request(client: int, port: int, timeout: float) -> None:
    """Until a connection of the process to the (frozen) server holds unread bytes on the server's side."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        inodes = set()
        for fd in Path(f"/proc/{client}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
        rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
        ports = {int(r[1].rsplit(":", 1)[1], 16) for r in rows if r[9] in inodes}
        for row in rows:
            local, remote = (int(row[i].rsplit(":", 1)[1], 16) for i in (1, 2))
            if local == port and remote in ports and int(row[4].split(":")[1], 16) > 0:
                time.sleep(0.2)  # the rest of the request
                return
        time.sleep(0.01)
    raise AssertionError(f"process {client} sent nothing to port {port} within {timeout}s")


def _wait_for_jobs(world: DiracWorld, group: str, tasks: set[str], timeout: float) -> dict[str, str]:
    """Job ids by task of the JobGroup's jobs for these tasks, once DiracX has one for each."""
    end = time.monotonic() + timeout
    while True:
        session = DiracSession(world.dirac["DIRACX_URL"], Path(world.dirac["DIRACX_CREDENTIALS_PATH"]))
        try:
            rows = session.search(
                [
                    {"parameter": "JobGroup", "operator": "eq", "value": group},
                    {"parameter": "JobName", "operator": "in", "values": sorted(tasks)},
                ],
                ["JobID", "JobName"],
            )
        finally:
            session.close()
        found = {str(r["JobName"]): str(r["JobID"]) for r in rows}
        if set(found) == tasks or time.monotonic() > end:
            assert set(found) == tasks, f"DiracX has jobs for {sorted(found)} of {sorted(tasks)}"
            assert len(rows) == len(tasks), rows
            return found
        time.sleep(0.2)
