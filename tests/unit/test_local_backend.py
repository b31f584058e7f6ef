"""The local process-pool backend, with real (short) processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from osa_grid.backends import BACKENDS, create_backend
from osa_grid.backends.local import (
    MAX_QUEUE_DEPTH_PER_CORE,
    QUEUE_DEPTH_PER_CORE,
    LocalBackend,
    journal_paths,
    proc_stat,
    read_journal,
    start_ticks,
)
from osa_grid.core.models import Resources
from osa_grid.errors import BadInput
from osa_grid.ports import JobSpec, JobState, JobStatus

FINAL = {JobState.SUCCEEDED, JobState.FAILED, JobState.LOST}
PY = sys.executable

MakeSpec = Callable[..., JobSpec]


@pytest.fixture
def make_spec(tmp_path: Path) -> MakeSpec:
    """Job specs whose logs go to numbered files under tmp_path/logs."""
    counter = iter(range(1_000_000))

    def make(
        argv: Sequence[str],
        *,
        cores: int = 1,
        memory_gb: float = 0.1,
        walltime: float = 60.0,
        env: dict[str, str] | None = None,
    ) -> JobSpec:
        number = next(counter)
        return JobSpec(
            task_id=f"task{number}",
            argv=list(argv),
            env=env or {},
            workdir=tmp_path,
            stdout=tmp_path / "logs" / f"{number}.out",
            stderr=tmp_path / "logs" / f"{number}.err",
            resources=Resources(cores=cores, memory_gb=memory_gb, walltime=timedelta(seconds=walltime)),
        )

    return make


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[LocalBackend]:
    pool = LocalBackend(tmp_path / "state", max_cores=2, max_memory_gb=8, kill_grace_seconds=1.0)
    yield pool
    pool.close()


def run_to_end(backend: LocalBackend, ids: Sequence[str], timeout: float = 20.0) -> dict[str, JobStatus]:
    """Poll until every job is final, the way the shepherd loop would."""
    end = time.monotonic() + timeout
    pending = set(ids)
    results: dict[str, JobStatus] = {}
    while pending:
        assert time.monotonic() < end, f"jobs still unfinished: {pending}"
        backend.wait_any(0.5)
        for job_id, status in backend.poll(sorted(pending)).items():
            if status.state in FINAL:
                results[job_id] = status
                pending.discard(job_id)
    return results


def wait_for_state(backend: LocalBackend, job_id: str, state: JobState, timeout: float = 10.0) -> JobStatus:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        status = backend.poll([job_id])[job_id]
        if status.state == state:
            return status
        time.sleep(0.01)
    raise AssertionError(f"{job_id} never reached {state}")


def process_gone(pid: int) -> bool:
    """Gone, or a zombie waiting for a parent (in a container pid 1 may not reap)."""
    stat = proc_stat(pid)
    return stat is None or stat[0] == "Z"


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process_gone(pid):
            return True
        time.sleep(0.01)
    return False


def open_jobs(state_dir: Path) -> dict[str, int]:
    """Pid of every job the pools' journals in state_dir record as started and not ended."""
    return {
        job_id: record.pid
        for path in journal_paths(state_dir)
        for job_id, record in read_journal(path).open_jobs.items()
    }


def max_overlap(statuses: Sequence[JobStatus]) -> int:
    """The largest number of jobs whose [started_at, ended_at) intervals overlap."""
    events = []
    for status in statuses:
        assert status.started_at is not None and status.ended_at is not None
        events += [(status.started_at, 1), (status.ended_at, -1)]
    running = peak = 0
    for _, delta in sorted(events, key=lambda event: (event[0], event[1])):
        running += delta
        peak = max(peak, running)
    return peak


def test_success_captures_stdout_and_stderr(
    backend: LocalBackend, make_spec: MakeSpec, tmp_path: Path
) -> None:
    spec = make_spec([PY, "-c", "import sys; print('to out'); print('to err', file=sys.stderr)"])
    [job_id] = backend.submit([spec])
    status = run_to_end(backend, [job_id])[job_id]
    assert status.state == JobState.SUCCEEDED
    assert status.exit_code == 0 and status.failure is None
    assert status.started_at is not None and status.ended_at is not None
    assert status.started_at.tzinfo is not None and status.started_at <= status.ended_at
    assert spec.stdout.read_text() == "to out\n"
    assert spec.stderr.read_text() == "to err\n"
    assert open_jobs(tmp_path / "state") == {}  # its end is in the journal once reaped


