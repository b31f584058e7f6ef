"""A site pilot for DiracX 0.7: plays a grid worker node of the local site, through the public DiracX API.

DiracX 0.7 has no job matching, so the pilot does what a DIRAC pilot and its job wrapper do, by hand: it
searches Received jobs (of some JobGroups, or all), posts Waiting -> Matched -> Running (increasing
timestamps: DiracX keeps the latest), sends heartbeats, runs the payload, uploads its stdout/stderr as the
job's output sandbox and reports Done or Failed with "exit code N" in MinorStatus and ApplicationStatus.

The payload is what the JDL's Executable and Arguments say: ``python -m osa_grid.backends.dirac_job
<spool>/<job id>.json``. DiracX 0.7 cannot give a JDL back, so the pilot builds the same command from the
job id and the spool directory it shares with the backend (``--spool``). A job whose description is not
there yet (submitted a moment ago) waits for the next cycle. A job set Killed while it runs is stopped.
Calls that fail (the server restarting) are tried again at the next cycle; nothing is reported twice.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from threading import Event

from osa_grid.backends.dirac_client import DiracSession
from osa_grid.errors import BackendError
from osa_grid.logs import event, get_logger

log = get_logger("dirac.pilot")

# The pilot's name in the job logging records.
SOURCE = "osa-grid-pilot"
# Payload exit code when the pilot itself stopped it (the job was set Killed).
KILLED_EXIT = 143


@dataclass
class _Payload:
    job_id: int
    process: subprocess.Popen[bytes]
    scratch: Path
    killed: bool = False
    exit_code: int | None = None
    sandbox_done: bool = False


@dataclass
class PilotReport:
    started: int = 0
    finished: int = 0
    failed: int = 0
    killed: int = 0
    errors: list[str] = field(default_factory=list)


class SitePilot:
    """Takes Received jobs and runs them on this machine, at most ``slots`` at once."""

    def __init__(
        self,
        session: DiracSession,
        spool: Path,
        job_groups: Sequence[str] = (),
        slots: int = 2,
        heartbeat_seconds: float = 10.0,
        python: str | None = None,
        scratch_root: Path | None = None,
    ) -> None:
        self.session = session
        self.spool = Path(spool)
        self.job_groups = list(job_groups)
        self.slots = max(1, slots)
        self.heartbeat_seconds = heartbeat_seconds
        self.python = python or sys.executable
        self.scratch_root = Path(scratch_root or tempfile.gettempdir())
        self._running: dict[int, _Payload] = {}
        self._last_heartbeat = -float("inf")
        self._last_time = datetime.now(UTC)
        self.report = PilotReport()

    def run(self, once: bool = False, stop: Event | None = None, interval: float = 1.0) -> PilotReport:
        """Cycles until ``stop`` is set; ``once``: take the jobs there are, run them to the end, return."""
        stop = stop or Event()
        took = False
        while not stop.is_set():
            started = self.cycle(take=not (once and took))
            took = took or started > 0 or once
            if once and not self._running:
                break
            stop.wait(interval)
        return self.report

    def cycle(self, take: bool = True) -> int:
        """One look: report ended payloads, heartbeat and check the running ones, take new jobs."""
        self._finish_ended()
        self._watch_running()
        if not take:
            return 0
        return self._take(self.slots - len(self._running))

    def close(self) -> None:
        """Stop the payloads still running (a pilot leaving its node) and close the session."""
        for payload in self._running.values():
            if payload.process.poll() is None:
                payload.process.kill()
                payload.process.wait()
        self.session.close()

    # -- taking jobs ------------------------------------------------------------------------------

    def _take(self, free: int) -> int:
        if free <= 0:
            return 0
        conditions: list[dict[str, object]] = [{"parameter": "Status", "operator": "eq", "value": "Received"}]
        if self.job_groups:
            conditions.append({"parameter": "JobGroup", "operator": "in", "values": self.job_groups})
        try:
            rows = self.session.search(conditions, ["JobID"])
        except BackendError as exc:
            event(log, "pilot_search_failed", level=30, error=exc)
            return 0
        started = 0
        for job_id in sorted(int(row["JobID"]) for row in rows):
            if started >= free:
                break
            description = self.spool / f"{job_id}.json"
            if not description.is_file() or job_id in self._running:
                continue  # the backend has not written it yet: next cycle
            if self._start(job_id, description):
                started += 1
        return started

    def _start(self, job_id: int, description: Path) -> bool:
        steps = [
            ("Waiting", "Pilot Agent Submission"),
            ("Matched", "Assigned"),
            ("Running", "Job Initialization"),
        ]
        records = {self._tick(): {"Status": s, "MinorStatus": m, "Source": SOURCE} for s, m in steps}
        try:
            refused = self.session.set_statuses({job_id: records})
        except BackendError as exc:
            event(log, "pilot_match_failed", level=30, job=job_id, error=exc)
            return False
        if job_id in refused:
            event(log, "pilot_match_refused", level=30, job=job_id, reason=refused[job_id])
            return False
        scratch = Path(tempfile.mkdtemp(prefix=f"dirac-job-{job_id}-", dir=self.scratch_root))
        argv = [
            self.python,
            "-m",
            "osa_grid.backends.dirac_job",
            str(description),
            str(scratch / "stdout.log"),
            str(scratch / "stderr.log"),
        ]
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, cwd=scratch)
        self._running[job_id] = _Payload(job_id, process, scratch)
        self.report.started += 1
        event(log, "pilot_started", job=job_id)
        return True

    # -- running jobs -----------------------------------------------------------------------------

    def _watch_running(self) -> None:
        alive = [p.job_id for p in self._running.values() if p.exit_code is None and not p.killed]
        if not alive or time.monotonic() - self._last_heartbeat < self.heartbeat_seconds:
            return
        try:
            self.session.heartbeat(alive)
            rows = self.session.search(
                [{"parameter": "JobID", "operator": "in", "values": alive}], ["JobID", "Status"]
            )
        except BackendError as exc:
            event(log, "pilot_heartbeat_failed", level=30, error=exc)
            return
        self._last_heartbeat = time.monotonic()
        for row in rows:
            payload = self._running.get(int(row["JobID"]))
            if payload is not None and row.get("Status") in ("Killed", "Deleted"):
                payload.killed = True
                if payload.process.poll() is None:
                    payload.process.terminate()
                event(log, "pilot_killed", job=payload.job_id)

    def _finish_ended(self) -> None:
        for job_id, payload in list(self._running.items()):
            if payload.exit_code is None:
                code = payload.process.poll()
                if code is None:
                    continue
                payload.exit_code = code
            if payload.killed:
                # DIRAC says Killed already; the logs still go to the sandbox for whoever looks.
                self._upload(payload)
                del self._running[job_id]
                shutil.rmtree(payload.scratch, ignore_errors=True)
                self.report.killed += 1
                continue
            if not payload.sandbox_done and not self._upload(payload):
                continue  # the server is away: try again at the next cycle
            if self._report_end(payload):
                del self._running[job_id]
                shutil.rmtree(payload.scratch, ignore_errors=True)

    def _upload(self, payload: _Payload) -> bool:
        files = [payload.scratch / name for name in ("stdout.log", "stderr.log")]
        for path in files:
            path.touch(exist_ok=True)
        try:
            self.session.upload_output_sandbox(payload.job_id, files)
        except BackendError as exc:
            if "already assigned" in str(exc):
                payload.sandbox_done = True  # an earlier try got through before its answer was lost
                return True
            event(log, "pilot_sandbox_failed", level=30, job=payload.job_id, error=exc)
            return False
        payload.sandbox_done = True
        return True

    def _report_end(self, payload: _Payload) -> bool:
        code = payload.exit_code if payload.exit_code is not None else KILLED_EXIT
        status = "Done" if code == 0 else "Failed"
        minor = "Execution Complete" if code == 0 else f"exit code {code}"
        record = {
            "Status": status,
            "MinorStatus": minor,
            "ApplicationStatus": f"exit code {code}",
            "Source": SOURCE,
        }
        try:
            refused = self.session.set_statuses({payload.job_id: {self._tick(): record}})
        except BackendError as exc:
            event(log, "pilot_report_failed", level=30, job=payload.job_id, error=exc)
            return False
        if payload.job_id in refused:
            event(log, "pilot_report_refused", level=30, job=payload.job_id, reason=refused[payload.job_id])
        if code == 0:
            self.report.finished += 1
        else:
            self.report.failed += 1
        event(log, "pilot_ended", job=payload.job_id, status=status, exit_code=code)
        return True

    def _tick(self) -> datetime:
        """A timestamp after every one this pilot posted before (DiracX keeps the latest record only)."""
        now = datetime.now(UTC)
        self._last_time = max(now, self._last_time + timedelta(milliseconds=1))
        return self._last_time
