"""The local backend: a bounded pool of processes on this machine.

Jobs wait in a FIFO queue and start as soon as the free cores *and* memory admit the job at the
head of the queue (a job bigger than the whole machine starts alone when nothing else runs, rather
than never). Starting happens in ``submit`` and in every ``poll``; nothing runs in the background,
so there are no threads and no SIGCHLD handler to interfere with the rest of the program.

Every job runs in its own session (process group), so a time-out or a cancellation reaches the
whole tree the command started. Signalling never blocks the caller: SIGTERM is sent at once, and
SIGKILL follows ``kill_grace_seconds`` later from ``poll``/``wait_any`` (``close`` waits for it).

While a job runs, ``state_dir/<job_id>.pid`` holds its pid and kernel start time. If the shepherd
dies without cleaning up, a later ``LocalBackend`` on the same directory can still cancel the
orphan by job id, and the start time guarantees it never kills a recycled pid.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import select
import signal
import subprocess
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from osa_grid.config import Settings
from osa_grid.errors import BadInput
from osa_grid.ports import Capabilities, JobSpec, JobState, JobStatus

log = logging.getLogger(__name__)

# Finished statuses kept after they were reported once, so a repeated poll still answers.
REPORTED_KEEP = 100_000
# Default depth of the queue, in jobs per core.
QUEUE_DEPTH_PER_CORE = 4
# Sleep step of wait_any where the kernel offers no pidfds to wait on.
POLL_STEP_SECONDS = 0.005
# close() waits at most this long for SIGKILLed processes to be reaped.
REAP_TIMEOUT_SECONDS = 2.0
# The shape of ids this backend hands out; ids from outside are checked before naming a file.
JOB_ID_PATTERN = re.compile(r"^[0-9]+-[0-9]+-[0-9a-f]+$")
# Indexes into /proc/<pid>/stat after the ")" closing the command name (field 3 is index 0).
_STAT_PGRP = 2
_STAT_START_TICKS = 19


@dataclass
class _Running:
    spec: JobSpec
    popen: subprocess.Popen[bytes]
    started_at: datetime
    started: float  # time.monotonic() at launch
    pidfd: int | None  # readable once the process has exited; None where pidfds are unavailable
    cause: str | None = None  # "timeout" or "cancelled" once we asked it to stop
    term_sent: float | None = None
    kill_sent: bool = False

    @property
    def walltime_seconds(self) -> float:
        return self.spec.resources.walltime.total_seconds()

    def next_deadline(self, grace: float) -> float:
        """When this job next needs a signal from us (monotonic time), or infinity."""
        if self.term_sent is None:
            return self.started + self.walltime_seconds
        if not self.kill_sent:
            return self.term_sent + grace
        return math.inf


class LocalBackend:
    """Runs jobs as child processes of this process, within a core and memory budget."""

    name = "local"
    capabilities = Capabilities(detached=False)

    def __init__(
        self,
        state_dir: Path,
        max_cores: int | None = None,
        max_memory_gb: float | None = None,
        kill_grace_seconds: float = 5.0,
        queue_depth: int | None = None,
    ) -> None:
        self.max_cores = max_cores if max_cores is not None else os.cpu_count() or 1
        # Jobs accepted beyond the running ones: a core that frees starts the next job at once (in
        # wait_any or poll) instead of idling until the shepherd's next pass, and the shepherd handles
        # finished jobs in batches rather than one pass per job.
        self.queue_depth = QUEUE_DEPTH_PER_CORE * self.max_cores if queue_depth is None else queue_depth
        self.max_memory_gb = max_memory_gb if max_memory_gb is not None else total_memory_gb()
        if self.max_cores < 1 or self.max_memory_gb <= 0:
            raise BadInput("the local backend needs at least one core and some memory")
        if self.queue_depth < 0:
            raise BadInput("the local backend's queue depth cannot be negative")
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.kill_grace_seconds = kill_grace_seconds
        self._seq = 0
        # FIFO of queued ids; a cancelled id leaves _queued at once and the deque lazily.
        self._queue: deque[str] = deque()
        self._queued: dict[str, JobSpec] = {}
        self._running: dict[str, _Running] = {}
        self._cores_used = 0
        self._memory_used = 0.0
        self._unreported: dict[str, JobStatus] = {}
        self._reaped_since_poll = False
        self._reported: OrderedDict[str, JobStatus] = OrderedDict()

    # -- the Backend protocol -----------------------------------------------------------------

    def submit(self, jobs: Sequence[JobSpec]) -> list[str]:
        ids = []
        for spec in jobs:
            job_id = self._new_id()
            self._queue.append(job_id)
            self._queued[job_id] = spec
            ids.append(job_id)
        self._step()
        return ids

    def poll(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        self._step()
        self._reaped_since_poll = False
        return {job_id: self._status(job_id) for job_id in job_ids}

    def cancel(self, job_ids: Sequence[str]) -> None:
        """Stop the jobs; returns at once (running jobs get SIGKILL from a later poll if needed)."""
        now = time.monotonic()
        for job_id in job_ids:
            if job_id in self._queued:
                del self._queued[job_id]
                self._finish(job_id, _cancelled_before_start())
            elif job_id in self._running:
                self._terminate(self._running[job_id], "cancelled", now)
            elif job_id not in self._unreported and job_id not in self._reported:
                self._kill_orphan(job_id)

    def adopt(self, task_ids: Sequence[str]) -> dict[str, str]:
        """An earlier process's jobs are killed as orphans, never adopted."""
        return {}

    def free_slots(self) -> int:
        return max(0, self.max_cores + self.queue_depth - self._cores_used - len(self._queued))

    def wait_any(self, timeout: float) -> None:
        """Block until jobs have finished since the last poll and the queue needs refilling, or ``timeout``.

        A job that exits is reaped here and its core given to the next queued job, so the pool stays busy
        while the shepherd does its bookkeeping; while the queue still holds more than half its depth the
        cores have work, and waiting on lets the shepherd handle the finished jobs in one batch.
        """
        end = time.monotonic() + max(0.0, timeout)
        while True:
            now = time.monotonic()
            self._enforce_deadlines(now)
            if self._running and self._any_exited():
                self._step()
            # Not "a status is unreported": a cancelled job's status may never be polled.
            if not self._running or (self._reaped_since_poll and len(self._queued) <= self.queue_depth // 2):
                return
            wake = min([end, *(job.next_deadline(self.kill_grace_seconds) for job in self._running.values())])
            if wake <= now:
                return
            self._sleep(wake - now)

    def close(self) -> None:
        """Cancel every queued and running job, waiting at most the kill grace plus a little."""
        self.cancel(list(self._queued))
        self.cancel(list(self._running))
        end = time.monotonic() + self.kill_grace_seconds
        while self._running and time.monotonic() < end:
            self._reap()
            if self._running:
                self._sleep(min(0.05, end - time.monotonic()))
        for job in self._running.values():
            self._signal(job, signal.SIGKILL)
            try:
                job.popen.wait(REAP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                # Left with its pid file, so a later instance can still clean it up.
                log.warning("job process %d did not die after SIGKILL", job.popen.pid)
        self._reap()

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- queue and launching ------------------------------------------------------------------

    def _new_id(self) -> str:
        # The pid tells shepherds on one state_dir apart, the random part instances in one process.
        self._seq += 1
        return f"{os.getpid()}-{self._seq}-{secrets.token_hex(4)}"

    def _step(self) -> None:
        """Reap first so that finished jobs free their cores before the queue is pumped."""
        self._reap()
        self._enforce_deadlines(time.monotonic())
        self._pump()

    def _pump(self) -> None:
        while self._queue:
            job_id = self._queue[0]
            spec = self._queued.get(job_id)
            if spec is None:  # cancelled while queued
                self._queue.popleft()
                continue
            if not self._admits(spec):
                return
            self._queue.popleft()
            del self._queued[job_id]
            self._launch(job_id, spec)

    def _admits(self, spec: JobSpec) -> bool:
        if not self._running:
            return True  # even a job bigger than the machine, alone
        resources = spec.resources
        return (
            self._cores_used + resources.cores <= self.max_cores
            # A little slack: sums of floats such as 0.1 GB drift.
            and self._memory_used + resources.memory_gb <= self.max_memory_gb + 1e-9
        )

    def _launch(self, job_id: str, spec: JobSpec) -> None:
        try:
            stdout, stderr = _open_logs(spec)
        except OSError as exc:
            self._finish(job_id, _launch_failure(None, f"cannot open the job's log files: {exc}"))
            return
        try:
            popen = subprocess.Popen(
                list(spec.argv),
                env=os.environ | dict(spec.env),
                cwd=spec.workdir,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:
            message = f"cannot start {_command(spec)}: {exc}"
            stderr.write(message.encode() + b"\n")
            self._finish(job_id, _launch_failure(_exec_exit_code(exc), message))
            return
        finally:
            # The child holds its own descriptors; ours would leak with thousands of jobs.
            stdout.close()
            stderr.close()
        self._track(job_id, spec, popen)

    def _track(self, job_id: str, spec: JobSpec, popen: subprocess.Popen[bytes]) -> None:
        job = _Running(spec, popen, _utcnow(), time.monotonic(), _open_pidfd(popen.pid))
        self._running[job_id] = job
        self._cores_used += spec.resources.cores
        self._memory_used += spec.resources.memory_gb
        self._write_pid_file(job_id, popen.pid)

    # -- finishing ------------------------------------------------------------------------------

    def _any_exited(self) -> bool:
        return any(job.popen.poll() is not None for job in self._running.values())

    def _reap(self) -> None:
        done = [(job_id, job) for job_id, job in self._running.items() if job.popen.poll() is not None]
        for job_id, job in done:
            del self._running[job_id]
            self._cores_used -= job.spec.resources.cores
            self._memory_used -= job.spec.resources.memory_gb
            if job.pidfd is not None:
                os.close(job.pidfd)
            self._pid_file(job_id).unlink(missing_ok=True)
            self._finish(job_id, _final_status(job))
            self._reaped_since_poll = True
        if not self._running:
            self._memory_used = 0.0  # no float residue once the pool is empty

    def _finish(self, job_id: str, status: JobStatus) -> None:
        self._unreported[job_id] = status

    def _status(self, job_id: str) -> JobStatus:
        job = self._running.get(job_id)
        if job is not None:
            return JobStatus(JobState.RUNNING, started_at=job.started_at)
        if job_id in self._queued:
            return JobStatus(JobState.QUEUED)
        status = self._unreported.pop(job_id, None)
        if status is not None:
            self._reported[job_id] = status
            if len(self._reported) > REPORTED_KEEP:
                self._reported.popitem(last=False)
            return status
        status = self._reported.get(job_id)
        if status is not None:
            return status
        return JobStatus(JobState.LOST, failure="lost", message="the local backend does not know this job")

    # -- signals --------------------------------------------------------------------------------

    def _enforce_deadlines(self, now: float) -> None:
        for job in self._running.values():
            if now < job.next_deadline(self.kill_grace_seconds):
                continue
            if job.term_sent is None:
                self._terminate(job, "timeout", now)
            else:  # the grace after SIGTERM is over
                self._signal(job, signal.SIGKILL)
                job.kill_sent = True

    def _terminate(self, job: _Running, cause: str, now: float) -> None:
        if job.term_sent is not None:
            return  # already stopping; the first cause is the one reported
        job.cause = cause
        job.term_sent = now
        if self.kill_grace_seconds <= 0:
            self._signal(job, signal.SIGKILL)
            job.kill_sent = True
        else:
            self._signal(job, signal.SIGTERM)

    def _signal(self, job: _Running, sig: signal.Signals) -> None:
        # Once reaped, the pid may belong to someone else; an unreaped zombie still holds it.
        if job.popen.returncode is not None:
            return
        try:
            os.killpg(job.popen.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            log.warning("not allowed to signal job process group %d", job.popen.pid)

    def _sleep(self, seconds: float) -> None:
        """Sleep until a running job exits (pidfds) or ``seconds`` pass (short steps otherwise)."""
        seconds = max(0.0, seconds)  # a negative timeout would make poll() wait forever
        fds = [job.pidfd for job in self._running.values()]
        if not fds or any(fd is None for fd in fds):
            time.sleep(min(seconds, POLL_STEP_SECONDS))
            return
        poller = select.poll()
        for fd in fds:
            if fd is not None:
                poller.register(fd, select.POLLIN)
        poller.poll(min(math.ceil(seconds * 1000), 60_000))

    # -- pid files and orphans ------------------------------------------------------------------

    def _pid_file(self, job_id: str) -> Path:
        return self.state_dir / f"{job_id}.pid"

    def _write_pid_file(self, job_id: str, pid: int) -> None:
        path = self._pid_file(job_id)
        temporary = path.with_name(path.name + ".tmp")
        record = {"pid": pid, "start_ticks": start_ticks(pid)}
        try:
            # Written aside and renamed, so a reader after a crash never sees half a record.
            temporary.write_text(json.dumps(record))
            os.replace(temporary, path)
        except OSError as exc:
            log.warning("cannot write %s (the job could not be cleaned up after a crash): %s", path, exc)

    def _kill_orphan(self, job_id: str) -> None:
        """Kill a job left by a dead shepherd, if its pid still names the same process."""
        if not JOB_ID_PATTERN.match(job_id):
            return  # not one of ours, and it must not become a path
        path = self._pid_file(job_id)
        record = _read_pid_file(path)
        if record is None:
            return
        pid, ticks = record
        stat = proc_stat(pid)
        if ticks is not None and stat is not None and stat[_STAT_START_TICKS] == str(ticks):
            _kill_process_group(pid, int(stat[_STAT_PGRP]))
        # Killed, gone, or a recycled pid: in every case the record has served its purpose.
        path.unlink(missing_ok=True)


# -- helpers ------------------------------------------------------------------------------------


def total_memory_gb() -> float:
    """The machine's memory in GiB from /proc/meminfo; unlimited where that cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024**2
    except (OSError, ValueError, IndexError):
        pass
    return math.inf


def proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (after the command name, which may contain spaces)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22): a pid plus this is unique."""
    stat = proc_stat(pid)
    return int(stat[_STAT_START_TICKS]) if stat is not None else None


def _read_pid_file(path: Path) -> tuple[int, int | None] | None:
    try:
        record = json.loads(path.read_text())
        pid = record["pid"]
        ticks = record.get("start_ticks")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("ignoring unreadable pid file %s: %s", path, exc)
        return None
    if not isinstance(pid, int) or pid <= 1 or not (ticks is None or isinstance(ticks, int)):
        log.warning("ignoring pid file %s with an invalid record", path)
        return None
    return pid, ticks


def _kill_process_group(pid: int, pgrp: int) -> None:
    try:
        if pgrp == pid:
            os.killpg(pid, signal.SIGKILL)
        else:  # the job left its own group; at least its main process goes
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _open_pidfd(pid: int) -> int | None:
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        return int(pidfd_open(pid))
    except OSError:  # an old kernel, or out of descriptors: wait_any falls back to sleeping
        return None


def _open_logs(spec: JobSpec) -> tuple[BinaryIO, BinaryIO]:
    spec.stdout.parent.mkdir(parents=True, exist_ok=True)
    spec.stderr.parent.mkdir(parents=True, exist_ok=True)
    stdout = open(spec.stdout, "wb")  # noqa: SIM115 - closed by _launch once the child has it
    if Path(spec.stderr) == Path(spec.stdout):
        # One file for both: a second handle would truncate it and write over the first.
        return stdout, open(os.dup(stdout.fileno()), "wb")
    try:
        return stdout, open(spec.stderr, "wb")
    except OSError:
        stdout.close()
        raise


def _command(spec: JobSpec) -> str:
    return repr(spec.argv[0]) if spec.argv else "an empty command"


def _exec_exit_code(exc: Exception) -> int:
    """What a shell would say: 126 found but not executable, 127 not found."""
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == 8:  # ENOEXEC
        return 126
    return 127


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _launch_failure(exit_code: int | None, message: str) -> JobStatus:
    now = _utcnow()
    return JobStatus(
        JobState.FAILED, exit_code=exit_code, failure="failed", message=message, started_at=now, ended_at=now
    )


def _cancelled_before_start() -> JobStatus:
    return JobStatus(
        JobState.FAILED, failure="cancelled", message="cancelled before it started", ended_at=_utcnow()
    )


def _final_status(job: _Running) -> JobStatus:
    returncode = job.popen.returncode
    exit_code = returncode if returncode >= 0 else 128 - returncode
    if job.cause == "timeout":
        failure, message = "timeout", f"wall time {job.spec.resources.walltime} exceeded"
    elif job.cause == "cancelled":
        failure, message = "cancelled", "cancelled while running"
    elif returncode == 0:
        return JobStatus(JobState.SUCCEEDED, exit_code=0, started_at=job.started_at, ended_at=_utcnow())
    elif returncode < 0:
        failure, message = "failed", f"killed by signal {_signal_name(-returncode)}"
    else:
        failure, message = "failed", f"exit code {returncode}"
    return JobStatus(
        JobState.FAILED,
        exit_code=exit_code,
        failure=failure,
        message=message,
        started_at=job.started_at,
        ended_at=_utcnow(),
    )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def from_settings(settings: Settings) -> LocalBackend:
    return LocalBackend(
        state_dir=settings.work_directory / ".local-backend",
        max_cores=settings.max_cores,
        max_memory_gb=settings.max_memory_gb,
    )
