"""The pure half of the SLURM backend: sbatch command lines, squeue/sacct output, states to statuses.

The sample lines are real output of squeue and sacct (SLURM 22.05, SLURM_TIME_FORMAT=%s) on the test cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from osa_grid.backends.slurm_parsing import (
    ArrayRequest,
    SbatchOptions,
    SchedulerRecord,
    array_groups,
    array_job_id,
    batch_comment,
    classify_sbatch_failure,
    comment_token,
    expand_job_ids,
    is_slurm_job_id,
    memory_mib,
    merge_records,
    parse_sacct,
    parse_sbatch_output,
    parse_squeue,
    sbatch_argv,
    sbatch_error,
    status_of,
    walltime_minutes,
)
from osa_grid.backends.slurm_runner import (
    NOT_FOUND,
    RUNNER_FAILED,
    Element,
    header_line,
    read_element,
    read_header,
    read_task_ids,
)
from osa_grid.core.models import Resources
from osa_grid.ports import JobSpec, JobState

T0 = 1795308645
COMMENT = batch_comment("4fd11a1d1d4290c7", "toy.calibrate", 6)


def _request(**changes: object) -> ArrayRequest:
    values: dict[str, object] = {
        "name": "toy.calibrate",
        "comment": COMMENT,
        "size": 6,
        "resources": Resources(cores=2, memory_gb=0.1, walltime=timedelta(seconds=90)),
        "log": Path("/w/batches/x.log"),
        "directory": Path("/w/batches"),
        "throttle": 4,
    }
    values.update(changes)
    return ArrayRequest(**values)  # type: ignore[arg-type]


# -- sbatch ---------------------------------------------------------------------------------------


def test_sbatch_argv_has_one_array_with_throttle_identity_and_resources() -> None:
    argv = sbatch_argv(_request())
    assert argv[:2] == ["sbatch", "--parsable"]
    assert "--array=0-5%4" in argv
    assert "--job-name=toy.calibrate" in argv
    assert f"--comment={COMMENT}" in argv
    assert "--cpus-per-task=2" in argv
    assert "--mem=103M" in argv  # 0.1 GiB = 102.4 MiB, rounded up
    assert "--time=2" in argv  # 90 s -> 2 minutes, never less than asked
    assert "--output=/w/batches/x.log" in argv and "--open-mode=append" in argv
    assert "--kill-on-invalid-dep=yes" in argv
    assert not any(a.startswith(("--partition", "--account")) for a in argv)


def test_sbatch_argv_without_throttle_and_with_site_options() -> None:
    options = SbatchOptions(partition="short", account="lst", extra_args=("--qos=night",))
    argv = sbatch_argv(_request(throttle=0, options=options), sbatch="/opt/slurm/bin/sbatch")
    assert argv[0] == "/opt/slurm/bin/sbatch"
    assert "--array=0-5" in argv
    assert argv[-3:] == ["--partition=short", "--account=lst", "--qos=night"]
    # A throttle as large as the array is no throttle.
    assert "--array=0-5" in sbatch_argv(_request(throttle=6))


@pytest.mark.parametrize(
    ("seconds", "minutes"), [(1, 1), (60, 1), (61, 2), (3600, 60), (4 * 60, 4), (86400 * 2, 2880)]
)
def test_walltime_is_rounded_up_to_whole_minutes(seconds: float, minutes: int) -> None:
    assert walltime_minutes(seconds) == minutes


@pytest.mark.parametrize(("gb", "mib"), [(1.0, 1024), (0.5, 512), (0.1, 103), (0.0001, 1), (2.2, 2253)])
def test_memory_is_rounded_up_to_whole_mebibytes(gb: float, mib: int) -> None:
    assert memory_mib(gb) == mib


def test_an_empty_array_is_refused() -> None:
    with pytest.raises(ValueError):
        sbatch_argv(_request(size=0))


def test_parsable_output_with_and_without_cluster() -> None:
    assert parse_sbatch_output("12345\n") == "12345"
    assert parse_sbatch_output("12345;osagrid\n") == "12345"
    with pytest.raises(ValueError):
        parse_sbatch_output("Submitted batch job 12345")


def _spec(task: str, name: str, cores: int = 1, walltime: int = 60) -> JobSpec:
    return JobSpec(
        task_id=task,
        argv=["true"],
        env={},
        workdir=Path("/w"),
        stdout=Path("/w/o"),
        stderr=Path("/w/e"),
        resources=Resources(cores=cores, walltime=timedelta(seconds=walltime)),
        name=name,
    )


def test_arrays_group_by_name_and_resources_and_are_split_at_the_maximum_size() -> None:
    jobs = [
        _spec("a", "p.calibrate"),
        _spec("b", "p.merge"),
        _spec("c", "p.calibrate"),
        _spec("d", "p.calibrate", walltime=240),  # a retry with more time: its own array
        _spec("e", "p.calibrate"),
        _spec("f", "p.calibrate", cores=2),
    ]
    assert array_groups(jobs, max_size=10) == [[0, 2, 4], [1], [3], [5]]
    assert array_groups(jobs, max_size=2) == [[0, 2], [4], [1], [3], [5]]


FAILED = "sbatch: error: Batch job submission failed: "


@pytest.mark.parametrize(
    ("stderr", "timed_out", "kind"),
    [
        (FAILED + "Unable to contact slurm controller (connect failure)", False, "not_accepted"),
        (
            "sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying",
            False,
            "not_accepted",
        ),
        (FAILED + "Socket timed out on send/recv operation", False, "unknown"),
        ("", True, "unknown"),
        (FAILED + "Requested node configuration is not available", False, "rejected"),
        ("sbatch: error: Invalid --time specification", False, "rejected"),
    ],
)
def test_sbatch_failures_are_classified(stderr: str, timed_out: bool, kind: str) -> None:
    assert classify_sbatch_failure(stderr, timed_out) == kind


def test_sbatch_error_drops_the_prefixes() -> None:
    stderr = "sbatch: error: Batch job submission failed: Requested node configuration is not available\n"
    assert (
        sbatch_error(stderr) == "Batch job submission failed: Requested node configuration is not available"
    )
    assert sbatch_error("") == "no message"


# -- identity ---------------------------------------------------------------------------------------


def test_comment_carries_the_batch_token() -> None:
    assert COMMENT.startswith("osa-grid batch=4fd11a1d1d4290c7 ")
    assert comment_token(COMMENT) == "4fd11a1d1d4290c7"
    assert comment_token("osa-grid batch=4fd11a1d1d4290c7") == "4fd11a1d1d4290c7"
    assert comment_token("someone else's job") is None
    assert comment_token("") is None


def test_job_ids() -> None:
    assert is_slurm_job_id("12345") and is_slurm_job_id("12345_7")
    assert not is_slurm_job_id("rejected-4fd11a1d-0") and not is_slurm_job_id("12_[1-3]")
    assert array_job_id("12345_7") == "12345" and array_job_id("12345") == "12345"
    with pytest.raises(ValueError):
        array_job_id("unsent-x-1")


def test_pending_ranges_expand_to_elements() -> None:
    assert expand_job_ids("12_[2,4-6%1]") == ["12_2", "12_4", "12_5", "12_6"]
    assert expand_job_ids("12_[0-2]") == ["12_0", "12_1", "12_2"]
    assert expand_job_ids("12_3") == ["12_3"]
    assert expand_job_ids("12") == ["12"]


# -- squeue and sacct -------------------------------------------------------------------------------

SQUEUE = f"""\
12_0|toy.calibrate|COMPLETED|None|0|{T0}|{T0 + 1}|{COMMENT}
12_1|toy.calibrate|FAILED|NonZeroExitCode|768|{T0}|{T0 + 1}|{COMMENT}
12_2|toy.calibrate|PENDING|JobArrayTaskLimit|0|N/A|N/A|{COMMENT}
12_3|toy.calibrate|RUNNING|None|0|{T0 + 2}|{T0 + 62}|{COMMENT}
7|wrap|TIMEOUT|TimeLimit|15|1795308419|1795308488|(null)
17_0|wrap|PENDING|DependencyNeverSatisfied|0|N/A|N/A|a comment | with a bar
"""

SACCT = f"""\
12_0|toy.calibrate|COMPLETED|0:0|None|{T0}|{T0 + 1}|{COMMENT}
12_1|toy.calibrate|RUNNING|0:0|None|{T0}|Unknown|{COMMENT}
12_[2,4%1]|toy.calibrate|PENDING|0:0|JobArrayTaskLimit|Unknown|Unknown|{COMMENT}
7|wrap|TIMEOUT|0:15|None|1795308419|1795308488|
18|wrap|CANCELLED by 0|0:0|None|1795308664|1795308664|
19_5|p.s|OUT_OF_MEMORY|0:125|None|{T0}|{T0 + 9}|
"""


def test_squeue_lines_are_parsed() -> None:
    records = parse_squeue(SQUEUE)
    assert set(records) == {"12_0", "12_1", "12_2", "12_3", "7", "17_0"}
    failed = records["12_1"]
    assert (failed.state, failed.exit_code, failed.signal) == ("FAILED", 3, None)
    assert failed.started_at == datetime.fromtimestamp(T0, UTC)
    assert failed.token == "4fd11a1d1d4290c7" and failed.name == "toy.calibrate"
    assert records["12_2"].started_at is None and records["12_2"].reason == "JobArrayTaskLimit"
    timeout = records["7"]
    assert (timeout.exit_code, timeout.signal, timeout.comment) == (0, 15, "")
    assert records["17_0"].comment == "a comment | with a bar"
    assert records["12_0"].reason == ""


def test_sacct_lines_are_parsed_with_ranges_expanded() -> None:
    records = parse_sacct(SACCT)
    assert set(records) == {"12_0", "12_1", "12_2", "12_4", "7", "18", "19_5"}
    assert records["12_4"].state == "PENDING" and records["12_4"].job_id == "12_4"
    assert records["12_1"].ended_at is None
    assert records["18"].state == "CANCELLED"
    assert (records["7"].exit_code, records["7"].signal) == (0, 15)


def test_garbage_lines_are_skipped() -> None:
    assert parse_squeue("\nnot|enough|fields\n") == {}
    assert parse_sacct("") == {}


def test_a_final_state_wins_over_a_stale_live_one() -> None:
    queued, accounted = parse_squeue(SQUEUE), parse_sacct(SACCT)
    # sacct still says RUNNING (it lags): squeue's FAILED is the truth.
    assert merge_records(queued["12_1"], accounted["12_1"]) == queued["12_1"]
    # Both final: sacct's record (its exit code is the command's own), with squeue's reason if it has none.
    assert merge_records(queued["7"], accounted["7"]) == replace(accounted["7"], reason="TimeLimit")
    # Both live: squeue is the fresher.
    assert merge_records(queued["12_2"], accounted["12_2"]) == queued["12_2"]
    # One source only.
    assert merge_records(None, accounted["18"]) == accounted["18"]
    assert merge_records(queued["12_3"], None) == queued["12_3"]
    assert merge_records(None, None) is None


def _record(state: str, **changes: object) -> SchedulerRecord:
    return SchedulerRecord(job_id="5_1", state=state, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("record", "state", "failure", "exit_code"),
    [
        (_record("COMPLETED", exit_code=0), JobState.SUCCEEDED, None, 0),
        (_record("FAILED", exit_code=3), JobState.FAILED, "failed", 3),
        (_record("FAILED", exit_code=0, signal=9), JobState.FAILED, "failed", 137),
        (_record("TIMEOUT", exit_code=0, signal=15), JobState.FAILED, "timeout", 143),
        (_record("TIMEOUT", exit_code=0), JobState.FAILED, "timeout", None),
        (_record("DEADLINE"), JobState.FAILED, "timeout", None),
        (_record("OUT_OF_MEMORY", exit_code=0, signal=125), JobState.FAILED, "oom", 253),
        (_record("NODE_FAIL"), JobState.FAILED, "node_fail", None),
        (_record("BOOT_FAIL"), JobState.FAILED, "node_fail", None),
        (_record("PREEMPTED"), JobState.FAILED, "node_fail", None),
        (_record("CANCELLED", exit_code=0), JobState.FAILED, "cancelled", None),
        (_record("PENDING", reason="DependencyNeverSatisfied"), JobState.FAILED, "cancelled", None),
        (_record("PENDING", reason="Priority"), JobState.QUEUED, None, None),
        (_record("REQUEUED"), JobState.QUEUED, None, None),
        (_record("RUNNING"), JobState.RUNNING, None, None),
        (_record("COMPLETING"), JobState.RUNNING, None, None),
        (_record("SUSPENDED"), JobState.RUNNING, None, None),
        (_record("SOMETHING_NEW"), JobState.QUEUED, None, None),
    ],
)
def test_states_map_to_statuses_and_failure_kinds(
    record: SchedulerRecord, state: JobState, failure: str | None, exit_code: int | None
) -> None:
    status = status_of(record)
    assert (status.state, status.failure, status.exit_code) == (state, failure, exit_code)


def test_failure_messages_name_the_slurm_state_and_times_pass_through() -> None:
    started = datetime.fromtimestamp(T0, UTC)
    status = status_of(_record("FAILED", exit_code=3, started_at=started, reason="NonZeroExitCode"))
    assert status.message == "SLURM FAILED: exit code 3" and status.started_at == started
    assert (
        "dependency never satisfied"
        in status_of(_record("PENDING", reason="DependencyNeverSatisfied")).message
    )
    assert status_of(_record("TIMEOUT")).message == "SLURM TIMEOUT: time limit reached"


# -- the runner's manifest --------------------------------------------------------------------------


def _manifest(tmp_path: Path, elements: list[Element]) -> Path:
    path = tmp_path / "batch.jsonl"
    lines = [header_line("4fd11a1d1d4290c7", "toy.calibrate", len(elements))]
    path.write_text("\n".join([*lines, *(e.to_json() for e in elements)]) + "\n")
    return path


def _element(tmp_path: Path, task: str, argv: list[str]) -> Element:
    work = tmp_path / task
    return Element(task, argv, {"TASK": task}, str(work), str(work / "out.log"), str(work / "err.log"))


def test_manifest_round_trip(tmp_path: Path) -> None:
    elements = [_element(tmp_path, f"t{i}", ["echo", str(i)]) for i in range(3)]
    path = _manifest(tmp_path, elements)
    assert read_header(path)["token"] == "4fd11a1d1d4290c7"
    assert read_task_ids(path) == ["t0", "t1", "t2"]
    assert read_element(path, 2) == elements[2]
    with pytest.raises(ValueError):
        read_element(path, 3)


def _run_runner(manifest: Path, index: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from osa_grid.backends.slurm_runner import main; sys.exit(main(sys.argv[1]))"
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": index}
    return subprocess.run(
        [sys.executable, "-c", code, str(manifest)], env=env, capture_output=True, text=True, timeout=30
    )


def test_the_runner_execs_the_elements_command_in_its_workdir_with_its_logs(tmp_path: Path) -> None:
    script = "import json, os, sys; print(json.dumps([os.getcwd(), os.environ['TASK']])); sys.exit(4)"
    elements = [
        _element(tmp_path, "t0", ["true"]),
        _element(tmp_path, "t1", [sys.executable, "-c", script]),
        _element(tmp_path, "t2", ["/no/such/program"]),
    ]
    manifest = _manifest(tmp_path, elements)
    assert _run_runner(manifest, "1").returncode == 4
    cwd, task = json.loads((tmp_path / "t1" / "out.log").read_text())
    assert (cwd, task) == (str(tmp_path / "t1"), "t1")
    missing = _run_runner(manifest, "2")
    assert missing.returncode == NOT_FOUND
    assert "/no/such/program" in (tmp_path / "t2" / "err.log").read_text()
    broken = _run_runner(manifest, "7")
    assert broken.returncode == RUNNER_FAILED and "no command" in broken.stderr
