"""A simulated backend for benchmarks: jobs cost nothing and finish at once (or when released).

It implements the ``osa_grid.ports.Backend`` protocol, so the shepherd drives it exactly as it drives the
local pool. A job "runs" by writing one small file for every argv element that names a path inside the
job's work directory (the rendered ``{output.*}`` placeholders), so the shepherd finds, checksums, stores
and registers real outputs. With ``hold=True`` jobs stay running until ``release()``: that is how a
benchmark keeps a chosen number of tasks in flight.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from osa_grid.ports import Capabilities, JobSpec, JobState, JobStatus


class SimulatedBackend:
    name = "simulated"
    capabilities = Capabilities(detached=False)

    def __init__(self, slots: int = 1_000_000, hold: bool = False) -> None:
        self.slots = slots
        self.hold = hold
        self.submitted = 0
        self._seq = 0
        self._held: dict[str, JobSpec] = {}
        self._done: dict[str, JobStatus] = {}

    # -- the Backend protocol -----------------------------------------------------------------
    def submit(self, jobs: Sequence[JobSpec]) -> list[str]:
        ids: list[str] = []
        for spec in jobs:
            self._seq += 1
            job_id = f"sim-{self._seq}"
            ids.append(job_id)
            if self.hold:
                self._held[job_id] = spec
            else:
                self._run(job_id, spec)
        self.submitted += len(ids)
        return ids

    def poll(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        statuses: dict[str, JobStatus] = {}
        for job_id in job_ids:
            if job_id in self._held:
                statuses[job_id] = JobStatus(JobState.RUNNING, started_at=_now())
            elif job_id in self._done:
                statuses[job_id] = self._done[job_id]
            else:
                statuses[job_id] = JobStatus(
                    JobState.LOST, failure="lost", message="unknown to the simulator"
                )
        return statuses

    def cancel(self, job_ids: Sequence[str]) -> None:
        for job_id in job_ids:
            if self._held.pop(job_id, None) is not None:
                self._done[job_id] = JobStatus(
                    JobState.FAILED, failure="cancelled", message="cancelled", ended_at=_now()
                )

    def adopt(self, task_ids: Sequence[str]) -> dict[str, str]:
        return {}

    def wait_any(self, timeout: float) -> None:
        return None  # jobs finish at once: there is never anything to wait for

    def free_slots(self) -> int:
        return max(0, self.slots - len(self._held))

    def close(self) -> None:
        self._held.clear()

    # -- for benchmarks -------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self._held)

    def release(self) -> None:
        """Let every held job finish now."""
        held, self._held = self._held, {}
        for job_id, spec in held.items():
            self._run(job_id, spec)

    def _run(self, job_id: str, spec: JobSpec) -> None:
        workdir = str(spec.workdir).rstrip("/") + "/"
        for argument in spec.argv[1:]:
            if argument.startswith(workdir):
                Path(argument).write_bytes(b"simulated output\n")
        now = _now()
        self._done[job_id] = JobStatus(JobState.SUCCEEDED, exit_code=0, started_at=now, ended_at=now)


def _now() -> datetime:
    return datetime.now(UTC)
