"""The SLURM backend on the real single-node cluster of ``scripts/slurm/start.sh``: nothing is mocked.

First the backend alone (arrays, exit codes, throttling, time limits, cancellation, a controller restart,
adoption), then whole productions through the CLI (``production run --backend slurm``) and a night
(``nightly run --backend slurm``).

SLURM enforces time limits in whole minutes, checked every 30 s, so a time limit costs 60-90 s: the
backend's time-limit job is submitted when this module starts (``early_timeout``) and looked at by the
last test, so that its minute passes while the other tests run.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from osa_grid.backends.slurm import SlurmBackend
from osa_grid.backends.slurm_parsing import (
    SbatchOptions,
    SchedulerRecord,
    array_job_id,
    is_slurm_job_id,
    parse_sacct,
)
from osa_grid.core.models import Resources
from osa_grid.ports import JobSpec, JobState, JobStatus

from .test_nightly import Site, full_night
from .test_security import check_step_environment, echo_production, private, raw_file, shepherd_with_secrets
from .toyworld import ToyWorld, toy_production

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
START = REPO / "scripts" / "slurm" / "start.sh"
FINAL = (JobState.SUCCEEDED, JobState.FAILED, JobState.LOST)


def _conf_path() -> Path:
    if os.environ.get("OSA_GRID_SLURM_CONF"):
        return Path(os.environ["OSA_GRID_SLURM_CONF"])
    directory = os.environ.get("OSA_GRID_SLURM_DIR") or REPO / ".services" / "slurm"
    return Path(directory) / "etc" / "slurm.conf"


def _slurm(conf: Path, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SLURM_CONF": str(conf), "SLURM_TIME_FORMAT": "%s", "TZ": "UTC"}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def slurm_conf() -> Path:
    """The cluster's configuration, once it answers; skipped (failed under CI) when it does not."""
    conf = _conf_path()
    problem = None
    if not conf.is_file():
        problem = f"{conf} does not exist"
    else:
        try:
            ping = _slurm(conf, "scontrol", "ping", timeout=20)
            if "is UP" not in ping.stdout:
                problem = (ping.stdout + ping.stderr).strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            problem = str(exc)
    if problem is not None:
        reason = f"SLURM cluster not reachable (start it with scripts/slurm/start.sh): {problem}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return conf


def _backend(state: Path, conf: Path, **options: object) -> SlurmBackend:
    values: dict[str, object] = {"poll_seconds": 0.2, "lost_after_seconds": 60.0}
    values.update(options)
    return SlurmBackend(state, slurm_conf=conf, **values)  # type: ignore[arg-type]


def _job(root: Path, task: str, code: str, name: str = "slurmtest.step", walltime: float = 120) -> JobSpec:
    work = root / task
    return JobSpec(
        task_id=task,
        argv=[sys.executable, "-c", code],
        env={"OSA_TASK": task},
        workdir=work,
        stdout=work / "stdout.log",
        stderr=work / "stderr.log",
        resources=Resources(cores=1, memory_gb=0.1, walltime=timedelta(seconds=walltime)),
        name=name,
    )


def _wait(backend: SlurmBackend, ids: Sequence[str], timeout: float = 60) -> dict[str, JobStatus]:
    end = time.monotonic() + timeout
    while True:
        statuses = backend.poll(ids)
        if all(s.state in FINAL for s in statuses.values()):
            return statuses
        assert time.monotonic() < end, {k: v.state for k, v in statuses.items()}
        backend.wait_any(0.3)


def _sacct(conf: Path, *selection: str, count: int | None = None) -> dict[str, SchedulerRecord]:
    """sacct's records, once it has caught up (it lags squeue by seconds): all final, ``count`` of them."""
    end = time.monotonic() + 20
    while True:
        result = _slurm(
            conf, "sacct", "--noheader", "--parsable2", "-X", *selection, f"--format={_SACCT_FORMAT}"
        )
        assert result.returncode == 0, result.stderr
        records = parse_sacct(result.stdout)
        settled = all(r.final and r.name != "allocation" for r in records.values())
        if (settled and count in (None, len(records))) or time.monotonic() > end:
            return records
        time.sleep(0.5)


_SACCT_FORMAT = "JobID,JobName,State,ExitCode,Reason,Start,End,Comment"


def _controller_pid(conf: Path) -> int:
    for line in conf.read_text().splitlines():
        if line.startswith("SlurmctldPidFile="):
            return int(Path(line.split("=", 1)[1]).read_text().strip())
    raise AssertionError("no SlurmctldPidFile in the configuration")