def test_shared_stdout_and_stderr_file(backend: LocalBackend, make_spec: MakeSpec) -> None:
    spec = make_spec([PY, "-c", "import sys; print('a', flush=True); print('b', file=sys.stderr)"])
    spec = JobSpec(**{**spec.__dict__, "stderr": spec.stdout})
    [job_id] = backend.submit([spec])
    assert run_to_end(backend, [job_id])[job_id].state == JobState.SUCCEEDED
    assert spec.stdout.read_text() == "a\nb\n"


def test_nonzero_exit_code(backend: LocalBackend, make_spec: MakeSpec) -> None:
    [job_id] = backend.submit([make_spec([PY, "-c", "raise SystemExit(3)"])])
    status = run_to_end(backend, [job_id])[job_id]
    assert (status.state, status.exit_code, status.failure) == (JobState.FAILED, 3, "failed")


def test_killed_by_signal(backend: LocalBackend, make_spec: MakeSpec) -> None:
    [job_id] = backend.submit(
        [make_spec([PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])]
    )
    status = run_to_end(backend, [job_id])[job_id]
    assert (status.state, status.exit_code, status.failure) == (JobState.FAILED, 137, "failed")
    assert "SIGKILL" in status.message


def test_command_not_found_is_a_failed_job(backend: LocalBackend, make_spec: MakeSpec) -> None:
    missing = make_spec(["/nonexistent/osa-grid-command", "x"])
    fine = make_spec(["/bin/true"])
    missing_id, fine_id = backend.submit([missing, fine])
    results = run_to_end(backend, [missing_id, fine_id])
    status = results[missing_id]
    assert (status.state, status.exit_code, status.failure) == (JobState.FAILED, 127, "failed")
    assert "osa-grid-command" in status.message
    assert "osa-grid-command" in missing.stderr.read_text()
    assert results[fine_id].state == JobState.SUCCEEDED  # one bad command does not stop the others


def test_command_not_executable(backend: LocalBackend, make_spec: MakeSpec, tmp_path: Path) -> None:
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    [job_id] = backend.submit([make_spec([str(script)])])
    status = run_to_end(backend, [job_id])[job_id]
    assert (status.state, status.exit_code, status.failure) == (JobState.FAILED, 126, "failed")


def test_walltime_exceeded(backend: LocalBackend, make_spec: MakeSpec) -> None:
    started = time.monotonic()
    [job_id] = backend.submit([make_spec(["/bin/sleep", "30"], walltime=0.5)])
    status = run_to_end(backend, [job_id], timeout=10)[job_id]
    assert (status.state, status.failure, status.exit_code) == (JobState.FAILED, "timeout", 128 + 15)
    assert time.monotonic() - started < 5


