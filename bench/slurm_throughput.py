"""Submission and completion throughput on the local SLURM cluster: one array job vs. one job per task.

Both modes go through the real ``SlurmBackend`` (manifest, sbatch, the per-element runner, squeue + sacct
polls), with tasks that run ``/bin/true``:

- ``array``: ``submit`` of N tasks makes one array job of N elements (no throttle): one sbatch call;
- ``single``: the same backend with ``max_array_size=1``: N sbatch calls, one job each.

For each repeat the table's clock starts before ``submit``: *submit* is how long ``submit`` took, *done*
how long until every job was seen finished by ``poll`` (every 0.2 s). The modes alternate (array, single,
array, ...) so that the noise of a shared machine falls on both; figures are medians over the repeats.
The cluster advertises 8 CPUs on a 2-core machine (scripts/slurm/start.sh), so completion is bounded by
the scheduler's cycle and the node's job starts, not by the tasks.

    bash scripts/slurm/start.sh
    .venv/bin/python bench/slurm_throughput.py                  # 200 tasks, 3 repeats (about 2 minutes)
    .venv/bin/python bench/slurm_throughput.py --tasks 50 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table

from osa_grid.backends.slurm import SlurmBackend
from osa_grid.core.models import Resources
from osa_grid.ports import JobSpec, JobState

ROOT = Path(__file__).resolve().parent.parent
FINAL = (JobState.SUCCEEDED, JobState.FAILED, JobState.LOST)
MODES = ("array", "single")

console = Console(width=110)


@dataclass
class Samples:
    submit: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)


def _conf() -> Path:
    explicit = os.environ.get("OSA_GRID_SLURM_CONF")
    if explicit:
        return Path(explicit)
    directory = os.environ.get("OSA_GRID_SLURM_DIR") or ROOT / ".services" / "slurm"
    return Path(directory) / "etc" / "slurm.conf"


def _tasks(root: Path, count: int) -> list[JobSpec]:
    resources = Resources(cores=1, memory_gb=0.1, walltime=timedelta(minutes=5))
    return [
        JobSpec(
            task_id=f"t{i}",
            argv=["/bin/true"],
            env={},
            workdir=root / f"t{i}",
            stdout=root / f"t{i}" / "stdout.log",
            stderr=root / f"t{i}" / "stderr.log",
            resources=resources,
            name="bench.throughput",
        )
        for i in range(count)
    ]


def run_once(mode: str, count: int, conf: Path) -> tuple[float, float]:
    """(seconds in submit, seconds until every job is finished) for one repeat of one mode."""
    with tempfile.TemporaryDirectory(prefix=f"slurm-bench-{mode}-") as directory:
        root = Path(directory)
        backend = SlurmBackend(
            root / "state",
            slurm_conf=conf,
            array_throttle=0,
            max_array_size=count if mode == "array" else 1,
            max_jobs=count,
            poll_seconds=0.2,
        )
        jobs = _tasks(root, count)
        started = time.monotonic()
        ids = backend.submit(jobs)
        submitted = time.monotonic() - started
        deadline = started + 30 * 60
        while True:
            statuses = backend.poll(ids)
            if all(s.state in FINAL for s in statuses.values()):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{mode}: jobs still running after 30 minutes")
            time.sleep(0.2)
        done = time.monotonic() - started
        failed = [i for i, s in statuses.items() if s.state != JobState.SUCCEEDED]
        if failed:
            raise SystemExit(f"{mode}: {len(failed)} job(s) did not succeed, e.g. {statuses[failed[0]]}")
        return submitted, done


def _table(count: int, repeats: int, samples: dict[str, Samples]) -> Table:
    table = Table(title=f"SLURM throughput: {count} tasks of /bin/true, medians of {repeats} repeat(s)")
    for column in ("mode", "submit s", "submitted jobs/s", "done s", "completed jobs/s", "samples done s"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode in MODES:
        submit = statistics.median(samples[mode].submit)
        done = statistics.median(samples[mode].done)
        spread = " ".join(f"{d:.1f}" for d in samples[mode].done)
        table.add_row(
            mode, f"{submit:.3f}", f"{count / submit:.0f}", f"{done:.1f}", f"{count / done:.1f}", spread
        )
    array, single = samples["array"], samples["single"]
    submit_ratio = statistics.median(single.submit) / statistics.median(array.submit)
    done_ratio = statistics.median(single.done) / statistics.median(array.done)
    table.add_row("array speed-up", f"x{submit_ratio:.0f}", "", f"x{done_ratio:.2f}", "", "", style="bold")
    return table


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=200, help="tasks per repeat (default 200)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each mode (default 3)")
    args = parser.parse_args()
    conf = _conf()
    if not conf.is_file():
        print(f"no SLURM cluster configuration at {conf}: run scripts/slurm/start.sh first", file=sys.stderr)
        return 2
    samples = {mode: Samples() for mode in MODES}
    for repeat in range(1, args.repeats + 1):
        for mode in MODES:
            submitted, done = run_once(mode, args.tasks, conf)
            samples[mode].submit.append(submitted)
            samples[mode].done.append(done)
            console.print(f"repeat {repeat} {mode:>6}: submit {submitted:.3f} s, all done {done:.1f} s")
    console.print(_table(args.tasks, args.repeats, samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
