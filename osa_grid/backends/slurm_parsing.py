"""The pure half of the SLURM backend: sbatch command lines in, squeue/sacct output out.

Nothing here runs a command or touches a file, so all of it is unit-tested without a cluster. The commands'
output is read in machine-readable form only: ``squeue -O 'Field:0|,...'`` and ``sacct --parsable2``, with
``SLURM_TIME_FORMAT=%s`` so that times are Unix seconds (no time zone to guess). The free-text ``Comment``
field always comes last, so a ``|`` inside it cannot shift the other columns.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from osa_grid.core.models import Resources
from osa_grid.ports import JobSpec, JobState, JobStatus

SQUEUE_FIELDS = ("JobArrayID", "Name", "State", "Reason", "exit_code", "StartTime", "EndTime", "Comment")
SQUEUE_FORMAT = ",".join(f"{name}:0{'|' if name != 'Comment' else ''}" for name in SQUEUE_FIELDS)
SACCT_FIELDS = ("JobID", "JobName", "State", "ExitCode", "Reason", "Start", "End", "Comment")
SACCT_FORMAT = ",".join(SACCT_FIELDS)

# "12345" (a plain job) or "12345_7" (element 7 of array job 12345): the only ids this backend hands out.
JOB_ID_PATTERN = re.compile(r"^(?P<array>[0-9]+)(?:_(?P<index>[0-9]+))?$")
# sacct folds pending array elements into one row: "12345_[2,4-6%2]".
_PENDING_RANGE = re.compile(r"^(?P<array>[0-9]+)_\[(?P<ranges>[0-9,\-]+)(?:%[0-9]+)?\]$")
# The identity osa-grid writes into every job's --comment (at most ~1000 characters are accepted).
COMMENT_PREFIX = "osa-grid batch="
_COMMENT_TOKEN = re.compile(r"^osa-grid batch=(?P<token>[0-9a-f]{8,64})(?:\s|$)")

PENDING_STATES = frozenset(
    {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
)
# Started and not finished: the payload may be running (or suspended, or its epilog is).
ACTIVE_STATES = frozenset(
    {"RUNNING", "SUSPENDED", "STOPPED", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"}
)
# Final SLURM state -> osa-grid failure kind (what retry rules match); COMPLETED is the one success.
FAILURE_KINDS = {
    "FAILED": "failed",
    "SPECIAL_EXIT": "failed",
    "TIMEOUT": "timeout",
    "DEADLINE": "timeout",
    "OUT_OF_MEMORY": "oom",
    "NODE_FAIL": "node_fail",
    "BOOT_FAIL": "node_fail",
    "PREEMPTED": "node_fail",
    "CANCELLED": "cancelled",
    "REVOKED": "cancelled",
}
FINAL_STATES = frozenset({"COMPLETED", *FAILURE_KINDS})
# A pending job whose dependency can never be met waits for ever unless told otherwise (only squeue says so).
DEPENDENCY_NEVER_SATISFIED = "DependencyNeverSatisfied"
_MESSAGES = {
    "timeout": "time limit reached",
    "oom": "out of memory",
    "node_fail": "the node failed or the job was preempted",
    "cancelled": "cancelled",
}


@dataclass(frozen=True)
class SchedulerRecord:
    """What squeue or sacct says about one job (one array element)."""

    job_id: str
    state: str  # SLURM's base state, e.g. "CANCELLED" (without "by 0")
    reason: str = ""
    exit_code: int | None = None  # the command's exit status
    signal: int | None = None  # the signal that ended it, if any
    started_at: datetime | None = None
    ended_at: datetime | None = None
    name: str = ""
    comment: str = ""

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def token(self) -> str | None:
        return comment_token(self.comment)


# -- job ids and identity ---------------------------------------------------------------------------


def is_slurm_job_id(job_id: str) -> bool:
    return JOB_ID_PATTERN.match(job_id) is not None


def array_job_id(job_id: str) -> str:
    """ "12345_7" -> "12345": what squeue -j and sacct -j take to list every element at once."""
    match = JOB_ID_PATTERN.match(job_id)
    if match is None:
        raise ValueError(f"{job_id!r} is not a SLURM job id")
    return match.group("array")


def element_job_id(array_id: str, index: int) -> str:
    return f"{array_id}_{index}"


def batch_comment(token: str, name: str, size: int) -> str:
    """The --comment of an array job: the batch token first (what adopt() looks for), then for people."""
    return f"{COMMENT_PREFIX}{token} name={name} size={size}"


def comment_token(comment: str) -> str | None:
    match = _COMMENT_TOKEN.match(comment.strip())
    return match.group("token") if match else None


def parse_sbatch_output(stdout: str) -> str:
    """``sbatch --parsable`` prints "jobid" or "jobid;cluster"."""
    job_id = stdout.strip().split(";", 1)[0]
    if not job_id.isdigit():
        raise ValueError(f"sbatch printed {stdout.strip()!r}, not a job id")
    return job_id


# -- building the sbatch command line ---------------------------------------------------------------


@dataclass(frozen=True)
class SbatchOptions:
    """Site settings that go on every sbatch command line."""

    partition: str | None = None
    account: str | None = None
    extra_args: Sequence[str] = ()


@dataclass(frozen=True)
class ArrayRequest:
    """One array job: ``size`` elements of the same name and resources."""

    name: str
    comment: str
    size: int
    resources: Resources
    log: Path  # the batch's own log (runner errors, slurmstepd messages such as time limits)
    directory: Path  # where the batch script starts; each element changes to its task's work directory
    throttle: int = 0  # at most this many elements at once; 0: no limit
    options: SbatchOptions = field(default_factory=SbatchOptions)


def sbatch_argv(request: ArrayRequest, sbatch: str = "sbatch") -> list[str]:
    """The sbatch command for an array job whose batch script comes on standard input."""
    if request.size < 1:
        raise ValueError("an array job needs at least one element")
    resources = request.resources
    argv = [
        sbatch,
        "--parsable",
        f"--array={array_spec(request.size, request.throttle)}",
        f"--job-name={request.name}",
        f"--comment={request.comment}",
        "--ntasks=1",
        f"--cpus-per-task={resources.cores}",
        f"--mem={memory_mib(resources.memory_gb)}M",
        f"--time={walltime_minutes(resources.walltime.total_seconds())}",
        f"--output={request.log}",
        "--open-mode=append",
        f"--chdir={request.directory}",
        # Never used by osa-grid itself (the shepherd decides when a task may start), but extra_args may
        # add dependencies: a job whose dependency fails is then cancelled, not left pending for ever.
        "--kill-on-invalid-dep=yes",
    ]
    if request.options.partition:
        argv.append(f"--partition={request.options.partition}")
    if request.options.account:
        argv.append(f"--account={request.options.account}")
    argv.extend(request.options.extra_args)
    return argv


def array_groups(jobs: Sequence[JobSpec], max_size: int) -> list[list[int]]:
    """Positions of the jobs that go into one array job: same name and resources, at most ``max_size``."""
    groups: dict[tuple[object, ...], list[int]] = {}
    for position, spec in enumerate(jobs):
        resources = spec.resources
        key = (spec.name, resources.cores, resources.memory_gb, resources.walltime)
        groups.setdefault(key, []).append(position)
    return [
        positions[start : start + max_size]
        for positions in groups.values()
        for start in range(0, len(positions), max_size)
    ]


def array_spec(size: int, throttle: int) -> str:
    spec = f"0-{size - 1}"
    if 0 < throttle < size:
        spec += f"%{throttle}"
    return spec


def memory_mib(memory_gb: float) -> int:
    return max(1, math.ceil(memory_gb * 1024 - 1e-9))


def walltime_minutes(seconds: float) -> int:
    """SLURM limits are whole minutes: round up, so a task never gets less than it asked for."""
    return max(1, math.ceil(seconds / 60 - 1e-9))


# -- reading squeue and sacct -----------------------------------------------------------------------


def squeue_argv(array_ids: Sequence[str], squeue: str = "squeue") -> list[str]:
    """Every element of the given array jobs, in every state, one line each (``-r``)."""
    return [
        squeue,
        "--noheader",
        "--array",
        "--states=all",
        f"--jobs={','.join(array_ids)}",
        "-O",
        SQUEUE_FORMAT,
    ]


def squeue_by_name_argv(names: Sequence[str], squeue: str = "squeue") -> list[str]:
    return [squeue, "--noheader", "--states=all", f"--name={','.join(names)}", "-O", SQUEUE_FORMAT]


def sacct_argv(array_ids: Sequence[str], sacct: str = "sacct") -> list[str]:
    """Allocations only (``-X``) of the given jobs; with ``--jobs`` sacct searches all of its history."""
    return [
        sacct,
        "--noheader",
        "--parsable2",
        "-X",
        f"--jobs={','.join(array_ids)}",
        f"--format={SACCT_FORMAT}",
    ]


def sacct_by_name_argv(names: Sequence[str], since: datetime, sacct: str = "sacct") -> list[str]:
    start = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return [
        sacct,
        "--noheader",
        "--parsable2",
        "-X",
        f"--name={','.join(names)}",
        f"--starttime={start}",
        f"--format={SACCT_FORMAT}",
    ]


def parse_squeue(text: str) -> dict[str, SchedulerRecord]:
    """squeue lines (``SQUEUE_FORMAT``) by job id; the exit code there is a raw wait status."""
    records: dict[str, SchedulerRecord] = {}
    for fields in _rows(text, len(SQUEUE_FIELDS)):
        job_id, name, state, reason, raw_status, start, end, comment = fields
        _add(records, job_id, name, state, reason, _wait_status(raw_status), start, end, comment)
    return records


def parse_sacct(text: str) -> dict[str, SchedulerRecord]:
    """sacct lines (``SACCT_FORMAT``) by job id; pending array ranges are expanded to their elements."""
    records: dict[str, SchedulerRecord] = {}
    for fields in _rows(text, len(SACCT_FIELDS)):
        job_id, name, state, exit_code, reason, start, end, comment = fields
        _add(records, job_id, name, state, reason, _exit_code_pair(exit_code), start, end, comment)
    return records


def _add(
    records: dict[str, SchedulerRecord],
    job_id: str,
    name: str,
    state: str,
    reason: str,
    exit_pair: tuple[int | None, int | None],
    start: str,
    end: str,
    comment: str,
) -> None:
    """One scheduler line, filed under every job id it stands for (an array range names several)."""
    record = SchedulerRecord(
        job_id=job_id,
        state=base_state(state),
        reason=_clean(reason),
        exit_code=exit_pair[0],
        signal=exit_pair[1],
        started_at=parse_time(start),
        ended_at=parse_time(end),
        name=name,
        comment=_clean(comment),
    )
    for element in expand_job_ids(job_id):
        records[element] = _with_id(record, element)


def expand_job_ids(job_id: str) -> list[str]:
    """ "12_[2,4-5%1]" -> ["12_2", "12_4", "12_5"]; plain ids stay as they are."""
    match = _PENDING_RANGE.match(job_id)
    if match is None:
        return [job_id]
    indexes: list[int] = []
    for part in match.group("ranges").split(","):
        first, _, last = part.partition("-")
        if first:
            indexes.extend(range(int(first), int(last or first) + 1))
    return [element_job_id(match.group("array"), index) for index in indexes]


def _rows(text: str, width: int) -> Iterator[list[str]]:
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("|", width - 1)  # the comment, last, may itself contain "|"
        if len(fields) == width:
            yield [f.strip() for f in fields[:-1]] + [fields[-1].rstrip("\n")]


def _with_id(record: SchedulerRecord, job_id: str) -> SchedulerRecord:
    if record.job_id == job_id:
        return record
    return replace(record, job_id=job_id)


def _clean(value: str) -> str:
    return "" if value.strip() in ("(null)", "None", "N/A") else value.strip()


def base_state(state: str) -> str:
    """ "CANCELLED by 0" -> "CANCELLED"; "COMPLETED+" (sacct's mark of a requeued job) -> "COMPLETED"."""
    words = state.strip().split()
    return words[0].rstrip("+").upper() if words else "UNKNOWN"


def parse_time(value: str) -> datetime | None:
    """Unix seconds (SLURM_TIME_FORMAT=%s), or ISO local time as a fallback; None for unknown times."""
    value = value.strip()
    if value.isdigit():
        seconds = int(value)
        return datetime.fromtimestamp(seconds, UTC) if seconds > 0 else None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None  # "N/A", "Unknown", "None"
    return parsed.astimezone(UTC)


def _wait_status(raw: str) -> tuple[int | None, int | None]:
    """squeue's exit_code: a wait(2) status; 256 is exit code 1, 9 is SIGKILL."""
    try:
        status = int(raw)
    except ValueError:
        return None, None
    signal = status & 0x7F
    return (status >> 8) & 0xFF, signal or None


def _exit_code_pair(value: str) -> tuple[int | None, int | None]:
    """sacct's ExitCode: "exit:signal"."""
    code, _, signal = value.partition(":")
    try:
        return int(code), (int(signal) or None) if signal else None
    except ValueError:
        return None, None


# -- from records to statuses -----------------------------------------------------------------------


def merge_records(
    queued: SchedulerRecord | None, accounted: SchedulerRecord | None
) -> SchedulerRecord | None:
    """One view of a job from squeue (fresh, knows pending reasons) and sacct (complete history).

    sacct lags squeue by a few seconds, so a final state wins over a live one whoever reports it; when both
    are final they agree and sacct's is taken; when neither is, squeue is the fresher.
    """
    if accounted is not None and accounted.final:
        if queued is not None and not accounted.reason:
            # sacct keeps no pending reason such as DependencyNeverSatisfied; squeue does.
            return replace(accounted, reason=queued.reason)
        return accounted
    if queued is not None:
        return queued
    return accounted


def status_of(record: SchedulerRecord) -> JobStatus:
    """The osa-grid status of a SLURM job record."""
    return replace(_state_of(record), started_at=record.started_at, ended_at=record.ended_at)


def _state_of(record: SchedulerRecord) -> JobStatus:
    if record.state == "COMPLETED":
        return JobStatus(JobState.SUCCEEDED, exit_code=0)
    kind = FAILURE_KINDS.get(record.state)
    if kind is not None:
        return _failed(record, kind)
    if record.state in PENDING_STATES:
        if record.reason == DEPENDENCY_NEVER_SATISFIED:
            message = "dependency never satisfied: the job would wait for ever"
            return JobStatus(JobState.FAILED, failure="cancelled", message=message)
        return JobStatus(JobState.QUEUED, message=record.reason)
    if record.state in ACTIVE_STATES:
        return JobStatus(JobState.RUNNING, message=record.state.lower())
    # A state this version does not know: not final, so wait and see rather than guess.
    return JobStatus(JobState.QUEUED, message=f"SLURM state {record.state}")


def _failed(record: SchedulerRecord, kind: str) -> JobStatus:
    exit_code = _exit_code(record)
    if kind == "failed":
        message = f"exit code {exit_code}" if record.signal is None else f"killed by signal {record.signal}"
    else:
        message = _MESSAGES[kind]
    if record.reason and record.reason not in ("NonZeroExitCode", "TimeLimit"):
        message += f" ({record.reason})"
    return JobStatus(
        JobState.FAILED, exit_code=exit_code, failure=kind, message=f"SLURM {record.state}: {message}"
    )


def _exit_code(record: SchedulerRecord) -> int | None:
    """As a shell reports it: 128 + the signal that killed it, else the exit code (None if unknown)."""
    if record.signal:
        return 128 + record.signal
    if record.state in ("FAILED", "SPECIAL_EXIT") or record.exit_code:
        return record.exit_code
    return None  # e.g. TIMEOUT 0:0: no exit code of the command's own


def lost_status(message: str) -> JobStatus:
    return JobStatus(JobState.LOST, failure="lost", message=message)


# -- sbatch failures --------------------------------------------------------------------------------

# The controller never got the job: safe to try again.
_NOT_ACCEPTED = (
    "unable to contact slurm controller",
    "temporarily unable",
    "resource temporarily unavailable",
    "connection refused",
)
# The request may have reached the controller before the answer was lost: ask before trying again.
_MAYBE_ACCEPTED = ("timed out", "zero bytes were transmitted", "connection reset", "broken pipe")


def classify_sbatch_failure(stderr: str, timed_out: bool = False) -> str:
    """ "not_accepted" (try again), "unknown" (look for the job first) or "rejected" (it never will be)."""
    text = stderr.lower()
    if timed_out or any(marker in text for marker in _MAYBE_ACCEPTED):
        return "unknown"
    if any(marker in text for marker in _NOT_ACCEPTED):
        return "not_accepted"
    return "rejected"


def sbatch_error(stderr: str) -> str:
    """sbatch's own message without the "sbatch: error:" prefixes, on one line."""
    lines = [line.removeprefix("sbatch: error:").strip() for line in stderr.splitlines() if line.strip()]
    return "; ".join(lines) or "no message"
