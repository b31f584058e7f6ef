"""Crash campaign (issue 10): SIGKILL the nightly shepherd at random moments, night after night.

Each *round* is one toy night processed from scratch in the same directory (so paths, task ids and the
workflow's digest are those of the clean run); the shepherd is started, killed at a random moment, started
again, ... until a start closes the night by itself. Rounds go on until ``TRIALS`` shepherds were killed.
After every round: the catalog (LFNs, checksums, metadata), the products on disk and the provenance of
every task equal the clean run's; no task recorded as done before a start ran again during it; the store
holds exactly the registered products (no temporary or half-written file, nothing twice); no step
process of a killed shepherd is left. The figures are printed (``pytest -s``).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from osa_grid.catalog import schema as s
from osa_grid.catalog.store import Catalog
from osa_grid.core.states import TaskState
from osa_grid.data.checksums import adler32
from tests.conftest import _postgresql_database

from .test_crash_restart import _done_outputs, _executions, _running_toy_steps
from .test_nightly import REPO, Site
from .test_slurm_backend import slurm_conf  # noqa: F401  (the fixture: a cluster that answers)

pytestmark = pytest.mark.integration

# A small night: a calibration sequence and two data runs of two sub-runs (10 tasks over 5 steps).
RUNS = [(1805, 1, "DRS4"), (1806, 1, "PEDCALIB"), (1807, 2, "DATA"), (1808, 2, "DATA")]
TRIALS = 50
SLURM_TRIALS = 5
# Kills per round at most: then a start is let finish (a night must end for its result to be checked).
KILLS_PER_ROUND = 12
# Seconds a step "works": long enough for kills to land while steps run, short enough for CI.
STEP_SLEEP = 0.3
ATTEMPT = re.compile(r"attempt-\d+")
# Files of the site that are not products: raw data, inputs, work directories, the status page.
NOT_PRODUCTS = ("R0", "monitoring", "running_analysis", "web/nightly")


class CrashSite(Site):
    """A toy site whose catalog may be on PostgreSQL, with extra environment (a backend's settings)."""

    def __init__(self, root: Path, workflow: Path, database_url: str | None, extra: dict[str, str]) -> None:
        super().__init__(root, workflow)
        self.database_url = database_url
        self.extra = extra

    def env(self) -> dict[str, str]:
        env = {**super().env(), **self.extra}
        if self.database_url is not None:
            env["OSA_GRID_CATALOG_URL"] = self.database_url
        return env

    @property
    def catalog_url(self) -> str:
        return self.database_url or f"sqlite:///{self.root / 'home' / 'catalog.sqlite'}"


@dataclass
class Figures:
    rounds: int = 0
    starts: int = 0
    kills: int = 0
    executions: int = 0
    repeats: list[str] = field(default_factory=list)
    catalogs: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Outcome:
    """What a processed night leaves: the catalog's files, the tasks' provenance, the store's products."""

    files: dict[str, tuple[str, int, dict[str, Any]]]
    provenance: dict[str, dict[str, Any]]
    products: dict[str, str]


def recording_workflow(path: Path, record: Path) -> Path:
    """The toy nightly workflow with every step slowed down and recording its executions in ``record``."""
    workflow = yaml.safe_load((REPO / "workflows" / "toy_nightly.yaml").read_text())
    for transformation in workflow["transformations"]:
        transformation["step"]["argv"][3:3] = ["--sleep", str(STEP_SLEEP), "--record", str(record)]
    path.write_text(yaml.safe_dump(workflow, sort_keys=False))
    return path


def new_night(root: Path, workflow: Path, database_url: str | None, extra: dict[str, str]) -> CrashSite:
    """The same night, from nothing, under ``root`` (what an earlier round left is removed)."""
    for left in ("site", "home", "scratch"):
        shutil.rmtree(root / left, ignore_errors=True)
    site = CrashSite(root, workflow, database_url, extra)
    site.run_summary(RUNS)
    for run, subruns, _kind in RUNS:
        site.raw(run, range(subruns))
    return site


def outcome(site: CrashSite) -> Outcome:
    catalog = Catalog.open(site.catalog_url)
    try:
        with catalog.engine.connect() as conn:
            ids = list(conn.scalars(sa.select(s.files.c.id)))
            done = list(
                conn.scalars(sa.select(s.tasks.c.task_id).where(s.tasks.c.state == TaskState.DONE.value))
            )
            found = catalog.files_by_id(ids, conn)
        files = {f.lfn: (f.checksum, f.size, f.metadata) for f in found}
        assert len(files) == len(found), "an LFN is registered twice"
        provenance = {task_id: _comparable(catalog.provenance(task_id)[-1]) for task_id in done}
    finally:
        catalog.close()
    base = site.base
    products = {
        str(path.relative_to(base)): adler32(path)
        for path in base.rglob("*")
        if path.is_file() and not str(path.relative_to(base)).startswith(NOT_PRODUCTS)
    }
    return Outcome(files, provenance, products)


def _comparable(row: dict[str, Any]) -> dict[str, Any]:
    """A provenance row without what legitimately differs between runs: times, host, job id, attempt."""
    return {
        "argv": [ATTEMPT.sub("attempt-N", arg) for arg in row["argv"]],
        "env": row["env"],
        "software": row["software"],
        "config_digest": row["config_digest"],
        "backend": row["backend"],
        "exit_code": row["exit_code"],
    }


def crash_round(
    site: CrashSite,
    record: Path,
    rng: random.Random,
    figures: Figures,
    kills: int,
    poll: str,
    patience: float,
) -> None:
    """Start, kill at a random moment, start again... ``kills`` times, then let a start close the night."""
    record.unlink(missing_ok=True)
    for trial in range(kills + 1):
        before = _done_outputs(site.catalog_url)
        ran_before = _executions(record)
        shepherd = site.start("--poll", poll, *_backend_option(site.extra))
        figures.starts += 1
        try:
            shepherd.wait(timeout=rng.uniform(0.2, patience) if trial < kills else 300)
            exited = True
        except subprocess.TimeoutExpired:
            os.kill(shepherd.pid, signal.SIGKILL)
            shepherd.wait()
            figures.kills += 1
            exited = False
        ran = _executions(record) - ran_before
        figures.repeats += [name for name in ran if name in before]
        if exited:
            assert shepherd.stdout is not None and shepherd.stderr is not None
            out, err = shepherd.stdout.read(), shepherd.stderr.read()
            assert shepherd.returncode == 0, err
            if "is closed" in out:
                break
    else:
        pytest.fail("the night was not closed after its kills and a last run of 5 minutes")
    figures.rounds += 1
    figures.executions += sum(_executions(record).values())


def check_round(site: CrashSite, clean: Outcome) -> None:
    got = outcome(site)
    assert got.files == clean.files
    assert got.provenance == clean.provenance
    assert got.products == clean.products
    # The store holds exactly the registered products, each with its registered checksum: no temporary
    # or half-written file is left, none is registered twice (published copies under web/ aside).
    stored = {name: checksum for name, checksum in got.products.items() if not name.startswith("web/")}
    registered = {
        lfn: checksum for lfn, (checksum, _size, _meta) in got.files.items() if not lfn.startswith("R0/")
    }
    assert stored == registered
    time.sleep(0.2)
    assert not _running_toy_steps(site.root), "a step of a killed shepherd still runs"


@contextlib.contextmanager
def catalog_for(kind: str) -> Iterator[str | None]:
    if kind == "sqlite":
        yield None
    else:
        yield from _postgresql_database()


def campaign(
    root: Path, trials: int, kinds: list[str], extra: dict[str, str], poll: str, patience: float
) -> Figures:
    """Rounds of crashes until ``trials`` shepherds were killed; every round checked against a clean run."""
    record = root / "executions.log"
    workflow = recording_workflow(root / "workflow.yaml", record)
    night = root / "night"
    clean_site = new_night(night, workflow, None, extra)
    finished = clean_site.nightly("run", "--poll", poll, *_backend_option(extra), timeout=300)
    assert finished.returncode == 0 and "is closed" in finished.stdout, finished.stderr
    clean = outcome(clean_site)
    assert len(clean.provenance) == 10 and len(clean.products) == 11
    assert sorted(_executions(record).values()) == [1] * 10  # the clean run itself runs each task once
    rng = random.Random(20261121)
    figures = Figures()
    while figures.kills < trials:
        kind = kinds[figures.rounds % len(kinds)]
        with catalog_for(kind) as url:
            site = new_night(night, workflow, url, extra)
            crash_round(
                site, record, rng, figures, min(KILLS_PER_ROUND, trials - figures.kills), poll, patience
            )
            check_round(site, clean)
        figures.catalogs[kind] += 1
    return figures


def _backend_option(extra: dict[str, str]) -> tuple[str, ...]:
    return ("--backend", "slurm") if "OSA_GRID_SLURM_CONF" in extra else ()


def _report(backend: str, figures: Figures) -> None:
    print(
        f"\ncrash campaign ({backend}): {figures.rounds} nights ({dict(figures.catalogs)}), "
        f"{figures.starts} shepherd starts, {figures.kills} SIGKILLs, {figures.executions} step executions, "
        f"{len(figures.repeats)} repeats of a finished task, 0 differences from the clean run"
    )


def test_fifty_sigkills_across_nights_change_nothing(tmp_path: Path) -> None:
    figures = campaign(tmp_path, TRIALS, ["sqlite", "postgresql"], {}, "0.1", 2.5)
    _report("local", figures)
    assert figures.kills >= TRIALS
    assert figures.repeats == [], f"tasks that had finished ran again: {figures.repeats}"
    # A start may lose the steps it had running: more executions than tasks, but never a finished one again.
    assert figures.executions >= 10 * figures.rounds


def test_sigkills_on_slurm_change_nothing(tmp_path: Path, slurm_conf: Path) -> None:  # noqa: F811
    extra = {"OSA_GRID_SLURM_CONF": str(slurm_conf), "OSA_GRID_SLURM_POLL_SECONDS": "0.3"}
    figures = campaign(tmp_path, SLURM_TRIALS, ["sqlite"], extra, "0.3", 6.0)
    _report("slurm", figures)
    assert figures.kills >= SLURM_TRIALS
    assert figures.repeats == [], f"tasks that had finished ran again: {figures.repeats}"
