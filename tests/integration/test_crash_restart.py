"""Kill the shepherd with SIGKILL at random moments; the restarted run must end exactly like a clean one."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from osa_grid.catalog import schema as s
from osa_grid.catalog.store import Catalog
from osa_grid.core.states import TaskState
from osa_grid.data.checksums import adler32

from .toyworld import ToyWorld, toy_production

pytestmark = pytest.mark.integration

RUNS = [1807, 1808]
KILLS = 8
SUBRUNS = 8


def _prepare(root: Path, database_url: str | None = None) -> tuple[ToyWorld, Path, Path]:
    world = ToyWorld(root, database_url)
    record = root / "executions.log"
    world.add_raw(RUNS, SUBRUNS)
    production = world.write_production(toy_production(record=record, sleep=0.6))
    return world, production, record


def _products(world: ToyWorld) -> dict[str, tuple[str, dict[str, object]]]:
    catalog = world.catalog()
    try:
        found = catalog.query("production = toy")
        return {f.lfn: (f.checksum, f.metadata) for f in found}
    finally:
        catalog.close()


def _done_outputs(catalog_url: str) -> set[str]:
    """File names of the outputs of every task the catalog records as done."""
    catalog = Catalog.open(catalog_url)
    try:
        with catalog.engine.connect() as conn:
            rows = conn.execute(
                sa.select(s.files.c.lfn)
                .join(s.tasks, s.tasks.c.task_id == s.files.c.task_id)
                .where(s.tasks.c.state == TaskState.DONE.value)
            )
            return {lfn.rsplit("/", 1)[-1] for (lfn,) in rows}
    finally:
        catalog.close()


def _executions(record: Path) -> Counter[str]:
    if not record.exists():
        return Counter()
    return Counter(line.split()[1] for line in record.read_text().splitlines() if line.strip())


@pytest.fixture(params=["sqlite", "postgresql"])
def killed_catalog(request: pytest.FixtureRequest) -> str | None:
    """The catalog of the run that gets killed: SQLite, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("postgresql_url"))


def test_sigkill_at_random_moments_gives_the_clean_result(tmp_path: Path, killed_catalog: str | None) -> None:
    clean, clean_production, _ = _prepare(tmp_path / "clean")
    finished = clean.osa_grid("production", "run", str(clean_production), "--no-live")
    assert finished.returncode == 0, finished.stderr
    expected = _products(clean)
    assert len(expected) == len(RUNS) * SUBRUNS + 2 * len(RUNS) + 1

    world, production, record = _prepare(tmp_path / "killed", killed_catalog)
    rng = random.Random(20261122)
    kills = 0
    repeated: list[str] = []
    for trial in range(KILLS + 1):
        done_before = _done_outputs(world.catalog_url)
        executions_before = _executions(record)
        shepherd = world.start("production", "run", str(production), "--no-live")
        # KILLS starts are killed at a random moment; the last one may finish (a loaded machine is slow).
        patience = rng.uniform(0.5, 2.5) if trial < KILLS else 600
        try:
            shepherd.wait(timeout=patience)
            exited = True
        except subprocess.TimeoutExpired:
            os.kill(shepherd.pid, signal.SIGKILL)
            shepherd.wait()
            kills += 1
            exited = False
        # A task recorded as done before this start must not have run again during it.
        new_runs = _executions(record) - executions_before
        repeated += [name for name in new_runs if name in done_before]
        if exited:
            assert shepherd.returncode == 0, shepherd.stderr.read() if shepherd.stderr else ""
            break
    else:
        pytest.fail(f"the production did not finish after {KILLS} kills and a last run of 10 minutes")
    print(
        f"{kills} SIGKILLs, {sum(_executions(record).values())} step executions for {len(expected)} products"
    )
    assert kills >= 3, "the trial should kill the shepherd several times"
    assert repeated == [], f"tasks that had finished ran again: {repeated}"
    assert _products(world) == expected

    # No half-written or unregistered product in the store, and every checksum holds.
    data_root = world.home / "data"
    on_disk = {str(p.relative_to(data_root)) for p in data_root.rglob("*") if p.is_file()}
    assert on_disk == set(expected)
    for lfn, (checksum, _metadata) in expected.items():
        assert adler32(data_root / lfn) == checksum
    # Orphans of killed shepherds were cleaned up: nothing of ours still runs.
    time.sleep(0.2)
    assert not _running_toy_steps(world.root)


def _running_toy_steps(root: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "osa_grid.steps.toy" in cmdline and str(root) in cmdline:
            found.append(int(proc.name))
    return found
