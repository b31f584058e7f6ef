"""The local backend: a bounded pool of processes on this machine.

Jobs wait in a FIFO queue and start as soon as the free cores *and* memory admit the job at the
head of the queue (a job bigger than the whole machine starts alone when nothing else runs, rather
than never). One launcher thread of the pool starts the jobs, reaps them and enforces their wall
times: a core that frees gets its next job at once, whatever the shepherd is doing, and the cost of
a launch (fork/exec, opening the log files; the GIL is released in both) overlaps the shepherd's
bookkeeping. It waits on pidfds and a wake-up pipe: there is no SIGCHLD handler to interfere with the
rest of the program. Every other method runs in the caller's thread and shares the pool's state
with the launcher under one lock.

Every job runs in its own session (process group), so a time-out or a cancellation reaches the
whole tree the command started. Signalling never blocks the caller: SIGTERM is sent at once, and
SIGKILL follows ``kill_grace_seconds`` later from the launcher (``close`` waits for it).

Each pool appends to its journal, ``state_dir/<pid>-<token>.jobs``, a line when a job starts (its
job id, pid and kernel start time) and one when it ends. If the shepherd dies without cleaning up,
a later ``LocalBackend`` on the same directory (or an operator's cancel from another process) can
still cancel the orphan by job id, and the start time guarantees it never kills a recycled pid. A
pool that closes with nothing left running removes its journal; the journal of a dead pool goes
once a later pool reading it finds neither the pool nor any of its jobs alive.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import secrets
import select
import signal
import subprocess
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from osa_grid.config import Settings
from osa_grid.core.stepenv import step_environment
from osa_grid.errors import BackendError, BadInput
from osa_grid.ports import Capabilities, JobSpec, JobState, JobStatus
from osa_grid.system import PRIVATE_FILE_MODE, private_directory

log = logging.getLogger(__name__)

# Finished statuses kept after they were reported once, so a repeated poll still answers.
REPORTED_KEEP = 100_000
# Default depth of the queue, in jobs per core; short jobs deepen it up to MAX_QUEUE_DEPTH_PER_CORE so
# that it holds about QUEUE_WORK_SECONDS of work: the shepherd then handles finished jobs in batches that
# share a pass's fixed cost. Long jobs keep the default (a cron --once pass waits for what it started).
QUEUE_DEPTH_PER_CORE = 4
MAX_QUEUE_DEPTH_PER_CORE = 16
QUEUE_WORK_SECONDS = 1.0
# Weight of the latest job in the running mean of job durations that sizes the queue.
DURATION_WEIGHT = 0.1
# Longest sleep of the launcher where the kernel offers no pidfds to wait on.
POLL_STEP_SECONDS = 0.005
# close() waits at most this long for SIGKILLed processes to be reaped.
REAP_TIMEOUT_SECONDS = 2.0
# The shape of ids this backend hands out; ids from outside are checked before they are looked up.
JOB_ID_PATTERN = re.compile(r"^[0-9]+-[0-9]+-[0-9a-f]+$")
JOURNAL_SUFFIX = ".jobs"
# Indexes into /proc/<pid>/stat after the ")" closing the command name (field 3 is index 0).
_STAT_PGRP = 2
_STAT_START_TICKS = 19
_ZOMBIE = "Z"  # field 3, the process state
_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


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


@dataclass(frozen=True)
class PidRecord:
    """A job's process as a journal knows it: its pid and kernel start time (None if it was unreadable)."""

    pid: int
    start_ticks: int | None

    def is_alive(self) -> bool:
        """The very process that was started (not a recycled pid) still runs (a zombie does not)."""
        stat = proc_stat(self.pid)
        if self.start_ticks is None or stat is None:
            return False
        return stat[_STAT_START_TICKS] == str(self.start_ticks) and stat[0] != _ZOMBIE


