"""A forced flush (runs missing sub-runs, at a night's closing) waits for what upstream is still making."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from osa_grid.backends.local import LocalBackend
from osa_grid.catalog.store import Catalog
from osa_grid.core.models import Production
from osa_grid.core.states import TaskState
from osa_grid.data.local import LocalStore
from osa_grid.ports import NewFile
from osa_grid.services.productions import definition_of, digest_of
from osa_grid.services.shepherd import PassReport, Shepherd, ShepherdOptions


def _production() -> Production:
    step = {"argv": ["prog", "{inputs}"]}
    return Production.model_validate(
        {
            "name": "p",
            "transformations": [
                # by_run never flushes by itself: only the forced flush closes run 1808 (a sub-run missing).
                {
                    "name": "merge",
                    "input": {"query": "data_level = R0"},
                    "step": step,
                    "grouping": {"mode": "by_run"},
                    "outputs": [
                        {"name": "dl1", "file_name": "{run_id}.h5", "metadata": {"data_level": "DL1_RUN"}}
                    ],
                },
                {
                    "name": "night",
                    "input": {"query": "data_level = DL1_RUN"},
                    "step": step,
                    "grouping": {"mode": "all"},
                },
            ],
        }
    )


def _file(lfn: str, **metadata: object) -> NewFile:
    return NewFile(lfn, 1, "00000001", dict(metadata))


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    production = _production()
    catalog.save_production("p", definition_of(production), digest_of(production), None)
    yield catalog
    catalog.close()


def _inputs(catalog: Catalog, transformation: str) -> list[list[str]]:
    tasks = catalog.tasks("p", transformation=transformation)
    inputs = catalog.task_inputs([t.task_id for t in tasks])
    return sorted(sorted(f.lfn for f in inputs[t.task_id]) for t in tasks)


def test_forced_flush_waits_for_upstream_tasks(tmp_path: Path, catalog: Catalog) -> None:
    # Run 1807 was merged already; run 1808 lacks one of its two sub-runs.
    catalog.register_files(
        [
            _file("DL1/1807.h5", data_level="DL1_RUN", run_id=1807),
            _file("R0/1808.0.fits", data_level="R0", run_id=1808, subrun_id=0, n_subruns=2),
        ]
    )
    backend = LocalBackend(tmp_path / "state", max_cores=1)
    try:
        shepherd = Shepherd(
            catalog,
            backend,
            LocalStore(tmp_path / "data"),
            _production(),
            tmp_path,
            ShepherdOptions(flush=True),
        )
        shepherd.plan(PassReport())
        # Run 1808 is merged with what there is; the night-wise task waits for that merge.
        assert _inputs(catalog, "merge") == [["R0/1808.0.fits"]]
        assert _inputs(catalog, "night") == []
        shepherd.plan(PassReport())
        assert _inputs(catalog, "night") == []  # the merge is still ready to run
        (merge,) = catalog.tasks("p", transformation="merge")
        catalog.register_files([_file("DL1/1808.h5", data_level="DL1_RUN", run_id=1808)])
        catalog.set_states("p", [TaskState.READY], TaskState.CANCELLED, "cancel", task_ids=[merge.task_id])
        shepherd.plan(PassReport())
        # One night-wise task over both runs, not one per late run.
        assert _inputs(catalog, "night") == [["DL1/1807.h5", "DL1/1808.h5"]]
    finally:
        backend.close()
