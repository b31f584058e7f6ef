"""What a step is given (issue 19, medium 7): its declared environment and a safe base, never the shepherd's
secrets; and the private state that holds commands and environments is this user's only (0600 in 0700)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from osa_grid.backends.dirac import DiracBackend
from osa_grid.backends.local import LocalBackend, journal_paths
from osa_grid.backends.slurm import SlurmBackend
from osa_grid.backends.slurm_runner import Element, header_line
from osa_grid.config import load_settings
from osa_grid.core.models import Resources, Step
from osa_grid.core.stepenv import step_environment
from osa_grid.errors import BadInput
from osa_grid.ports import JobSpec, JobState
from osa_grid.services.workspace import Workspace
from osa_grid.system import write_private_file

# What a shepherd's environment may hold, none of which a step may see unless it declares it.
SECRETS = {
    "OSA_GRID_CATALOG_URL": "postgresql://osa:pw-catalog-4711@db.site/osa",
    "OSA_GRID_RUCIO_PASSWORD": "pw-rucio-4712",
    "DIRACX_TOKEN": "tok-diracx-4713",
    "MY_SERVICE_PASSWORD": "pw-service-4714",
}
BASE = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/osa",
    "USER": "osa",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TZ": "UTC",
    "TMPDIR": "/scratch",
    "PYTHONPATH": "/opt/osa-grid",
    "VIRTUAL_ENV": "/opt/venv",
    "CONDA_PREFIX": "/opt/conda",
    "OMP_NUM_THREADS": "2",
    "SLURM_JOB_ID": "12345",
}
# Written by a step: its whole environment, as JSON, to the file named by its last argument.
DUMP = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[-1], 'w'))"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the builder ---------------------------------------------------------------------------------------------


def test_a_step_gets_the_safe_base_and_what_it_declares_never_the_shepherds_secrets() -> None:
    inherited = {**BASE, **SECRETS, "SOME_OTHER_SETTING": "x", "SBATCH_PARTITION": "big"}
    env = step_environment(inherited, {"MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"})
    assert env == {**BASE, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}  # declared wins over the base


def test_a_secret_reaches_a_step_only_by_its_exact_declared_name() -> None:
    inherited = {
        **SECRETS,
        "X509_USER_PROXY": "/tmp/x509up_u1000",
        "X509_USER_KEY": "/home/osa/.globus/userkey.pem",
        "CONDA_CHANNEL": "https://osa:pw-conda-4715@conda.site/channel",
        "OMP_SECRET_SAUCE": "s",
    }
    by_pattern = step_environment(inherited, {}, ["X509_*"])
    assert by_pattern == {"X509_USER_PROXY": "/tmp/x509up_u1000"}  # a pattern never admits a secret
    exact = step_environment(inherited, {}, ["X509_USER_KEY", "DIRACX_TOKEN"])
    assert exact == {"X509_USER_KEY": "/home/osa/.globus/userkey.pem", "DIRACX_TOKEN": "tok-diracx-4713"}


def test_inherited_names_are_checked_where_they_are_written(tmp_path: Path) -> None:
    assert Step(argv=["prog"], inherit=["X509_USER_PROXY", "X509_*"]).inherit == ["X509_USER_PROXY", "X509_*"]
    for bad in ["1BAD", "A-B", "*", "X*Y", ""]:
        with pytest.raises(ValueError, match="not an environment variable name"):
            Step(argv=["prog"], inherit=[bad])
    config = tmp_path / "osa-grid.toml"
    config.write_text('step_env_passthrough = ["http_proxy", "X509_*"]\n')
    assert load_settings(config).step_env_passthrough == ["http_proxy", "X509_*"]
    config.write_text('step_env_passthrough = ["no such"]\n')
    with pytest.raises(
        BadInput, match=r"step_env_passthrough.*'no such' is not an environment variable name"
    ):
        load_settings(config)


# -- the backends --------------------------------------------------------------------------------------------


def spec(root: Path, task: str, argv: list[str], **extra: Any) -> JobSpec:
    work = root / task
    work.mkdir(parents=True, exist_ok=True)
    return JobSpec(
        task_id=task,
        argv=argv,
        env={"DECLARED": "yes", "DECLARED_TOKEN": "tok-declared-4716"},
        workdir=work,
        stdout=work / "stdout.log",
        stderr=work / "stderr.log",
        resources=Resources(cores=1, memory_gb=0.1, walltime=timedelta(minutes=1)),
        name="envtest.dump",
        **extra,
    )


def assert_step_environment(env: dict[str, str]) -> None:
    assert not set(SECRETS) & set(env), "a secret of the shepherd reached the step"
    assert env["DECLARED"] == "yes" and env["DECLARED_TOKEN"] == "tok-declared-4716"
    assert env["PATH"] == os.environ["PATH"] and env["HOME"] == os.environ["HOME"]


@pytest.fixture
def shepherd_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PROXY_FOR_JOBS", "http://proxy.site:3128")
    monkeypatch.setenv("HOME", os.environ.get("HOME", "/root"))


def test_a_local_job_gets_no_secret_and_its_logs_and_journal_are_private(
    tmp_path: Path, shepherd_secrets: None
) -> None:
    output = tmp_path / "env.json"
    job = spec(tmp_path, "t0", [sys.executable, "-c", DUMP, str(output)], inherit=["PROXY_FOR_JOBS"])
    with LocalBackend(tmp_path / "state", max_cores=1, passthrough=["LANG"]) as pool:
        [job_id] = pool.submit([job])
        end = time.monotonic() + 30
        while (status := pool.poll([job_id])[job_id]).state not in (JobState.SUCCEEDED, JobState.FAILED):
            assert time.monotonic() < end
            pool.wait_any(0.5)
        assert status.state == JobState.SUCCEEDED, job.stderr.read_text()
        [journal] = journal_paths(tmp_path / "state")
        assert mode(journal) == 0o600  # read while the pool runs: it goes when the pool closes
    env = json.loads(output.read_text())
    assert_step_environment(env)
    assert env["PROXY_FOR_JOBS"] == "http://proxy.site:3128"  # declared by the step
    assert mode(tmp_path / "state") == 0o700
    assert mode(job.stdout) == mode(job.stderr) == 0o600


FAKE_SBATCH = """#!{python}
import json, os, sys
json.dump({{"env": dict(os.environ), "argv": sys.argv, "script": sys.stdin.read()}}, open({record!r}, "w"))
print("4242")
"""


def test_the_slurm_manifest_is_private_and_sbatch_hands_no_secret_to_the_job(
    tmp_path: Path, shepherd_secrets: None
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "sbatch.json"
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(FAKE_SBATCH.format(python=sys.executable, record=str(record)))
    sbatch.chmod(0o755)
    state = tmp_path / "state"
    (state / "batches").mkdir(parents=True, mode=0o755)  # as an earlier version left it
    (state / "batches").chmod(0o755)
    backend = SlurmBackend(state, bin_dir=bin_dir, passthrough=["LANG"], retry_seconds=0)
    job = spec(tmp_path, "t0", ["prog"], inherit=["PROXY_FOR_JOBS"])
    assert backend.submit([job]) == ["4242_0"]
    [manifest] = (state / "batches").glob("*.jsonl")
    assert mode(manifest) == 0o600 and mode(state / "batches") == 0o700  # made private, though it existed
    [line] = manifest.read_text().splitlines()[1:]
    assert Element.from_json(line).inherit == ["LANG", "PROXY_FOR_JOBS"]
    submitted = json.loads(record.read_text())
    assert not set(SECRETS) & set(submitted["env"]), "sbatch would export a secret to the job"
    assert submitted["env"]["PROXY_FOR_JOBS"] == "http://proxy.site:3128"
    assert submitted["env"]["PATH"] == os.environ["PATH"]


def run_runner(code: str, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def test_the_slurm_runner_gives_the_step_its_declared_environment_only(tmp_path: Path) -> None:
    output = tmp_path / "env.json"
    work = tmp_path / "t0"
    element = Element(
        "t0",
        [sys.executable, "-c", DUMP, str(output)],
        {"DECLARED": "yes", "DECLARED_TOKEN": "tok-declared-4716"},
        str(work),
        str(work / "stdout.log"),
        str(work / "stderr.log"),
        ["PROXY_FOR_JOBS"],
    )
    manifest = tmp_path / "batch.jsonl"
    write_private_file(
        manifest, f"{header_line('0123456789abcdef', 'envtest.dump', 1)}\n{element.to_json()}\n"
    )
    # What sbatch of an older version (or a pilot) handed to the job: the shepherd's whole environment.
    job_env = {**os.environ, **SECRETS, "SLURM_ARRAY_TASK_ID": "0", "PROXY_FOR_JOBS": "http://proxy:3128"}
    code = "import sys; from osa_grid.backends.slurm_runner import main; sys.exit(main(sys.argv[1]))"
    result = run_runner(code, [str(manifest)], job_env)
    assert result.returncode == 0, result.stderr + (work / "stderr.log").read_text()
    env = json.loads(output.read_text())
    assert_step_environment(env)
    assert env["SLURM_ARRAY_TASK_ID"] == "0" and env["PROXY_FOR_JOBS"] == "http://proxy:3128"
    assert mode(work / "stdout.log") == mode(work / "stderr.log") == 0o600


def test_a_manifest_of_an_earlier_version_still_runs_with_the_safe_base(tmp_path: Path) -> None:
    line = json.dumps(
        {"task_id": "t0", "argv": ["true"], "env": {}, "workdir": "/", "stdout": "o", "stderr": "e"}
    )
    assert Element.from_json(line).inherit == []


class FakeDiracSession:
    url = "https://diracx.invalid"

    def __init__(self) -> None:
        self.next_id = 100

    def submit(self, jdls: list[str]) -> list[int]:
        ids = list(range(self.next_id, self.next_id + len(jdls)))
        self.next_id += len(jdls)
        return ids

    def close(self) -> None:
        pass


def test_dirac_descriptions_are_private_and_the_pilots_payload_gets_no_secret(tmp_path: Path) -> None:
    state = tmp_path / "dirac"
    backend = DiracBackend(state, session=FakeDiracSession(), passthrough=["LANG"])  # type: ignore[arg-type]
    output = tmp_path / "env.json"
    job = spec(tmp_path, "t0", [sys.executable, "-c", DUMP, str(output)], inherit=["PROXY_FOR_JOBS"])
    assert backend.submit([job]) == ["100"]
    description = state / "jobs" / "100.json"
    pending = state / "pending" / "t0.json"
    assert mode(description) == mode(pending) == 0o600
    assert mode(state) == mode(state / "jobs") == mode(state / "pending") == 0o700
    # What the site pilot runs, with the pilot's environment (it holds its DiracX credentials).
    pilot_env = {**os.environ, **SECRETS, "PROXY_FOR_JOBS": "http://proxy:3128"}
    code = "import sys; from osa_grid.backends.dirac_job import main; sys.exit(main(sys.argv[1:]))"
    logs = [str(tmp_path / "out.log"), str(tmp_path / "err.log")]
    result = run_runner(code, [str(description), *logs], pilot_env)
    assert result.returncode == 0, result.stderr + Path(logs[1]).read_text()
    env = json.loads(output.read_text())
    assert_step_environment(env)
    assert env["PROXY_FOR_JOBS"] == "http://proxy:3128"


# -- the home ------------------------------------------------------------------------------------------------


def test_the_home_is_made_private_and_an_open_one_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "new" / ".osa-grid"
    workspace = Workspace(load_settings(None, home=home))
    try:
        workspace.catalog.tasks("none")  # the SQLite catalog is made in the home
        assert mode(home) == 0o700 and mode(workspace.work_root) == 0o700
    finally:
        workspace.close()
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    Workspace(load_settings(None, home=shared)).close()
    assert mode(shared) == 0o755  # an operator's directory keeps its mode, with a warning
    assert "home_not_private" in caplog.text and "chmod 700" in caplog.text