def test_walltime_escalates_to_sigkill(tmp_path: Path, make_spec: MakeSpec) -> None:
    code = textwrap.dedent(
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(30)
        """
    )
    with LocalBackend(tmp_path / "state", max_cores=1, kill_grace_seconds=0.3) as pool:
        [job_id] = pool.submit([make_spec([PY, "-c", code], walltime=1.0)])
        status = run_to_end(pool, [job_id], timeout=10)[job_id]
    assert (status.state, status.failure, status.exit_code) == (JobState.FAILED, "timeout", 128 + 9)


def test_cancel_running_job(backend: LocalBackend, make_spec: MakeSpec) -> None:
    [job_id] = backend.submit([make_spec(["/bin/sleep", "30"])])
    wait_for_state(backend, job_id, JobState.RUNNING)
    before = time.monotonic()
    backend.cancel([job_id])
    assert time.monotonic() - before < 0.5  # cancel does not wait for the grace period
    status = run_to_end(backend, [job_id], timeout=10)[job_id]
    assert (status.state, status.failure) == (JobState.FAILED, "cancelled")
    assert status.started_at is not None


def test_cancel_queued_job(tmp_path: Path, make_spec: MakeSpec) -> None:
    with LocalBackend(tmp_path / "state", max_cores=1, kill_grace_seconds=0.5) as pool:
        first, second = pool.submit([make_spec(["/bin/sleep", "30"]), make_spec(["/bin/sleep", "30"])])
        wait_for_state(pool, first, JobState.RUNNING)
        assert pool.poll([second])[second].state == JobState.QUEUED
        pool.cancel([second])
        status = pool.poll([second])[second]
        assert (status.state, status.failure, status.started_at) == (JobState.FAILED, "cancelled", None)
        assert pool.poll([first])[first].state == JobState.RUNNING
        pool.cancel([first])
        assert run_to_end(pool, [first])[first].failure == "cancelled"
        # The cancelled job never starts, even when the core frees up.
        assert pool.poll([second])[second].started_at is None


def test_core_limit(tmp_path: Path, make_spec: MakeSpec) -> None:
    with LocalBackend(tmp_path / "state", max_cores=2, queue_depth=2) as pool:
        ids = pool.submit([make_spec(["/bin/sleep", "0.3"]) for _ in range(4)])
        assert pool.free_slots() == 0
        statuses = list(run_to_end(pool, ids).values())
    assert all(status.state == JobState.SUCCEEDED for status in statuses)
    assert max_overlap(statuses) == 2


def test_memory_limit(tmp_path: Path, make_spec: MakeSpec) -> None:
    with LocalBackend(tmp_path / "state", max_cores=8, max_memory_gb=3) as pool:
        ids = pool.submit([make_spec(["/bin/sleep", "0.2"], memory_gb=2) for _ in range(3)])
        statuses = list(run_to_end(pool, ids).values())
    assert all(status.state == JobState.SUCCEEDED for status in statuses)
    assert max_overlap(statuses) == 1


def test_job_bigger_than_the_machine_runs_alone(tmp_path: Path, make_spec: MakeSpec) -> None:
    with LocalBackend(tmp_path / "state", max_cores=2, max_memory_gb=1) as pool:
        small = make_spec(["/bin/sleep", "0.2"], memory_gb=0.5)
        big = make_spec(["/bin/sleep", "0.2"], cores=4, memory_gb=2)
        ids = pool.submit([small, big, small])
        statuses = run_to_end(pool, ids)
    assert all(status.state == JobState.SUCCEEDED for status in statuses.values())
    big_status = statuses[ids[1]]
    for other in (statuses[ids[0]], statuses[ids[2]]):
        assert max_overlap([big_status, other]) == 1


def test_free_slots_count_the_running_jobs_and_the_queue(tmp_path: Path, make_spec: MakeSpec) -> None:
    with LocalBackend(tmp_path / "state", max_cores=2, queue_depth=2) as pool:
        assert pool.free_slots() == 4
        pool.submit([make_spec(["/bin/sleep", "30"])])
        assert pool.free_slots() == 3
        pool.submit([make_spec(["/bin/sleep", "30"]) for _ in range(3)])
        assert pool.free_slots() == 0


def test_the_queue_holds_four_jobs_per_core_by_default(backend: LocalBackend) -> None:
    assert backend.queue_depth == 8
    assert backend.free_slots() == 10


def test_waiting_returns_once_the_queue_needs_refilling(tmp_path: Path, make_spec: MakeSpec) -> None:
    with LocalBackend(tmp_path / "state", max_cores=1, queue_depth=4) as pool:
        ids = pool.submit([make_spec(["/bin/true"]) for _ in range(4)] + [make_spec(["/bin/sleep", "30"])])
        pool.wait_any(10.0)
        # Jobs ran one after the other, without a poll, until the queue fell to half its depth.
        assert len(pool._queued) <= 2
        finished = [i for i, status in pool.poll(ids).items() if status.state == JobState.SUCCEEDED]
        assert len(finished) >= 2


def test_no_queue_depth_admits_only_what_runs_now(tmp_path: Path, make_spec: MakeSpec) -> None:
    with LocalBackend(tmp_path / "state", max_cores=2, queue_depth=0) as pool:
        pool.submit([make_spec(["/bin/sleep", "30"])])
        assert pool.free_slots() == 1


def test_a_freed_core_starts_the_next_queued_job_while_waiting(tmp_path: Path, make_spec: MakeSpec) -> None:
    with LocalBackend(tmp_path / "state", max_cores=1) as pool:
        first, second = pool.submit([make_spec(["/bin/true"]), make_spec(["/bin/sleep", "30"])])
        pool.wait_any(10.0)
        # No poll in between: wait_any itself reaped the first job and gave its core to the second.
        assert pool._running.keys() == {second}
        assert pool.poll([first])[first].state == JobState.SUCCEEDED


def test_environment_is_passed_through(backend: LocalBackend, make_spec: MakeSpec) -> None:
    code = "import os; print(os.environ['OSA_GRID_TEST_VALUE'], 'PATH' in os.environ)"
    spec = make_spec([PY, "-c", code], env={"OSA_GRID_TEST_VALUE": "hello world"})
    [job_id] = backend.submit([spec])
    assert run_to_end(backend, [job_id])[job_id].state == JobState.SUCCEEDED
    assert spec.stdout.read_text() == "hello world True\n"


def test_no_shell_interpretation(backend: LocalBackend, make_spec: MakeSpec, tmp_path: Path) -> None:
    marker = tmp_path / "should-not-exist"
    argument = f"$(touch {marker}); echo hi `touch {marker}` > {marker} *"
    spec = make_spec(["/bin/echo", argument])
    [job_id] = backend.submit([spec])
    assert run_to_end(backend, [job_id])[job_id].state == JobState.SUCCEEDED
    assert spec.stdout.read_text() == argument + "\n"
    assert not marker.exists()


def test_unknown_ids_are_lost(backend: LocalBackend) -> None:
    statuses = backend.poll(["12-3-abcd", "../../etc/passwd"])
    assert all(status.state == JobState.LOST for status in statuses.values())
    backend.cancel(["12-3-abcd", "../../etc/passwd"])  # nothing to do, and no error


def test_finished_status_is_returned_again(backend: LocalBackend, make_spec: MakeSpec) -> None:
    [job_id] = backend.submit([make_spec(["/bin/true"])])
    first = run_to_end(backend, [job_id])[job_id]
    assert backend.poll([job_id])[job_id] == first


ORPHAN_HELPER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from osa_grid.backends.local import LocalBackend
    from osa_grid.core.models import Resources
    from osa_grid.ports import JobSpec

    state_dir, logs = Path(sys.argv[1]), Path(sys.argv[2])
    pool = LocalBackend(state_dir, max_cores=1)
    spec = JobSpec("orphan", ["/bin/sleep", "60"], {}, logs, logs / "o.out", logs / "o.err", Resources())
    [job_id] = pool.submit([spec])
    while pool.poll([job_id])[job_id].state != "running":  # started by the pool's launcher thread
        time.sleep(0.01)
    print(job_id, flush=True)
    time.sleep(60)
    """
)


