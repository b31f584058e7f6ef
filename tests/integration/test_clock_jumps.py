"""Wall-clock jumps (issue 10), made with libfaketime (Debian's ``faketime``) on real shepherd processes.

A clock that jumps (NTP stepping, an operator fixing the date) moves ``datetime.now`` but not the monotonic
clock. Leases expire in wall-clock time, and step wall times and lease renewals are measured on the
monotonic clock. Checked: a second shepherd whose clock is hours ahead does not take the lease of one that
runs; a shepherd whose clock jumps forward and back while its steps run loses no job, runs no task twice
and ends like an undisturbed run; the catalog's order of events stays the order things happened.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

from osa_grid.catalog.store import Catalog

from .toyworld import ToyWorld, toy_production

pytestmark = pytest.mark.integration

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
RUNS = [1807]
SUBRUNS = 6
TASKS = SUBRUNS + 3  # calibrate per sub-run, merge, reconstruct, summarize


@pytest.fixture
def libfaketime() -> Path:
    if not LIBFAKETIME.is_file() or shutil.which("faketime") is None:
        reason = "libfaketime is missing (bash scripts/faketime/ensure.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return LIBFAKETIME


class JumpingWorld(ToyWorld):
    """A toy world whose osa-grid processes read the wall clock through libfaketime, from a file."""

    clock_file: Path | None = None

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.clock_file is not None:
            env.update(
                LD_PRELOAD=str(LIBFAKETIME),
                FAKETIME_TIMESTAMP_FILE=str(self.clock_file),
                FAKETIME_NO_CACHE="1",  # read the file at every call: the jump happens while it runs
                FAKETIME_DONT_FAKE_MONOTONIC="1",  # a real jump leaves the monotonic clock alone
            )
        return env

    def jump(self, offset: str) -> None:
        assert self.clock_file is not None
        self.clock_file.write_text(f"{offset}\n")


def _world(root: Path, record: Path, clock: bool) -> tuple[JumpingWorld, Path]:
    world = JumpingWorld(root)
    if clock:
        world.clock_file = root / "clock"
        world.clock_file.parent.mkdir(parents=True, exist_ok=True)
        world.jump("+0")
    world.add_raw(RUNS, SUBRUNS)
    production = toy_production(record=record, sleep=1.0)
    for transformation in production["transformations"]:  # type: ignore[attr-defined]
        # The steps run on the real clock: libfaketime breaks Python's sleep (clock_nanosleep) in them,
        # and what is tested is the shepherd's reading of the clock, not the payload's.
        transformation["step"]["env"] = {"LD_PRELOAD": ""}
    return world, world.write_production(production)


def _executions(record: Path) -> Counter[str]:
    return Counter(line.split()[1] for line in record.read_text().splitlines() if line.strip())


def test_a_shepherd_whose_clock_is_hours_ahead_does_not_steal_a_live_lease(
    tmp_path: Path, libfaketime: Path
) -> None:
    record = tmp_path / "executions.log"
    world, production = _world(tmp_path, record, clock=False)
    first = world.start("production", "run", str(production), "--no-live")
    try:
        time.sleep(4)  # its lease is taken, its steps run
        assert first.poll() is None
        ahead = JumpingWorld(tmp_path)
        ahead.clock_file = tmp_path / "clock-ahead"
        ahead.jump("+3h")  # three hours ahead: the lease looks long expired
        second = ahead.osa_grid("production", "run", str(production), "--no-live", timeout=60)
        assert second.returncode == 1, second.stdout + second.stderr
        assert "another shepherd is running it" in second.stderr and "Traceback" not in second.stderr
        first.wait(timeout=180)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, first.stderr.read() if first.stderr else ""
    assert sorted(_executions(record).values()) == [1] * TASKS  # every task once: nobody ran it twice


def test_clock_jumps_while_steps_run_lose_nothing_and_repeat_nothing(
    tmp_path: Path, libfaketime: Path
) -> None:
    record = tmp_path / "executions.log"
    world, production = _world(tmp_path, record, clock=True)
    shepherd = world.start("production", "run", str(production), "--no-live")
    try:
        for offset in ("+2h", "-2h", "+1d", "-30m"):  # forward and back, by more than the lease time
            time.sleep(1.5)
            world.jump(offset)
        shepherd.wait(timeout=180)
    finally:
        if shepherd.poll() is None:
            shepherd.kill()
    assert shepherd.stdout is not None and shepherd.stderr is not None
    assert shepherd.returncode == 0, shepherd.stdout.read()[-3000:] + shepherd.stderr.read()
    assert sorted(_executions(record).values()) == [1] * TASKS
    catalog = Catalog.open(world.catalog_url)
    try:
        tasks = catalog.tasks("toy")
        events = catalog.events(production="toy") + [
            e for t in tasks for e in catalog.events(task_id=t.task_id)
        ]
        products = catalog.query("production = toy")
    finally:
        catalog.close()
    assert {t.state.value for t in tasks} == {"done"} and len(tasks) == TASKS
    assert all(t.attempt == 1 for t in tasks)  # no job was taken for lost and sent again
    assert not [e for e in events if e["kind"] in ("task_lost", "lost", "lease_taken_over")]
    assert len(products) == TASKS
    # The order of a task's events is the order of its states, whatever their wall-clock stamps say.
    for task in tasks:
        states = [e["to_state"] for e in catalog_events(world, task.task_id) if e["to_state"]]
        assert states[-1] == "done" and states.index("submitted") < states.index("done")


def catalog_events(world: ToyWorld, task_id: str) -> list[dict[str, object]]:
    catalog = Catalog.open(world.catalog_url)
    try:
        return catalog.events(task_id=task_id)
    finally:
        catalog.close()
