"""Pure parts of the DIRAC backend: job groups, JDL text, and DIRAC job states as osa-grid job states.

No I/O here: the backend (``dirac.py``) and the site pilot (``dirac_pilot.py``) do the talking.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from osa_grid.ports import JobSpec, JobState, JobStatus

# DiracX 0.7 stores JobGroup in a 32-character column and JobName in a 128-character one.
MAX_JOB_GROUP = 32
MAX_JOB_NAME = 128
# What the pilot writes in MinorStatus/ApplicationStatus when the payload ends: "exit code N".
EXIT_CODE_PATTERN = re.compile(r"exit code (-?\d+)")

QUEUED_STATES = frozenset({"Submitting", "Received", "Checking", "Staging", "Waiting", "Rescheduled"})
RUNNING_STATES = frozenset({"Matched", "Running", "Completing", "Completed"})
# DIRAC final state -> (osa-grid state, failure kind matched by retry rules).
FINAL_STATES: dict[str, tuple[JobState, str | None]] = {
    "Done": (JobState.SUCCEEDED, None),
    "Failed": (JobState.FAILED, "failed"),
    "Killed": (JobState.FAILED, "cancelled"),
    "Deleted": (JobState.FAILED, "cancelled"),
    # The pilot (the node) stopped sending heartbeats: the node failed, the task may run elsewhere.
    "Stalled": (JobState.FAILED, "node_fail"),
}
# The attributes one search asks for.
SEARCH_PARAMETERS = [
    "JobID",
    "JobName",
    "JobGroup",
    "Status",
    "MinorStatus",
    "ApplicationStatus",
    "SubmissionTime",
    "StartExecTime",
    "EndExecTime",
]


@dataclass(frozen=True)
class Environment:
    """A step's software environment as the JDL carries it (and provenance records it)."""

    software: Mapping[str, str]  # distribution -> version, e.g. {"lstchain": "0.12.3"}
    container: str | None = None


def job_group(name: str) -> str:
    """``production.transformation`` as a DIRAC JobGroup: safe characters, at most 32 of them.

    A name too long keeps its start and gets a short digest of the whole, so two long names stay apart.
    """
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", name or "osa-grid")
    if len(clean) <= MAX_JOB_GROUP:
        return clean
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{clean[: MAX_JOB_GROUP - 9]}~{digest}"


def jdl_string(value: str) -> str:
    """A JDL (ClassAd) string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def jdl_list(values: Sequence[str]) -> str:
    return "{" + ", ".join(jdl_string(v) for v in values) + "}"


def cpu_time_seconds(spec: JobSpec) -> int:
    """DIRAC's CPUTime: the CPU seconds the job may use (wall time times cores), at least one."""
    seconds = spec.resources.walltime.total_seconds() * spec.resources.cores
    return max(1, math.ceil(seconds))


def build_jdl(
    spec: JobSpec,
    group: str,
    executable: str,
    arguments: Sequence[str],
    input_data: Sequence[str] = (),
    environment: Environment | None = None,
) -> str:
    """The JDL of one task attempt.

    ``arguments`` is what the worker node runs after ``executable``: here the job runner and the place of
    the job description (``%j`` is DIRAC's placeholder for the job id, replaced at submission).
    """
    if len(spec.task_id) > MAX_JOB_NAME:
        raise ValueError(f"task id {spec.task_id!r} is longer than DIRAC's {MAX_JOB_NAME} characters")
    lines = [
        f"Executable = {jdl_string(executable)};",
        f"Arguments = {jdl_string(' '.join(_shell_word(a) for a in arguments))};",
        f"JobName = {jdl_string(spec.task_id)};",
        f"JobGroup = {jdl_string(group)};",
        f"CPUTime = {cpu_time_seconds(spec)};",
        f"NumberOfProcessors = {spec.resources.cores};",
        # DIRAC's MaxRAM is in MB.
        f"MaxRAM = {math.ceil(spec.resources.memory_gb * 1024)};",
        'StdOutput = "stdout.log";',
        'StdError = "stderr.log";',
        'OutputSandbox = {"stdout.log", "stderr.log"};',
    ]
    if input_data:
        lines.append(f"InputData = {jdl_list(sorted(input_data))};")
    if environment is not None:
        if environment.software:
            packages = [f"{name}=={version}" for name, version in sorted(environment.software.items())]
            lines.append(f"SoftwarePackages = {jdl_list(packages)};")
        if environment.container:
            lines.append(f"ContainerImage = {jdl_string(environment.container)};")
    return "[\n  " + "\n  ".join(lines) + "\n]"


def _shell_word(word: str) -> str:
    # DIRAC's job wrapper splits Arguments on blanks; a word with blanks could not be passed through.
    if not word or any(c.isspace() for c in word) or '"' in word:
        raise ValueError(f"a JDL argument cannot contain blanks or quotes: {word!r}")
    return word


def exit_code_of(*texts: str | None) -> int | None:
    """The payload's exit code from MinorStatus/ApplicationStatus ("exit code N"), if any says it."""
    for text in texts:
        match = EXIT_CODE_PATTERN.search(text or "")
        if match:
            return int(match.group(1))
    return None


def parse_time(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def status_of(record: Mapping[str, Any]) -> JobStatus:
    """One row of a DiracX job search as an osa-grid job status."""
    dirac_state = str(record.get("Status") or "")
    minor = str(record.get("MinorStatus") or "")
    application = str(record.get("ApplicationStatus") or "")
    started = parse_time(record.get("StartExecTime"))
    ended = parse_time(record.get("EndExecTime"))
    message = f"DIRAC {dirac_state}: {minor}" + (
        f" ({application})" if application not in ("", "Unknown") else ""
    )
    if dirac_state in QUEUED_STATES:
        return JobStatus(JobState.QUEUED, message=message)
    if dirac_state in RUNNING_STATES:
        return JobStatus(JobState.RUNNING, message=message, started_at=started)
    final = FINAL_STATES.get(dirac_state)
    if final is None:
        # A state this version does not know: still somebody's job, not ours to give up on.
        return JobStatus(JobState.QUEUED, message=f"unknown DIRAC state {dirac_state!r}: {minor}")
    state, failure = final
    exit_code = exit_code_of(application, minor)
    if state == JobState.SUCCEEDED:
        exit_code = 0 if exit_code is None else exit_code
    return JobStatus(state, exit_code, failure, message, started_at=started, ended_at=ended)