def wait_for_journal(state_dir: Path, job_id: str, timeout: float = 10.0) -> int:
    """The pid the journal records for the job once its launcher has started it."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pid = open_jobs(state_dir).get(job_id)
        if pid is not None:
            return pid
        time.sleep(0.01)
    raise AssertionError(f"{job_id} never appeared in a journal of {state_dir}")


def test_orphans_of_a_killed_shepherd_can_be_cancelled(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    shepherd = subprocess.Popen(
        [PY, "-c", ORPHAN_HELPER, str(state_dir), str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert shepherd.stdout is not None
        job_id = shepherd.stdout.readline().strip()
    finally:
        shepherd.send_signal(signal.SIGKILL)
        shepherd.wait()
    pid = open_jobs(state_dir)[job_id]
    assert not process_gone(pid), "the orphan should outlive its shepherd"
    try:
        LocalBackend(state_dir).cancel([job_id])
        assert wait_gone(pid)
        # The next pool that reads the journal finds its shepherd and its job dead, and removes it.
        LocalBackend(state_dir).cancel(["1-1-abcdef"])
        assert list(journal_paths(state_dir)) == []
    finally:
        if not process_gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_recycled_pid_is_never_killed(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    bystander = subprocess.Popen(["/bin/sleep", "30"], start_new_session=True)
    try:
        ticks = start_ticks(bystander.pid)
        assert ticks is not None
        job_id = "1-1-abcdef"
        journal = state_dir / "1-0123abcd.jobs"  # a dead pool (pid 1 never ran a pool) and a recycled pid
        journal.write_text(f"owner 1 -\nstart {job_id} {bystander.pid} {ticks - 1}\n")
        LocalBackend(state_dir).cancel([job_id])
        time.sleep(0.1)
        assert bystander.poll() is None  # still running
        assert not journal.exists()  # the stale record is gone
    finally:
        bystander.kill()
        bystander.wait()


def test_close_kills_running_and_queued_jobs(tmp_path: Path, make_spec: MakeSpec) -> None:
    pool = LocalBackend(tmp_path / "state", max_cores=1, kill_grace_seconds=0.5)
    ids = pool.submit([make_spec(["/bin/sleep", "30"]) for _ in range(2)])
    pid = wait_for_journal(tmp_path / "state", ids[0])
    pool.close()
    assert process_gone(pid)
    assert list(journal_paths(tmp_path / "state")) == []  # nothing left to clean up after a crash
    statuses = pool.poll(ids)
    assert [status.failure for status in statuses.values()] == ["cancelled", "cancelled"]


def test_many_zero_length_jobs(tmp_path: Path, make_spec: MakeSpec) -> None:
    count = 300
    specs = [make_spec(["/bin/true"]) for _ in range(count)]
    descriptors_before = len(os.listdir("/proc/self/fd"))
    with LocalBackend(tmp_path / "state", max_cores=2) as pool:
        started = time.perf_counter()
        ids = pool.submit(specs)
        statuses = run_to_end(pool, ids, timeout=60)
        elapsed = time.perf_counter() - started
    assert all(status.state == JobState.SUCCEEDED for status in statuses.values())
    assert len(os.listdir("/proc/self/fd")) <= descriptors_before  # no leaked log or pid descriptors
    print(f"\n{count} zero-length jobs on 2 cores: {elapsed:.2f} s, {elapsed / count * 1000:.2f} ms per job")


def test_registry_creates_the_local_backend(tmp_path: Path) -> None:
    assert "local" in BACKENDS
    pool = create_backend("local", state_dir=tmp_path / "state", max_cores=1)
    assert isinstance(pool, LocalBackend) and pool.max_cores == 1
    pool.close()


def test_registry_rejects_unknown_names_and_options(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="local"):
        create_backend("nonexistent")
    with pytest.raises(BadInput, match="max_cpus"):
        create_backend("local", state_dir=tmp_path, max_cpus=3)


def test_the_launcher_starts_queued_jobs_while_the_caller_is_busy(
    tmp_path: Path, make_spec: MakeSpec
) -> None:
    with LocalBackend(tmp_path / "state", max_cores=1) as pool:
        ids = pool.submit([make_spec(["/bin/true"]) for _ in range(3)] + [make_spec(["/bin/sleep", "30"])])
        # The caller neither polls nor waits (a shepherd busy with its catalog): the pool goes on alone.
        end = time.monotonic() + 10
        while ids[3] not in pool._running and time.monotonic() < end:
            time.sleep(0.01)
        statuses = pool.poll(ids)
    assert [statuses[i].state for i in ids] == [JobState.SUCCEEDED] * 3 + [JobState.RUNNING]


def test_short_jobs_deepen_the_queue_and_long_ones_keep_the_default(
    tmp_path: Path, make_spec: MakeSpec
) -> None:
    with LocalBackend(tmp_path / "state", max_cores=2) as pool:
        run_to_end(pool, pool.submit([make_spec(["/bin/true"]) for _ in range(20)]))
        assert pool.queue_depth == 2 * MAX_QUEUE_DEPTH_PER_CORE
    with LocalBackend(tmp_path / "state", max_cores=2) as pool:
        run_to_end(pool, pool.submit([make_spec(["/bin/sleep", "1.1"]) for _ in range(2)]))
        assert pool.queue_depth == 2 * QUEUE_DEPTH_PER_CORE
    with LocalBackend(tmp_path / "state", max_cores=2, queue_depth=3) as pool:
        run_to_end(pool, pool.submit([make_spec(["/bin/true"]) for _ in range(5)]))
        assert pool.queue_depth == 3  # a depth given is kept


def test_the_journal_records_starts_and_ends_and_goes_with_a_clean_close(
    tmp_path: Path, make_spec: MakeSpec
) -> None:
    state_dir = tmp_path / "state"
    with LocalBackend(state_dir, max_cores=1) as pool:
        done, running = pool.submit([make_spec(["/bin/true"]), make_spec(["/bin/sleep", "30"])])
        pid = wait_for_journal(state_dir, running)
        run_to_end(pool, [done])
        assert open_jobs(state_dir) == {running: pid}  # the finished job is closed in the journal
    assert list(journal_paths(state_dir)) == []
