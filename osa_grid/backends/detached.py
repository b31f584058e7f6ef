"""What the detached batch backends (SLURM, DIRAC) share: their jobs live in a scheduler that tells nobody
when they end, so the backend remembers each job's last known status and asks again at a bounded rate.

A backend using ``DetachedJobs`` calls ``_start_tracking`` in its constructor, then keeps ``_known``,
``_pseudo``, ``_unknown_since``, ``_asked`` and ``_last_query`` up to date as it submits and polls.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from osa_grid.ports import JobState, JobStatus

# wait_any never sleeps longer than this, whatever it is asked.
MAX_WAIT_SECONDS = 60.0


class DetachedJobs:
    """``free_slots``, ``wait_any`` and the poll rate limit of a backend that asks its scheduler."""

    max_jobs: int
    poll_seconds: float
    lost_after_seconds: float
    _known: dict[str, JobStatus]
    _pseudo: dict[str, JobStatus]
    _unknown_since: dict[str, float]
    _asked: set[str]
    _last_query: float

    def _start_tracking(self, max_jobs: int, poll_seconds: float, lost_after_seconds: float) -> None:
        """The limits, and nothing known yet: called by the backend's constructor."""
        self.max_jobs = max_jobs
        self.poll_seconds = poll_seconds
        self.lost_after_seconds = lost_after_seconds
        self._known = {}  # last status of every job id the scheduler told us about
        self._pseudo = {}  # ids of submissions the scheduler refused or never got
        self._unknown_since = {}  # when a job id was first not found (lost after lost_after_seconds)
        self._asked = set()  # ids asked about at least once
        self._last_query = -float("inf")

    def free_slots(self) -> int:
        in_flight = sum(1 for s in self._known.values() if s.state in (JobState.QUEUED, JobState.RUNNING))
        return max(0, self.max_jobs - in_flight)

    def wait_any(self, timeout: float) -> None:
        """The scheduler tells nobody when a job ends: sleep, and let the next poll ask."""
        time.sleep(min(max(0.0, timeout), MAX_WAIT_SECONDS))

    def _query_due(self, job_ids: Iterable[str]) -> bool:
        """Ask now for a job never asked about; otherwise at most every ``poll_seconds``."""
        if any(job_id not in self._asked for job_id in job_ids):
            return True
        return time.monotonic() - self._last_query >= self.poll_seconds
