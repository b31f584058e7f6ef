"""A backlog is planned in batches: the tasks are exactly those of planning it in one piece."""

from __future__ import annotations

from pathlib import Path

import pytest

from osa_grid.backends.local import LocalBackend
from osa_grid.catalog.store import Catalog
from osa_grid.core.models import Production
from osa_grid.data.local import LocalStore
from osa_grid.ports import NewFile
from osa_grid.services import shepherd as shepherd_module
from osa_grid.services.productions import definition_of, digest_of
from osa_grid.services.shepherd import PassReport, Shepherd, ShepherdOptions

RUNS = {1807: 4, 1808: 5, 1809: 3}


def _production() -> Production:
    step = {"argv": ["prog", "{inputs}"]}
    return Production.model_validate(
        {
            "name": "p",
            "transformations": [
                {"name": "calibrate", "input": {"query": "data_level = R0"}, "step": step},
                {
                    "name": "merge",
                    "input": {"query": "data_level = R0"},
                    "step": step,
                    # Nothing upstream: flushing is allowed, which must wait for the last batch.
                    "grouping": {"mode": "by_run", "flush": "when_upstream_done"},
                },
            ],
        }
    )


def _raw_files() -> list[NewFile]:
    # Sub-runs of the runs interleaved, as they arrive from the cameras, with other files in between.
    files = []
    for subrun in range(max(RUNS.values())):
        for run, n_subruns in RUNS.items():
            if subrun < n_subruns:
                metadata = {"data_level": "R0", "run_id": run, "subrun_id": subrun, "n_subruns": n_subruns}
                files.append(NewFile(f"R0/{run}.{subrun}.fits", 1, "00000001", metadata))
        files.append(NewFile(f"LOG/{subrun}.txt", 1, "00000001", {"data_level": "LOG"}))
    return files


def _plan_all(
    tmp_path: Path, batch: int, monkeypatch: pytest.MonkeyPatch
) -> dict[str, list[tuple[str, ...]]]:
    monkeypatch.setattr(shepherd_module, "PLAN_BATCH_FILES", batch)
    catalog = Catalog.open(f"sqlite:///{tmp_path / f'catalog-{batch}.sqlite'}")
    production = _production()
    catalog.save_production("p", definition_of(production), digest_of(production), None)
    catalog.register_files(_raw_files())
    backend = LocalBackend(tmp_path / f"state-{batch}", max_cores=1)
    try:
        shepherd = Shepherd(
            catalog, backend, LocalStore(tmp_path / "data"), production, tmp_path, ShepherdOptions()
        )
        shepherd.plan(PassReport())
        inputs = catalog.task_inputs([t.task_id for t in catalog.tasks("p")])
        by_transformation: dict[str, list[tuple[str, ...]]] = {}
        for task in catalog.tasks("p"):
            group = tuple(f.lfn for f in inputs[task.task_id])
            by_transformation.setdefault(task.transformation, []).append(group)
        return {name: sorted(groups) for name, groups in by_transformation.items()}
    finally:
        backend.close()
        catalog.close()


def test_batches_plan_the_same_tasks_as_one_piece(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = _plan_all(tmp_path, 10_000, monkeypatch)
    assert len(whole["calibrate"]) == sum(RUNS.values())
    assert sorted(len(group) for group in whole["merge"]) == sorted(RUNS.values())
    # Batches of 2 files split every run across batches: its group waits and completes in a later one.
    assert _plan_all(tmp_path, 2, monkeypatch) == whole