def _stop_controller(conf: Path) -> None:
    pid = _controller_pid(conf)
    os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < end:
        time.sleep(0.1)


def _start_cluster() -> None:
    result = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr


# -- the backend alone ------------------------------------------------------------------------------


@dataclass
class EarlyJob:
    backend: SlurmBackend
    job_id: str
    submitted: float


@pytest.fixture(scope="module", autouse=True)
def early_timeout(slurm_conf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EarlyJob]:
    """A one-minute job that sleeps for five, submitted before every other test of the module."""
    root = tmp_path_factory.mktemp("timeout")
    backend = _backend(root / "state", slurm_conf)
    spec = _job(root, "sleeper", "import time; time.sleep(300)", walltime=60)
    [job_id] = backend.submit([spec])
    yield EarlyJob(backend, job_id, time.monotonic())
    backend.cancel([job_id])


def test_an_array_runs_every_task_with_its_own_command_environment_and_logs(
    tmp_path: Path, slurm_conf: Path
) -> None:
    backend = _backend(tmp_path / "state", slurm_conf)
    jobs = [
        _job(tmp_path, "ok0", "import os; print(os.environ['OSA_TASK'], os.getcwd())"),
        _job(tmp_path, "exit3", "import sys; print('bad', file=sys.stderr); sys.exit(3)"),
        _job(tmp_path, "ok2", "print('two')"),
        _job(tmp_path, "killed", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"),
    ]
    ids = backend.submit(jobs)
    arrays = {array_job_id(i) for i in ids}
    assert len(arrays) == 1, "one array job for one name and one set of resources"
    assert [i.split("_")[1] for i in ids] == ["0", "1", "2", "3"]

    statuses = _wait(backend, ids)
    assert [statuses[i].state for i in ids] == [
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.SUCCEEDED,
        JobState.FAILED,
    ]
    assert (statuses[ids[1]].failure, statuses[ids[1]].exit_code) == ("failed", 3)
    assert (statuses[ids[3]].failure, statuses[ids[3]].exit_code) == ("failed", 137)
    assert statuses[ids[0]].started_at is not None and statuses[ids[0]].ended_at is not None
    assert (tmp_path / "ok0" / "stdout.log").read_text().split() == ["ok0", str(tmp_path / "ok0")]
    assert (tmp_path / "exit3" / "stderr.log").read_text() == "bad\n"
    # The identity is in SLURM's accounting, where adopt() looks for it.
    [array] = arrays
    records = _sacct(slurm_conf, f"--jobs={array}")
    assert {r.name for r in records.values()} == {"slurmtest.step"}
    assert all(r.token is not None for r in records.values())


def test_mixed_resources_and_names_make_separate_arrays(tmp_path: Path, slurm_conf: Path) -> None:
    backend = _backend(tmp_path / "state", slurm_conf)
    jobs = [
        _job(tmp_path, "a", "pass", name="slurmtest.a"),
        _job(tmp_path, "b", "pass", name="slurmtest.b"),
        _job(tmp_path, "c", "pass", name="slurmtest.a", walltime=600),
        _job(tmp_path, "d", "pass", name="slurmtest.a"),
    ]
    ids = backend.submit(jobs)
    assert array_job_id(ids[0]) == array_job_id(ids[3])
    assert len({array_job_id(i) for i in ids}) == 3
    assert all(s.state == JobState.SUCCEEDED for s in _wait(backend, ids).values())
    # squeue, not sacct: sacct may lag a few seconds behind.
    limits = _slurm(
        slurm_conf, "squeue", "-h", "-t", "all", f"--jobs={array_job_id(ids[2])}", "-O", "TimeLimit"
    )
    assert limits.stdout.strip() == "10:00"


def test_the_throttle_limits_how_many_elements_run_at_once(tmp_path: Path, slurm_conf: Path) -> None:
    backend = _backend(tmp_path / "state", slurm_conf, array_throttle=2)
    ids = backend.submit([_job(tmp_path, f"t{i}", "import time; time.sleep(2)") for i in range(6)])
    array = array_job_id(ids[0])
    most = 0
    end = time.monotonic() + 60
    while time.monotonic() < end:
        running = _slurm(slurm_conf, "squeue", "-h", "-r", f"--jobs={array}", "--states=running", "-o", "%i")
        assert running.returncode == 0, running.stderr
        most = max(most, len(running.stdout.split()))
        if all(s.state in FINAL for s in backend.poll(ids).values()):
            break
        time.sleep(0.2)
    assert most == 2, f"at most 2 elements should run at once, saw {most}"
    assert all(s.state == JobState.SUCCEEDED for s in backend.poll(ids).values())


def test_cancelling_running_and_pending_elements(tmp_path: Path, slurm_conf: Path) -> None:
    backend = _backend(tmp_path / "state", slurm_conf, array_throttle=1)
    ids = backend.submit([_job(tmp_path, f"c{i}", "import time; time.sleep(120)") for i in range(3)])
    end = time.monotonic() + 30
    while backend.poll(ids)[ids[0]].state != JobState.RUNNING:
        assert time.monotonic() < end, "the first element never started"
        time.sleep(0.2)
    backend.cancel(ids)
    statuses = _wait(backend, ids, timeout=30)
    assert {(s.state, s.failure) for s in statuses.values()} == {(JobState.FAILED, "cancelled")}
    # A new backend (a restarted shepherd) learns the running element's fate from SLURM itself.
    fresh = _backend(tmp_path / "state", slurm_conf)
    assert fresh.poll([ids[0]])[ids[0]].failure == "cancelled"


def test_a_job_above_its_memory_is_killed(tmp_path: Path, slurm_conf: Path) -> None:
    backend = _backend(tmp_path / "state", slurm_conf)
    # 300 MB touched, with 0.1 GB allowed: without cgroups SLURM samples memory every second and kills
    # the job (FAILED by SIGKILL; OUT_OF_MEMORY, mapped to "oom", needs cgroup enforcement).
    [job_id] = backend.submit([_job(tmp_path, "hog", "import time; x = b'x' * 300_000_000; time.sleep(30)")])
    status = _wait(backend, [job_id], timeout=30)[job_id]
    assert (status.state, status.exit_code) == (JobState.FAILED, 137)
    assert status.failure in ("failed", "oom")


def test_a_refused_submission_fails_its_tasks_with_sbatchs_reason(tmp_path: Path, slurm_conf: Path) -> None:
    backend = _backend(tmp_path / "state", slurm_conf)
    huge = _job(tmp_path, "huge", "pass")
    huge = JobSpec(**{**huge.__dict__, "resources": Resources(cores=1, memory_gb=4000)})
    [job_id] = backend.submit([huge])
    status = backend.poll([job_id])[job_id]
    assert (status.state, status.failure) == (JobState.FAILED, "failed")
    assert "sbatch refused the job" in status.message
    backend.cancel([job_id])  # nothing to cancel, and no error


def test_a_dependency_that_can_never_be_met_is_a_failure(tmp_path: Path, slurm_conf: Path) -> None:
    backend = _backend(tmp_path / "state", slurm_conf)
    [parent] = backend.submit([_job(tmp_path, "parent", "raise SystemExit(1)")])
    assert _wait(backend, [parent])[parent].state == JobState.FAILED
    # Through the backend: --kill-on-invalid-dep=yes makes SLURM cancel the child.
    dependent = _backend(
        tmp_path / "state", slurm_conf, options=SbatchOptions(extra_args=(f"--dependency=afterok:{parent}",))
    )
    [child] = dependent.submit([_job(tmp_path, "child", "pass")])
    status = _wait(dependent, [child], timeout=30)[child]
    assert (status.state, status.failure) == (JobState.FAILED, "cancelled")
    assert "DependencyNeverSatisfied" in status.message
    # A job submitted without it would wait for ever: only squeue's reason tells.
    raw = _slurm(
        slurm_conf,
        "sbatch",
        "--parsable",
        f"--dependency=afterok:{parent}",
        "--output=/dev/null",
        "--wrap=true",
    )
    assert raw.returncode == 0, raw.stderr
    waiting = raw.stdout.strip()
    try:
        status = _wait(backend, [waiting], timeout=30)[waiting]
        assert (status.state, status.failure) == (JobState.FAILED, "cancelled")
        assert "dependency never satisfied" in status.message
    finally:
        _slurm(slurm_conf, "scancel", waiting)


def test_adopt_finds_a_lost_submission_once_and_never_an_old_attempt(
    tmp_path: Path, slurm_conf: Path
) -> None:
    state = tmp_path / "state"
    first = _backend(state, slurm_conf)
    ids = first.submit([_job(tmp_path, f"task{i}", "pass") for i in range(3)])
    # The shepherd died before recording the ids: a new backend finds them by the batch's identity.
    second = _backend(state, slurm_conf)
    assert second.adopt(["task0", "task2", "unrelated"]) == {"task0": ids[0], "task2": ids[2]}
    assert all(s.state == JobState.SUCCEEDED for s in _wait(second, ids).values())
    # Polled means recorded: these jobs are an old attempt from now on, never adopted again.
    assert _backend(state, slurm_conf).adopt(["task0", "task1", "task2"]) == {}


def test_an_unknown_job_is_lost_only_after_the_grace_period(tmp_path: Path, slurm_conf: Path) -> None:
    patient = _backend(tmp_path / "state", slurm_conf, lost_after_seconds=60)
    assert patient.poll(["987654_0"])["987654_0"].state == JobState.QUEUED
    strict = _backend(tmp_path / "state", slurm_conf, lost_after_seconds=0)
    status = strict.poll(["987654_0", "unsent-abc-0"])
    assert status["987654_0"].state == JobState.LOST and status["unsent-abc-0"].state == JobState.LOST


def test_polling_survives_a_controller_restart(tmp_path: Path, slurm_conf: Path) -> None:
    # Short command limits, so the poll made while the controller is away returns quickly.
    backend = _backend(tmp_path / "state", slurm_conf, command_timeout=5, retry_seconds=1)
    ids = backend.submit([_job(tmp_path, f"r{i}", "import time; time.sleep(6)") for i in range(3)])
    end = time.monotonic() + 30
    while not all(s.state == JobState.RUNNING for s in backend.poll(ids).values()):
        assert time.monotonic() < end
        time.sleep(0.2)
    _stop_controller(slurm_conf)
    try:
        time.sleep(0.3)  # past the poll rate limit, so the next poll really asks
        during = backend.poll(ids)
        # squeue fails, sacct (slurmdbd) may still answer: never LOST, never FAILED.
        assert all(s.state == JobState.RUNNING for s in during.values()), during
    finally:
        _start_cluster()
    statuses = _wait(backend, ids, timeout=60)
    assert all(s.state == JobState.SUCCEEDED for s in statuses.values()), statuses


# -- whole productions through the CLI --------------------------------------------------------------


class SlurmWorld(ToyWorld):
    def __init__(self, root: Path, conf: Path) -> None:
        super().__init__(root)
        self.conf = conf
        # A fresh production name per test: sacct keeps every job ever run, and we count ours by name.
        self.production = f"toy{secrets.token_hex(4)}"

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "OSA_GRID_BACKEND": "slurm",
            "OSA_GRID_SLURM_CONF": str(self.conf),
            "OSA_GRID_SLURM_POLL_SECONDS": "0.3",
        }

    def run(self, production: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return self.osa_grid(
            "production", "run", str(production), "--no-live", "--backend", "slurm", timeout=timeout
        )

    def status(self) -> dict[str, object]:
        result = self.osa_grid("production", "status", self.production, "--json")
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def jobs(self, count: int) -> dict[str, SchedulerRecord]:
        """Every SLURM job element of this production (``count`` of them), once sacct has caught up."""
        names = ",".join(f"{self.production}.{t}" for t in ("calibrate", "merge", "reconstruct", "summarize"))
        return _sacct(self.conf, f"--name={names}", "--starttime=now-1hour", count=count)


@pytest.fixture
def world(tmp_path: Path, slurm_conf: Path) -> SlurmWorld:
    world = SlurmWorld(tmp_path, slurm_conf)
    world.add_raw([1807, 1808], subruns=3)
    return world


def _by_step(records: dict[str, SchedulerRecord]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records.values():
        step = record.name.rsplit(".", 1)[1]
        counts[step] = counts.get(step, 0) + 1
    return counts


def test_a_production_runs_to_the_end_on_slurm(world: SlurmWorld) -> None:
    path = world.write_production(toy_production(world.production))
    result = world.run(path)
    assert result.returncode == 0, result.stderr
    assert world.status()["counts"] == {
        "calibrate": {"done": 6},
        "merge": {"done": 2},
        "reconstruct": {"done": 2},
        "summarize": {"done": 1},
    }
    jobs = world.jobs(11)
    assert _by_step(jobs) == {"calibrate": 6, "merge": 2, "reconstruct": 2, "summarize": 1}
    assert {r.state for r in jobs.values()} == {"COMPLETED"}
    # The six sub-runs were one array job.
    assert len({array_job_id(j) for j, r in jobs.items() if r.name.endswith(".calibrate")}) == 1
    catalog = world.catalog()
    try:
        summary = catalog.file(f"{world.production}/v1/summary.csv")
        assert summary is not None and summary.task_id is not None
        provenance = catalog.provenance(summary.task_id)[-1]
        assert provenance["backend"] == "slurm" and provenance["job_id"] in jobs
    finally:
        catalog.close()


def test_a_failing_calibration_runs_no_downstream_job(world: SlurmWorld) -> None:
    path = world.write_production(toy_production(world.production, fail="calibrate", retries=1))
    result = world.run(path)
    assert result.returncode == 1
    status = world.status()
    assert status["counts"] == {"calibrate": {"failed": 6}}
    failed = status["failed"]
    assert isinstance(failed, list) and all("exit code 3" in f["error"] for f in failed)
    assert all("toy step asked to fail" in (Path(f["workdir"]) / "stderr.log").read_text() for f in failed)
    assert _by_step(world.jobs(6)) == {"calibrate": 6}


def test_a_slurm_step_gets_only_its_declared_environment_and_the_manifest_is_private(
    tmp_path: Path, slurm_conf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = SlurmWorld(tmp_path, slurm_conf)
    raw_file(world, {})
    shepherd_with_secrets(world, monkeypatch)
    production = echo_production([], {"DECLARED": "yes"}, inherit=["X509_USER_PROXY"], name=world.production)
    result = world.run(world.write_production(production))
    assert result.returncode == 0, result.stderr
    written = json.loads(next((world.home / "data").rglob("echo_01807.json")).read_text())
    check_step_environment(written["env"])
    assert written["env"]["SLURM_JOB_ID"]  # the safe base of a SLURM job
    # The manifest holds every task's argv and environment: this user's only, in a directory of its own.
    batches = world.home / "work" / ".slurm-backend" / "batches"
    manifests = list(batches.glob("*.jsonl"))
    assert manifests and all(private(m) for m in manifests)
    assert private(batches) and private(world.home)


def test_cancelling_a_production_cancels_its_slurm_jobs(world: SlurmWorld) -> None:
    path = world.write_production(toy_production(world.production, sleep=120))
    # One pass submits the calibration and returns: SLURM's jobs go on without the shepherd.
    once = world.osa_grid("production", "run", str(path), "--once", "--no-live", "--backend", "slurm")
    assert once.returncode == 0, once.stderr
    cancelled = world.osa_grid("production", "cancel", world.production)
    assert cancelled.returncode == 0, cancelled.stderr
    assert world.status()["counts"] == {"calibrate": {"cancelled": 6}}
    # Nothing of the production is left queued or running (SLURM forgets cancelled pending elements).
    name = f"--name={world.production}.calibrate"
    end = time.monotonic() + 20
    while True:
        active = _slurm(world.conf, "squeue", "-h", "-r", name, "--states=pending,running,completing")
        assert active.returncode == 0, active.stderr
        if not active.stdout.strip() or time.monotonic() > end:
            break
        time.sleep(0.3)
    assert active.stdout.strip() == ""
    assert {r.state for r in _sacct(world.conf, name, "--starttime=now-3600").values()} <= {"CANCELLED"}


def test_a_shepherd_killed_during_submission_submits_nothing_twice(world: SlurmWorld) -> None:
    path = world.write_production(toy_production(world.production))
    controller = _controller_pid(world.conf)
    # A frozen controller holds sbatch in flight: the shepherd is killed after sbatch sent the job and
    # before the job id came back, the window where only the batch's identity can tell what happened.
    os.kill(controller, signal.SIGSTOP)
    try:
        shepherd = world.start("production", "run", str(path), "--no-live", "--backend", "slurm")
        sbatch = _wait_for_sbatch(f"--job-name={world.production}.calibrate", timeout=60)
        os.kill(shepherd.pid, signal.SIGKILL)
        shepherd.wait(timeout=10)
    finally:
        os.kill(controller, signal.SIGCONT)
    result = world.run(path)
    assert result.returncode == 0, result.stderr
    assert not Path(f"/proc/{sbatch}").exists()
    assert world.status()["counts"]["summarize"] == {"done": 1}
    jobs = world.jobs(11)
    assert _by_step(jobs) == {"calibrate": 6, "merge": 2, "reconstruct": 2, "summarize": 1}
    # The calibration is still the one array the killed shepherd submitted: adopted, not submitted again.
    assert len({array_job_id(j) for j, r in jobs.items() if r.name.endswith(".calibrate")}) == 1


def _wait_for_sbatch(marker: str, timeout: float) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for proc in Path("/proc").iterdir():
            try:
                if (
                    proc.name.isdigit()
                    and marker.encode() in (proc / "cmdline").read_bytes()
                    and (proc / "comm").read_text().strip() == "sbatch"
                ):
                    return int(proc.name)
            except OSError:
                continue
        time.sleep(0.02)
    raise AssertionError(f"no sbatch with {marker} appeared")


def test_a_controller_restart_in_the_middle_of_a_production_fails_nothing(world: SlurmWorld) -> None:
    path = world.write_production(toy_production(world.production, sleep=3))
    shepherd = world.start("production", "run", str(path), "--no-live", "--backend", "slurm")
    try:
        time.sleep(4)  # the calibration jobs run
        _stop_controller(world.conf)
        time.sleep(2)
        _start_cluster()
        _, stderr = shepherd.communicate(timeout=180)
    finally:
        if shepherd.poll() is None:
            shepherd.kill()
    assert shepherd.returncode == 0, stderr
    assert world.status()["counts"] == {
        "calibrate": {"done": 6},
        "merge": {"done": 2},
        "reconstruct": {"done": 2},
        "summarize": {"done": 1},
    }
    assert _by_step(world.jobs(11)) == {"calibrate": 6, "merge": 2, "reconstruct": 2, "summarize": 1}


def test_a_task_hitting_its_time_limit_is_retried_with_more_time(tmp_path: Path, slurm_conf: Path) -> None:
    world = SlurmWorld(tmp_path, slurm_conf)
    world.add_raw([1807], subruns=1)
    production = toy_production(world.production, retries=2)
    calibrate = production["transformations"][0]  # type: ignore[index]
    # The first attempt sleeps past its one-minute limit, the second (with four minutes) does not.
    calibrate["step"]["argv"] = [
        "{python}",
        "-c",
        "import runpy, sys, time; time.sleep(300 if sys.argv.pop(1) == '1' else 0); "
        "runpy.run_module('osa_grid.steps.toy', run_name='__main__')",
        "{attempt}",
        "calibrate",
        "{input}",
        "{output.dl1}",
    ]
    calibrate["step"]["resources"]["walltime"] = "1m"
    calibrate["retry"]["rules"] = [{"failures": ["timeout"], "scale_walltime": 4}]
    path = world.write_production(production)
    result = world.run(path, timeout=240)
    assert result.returncode == 0, result.stderr
    assert world.status()["counts"]["summarize"] == {"done": 1}
    assert _by_step(world.jobs(5)) == {"calibrate": 2, "merge": 1, "reconstruct": 1, "summarize": 1}
    names = f"--name={world.production}.calibrate"
    limits = _slurm(
        slurm_conf, "sacct", "-X", "-n", "-P", names, "--starttime=now-1hour", "--format=State,Timelimit"
    )
    assert sorted(limits.stdout.split()) == ["COMPLETED|00:04:00", "TIMEOUT|00:01:00"]


def test_a_job_past_its_time_limit_is_a_timeout(early_timeout: EarlyJob) -> None:
    # Submitted when the module started; SLURM ends it 60-90 s after it started (later if the tests that
    # restart slurmctld did so just then: limits are enforced by the controller).
    remaining = max(10.0, 240 - (time.monotonic() - early_timeout.submitted))
    status = _wait(early_timeout.backend, [early_timeout.job_id], timeout=remaining)[early_timeout.job_id]
    assert (status.state, status.failure) == (JobState.FAILED, "timeout")
    assert status.started_at is not None and status.ended_at is not None
    assert (status.ended_at - status.started_at).total_seconds() >= 59


def test_a_night_is_processed_and_closed_on_slurm(
    tmp_path: Path, slurm_conf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OSA_GRID_SLURM_CONF", str(slurm_conf))
    monkeypatch.setenv("OSA_GRID_SLURM_POLL_SECONDS", "0.3")
    site = Site(tmp_path)
    full_night(site)
    result = site.nightly("run", "--poll", "0.3", "--backend", "slurm")
    assert result.returncode == 0, result.stderr
    assert "is closed" in result.stdout
    status = site.status()
    assert status["closed"]
    rows = status["sequences"]
    assert isinstance(rows, list) and {row["state"] for row in rows} == {"COMPLETED"}
    # The job ids the night shows are elements of SLURM array jobs.
    job_ids = [str(row["job_id"]) for row in rows if row["job_id"]]
    assert job_ids and all(is_slurm_job_id(j) and "_" in j for j in job_ids), job_ids