@dataclass
class JournalContent:
    """One journal read back: its pool's own process, and its jobs started and never ended."""

    owner: PidRecord | None = None
    open_jobs: dict[str, PidRecord] = field(default_factory=dict)


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
        passthrough: Sequence[str] = (),
    ) -> None:
        self.max_cores = max_cores if max_cores is not None else os.cpu_count() or 1
        # Jobs accepted beyond the running ones: a core that frees starts the next job at once, and the
        # shepherd handles finished jobs in batches rather than one pass per job.
        self.queue_depth = QUEUE_DEPTH_PER_CORE * self.max_cores if queue_depth is None else queue_depth
        self._adaptive_queue = queue_depth is None
        self._mean_job_seconds: float | None = None
        self.max_memory_gb = max_memory_gb if max_memory_gb is not None else total_memory_gb()
        if self.max_cores < 1 or self.max_memory_gb <= 0:
            raise BadInput("the local backend needs at least one core and some memory")
        if self.queue_depth < 0:
            raise BadInput("the local backend's queue depth cannot be negative")
        self.state_dir = Path(state_dir)
        private_directory(self.state_dir)
        self.kill_grace_seconds = kill_grace_seconds
        # What every job takes from this process's environment beyond the safe base (settings).
        self.passthrough = tuple(passthrough)
        self._seq = 0
        # Everything below is shared with the launcher thread and guarded by this lock.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified when jobs ended or were launched
        # FIFO of queued ids; a cancelled id leaves _queued at once and the deque lazily.
        self._queue: deque[str] = deque()
        self._queued: dict[str, JobSpec] = {}
        self._launching: dict[str, JobSpec] = {}  # taken from the queue, being started by the launcher
        self._cancel_on_start: set[str] = set()
        self._running: dict[str, _Running] = {}
        self._cores_used = 0
        self._memory_used = 0.0
        self._unreported: dict[str, JobStatus] = {}
        self._reaped_since_poll = False
        self._reported: OrderedDict[str, JobStatus] = OrderedDict()
        self._launcher: threading.Thread | None = None
        self._stopping = False
        self._launcher_error: BaseException | None = None
        self._wake_read = self._wake_write = -1
        self._journal: _Journal | None = None
        # Open jobs of other pools' journals, read when an unknown job is to be cancelled.
        self._orphans: dict[str, PidRecord] = {}

    # -- the Backend protocol -----------------------------------------------------------------

    def submit(self, jobs: Sequence[JobSpec]) -> list[str]:
        """Queue the jobs; the launcher starts them as cores and memory free up."""
        ids = []
        with self._lock:
            self._raise_if_broken()
            for spec in jobs:
                job_id = self._new_id()
                self._queue.append(job_id)
                self._queued[job_id] = spec
                ids.append(job_id)
        self._ensure_launcher()
        self._wake_launcher()
        return ids

    def poll(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        with self._lock:
            self._raise_if_broken()
            self._reaped_since_poll = False
            return {job_id: self._status(job_id) for job_id in job_ids}

    def cancel(self, job_ids: Sequence[str]) -> None:
        """Stop the jobs; returns at once (running jobs get SIGKILL from the launcher if needed)."""
        unknown = []
        with self._lock:
            now = time.monotonic()
            for job_id in job_ids:
                if job_id in self._queued:
                    del self._queued[job_id]
                    self._finish(job_id, _cancelled_before_start())
                elif job_id in self._launching:
                    self._cancel_on_start.add(job_id)
                elif job_id in self._running:
                    self._terminate(self._running[job_id], "cancelled", now)
                elif job_id not in self._unreported and job_id not in self._reported:
                    unknown.append(job_id)
        self._wake_launcher()  # it sends the SIGKILL once the grace is over
        for job_id in unknown:
            self._kill_orphan(job_id)

    def adopt(self, task_ids: Sequence[str]) -> dict[str, str]:
        """An earlier process's jobs are killed as orphans, never adopted."""
        return {}

    def free_slots(self) -> int:
        with self._lock:
            return max(0, self.max_cores + self.queue_depth - self._cores_used - len(self._queued))

    def wait_any(self, timeout: float) -> None:
        """Block until jobs have finished since the last poll and the queue needs refilling, or ``timeout``.

        The launcher gives a freed core to the next queued job at once, so the pool stays busy while
        the shepherd does its bookkeeping; while the queue still holds more than half its depth the
        cores have work, and waiting on lets the shepherd handle the finished jobs in one batch.
        """
        end = time.monotonic() + max(0.0, timeout)
        with self._changed:
            while not self._worth_a_pass():
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            self._raise_if_broken()

    def close(self) -> None:
        """Cancel every queued and running job, waiting at most the kill grace plus a little."""
        self._stop_launcher()
        self.cancel(list(self._queued))
        self.cancel(list(self._running))
        end = time.monotonic() + self.kill_grace_seconds
        while self._running and time.monotonic() < end:
            self._reap()
            if self._running:
                self._wait_for_exits(self._exit_fds(), min(0.05, end - time.monotonic()))
        for job in self._running.values():
            self._signal(job, signal.SIGKILL)
            try:
                job.popen.wait(REAP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                # Left open in the journal, so a later instance can still clean it up.
                log.warning("job process %d did not die after SIGKILL", job.popen.pid)
        self._reap()
        if self._journal is not None:
            self._journal.close(remove=not self._running)
            self._journal = None

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the launcher thread --------------------------------------------------------------------

    def _new_id(self) -> str:
        # The pid tells shepherds on one state_dir apart, the random part instances in one process.
        self._seq += 1
        return f"{os.getpid()}-{self._seq}-{secrets.token_hex(4)}"

    def _ensure_launcher(self) -> None:
        if self._launcher is not None:
            return
        if self._journal is None:
            self._journal = _Journal(self.state_dir)
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = False
        self._launcher = threading.Thread(target=self._launcher_main, name="local-pool-launcher", daemon=True)
        self._launcher.start()

    def _stop_launcher(self) -> None:
        """Stop the thread; the pool is then driven by the caller alone (``close``)."""
        if self._launcher is None:
            return
        with self._lock:
            self._stopping = True
        self._wake_launcher()
        self._launcher.join()
        self._launcher = None
        os.close(self._wake_read)
        os.close(self._wake_write)
        self._wake_read = self._wake_write = -1

    def _wake_launcher(self) -> None:
        if self._wake_write < 0:
            return
        with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups already
            os.write(self._wake_write, b"!")

    def _launcher_main(self) -> None:
        try:
            while self._launcher_step():
                pass
        except BaseException as exc:  # reported to the shepherd's thread, not lost
            log.exception("the local pool's launcher stopped")
            with self._changed:
                self._launcher_error = exc
                self._changed.notify_all()

    def _launcher_step(self) -> bool:
        """Reap, signal, start what the pool admits, then sleep until something happens; False to stop."""
        with self._lock:
            if self._stopping:
                return False
            self._reap()
            self._enforce_deadlines(time.monotonic())
            admitted = self._take_admitted()
        started = [(job_id, self._start(job_id, spec)) for job_id, spec in admitted]
        with self._changed:
            for job_id, outcome in started:
                self._record_start(job_id, outcome)
            self._changed.notify_all()
            if admitted:
                return True  # the queue may admit more, or a job may have ended meanwhile
            # Nothing running: only a submission, a cancel or close can bring work (through the pipe).
            wake = min(
                (job.next_deadline(self.kill_grace_seconds) for job in self._running.values()),
                default=time.monotonic() + 60.0,
            )
            fds = self._exit_fds()
        self._wait_for_exits(fds, wake - time.monotonic(), self._wake_read)
        _drain(self._wake_read)
        return True

    def _take_admitted(self) -> list[tuple[str, JobSpec]]:
        """Take the jobs the free cores and memory admit off the queue, their resources now reserved."""
        admitted = []
        while self._queue:
            job_id = self._queue[0]
            spec = self._queued.get(job_id)
            if spec is None:  # cancelled while queued
                self._queue.popleft()
                continue
            if not self._admits(spec):
                break
            self._queue.popleft()
            del self._queued[job_id]
            self._launching[job_id] = spec
            self._cores_used += spec.resources.cores
            self._memory_used += spec.resources.memory_gb
            admitted.append((job_id, spec))
        return admitted

    def _admits(self, spec: JobSpec) -> bool:
        if not self._running and not self._launching:
            return True  # even a job bigger than the machine, alone
        resources = spec.resources
        return (
            self._cores_used + resources.cores <= self.max_cores
            # A little slack: sums of floats such as 0.1 GB drift.
            and self._memory_used + resources.memory_gb <= self.max_memory_gb + 1e-9
        )

    def _start(self, job_id: str, spec: JobSpec) -> _Running | JobStatus:
        """Open the logs and start the process, outside the lock: the failure status if it cannot start."""
        try:
            stdout, stderr = _open_logs(spec)
        except OSError as exc:
            return _launch_failure(None, f"cannot open the job's log files: {exc}")
        try:
            popen = subprocess.Popen(
                list(spec.argv),
                env=step_environment(os.environ, spec.env, (*self.passthrough, *spec.inherit)),
                cwd=spec.workdir,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:
            message = f"cannot start {_command(spec)}: {exc}"
            os.write(stderr, message.encode() + b"\n")
            return _launch_failure(_exec_exit_code(exc), message)
        finally:
            # The child holds its own descriptors; ours would leak with thousands of jobs.
            os.close(stdout)
            if stderr != stdout:
                os.close(stderr)
        if self._journal is not None:
            self._journal.started(job_id, popen.pid)
        return _Running(spec, popen, _utcnow(), time.monotonic(), _open_pidfd(popen.pid))

    def _record_start(self, job_id: str, outcome: _Running | JobStatus) -> None:
        spec = self._launching.pop(job_id)
        if isinstance(outcome, JobStatus):
            self._release(spec)
            self._finish(job_id, outcome)
            return
        self._running[job_id] = outcome
        if job_id in self._cancel_on_start:
            self._cancel_on_start.discard(job_id)
            self._terminate(outcome, "cancelled", time.monotonic())

    def _release(self, spec: JobSpec) -> None:
        self._cores_used -= spec.resources.cores
        self._memory_used -= spec.resources.memory_gb
        if not self._running and not self._launching:
            self._memory_used = 0.0  # no float residue once the pool is empty

    def _worth_a_pass(self) -> bool:
        """Whether wait_any should return: there is news for the shepherd, or nothing will ever come."""
        if self._launcher_error is not None:
            return True
        if self._launching:
            return False  # wait for the launcher to finish its round: the pool's state settles
        if not self._running and not self._queued:
            return True
        # Not "a status is unreported": a cancelled job's status may never be polled.
        return self._reaped_since_poll and len(self._queued) <= self.queue_depth // 2

    def _raise_if_broken(self) -> None:
        if self._launcher_error is not None:
            raise BackendError(f"the local pool's launcher stopped: {self._launcher_error!r}")

    # -- finishing ------------------------------------------------------------------------------

    def _reap(self) -> None:
        done = [(job_id, job) for job_id, job in self._running.items() if job.popen.poll() is not None]
        for job_id, job in done:
            del self._running[job_id]
            self._release(job.spec)
            if job.pidfd is not None:
                os.close(job.pidfd)
            if self._journal is not None:
                self._journal.ended(job_id)
            self._finish(job_id, _final_status(job))
            self._reaped_since_poll = True
            self._learn_duration(time.monotonic() - job.started)

    def _learn_duration(self, seconds: float) -> None:
        """Size an adaptive queue to hold about QUEUE_WORK_SECONDS of jobs like the recent ones."""
        if not self._adaptive_queue:
            return
        mean = self._mean_job_seconds
        mean = seconds if mean is None else (1 - DURATION_WEIGHT) * mean + DURATION_WEIGHT * seconds
        self._mean_job_seconds = mean
        per_core = QUEUE_WORK_SECONDS / max(mean, 1e-3)
        self.queue_depth = self.max_cores * int(
            min(MAX_QUEUE_DEPTH_PER_CORE, max(QUEUE_DEPTH_PER_CORE, per_core))
        )

    def _finish(self, job_id: str, status: JobStatus) -> None:
        self._unreported[job_id] = status

    def _status(self, job_id: str) -> JobStatus:
        job = self._running.get(job_id)
        if job is not None:
            return JobStatus(JobState.RUNNING, started_at=job.started_at)
        if job_id in self._queued or job_id in self._launching:
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

    def _exit_fds(self) -> list[int | None]:
        """The running jobs' pidfds (None for a job without one), read under the lock."""
        return [job.pidfd for job in self._running.values()]

    @staticmethod
    def _wait_for_exits(fds: Sequence[int | None], seconds: float, wake_fd: int = -1) -> None:
        """Sleep until a job exits (its pidfd), ``wake_fd`` is written to, or ``seconds`` pass."""
        seconds = max(0.0, seconds)  # a negative timeout would make poll() wait forever
        if any(fd is None for fd in fds):
            seconds = min(seconds, POLL_STEP_SECONDS)  # no pidfd to tell us: look again soon
        poller = select.poll()
        for fd in [*fds, wake_fd]:
            if fd is not None and fd >= 0:
                poller.register(fd, select.POLLIN)
        poller.poll(math.ceil(min(seconds, 60.0) * 1000))  # deadlines may be infinite

    # -- orphans ----------------------------------------------------------------------------------

    def _kill_orphan(self, job_id: str) -> None:
        """Kill a job left by a dead shepherd (or run by another pool), if its pid names the same process."""
        if not JOB_ID_PATTERN.match(job_id):
            return  # not one of ours
        record = self._orphans.pop(job_id, None)
        if record is None:  # read the journals again: another pool may have started it since
            self._orphans = self._other_pools_jobs()
            record = self._orphans.pop(job_id, None)
        if record is not None and record.is_alive():
            stat = proc_stat(record.pid)
            if stat is not None:
                _kill_process_group(record.pid, int(stat[_STAT_PGRP]))

    def _other_pools_jobs(self) -> dict[str, PidRecord]:
        """Open jobs of every other journal in state_dir; a dead pool's journal with nothing alive goes."""
        jobs: dict[str, PidRecord] = {}
        own = self._journal.path if self._journal is not None else None
        for path in sorted(journal_paths(self.state_dir)):
            if path == own:
                continue
            content = read_journal(path)
            if _pool_is_gone(content):
                path.unlink(missing_ok=True)
                continue
            jobs.update(content.open_jobs)
        return jobs


class _Journal:
    """This pool's append-only record of its jobs' processes: one ``write`` a start or an end."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / f"{os.getpid()}-{secrets.token_hex(4)}{JOURNAL_SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, PRIVATE_FILE_MODE)
        self._append(f"owner {os.getpid()} {_ticks_text(os.getpid())}")

    def started(self, job_id: str, pid: int) -> None:
        self._append(f"start {job_id} {pid} {_ticks_text(pid)}")

    def ended(self, job_id: str) -> None:
        self._append(f"end {job_id}")

    def close(self, remove: bool) -> None:
        os.close(self._fd)
        if remove:
            self.path.unlink(missing_ok=True)

    def _append(self, line: str) -> None:
        try:
            # One write of a whole line to an O_APPEND file: a reader after a crash sees it whole or not.
            os.write(self._fd, f"{line}\n".encode())
        except OSError as exc:
            log.warning("cannot write %s (the job could not be cleaned up after a crash): %s", self.path, exc)


def read_journal(path: Path) -> JournalContent:
    """A pool's journal: its owner and the jobs it started and never saw end (bad lines are skipped)."""
    content = JournalContent()
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return content
    for line in lines:
        fields = line.split()
        if fields[:1] == ["owner"] and len(fields) == 3 and fields[1].isdigit():
            content.owner = PidRecord(int(fields[1]), _ticks_value(fields[2]))
        elif fields[:1] == ["start"] and len(fields) == 4 and fields[2].isdigit() and int(fields[2]) > 1:
            content.open_jobs[fields[1]] = PidRecord(int(fields[2]), _ticks_value(fields[3]))
        elif fields[:1] == ["end"] and len(fields) == 2:
            content.open_jobs.pop(fields[1], None)
    return content


def journal_paths(state_dir: Path) -> Iterator[Path]:
    return Path(state_dir).glob(f"*{JOURNAL_SUFFIX}")


def _pool_is_gone(content: JournalContent) -> bool:
    """Neither the pool that wrote the journal nor any job it left open is still alive."""
    owner_alive = content.owner is None or content.owner.is_alive()
    return not owner_alive and not any(record.is_alive() for record in content.open_jobs.values())


def _ticks_text(pid: int) -> str:
    ticks = start_ticks(pid)
    return "-" if ticks is None else str(ticks)


def _ticks_value(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


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
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read().decode(errors="replace")
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22): a pid plus this is unique."""
    stat = proc_stat(pid)
    return int(stat[_STAT_START_TICKS]) if stat is not None else None


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
    except OSError:  # an old kernel, or out of descriptors: the launcher falls back to short sleeps
        return None


def _open_logs(spec: JobSpec) -> tuple[int, int]:
    """Descriptors of the job's stdout and stderr files (the same one when both name one file)."""
    stdout = _create(spec.stdout)
    if Path(spec.stderr) == Path(spec.stdout):
        return stdout, stdout  # one file for both: a second open would truncate it and write over the first
    try:
        return stdout, _create(spec.stderr)
    except OSError:
        os.close(stdout)
        raise


def _create(path: Path) -> int:
    """Create or truncate the file; its directory is made only when missing (the shepherd makes it)."""
    try:
        return os.open(path, _LOG_FLAGS, PRIVATE_FILE_MODE)
    except FileNotFoundError:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, _LOG_FLAGS, PRIVATE_FILE_MODE)


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
        passthrough=settings.step_env_passthrough,
    )
