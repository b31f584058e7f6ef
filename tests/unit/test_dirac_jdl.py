"""The DIRAC backend's pure parts: job groups, JDL text, DIRAC states as osa-grid job states."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from osa_grid.backends.dirac_jdl import (
    Environment,
    build_jdl,
    cpu_time_seconds,
    exit_code_of,
    job_group,
    status_of,
)
from osa_grid.core.models import Resources
from osa_grid.ports import JobSpec, JobState


def _spec(task_id: str = "abc123", cores: int = 2, walltime: float = 600) -> JobSpec:
    return JobSpec(
        task_id=task_id,
        argv=["python", "-m", "x"],
        env={},
        workdir=Path("/w"),
        stdout=Path("/w/o"),
        stderr=Path("/w/e"),
        resources=Resources(cores=cores, memory_gb=1.5, walltime=timedelta(seconds=walltime)),
        name="toy.calibrate",
    )


def test_job_groups_are_safe_and_fit_dirac_s_32_characters() -> None:
    assert job_group("toy.calibrate") == "toy.calibrate"
    assert job_group("a b/c") == "a_b_c"
    long_one, other = job_group("p" * 40 + ".calibrate"), job_group("p" * 40 + ".reconstruct")
    assert len(long_one) == 32 and len(other) == 32 and long_one != other


def test_the_jdl_carries_the_task_s_identity_resources_inputs_and_environment() -> None:
    jdl = build_jdl(
        _spec(),
        "toy.calibrate",
        "/usr/bin/python3",
        ["-m", "osa_grid.backends.dirac_job", "/spool/jobs/%j.json"],
        input_data=["/ctao/b", "/ctao/a"],
        environment=Environment({"lstchain": "0.12.3"}, "lstchain:0.12.3"),
    )
    assert 'Executable = "/usr/bin/python3";' in jdl
    assert 'Arguments = "-m osa_grid.backends.dirac_job /spool/jobs/%j.json";' in jdl
    assert 'JobName = "abc123";' in jdl and 'JobGroup = "toy.calibrate";' in jdl
    assert "CPUTime = 1200;" in jdl and "NumberOfProcessors = 2;" in jdl and "MaxRAM = 1536;" in jdl
    assert 'InputData = {"/ctao/a", "/ctao/b"};' in jdl
    assert 'SoftwarePackages = {"lstchain==0.12.3"};' in jdl
    assert 'ContainerImage = "lstchain:0.12.3";' in jdl
    assert jdl.startswith("[") and jdl.endswith("]")


def test_arguments_with_blanks_are_refused() -> None:
    with pytest.raises(ValueError, match="blanks"):
        build_jdl(_spec(), "g", "/bin/x", ["a b"])


def test_cpu_time_is_never_zero() -> None:
    assert cpu_time_seconds(_spec(cores=1, walltime=0.2)) == 1


@pytest.mark.parametrize(
    ("dirac", "state", "failure"),
    [
        ("Received", JobState.QUEUED, None),
        ("Checking", JobState.QUEUED, None),
        ("Waiting", JobState.QUEUED, None),
        ("Matched", JobState.RUNNING, None),
        ("Running", JobState.RUNNING, None),
        ("Completing", JobState.RUNNING, None),
        ("Done", JobState.SUCCEEDED, None),
        ("Failed", JobState.FAILED, "failed"),
        ("Killed", JobState.FAILED, "cancelled"),
        ("Stalled", JobState.FAILED, "node_fail"),
        ("SomethingNew", JobState.QUEUED, None),
    ],
)
def test_dirac_states_map_to_job_states(dirac: str, state: JobState, failure: str | None) -> None:
    status = status_of({"Status": dirac, "MinorStatus": "m", "ApplicationStatus": "Unknown"})
    assert status.state == state and status.failure == failure


def test_the_exit_code_comes_from_the_application_or_minor_status() -> None:
    failed = status_of(
        {
            "Status": "Failed",
            "MinorStatus": "exit code 3",
            "ApplicationStatus": "Unknown",
            "EndExecTime": "2026-01-01T00:00:00Z",
        }
    )
    assert failed.exit_code == 3 and failed.ended_at is not None and failed.ended_at.tzinfo is not None
    assert status_of({"Status": "Done", "MinorStatus": "Execution Complete"}).exit_code == 0
    assert exit_code_of(None, "Watchdog", "exit code -9") == -9
    assert exit_code_of("Unknown") is None
