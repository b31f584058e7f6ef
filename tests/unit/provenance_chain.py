"""A small processed history written through the catalog's own API, for provenance and CLI tests.

Raw R0 sub-runs of runs 1807 and 1808 (night 2024-01-15) and a calibration file -> one ``r0_to_dl1``
task per sub-run (side input: the calibration) -> one ``merge`` task per run -> one ``dl3`` task over
both runs. The DL1 task of sub-run 1807.0 failed once before it succeeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

from osa_grid.catalog.store import Catalog, Completion, Failure
from osa_grid.core.planner import FileRecord, PlannedTask
from osa_grid.core.states import TaskState
from tests.helpers import lst_subrun, make_file, provenance_record

PRODUCTION = "chain"
NIGHT = date(2024, 1, 15)
CALIBRATION = "/lst/CALIB/calibration_Run01806.h5"
DL3 = "/lst/DL3/dl3_LST-1.2024-01-15.fits.gz"


@dataclass(frozen=True)
class Chain:
    raw: list[str]
    dl1: list[str]
    merged: list[str]
    dl3: str


def build_chain(catalog: Catalog) -> Chain:
    raw = [lst_subrun(run, subrun, n_subruns=2, night=NIGHT) for run in (1807, 1808) for subrun in range(2)]
    calibration = make_file(CALIBRATION, data_level="CALIB", run_id=1806, night=NIGHT)
    ids = catalog.register_files([*raw, calibration])
    records = [FileRecord(file_id, f.lfn, f.metadata) for file_id, f in zip(ids, raw, strict=False)]
    definition = {"transformations": [{"name": n, "version": "1"} for n in ("r0_to_dl1", "merge", "dl3")]}
    catalog.save_production(PRODUCTION, definition, "digest", None)

    dl1 = _dl1_tasks(catalog, records, calibration_id=ids[-1])
    merged = _merge_tasks(catalog, dl1)
    _run(catalog, "dl3", "all", merged, [make_file(DL3, data_level="DL3", night=NIGHT)])
    return Chain([f.lfn for f in raw], [f.lfn for f in dl1], [f.lfn for f in merged], DL3)


def _dl1_tasks(catalog: Catalog, raw: list[FileRecord], calibration_id: int) -> list[FileRecord]:
    outputs: list[FileRecord] = []
    for record in raw:
        run, subrun = record.metadata["run_id"], record.metadata["subrun_id"]
        dl1 = lst_subrun(int(run), int(subrun), level="DL1", n_subruns=2, night=NIGHT)  # type: ignore[call-overload]
        task_id = f"dl1-{run}-{subrun}"
        _plan(catalog, "r0_to_dl1", task_id, [record], TaskState.CREATED)
        catalog.resolve_needs({task_id: {"calibration": calibration_id}})
        if (run, subrun) == (1807, 0):
            catalog.reserve_submissions("local", {task_id: "/work/1"})
            failed = provenance_record(1, job_id="job-a", exit_code=137)
            catalog.fail(Failure(task_id, TaskState.READY, 137, "killed: out of memory", None, failed))
        outputs += _complete(catalog, task_id, [dl1], attempt=2 if (run, subrun) == (1807, 0) else 1)
    return outputs


def _merge_tasks(catalog: Catalog, dl1: list[FileRecord]) -> list[FileRecord]:
    merged: list[FileRecord] = []
    for run in (1807, 1808):
        inputs = [r for r in dl1 if r.metadata["run_id"] == run]
        output = make_file(
            f"/lst/DL1/dl1_LST-1.Run{run:05d}.h5", data_level="DL1_RUN", run_id=run, night=NIGHT
        )
        merged += _run(catalog, "merge", f"run-{run}", inputs, [output])
    return merged


def _run(
    catalog: Catalog, transformation: str, group: str, inputs: list[FileRecord], outputs: list[object]
) -> list[FileRecord]:
    task_id = f"{transformation}-{group}"
    _plan(catalog, transformation, task_id, inputs, TaskState.READY)
    return _complete(catalog, task_id, outputs, attempt=1)  # type: ignore[arg-type]


def _plan(
    catalog: Catalog, transformation: str, task_id: str, inputs: list[FileRecord], state: TaskState
) -> None:
    tid, _ = catalog.transformation_cursor(PRODUCTION, transformation)
    task = PlannedTask(task_id, transformation, task_id, tuple(sorted(inputs, key=lambda r: r.lfn)))
    catalog.record_plan(PRODUCTION, tid, [task], [], catalog.max_file_id(), state)


def _complete(catalog: Catalog, task_id: str, outputs: list, attempt: int) -> list[FileRecord]:  # type: ignore[type-arg]
    catalog.reserve_submissions("local", {task_id: f"/work/{task_id}"})
    record = provenance_record(attempt, job_id=f"job-{task_id}")
    record["started_at"] = datetime(2024, 1, 16, 3, attempt, tzinfo=UTC)
    record["software"] = {"lstchain": "0.10.5", "osa-grid": "0.1.0"}
    catalog.complete(Completion(task_id, outputs, record))
    return [f.record() for f in catalog.task_outputs(task_id)]
