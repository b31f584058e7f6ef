"""The SLURM backend: tasks run as elements of array jobs, submitted and watched with SLURM's own commands.

Every command is an argv list (no shell). One ``submit`` makes one array job per group of tasks sharing a
job name (production.transformation) and resources; element *i* runs the *i*-th task's command through
``osa_grid.backends.slurm_runner``, which reads it from a manifest written before sbatch. Job ids are
"ARRAY_INDEX", e.g. "12345_7".

Identity and restart safety: each array job's ``--comment`` starts with ``osa-grid batch=TOKEN``, and the
manifest ``state_dir/batches/TOKEN.jsonl`` lists the task of every element. A batch is *open* until the
shepherd shows that it recorded its job ids (by polling or cancelling one of them), then a ``.recorded``
marker closes it. ``adopt`` looks only at open batches: after a crash between sbatch and the catalog, the
job is found in squeue/sacct by its token and nothing is submitted twice; a task's earlier, closed
attempts are never mistaken for the current one.

Status: one squeue and one sacct call per poll for all jobs (at most every ``poll_seconds``). A scheduler
that does not answer is retried with backoff; if it still does not, poll returns what it knew before -
never LOST or FAILED because SLURM is down. A job unknown to both squeue and sacct for longer than
``lost_after_seconds`` is LOST.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from osa_grid.backends.detached import DetachedJobs
from osa_grid.backends.slurm_parsing import (
    COMMENT_PREFIX,
    ArrayRequest,
    SbatchOptions,
    SchedulerRecord,
    array_groups,
    array_job_id,
    batch_comment,
    classify_sbatch_failure,
    element_job_id,
    is_slurm_job_id,
    lost_status,
    merge_records,
    parse_sacct,
    parse_sbatch_output,
    parse_squeue,
    sacct_argv,
    sacct_by_name_argv,
    sbatch_argv,
    sbatch_error,
    squeue_argv,
    squeue_by_name_argv,
    status_of,
)
from osa_grid.backends.slurm_runner import Element, header_line, read_header, read_task_ids
from osa_grid.config import Settings
from osa_grid.core.stepenv import step_environment
from osa_grid.errors import BackendError, BadInput
from osa_grid.logs import event, get_logger
from osa_grid.ports import Capabilities, JobSpec, JobState, JobStatus
from osa_grid.system import private_directory, write_private_file

log = get_logger("slurm")

# First pause between two tries of a failing command (doubled each time).
FIRST_BACKOFF_SECONDS = 0.5
# sbatch is tried this often when the controller cannot be reached.
SUBMIT_ATTEMPTS = 3
# Batches (manifests, markers, logs) older than this are deleted when a backend starts.
KEEP_BATCHES = timedelta(days=14)
# adopt() searches sacct from this long before the oldest open manifest was written.
ADOPT_MARGIN = timedelta(hours=1)
BATCH_SCRIPT = """#!{python}
# osa-grid array job {token}: element $SLURM_ARRAY_TASK_ID runs its task's command, read from the manifest.
import sys
from osa_grid.backends.slurm_runner import main
sys.exit(main({manifest!r}))
"""


@dataclass(frozen=True)
class _Result:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


@dataclass(frozen=True)
class _Batch:
    """An open manifest: a batch submitted, or about to be, whose job ids may not be in the catalog."""

    token: str
    name: str
    task_ids: list[str]
    written: datetime


class SlurmBackend(DetachedJobs):
    """Runs job specs as SLURM array jobs; see the module's text for identity, status and restarts."""

    name = "slurm"
    capabilities = Capabilities(detached=True, arrays=True, dependencies=True)

    def __init__(
        self,
        state_dir: Path,
        slurm_conf: Path | None = None,
        options: SbatchOptions | None = None,
        array_throttle: int = 100,
        max_jobs: int = 2000,
        max_array_size: int = 1000,
        poll_seconds: float = 5.0,
        lost_after_seconds: float = 300.0,
        command_timeout: float = 60.0,
        retry_seconds: float = 20.0,
        python: str | None = None,
        bin_dir: Path | None = None,
        passthrough: Sequence[str] = (),
    ) -> None:
        if max_jobs < 1 or max_array_size < 1 or array_throttle < 0:
            raise BadInput("slurm: max_jobs and max_array_size must be positive, array_throttle not negative")
        self.state_dir = Path(state_dir)
        self.batch_dir = self.state_dir / "batches"
        # The manifests hold every task's argv and environment: this user's only (the jobs run as this user).
        private_directory(self.state_dir)
        private_directory(self.batch_dir, tighten=True)
        # What every job takes from its node's environment beyond the safe base (settings).
        self.passthrough = tuple(passthrough)
        self.slurm_conf = slurm_conf
        self.options = options or SbatchOptions()
        self.array_throttle = array_throttle
        self._start_tracking(max_jobs, poll_seconds, lost_after_seconds)
        self.max_array_size = max_array_size
        self.command_timeout = command_timeout
        self.retry_seconds = retry_seconds
        self.python = _checked_python(python or sys.executable)
        self.bin_dir = bin_dir
        self._cancelled: set[str] = set()
        self._tokens: dict[str, str] = {}  # array job id -> batch token
        self._closed: set[str] = set()  # tokens whose .recorded marker exists
        self._prune_batches()

    # -- the Backend protocol -----------------------------------------------------------------

    def submit(self, jobs: Sequence[JobSpec]) -> list[str]:
        """One array job per group of jobs with the same name and resources; ids in the jobs' order."""
        ids = [""] * len(jobs)
        for positions in array_groups(jobs, self.max_array_size):
            batch_ids = self._submit_batch([jobs[p] for p in positions])
            for position, job_id in zip(positions, batch_ids, strict=True):
                ids[position] = job_id
        return ids

    def poll(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        ids = list(dict.fromkeys(job_ids))
        slurm_ids = [i for i in ids if is_slurm_job_id(i)]
        if slurm_ids and self._query_due(slurm_ids):
            self._refresh(slurm_ids)
        return {job_id: self._status(job_id) for job_id in ids}

    def cancel(self, job_ids: Sequence[str]) -> None:
        """One scancel for all; ids of batches that never reached SLURM need nothing."""
        slurm_ids = sorted({i for i in job_ids if is_slurm_job_id(i)})
        if not slurm_ids:
            return
        self._cancelled.update(slurm_ids)
        self._close_batches({array_job_id(i) for i in slurm_ids})  # the caller had these ids recorded
        if self._retrying([self._command("scancel"), *slurm_ids], query=False) is None:
            event(log, "slurm_cancel_failed", level=30, jobs=len(slurm_ids))

    def adopt(self, task_ids: Sequence[str]) -> dict[str, str]:
        """Job ids of open batches' elements for these tasks, found in SLURM by the batch token."""
        wanted = set(task_ids)
        batches = [b for b in self._open_batches() if wanted.intersection(b.task_ids)]
        if not batches:
            return {}
        self._wait_for_sbatch_in_flight({b.token for b in batches})
        arrays = self._find_arrays(batches)
        adopted: dict[str, str] = {}
        # A later array wins if a task is in two open batches (the newest submission is the current one).
        for batch in sorted(batches, key=lambda b: int(arrays.get(b.token, "0"))):
            array = arrays.get(batch.token)
            if array is None:
                continue
            self._tokens[array] = batch.token
            for index, task_id in enumerate(batch.task_ids):
                if task_id in wanted:
                    adopted[task_id] = element_job_id(array, index)
                    self._known.setdefault(adopted[task_id], JobStatus(JobState.QUEUED))
        event(log, "slurm_adopted", tasks=len(adopted), batches=len(arrays))
        return adopted

    def close(self) -> None:
        """Nothing to stop: the jobs belong to SLURM and go on without us."""

    # -- submission -----------------------------------------------------------------------------

    def _submit_batch(self, specs: Sequence[JobSpec]) -> list[str]:
        token = secrets.token_hex(8)
        name = specs[0].name or "osa-grid"
        manifest = self._write_manifest(token, name, specs)
        request = ArrayRequest(
            name=name,
            comment=batch_comment(token, name, len(specs)),
            size=len(specs),
            resources=specs[0].resources,
            log=self.batch_dir / f"{token}.log",
            directory=self.batch_dir,
            throttle=self.array_throttle,
            options=self.options,
        )
        script = BATCH_SCRIPT.format(python=self.python, token=token, manifest=str(manifest))
        argv = sbatch_argv(request, self._command("sbatch"))
        inherit = sorted({name for spec in specs for name in self._inherit(spec)})
        array, problem, accepted = self._sbatch(argv, script, token, name, inherit)
        if array is not None:
            return self._accepted(array, token, len(specs))
        # Never reached SLURM: no job will read the manifest, and adopt() must not look for it.
        manifest.unlink(missing_ok=True)
        return self._not_submitted(token, len(specs), problem, rejected=not accepted)

    def _sbatch(
        self, argv: list[str], script: str, token: str, name: str, inherit: Sequence[str]
    ) -> tuple[str | None, str, bool]:
        """(array job id, or None and why, and whether trying again later may succeed)."""
        delay = FIRST_BACKOFF_SECONDS
        problem = ""
        for attempt in range(1, SUBMIT_ATTEMPTS + 1):
            result = self._run(argv, stdin=script, env=self._submit_env(inherit))
            if result.ok:
                return parse_sbatch_output(result.stdout), "", True
            problem = "timed out" if result.timed_out else sbatch_error(result.stderr)
            kind = classify_sbatch_failure(result.stderr, result.timed_out)
            if kind == "rejected":
                return None, problem, False
            if kind == "unknown":
                time.sleep(delay)  # a busy controller may still be working on the request
                found = self._find_submitted(token, name)
                if found is not None:
                    return found, "", True
            event(log, "slurm_sbatch_retry", level=30, batch=token, attempt=attempt, error=problem)
            if attempt < SUBMIT_ATTEMPTS:
                time.sleep(delay)
                delay *= 2
        return None, problem, True

    def _accepted(self, array: str, token: str, size: int) -> list[str]:
        self._tokens[array] = token
        ids = [element_job_id(array, index) for index in range(size)]
        for job_id in ids:
            self._known[job_id] = JobStatus(JobState.QUEUED, message="submitted")
        self._asked.update(ids)  # known to be queued: the next poll need not ask before its time
        event(log, "slurm_submitted", array=array, batch=token, size=size)
        return ids

    def _not_submitted(self, token: str, size: int, problem: str, rejected: bool) -> list[str]:
        """Ids SLURM never heard of: refused jobs fail (retry rules decide), unsent ones come back as LOST."""
        prefix = "rejected" if rejected else "unsent"
        ids = [f"{prefix}-{token}-{index}" for index in range(size)]
        if rejected:
            status = JobStatus(
                JobState.FAILED, failure="failed", message=f"sbatch refused the job: {problem}"
            )
        else:
            status = lost_status(f"not submitted, SLURM unreachable ({problem}): it will be submitted again")
        for job_id in ids:
            self._pseudo[job_id] = status
        event(log, f"slurm_{prefix}", level=30, batch=token, size=size, error=problem)
        return ids

    def _find_submitted(self, token: str, name: str) -> str | None:
        """After an sbatch that may or may not have got through: its array job id, if SLURM has it."""
        records = self._query_records(squeue_by_name_argv([name], self._command("squeue")), parse_squeue)
        if records is None:
            raise BackendError(
                f"sbatch of batch {token} failed without saying whether the job was accepted, and squeue "
                "does not answer: run the production again to resume (adoption settles it)"
            )
        for record in records.values():
            if record.token == token:
                return array_job_id(record.job_id)
        return None

    def _write_manifest(self, token: str, name: str, specs: Sequence[JobSpec]) -> Path:
        path = self.batch_dir / f"{token}.jsonl"
        lines = [header_line(token, name, len(specs))]
        lines += [_element(spec, self._inherit(spec)).to_json() for spec in specs]
        # Complete before sbatch, and never half-written: elements may start the moment sbatch returns.
        write_private_file(path, "\n".join(lines) + "\n")
        return path

    def _inherit(self, spec: JobSpec) -> tuple[str, ...]:
        """The names the job takes from its node's environment beyond the safe base."""
        return (*self.passthrough, *spec.inherit)

    # -- status -----------------------------------------------------------------------------------

    def _refresh(self, slurm_ids: Sequence[str]) -> None:
        arrays = sorted({array_job_id(i) for i in slurm_ids}, key=int)
        queued = self._query_records(squeue_argv(arrays, self._command("squeue")), parse_squeue)
        accounted = self._query_records(sacct_argv(arrays, self._command("sacct")), parse_sacct)
        self._last_query = now = time.monotonic()
        self._asked.update(slurm_ids)
        if queued is None or accounted is None:
            event(log, "slurm_unreachable", level=30, squeue=queued is not None, sacct=accounted is not None)
        self._learn_tokens(queued or {})
        for job_id in slurm_ids:
            record = merge_records(
                queued.get(job_id) if queued is not None else None,
                self._ours(accounted.get(job_id) if accounted is not None else None),
            )
            if record is not None:
                self._seen(job_id, record)
            elif queued is not None and accounted is not None:
                self._unseen(job_id, now)
            # else: one of the two did not answer and may know the job: keep what we knew.
        self._close_batches(arrays)

    def _learn_tokens(self, records: Mapping[str, SchedulerRecord]) -> None:
        for record in records.values():
            if record.token is not None:
                self._tokens.setdefault(array_job_id(record.job_id), record.token)

    def _ours(self, record: SchedulerRecord | None) -> SchedulerRecord | None:
        """None for an accounting row of another job with the same id (ids restart with a fresh
        controller state, and wrap around): its batch token is not the one we submitted."""
        if record is None:
            return None
        token = self._tokens.get(array_job_id(record.job_id))
        return record if token is None or record.token == token else None

    def _seen(self, job_id: str, record: SchedulerRecord) -> None:
        self._known[job_id] = status_of(record)
        self._unknown_since.pop(job_id, None)
        if record.token is not None:
            self._tokens.setdefault(array_job_id(job_id), record.token)

    def _unseen(self, job_id: str, now: float) -> None:
        """Neither squeue nor sacct knows the job: cancelled while pending, or really lost."""
        if job_id in self._cancelled:
            # SLURM forgets array elements cancelled before they started: no record anywhere.
            self._known[job_id] = JobStatus(
                JobState.FAILED, failure="cancelled", message="cancelled before it started"
            )
            return
        since = self._unknown_since.setdefault(job_id, now)
        if now - since >= self.lost_after_seconds:
            self._known[job_id] = lost_status(f"SLURM has no record of job {job_id} (squeue and sacct)")

    def _status(self, job_id: str) -> JobStatus:
        if not is_slurm_job_id(job_id):
            return self._pseudo.get(job_id, lost_status(f"{job_id} is not a SLURM job id"))
        return self._known.get(job_id, JobStatus(JobState.QUEUED, message="not yet seen by SLURM"))

    def _query_records(
        self, argv: list[str], parse: Callable[[str], dict[str, SchedulerRecord]]
    ) -> dict[str, SchedulerRecord] | None:
        """Records by job id, or None if the command kept failing (the scheduler is down or restarting)."""
        result = self._retrying(argv, query=True)
        return None if result is None else parse(result.stdout)

    def _retrying(self, argv: list[str], query: bool) -> _Result | None:
        """Run a command until it succeeds or ``retry_seconds`` are spent, with doubling pauses."""
        deadline = time.monotonic() + self.retry_seconds
        delay = FIRST_BACKOFF_SECONDS
        while True:
            result = self._run(argv, env=self._query_env() if query else self._base_env())
            if result.ok:
                return result
            if "Invalid job id specified" in result.stderr:
                # squeue/scancel when none of the ids is known (any more): an answer, not an error.
                return _Result(0, "", result.stderr)
            if time.monotonic() + delay > deadline:
                problem = "timed out" if result.timed_out else result.stderr.strip()[-300:]
                event(log, "slurm_command_failed", level=30, command=Path(argv[0]).name, error=problem)
                return None
            time.sleep(delay)
            delay *= 2

    # -- adoption and the batch files ---------------------------------------------------------------

    def _open_batches(self) -> list[_Batch]:
        batches = []
        for path in sorted(self.batch_dir.glob("*.jsonl")):
            if path.with_suffix(".recorded").exists():
                continue
            try:
                header = read_header(path)
                task_ids = read_task_ids(path)
                written = datetime.fromtimestamp(path.stat().st_mtime, UTC)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                event(log, "slurm_bad_manifest", level=30, path=path, error=exc)
                continue
            batches.append(_Batch(str(header["token"]), str(header["name"]), task_ids, written))
        return batches

    def _find_arrays(self, batches: Sequence[_Batch]) -> dict[str, str]:
        """Batch token -> array job id, for the batches SLURM has (one squeue and one sacct call)."""
        names = sorted({b.name for b in batches})
        since = min(b.written for b in batches) - ADOPT_MARGIN
        queued = self._query_records(squeue_by_name_argv(names, self._command("squeue")), parse_squeue)
        accounted = self._query_records(sacct_by_name_argv(names, since, self._command("sacct")), parse_sacct)
        found: dict[str, str] = {}
        for records in (queued, accounted):
            for record in (records or {}).values():
                if record.token is not None:
                    found[record.token] = array_job_id(record.job_id)
        missing = {b.token for b in batches} - set(found)
        if missing and (queued is None or accounted is None):
            # Not finding a job is only an answer when both sources answered; guessing would run it twice.
            raise BackendError(
                f"cannot tell whether {len(missing)} batch(es) reached SLURM: the scheduler does not answer"
            )
        return found

    def _wait_for_sbatch_in_flight(self, tokens: set[str]) -> None:
        """An sbatch left running by a killed shepherd may still submit: wait for it before looking."""
        deadline = time.monotonic() + self.command_timeout
        while _sbatch_running(tokens) and time.monotonic() < deadline:
            time.sleep(0.2)

    def _close_batches(self, arrays: Iterable[str]) -> None:
        """Mark these arrays' batches as recorded in the catalog, so adopt() never considers them again."""
        for array in arrays:
            token = self._tokens.get(array)
            if token is None or token in self._closed:
                continue
            marker = self.batch_dir / f"{token}.recorded"
            try:
                marker.touch()
            except OSError as exc:
                event(log, "slurm_marker_failed", level=30, path=marker, error=exc)
                continue
            self._closed.add(token)

    def _prune_batches(self) -> None:
        cutoff = time.time() - KEEP_BATCHES.total_seconds()
        for path in self.batch_dir.iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                pass  # another backend on the same directory got there first

    # -- running commands -----------------------------------------------------------------------

    def _command(self, name: str) -> str:
        return str(self.bin_dir / name) if self.bin_dir is not None else name

    def _base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.slurm_conf is not None:
            env["SLURM_CONF"] = str(self.slurm_conf)
        return env

    def _query_env(self) -> dict[str, str]:
        # Times as Unix seconds, and --starttime read as UTC: nothing depends on the machine's time zone.
        return {**self._base_env(), "SLURM_TIME_FORMAT": "%s", "TZ": "UTC"}

    def _submit_env(self, inherit: Sequence[str]) -> dict[str, str]:
        # sbatch hands its environment to the job (and SLURM keeps it with the job's record): only what the
        # steps may have, never the shepherd's secrets. SBATCH_* variables (e.g. of a shepherd itself running
        # in a SLURM job) would change our options: they are not in the safe base.
        return step_environment(self._base_env(), {}, inherit)

    def _run(self, argv: list[str], env: Mapping[str, str], stdin: str | None = None) -> _Result:
        try:
            completed = subprocess.run(
                argv,
                input=stdin,
                stdin=None if stdin is not None else subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=dict(env),
                timeout=self.command_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            return _Result(-1, _text(exc.stdout), _text(exc.stderr), timed_out=True)
        except OSError as exc:
            raise BackendError(f"cannot run {argv[0]}: {exc} (is SLURM's client installed?)") from exc
        return _Result(completed.returncode, completed.stdout, completed.stderr)


# -- helpers ----------------------------------------------------------------------------------------


def _element(spec: JobSpec, inherit: Sequence[str]) -> Element:
    return Element(
        task_id=spec.task_id,
        argv=list(spec.argv),
        env=dict(spec.env),
        workdir=str(spec.workdir),
        stdout=str(spec.stdout),
        stderr=str(spec.stderr),
        inherit=list(inherit),
    )


def _checked_python(python: str) -> str:
    # It becomes the batch script's "#!" line, which takes one absolute path without blanks.
    if not os.path.isabs(python) or any(c.isspace() for c in python):
        raise BadInput(
            f"slurm: the Python for the job runner must be an absolute path without blanks: {python!r}"
        )
    return python


def _sbatch_running(tokens: set[str]) -> bool:
    markers = [f"{COMMENT_PREFIX}{token}".encode() for token in tokens]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() != "sbatch":
                continue
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if any(marker in cmdline for marker in markers):
            return True
    return False


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value or ""


def from_settings(settings: Settings) -> SlurmBackend:
    return SlurmBackend(
        state_dir=settings.work_directory / ".slurm-backend",
        slurm_conf=settings.slurm_conf,
        options=SbatchOptions(
            settings.slurm_partition, settings.slurm_account, tuple(settings.slurm_sbatch_args)
        ),
        array_throttle=settings.slurm_array_throttle,
        max_jobs=settings.slurm_max_jobs,
        poll_seconds=settings.slurm_poll_seconds,
        lost_after_seconds=settings.slurm_lost_after_seconds,
        python=settings.slurm_python,
        bin_dir=settings.slurm_bin_dir,
        passthrough=settings.step_env_passthrough,
    )
