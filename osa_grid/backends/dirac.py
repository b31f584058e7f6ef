"""The DIRAC backend: tasks run as DIRAC jobs on a DiracX server (``diracx-client``), see docs/dirac.md.

One JDL per task attempt: JobGroup ``production.transformation`` (sanitised, at most 32 characters), JobName
the task id, CPUTime and processors from the resources, InputData, the step's software packages and container
image.
The JDL's Executable and Arguments run ``osa_grid.backends.dirac_job`` on the worker node with the job's
*description* ``<state_dir>/jobs/<job id>.json`` (argv, environment, work directory): DiracX 0.7 cannot give a
JDL back, so the description lives where the backend and the site reach it (this site shares a file system).

Identity and restart safety: before submitting, the backend writes ``pending/<task id>.json`` (the description
and its JobGroup); after DiracX answers, ``jobs/<job id>.json``. The pending file stays until the shepherd
shows it recorded the job id (it polls or cancels it). ``adopt`` looks only at pending tasks: it searches
their JobGroups for their JobNames. The job a crash left unrecorded has no ``jobs/`` description (DiracX had
not answered) or one with the pending file's batch token (the catalog had not recorded it); an earlier attempt
has a description with another token. Submitted in batches of ``batch_size`` (at most 20).

Status: one search per JobGroup per poll, at most every ``poll_seconds``. A server that does not answer (a
restart) changes nothing: poll returns what it knew; a submission that could not reach the server comes back
as LOST (submitted again later, not counted as a failure); one warning says it is down, one that it is back.
Final jobs' logs come from their output sandbox.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from osa_grid.backends.detached import DetachedJobs
from osa_grid.backends.dirac_client import DiracSession
from osa_grid.backends.dirac_jdl import (
    FINAL_STATES,
    SEARCH_PARAMETERS,
    Environment,
    build_jdl,
    job_group,
    parse_time,
    status_of,
)
from osa_grid.backends.slurm_runner import Element
from osa_grid.config import Settings
from osa_grid.core.outages import DIRAC
from osa_grid.errors import BackendError, BackendNotReached, BackendUnavailable, BadInput
from osa_grid.logs import event, get_logger
from osa_grid.ports import Capabilities, JobSpec, JobState, JobStatus, ServiceHealth
from osa_grid.system import PRIVATE_FILE_MODE, private_directory, write_private_file

log = get_logger("dirac")

# DiracX 0.7 refuses bulk submissions of more than 20 jobs.
MAX_BATCH = 20
KEEP_FILES = timedelta(days=14)
# While DiracX does not answer: one warning when it goes, a reminder this often, one when it is back
# (a shepherd passes every few seconds; a line per pass would bury the message).
DOWN_REMINDER_SECONDS = 60.0
DESCRIPTION_VERSION = 1


def _lost(message: str) -> JobStatus:
    return JobStatus(JobState.LOST, failure="lost", message=message)


class DiracBackend(DetachedJobs):
    """Runs job specs as DIRAC jobs; see the module's text for identity, status and restarts."""

    name = "dirac"
    # The local site's pilot runs on this machine: outputs are written where the shepherd finds them.
    capabilities = Capabilities(detached=True, arrays=False, dependencies=False, shared_filesystem=True)

    def __init__(
        self,
        state_dir: Path,
        url: str | None = None,
        credentials_path: Path | None = None,
        batch_size: int = MAX_BATCH,
        max_jobs: int = 2000,
        poll_seconds: float = 5.0,
        lost_after_seconds: float = 300.0,
        python: str | None = None,
        session: DiracSession | None = None,
        passthrough: Sequence[str] = (),
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH or max_jobs < 1:
            raise BadInput(f"dirac: batch_size must be 1-{MAX_BATCH} and max_jobs positive")
        self.state_dir = Path(state_dir)
        self.jobs_dir = self.state_dir / "jobs"
        self.pending_dir = self.state_dir / "pending"
        # Descriptions hold every task's argv and environment: this user's only (the site's pilot runs as it).
        private_directory(self.state_dir)
        for directory in (self.jobs_dir, self.pending_dir):
            private_directory(directory, tighten=True)
        # What every job takes from its node's environment beyond the safe base (settings).
        self.passthrough = tuple(passthrough)
        self.batch_size = batch_size
        self._start_tracking(max_jobs, poll_seconds, lost_after_seconds)
        self.python = python or sys.executable
        self.session = session or DiracSession(url, credentials_path)
        self._groups: dict[str, str] = {}  # job id -> JobGroup
        self._logs_done: set[str] = set()
        self._closed: set[str] = set()  # job ids whose pending file is gone
        self._down_since: float | None = None
        self._down_reminded = 0.0
        self.health = ServiceHealth(DIRAC, self.session.url or "DiracX (DIRACX_URL)")
        self._prune()

    # -- the Backend protocol -----------------------------------------------------------------

    def submit(self, jobs: Sequence[JobSpec]) -> list[str]:
        ids: list[str] = []
        for start in range(0, len(jobs), self.batch_size):
            ids += self._submit_batch(jobs[start : start + self.batch_size])
        return ids

    def poll(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        ids = list(dict.fromkeys(job_ids))
        real = [i for i in ids if i.isdigit()]
        self._close_pending(real)  # the caller recorded these ids
        if real and self._query_due(real):
            self._refresh(real)
        return {job_id: self._status(job_id) for job_id in ids}

    def cancel(self, job_ids: Sequence[str]) -> None:
        """Set the jobs Killed (the pilot stops a running payload when it sees it)."""
        real = sorted({i for i in job_ids if i.isdigit()}, key=int)
        if not real:
            return
        self._close_pending(real)
        now = datetime.now(UTC)
        record = {"Status": "Killed", "MinorStatus": "Cancelled by osa-grid", "Source": "osa-grid"}
        try:
            refused = self.session.set_statuses({int(i): {now: record} for i in real})
        except BackendError as exc:
            event(log, "dirac_cancel_failed", level=30, jobs=len(real), error=exc)
            return
        for job_id in real:
            if int(job_id) not in refused:
                self._known[job_id] = JobStatus(JobState.FAILED, failure="cancelled", message="cancelled")
        if refused:
            # A job already final cannot be killed: its own end stands.
            event(log, "dirac_cancel_refused", jobs=len(refused))

    def adopt(self, task_ids: Sequence[str]) -> dict[str, str]:
        """Job ids of jobs DiracX has for these pending tasks, submitted but never recorded."""
        pending = {t: p for t in task_ids if (p := self._read_pending(t)) is not None}
        if not pending:
            return {}
        by_group: dict[str, list[str]] = defaultdict(list)
        for task_id, description in pending.items():
            by_group[str(description["group"])].append(task_id)
        adopted: dict[str, str] = {}
        for group, tasks in by_group.items():
            try:
                rows = self.session.search(
                    [
                        {"parameter": "JobGroup", "operator": "eq", "value": group},
                        {"parameter": "JobName", "operator": "in", "values": tasks},
                    ],
                    SEARCH_PARAMETERS,
                )
            except BackendError as exc:
                # Not finding a job is an answer only when DiracX answered; guessing could run it twice.
                raise BackendError(f"cannot tell whether tasks were submitted to DIRAC: {exc}") from exc
            for row in sorted(rows, key=lambda r: int(r["JobID"])):
                job_id = str(row["JobID"])
                task_id = str(row["JobName"])
                written = parse_time(pending[task_id].get("written"))
                submitted = parse_time(row.get("SubmissionTime"))
                known = self._read_description(job_id)
                if known is not None and known.get("token") != pending[task_id].get("token"):
                    continue  # an earlier attempt, recorded at the time
                # Same token: DiracX answered this submission and the crash came before the catalog
                # recorded the id; no description: it came before DiracX answered. This attempt either way.
                if written is not None and submitted is not None and submitted < written - timedelta(hours=1):
                    continue  # older than this reservation by far: not this attempt
                self._write_description(job_id, pending[task_id])
                self._groups[job_id] = group
                self._known[job_id] = status_of(row)
                adopted[task_id] = job_id
        event(log, "dirac_adopted", tasks=len(adopted))
        return adopted

    def close(self) -> None:
        """The jobs belong to DIRAC and go on; only the connection is closed."""
        self.session.close()

    # -- submission -------------------------------------------------------------------------------

    def _submit_batch(self, specs: Sequence[JobSpec]) -> list[str]:
        token = secrets.token_hex(8)
        descriptions = [self._description(spec, token) for spec in specs]
        for spec, description in zip(specs, descriptions, strict=True):
            _write_json(self.pending_dir / f"{spec.task_id}.json", description)
        jdls = [self._jdl(spec, str(d["group"])) for spec, d in zip(specs, descriptions, strict=True)]
        try:
            job_ids = self.session.submit(jdls)
        except BackendNotReached as exc:
            self._server_down(exc)
            return self._not_submitted(specs, token, f"DIRAC unreachable ({exc}): it will be submitted again")
        except BackendUnavailable as exc:
            # The request may have reached the server: only adoption can tell (at the next start).
            raise BackendError(
                f"submission to DIRAC ended without an answer ({exc}): run the production again to resume"
            ) from exc
        except BackendError as exc:
            for spec in specs:
                (self.pending_dir / f"{spec.task_id}.json").unlink(missing_ok=True)
            return self._rejected(specs, token, str(exc))
        self._server_up()
        ids = [str(job_id) for job_id in job_ids]
        for job_id, description in zip(ids, descriptions, strict=True):
            self._write_description(job_id, description)
            self._groups[job_id] = str(description["group"])
            self._known[job_id] = JobStatus(JobState.QUEUED, message="submitted")
        self._asked.update(ids)
        event(log, "dirac_submitted", jobs=len(ids), batch=token, first=ids[0] if ids else None)
        return ids

    def _description(self, spec: JobSpec, token: str) -> dict[str, Any]:
        element = Element(
            task_id=spec.task_id,
            argv=list(spec.argv),
            env=dict(spec.env),
            workdir=str(spec.workdir),
            stdout=str(spec.stdout),
            stderr=str(spec.stderr),
            inherit=[*self.passthrough, *spec.inherit],
        )
        return {
            "version": DESCRIPTION_VERSION,
            "token": token,
            "group": job_group(spec.name),
            "written": datetime.now(UTC).isoformat(),
            "element": element.__dict__,
        }

    def _jdl(self, spec: JobSpec, group: str) -> str:
        try:
            return build_jdl(
                spec,
                group,
                self.python,
                ["-m", "osa_grid.backends.dirac_job", str(self.jobs_dir / "%j.json")],
                input_data=spec.input_lfns,
                environment=Environment(spec.software, spec.container),
            )
        except ValueError as exc:
            raise BadInput(f"dirac: task {spec.task_id}: {exc}") from exc

    def _not_submitted(self, specs: Sequence[JobSpec], token: str, problem: str) -> list[str]:
        ids = [f"unsent-{token}-{i}" for i in range(len(specs))]
        for job_id in ids:
            self._pseudo[job_id] = _lost(problem)
        for spec in specs:
            (self.pending_dir / f"{spec.task_id}.json").unlink(missing_ok=True)
        # Said once per outage by _server_down; this line is for -v.
        event(log, "dirac_unsent", batch=token, jobs=len(ids), error=problem)
        return ids

    def _rejected(self, specs: Sequence[JobSpec], token: str, problem: str) -> list[str]:
        ids = [f"rejected-{token}-{i}" for i in range(len(specs))]
        status = JobStatus(JobState.FAILED, failure="failed", message=f"DIRAC refused the job: {problem}")
        for job_id in ids:
            self._pseudo[job_id] = status
        event(log, "dirac_rejected", level=30, batch=token, jobs=len(ids), error=problem)
        return ids

    # -- server outages --------------------------------------------------------------------------------

    def _server_down(self, exc: BackendError) -> None:
        self.health.not_reached(str(exc))
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = self._down_reminded = now
            event(
                log,
                "dirac_server_down",
                level=30,
                url=self.session.url,
                error=exc,
                effect="no task fails for it: jobs keep their last known state, submissions wait for it",
            )
        elif now - self._down_reminded >= DOWN_REMINDER_SECONDS:
            self._down_reminded = now
            event(log, "dirac_server_still_down", level=30, seconds=round(now - self._down_since), error=exc)

    def _server_up(self) -> None:
        self.health.answered()
        if self._down_since is not None:
            seconds = round(time.monotonic() - self._down_since)
            self._down_since = None
            event(log, "dirac_server_back", level=30, url=self.session.url, down_seconds=seconds)

    # -- status ---------------------------------------------------------------------------------------

    def _refresh(self, ids: Sequence[str]) -> None:
        by_group: dict[str, list[str]] = defaultdict(list)
        for job_id in ids:
            by_group[self._group_of(job_id)].append(job_id)
        now = time.monotonic()
        self._last_query = now
        for group, members in sorted(by_group.items()):
            conditions: list[dict[str, Any]] = [
                {"parameter": "JobID", "operator": "in", "values": [int(i) for i in members]}
            ]
            if group:
                conditions.insert(0, {"parameter": "JobGroup", "operator": "eq", "value": group})
            try:
                rows = self.session.search(conditions, SEARCH_PARAMETERS)
            except BackendUnavailable as exc:
                # A restart: the jobs are where they were. Keep what we knew.
                self._server_down(exc)
                continue
            except BackendError as exc:
                event(log, "dirac_search_refused", level=30, group=group, error=exc)
                continue
            self._server_up()
            self._asked.update(members)
            found = {str(row["JobID"]): row for row in rows}
            for job_id in members:
                row = found.get(job_id)
                if row is None:
                    since = self._unknown_since.setdefault(job_id, now)
                    if now - since >= self.lost_after_seconds:
                        self._known[job_id] = _lost(f"DIRAC has no job {job_id}")
                    continue
                self._unknown_since.pop(job_id, None)
                status = status_of(row)
                if str(row.get("Status")) in FINAL_STATES and job_id not in self._logs_done:
                    status = self._with_logs(job_id, status)
                self._known[job_id] = status

    def _with_logs(self, job_id: str, status: JobStatus) -> JobStatus:
        """Copy the job's output sandbox (its stdout/stderr) into the task's log files."""
        description = self._read_description(job_id)
        if description is None:
            self._logs_done.add(job_id)
            return status
        element = description["element"]
        try:
            files = self.session.read_output_sandbox(int(job_id))
        except BackendError as exc:
            if isinstance(exc, BackendUnavailable):
                # Report the end at the next poll, with its logs.
                return self._known.get(job_id, JobStatus(JobState.RUNNING, message="fetching logs"))
            files = None
            event(log, "dirac_sandbox_failed", level=30, job=job_id, error=exc)
        self._logs_done.add(job_id)
        if files is None:
            return status
        for name, target in (("stdout.log", element["stdout"]), ("stderr.log", element["stderr"])):
            if name in files:
                path = Path(target)
                path.parent.mkdir(parents=True, exist_ok=True)
                _write_log(path, files[name])
        if status.state == JobState.FAILED and "stderr.log" in files:
            tail = files["stderr.log"].decode(errors="replace").strip().splitlines()[-3:]
            if tail:
                message = f"{status.message}; stderr: {' | '.join(tail)}"
                return dataclasses.replace(status, message=message)
        return status

    def _status(self, job_id: str) -> JobStatus:
        if not job_id.isdigit():
            return self._pseudo.get(job_id, _lost(f"{job_id} is not a DIRAC job id"))
        return self._known.get(job_id, JobStatus(JobState.QUEUED, message="not yet seen by DIRAC"))

    def _group_of(self, job_id: str) -> str:
        if job_id not in self._groups:
            description = self._read_description(job_id)
            self._groups[job_id] = str(description["group"]) if description else ""
        return self._groups[job_id]

    # -- files ----------------------------------------------------------------------------------------

    def _write_description(self, job_id: str, description: Mapping[str, Any]) -> None:
        _write_json(self.jobs_dir / f"{job_id}.json", {**description, "job_id": int(job_id)})

    def _read_description(self, job_id: str) -> dict[str, Any] | None:
        return _read_json(self.jobs_dir / f"{job_id}.json")

    def _read_pending(self, task_id: str) -> dict[str, Any] | None:
        return _read_json(self.pending_dir / f"{task_id}.json")

    def _close_pending(self, job_ids: Iterable[str]) -> None:
        """The shepherd recorded these job ids: their tasks' pending files are settled."""
        for job_id in job_ids:
            if job_id in self._closed:
                continue
            description = self._read_description(job_id)
            if description is not None:
                pending_path = self.pending_dir / f"{description['element']['task_id']}.json"
                pending = _read_json(pending_path)
                if pending is not None and pending.get("token") == description.get("token"):
                    pending_path.unlink(missing_ok=True)
            self._closed.add(job_id)

    def _prune(self) -> None:
        cutoff = time.time() - KEEP_FILES.total_seconds()
        for directory in (self.jobs_dir, self.pending_dir):
            for path in directory.iterdir():
                try:
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                except OSError:
                    pass  # another backend on the same directory got there first


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    write_private_file(path, json.dumps(data, separators=(",", ":")))  # the pilot never reads half of it


def _write_log(path: Path, content: bytes) -> None:
    """A task's log from its output sandbox, this user's only like the logs of the other backends."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def from_settings(settings: Settings) -> DiracBackend:
    url = settings.dirac_url or os.environ.get("DIRACX_URL")
    if not url:
        raise BadInput(
            "the dirac backend needs the server's URL: set dirac_url (OSA_GRID_DIRAC_URL) or DIRACX_URL"
        )
    credentials = settings.dirac_credentials_path
    if credentials is None and os.environ.get("DIRACX_CREDENTIALS_PATH"):
        credentials = Path(os.environ["DIRACX_CREDENTIALS_PATH"])
    return DiracBackend(
        state_dir=dirac_state_dir(settings),
        url=url,
        credentials_path=credentials,
        batch_size=settings.dirac_batch_size,
        max_jobs=settings.dirac_max_jobs,
        poll_seconds=settings.dirac_poll_seconds,
        lost_after_seconds=settings.dirac_lost_after_seconds,
        passthrough=settings.step_env_passthrough,
    )


def dirac_state_dir(settings: Settings) -> Path:
    """Where the backend writes job descriptions (and where the local site's pilot reads them)."""
    return settings.work_directory / ".dirac-backend"
