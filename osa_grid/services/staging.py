"""Staging in the shepherd's pass: bring tasks' offline inputs online through a sliding window.

Tasks of a data manager that stages start in STAGING. Each pass: requests recorded but never sent (a
crash) are sent (the data manager finds rules that exist already), requests in flight are polled (online
files get their disk replica in the catalog, stuck ones their reason), tasks whose inputs are all online
become READY, the next offline files are requested while the window has room, and files whose tasks are
all finished are released.
"""

from __future__ import annotations

from dataclasses import dataclass

from osa_grid.catalog import staging as rows
from osa_grid.catalog.store import Catalog, CatalogFile
from osa_grid.core.staging import WaitingTask, Window, next_requests
from osa_grid.core.states import TaskState
from osa_grid.logs import event, get_logger
from osa_grid.ports import DataManager, StageState

log = get_logger("staging")


@dataclass
class StagingReport:
    requested: int = 0
    online: int = 0
    stuck: int = 0
    ready: int = 0
    released: int = 0
    blocked: int = 0  # tasks waiting for a file whose staging is stuck


class Stager:
    def __init__(
        self, catalog: Catalog, data: DataManager, production: str, window: Window, lifetime: int
    ) -> None:
        self.catalog = catalog
        self.data = data
        self.production = production
        self.window = window
        self.lifetime = lifetime

    def run(self) -> StagingReport:
        report = StagingReport()
        self._resume()
        self._poll(report)
        self._advance(report)
        self._release(report)
        return report

    def _send(self, files: dict[str, int]) -> None:
        """LFN -> file id: ask the data manager, record the request ids."""
        request_ids = self.data.stage(list(files), self.lifetime)
        rows.record_requests(self.catalog, {files[lfn]: rid for lfn, rid in request_ids.items()})

    def _resume(self) -> None:
        unsent = rows.staging_rows(self.catalog, [StageState.NEW])
        if unsent:
            event(log, "staging_resumed", files=len(unsent))
            self._send({r.lfn: r.file_id for r in unsent})

    def _poll(self, report: StagingReport) -> None:
        live = [
            r
            for r in rows.staging_rows(self.catalog, [StageState.REQUESTED, StageState.STUCK])
            if r.request_id is not None
        ]
        if not live:
            return
        statuses = self.data.stage_status({r.lfn: r.request_id for r in live if r.request_id})
        changed = {}
        for row in live:
            status = statuses.get(row.lfn)
            if status is None or (status.state == row.state and (status.error or None) == row.error):
                continue
            changed[row.file_id] = status
            if status.state == StageState.ONLINE:
                report.online += 1
            elif status.state == StageState.STUCK:
                report.stuck += 1
                event(log, "staging_stuck", lfn=row.lfn, request=row.request_id, reason=status.error)
        if changed:
            rows.record_statuses(self.catalog, changed)

    def _advance(self, report: StagingReport) -> None:
        waiting = self.catalog.tasks(self.production, [TaskState.STAGING])
        if not waiting:
            return
        inputs = self.catalog.task_inputs([t.task_id for t in waiting])
        ready = [t.task_id for t in waiting if all(self._online(f) for f in inputs[t.task_id])]
        if ready:
            self.catalog.set_states(self.production, [TaskState.STAGING], TaskState.READY, "online", ready)
            report.ready += len(ready)
            event(log, "tasks_online", production=self.production, count=len(ready))
        live = {r.file_id: r for r in rows.staging_rows(self.catalog, list(rows.LIVE))}
        stuck = {file_id for file_id, r in live.items() if r.state == StageState.STUCK}
        report.blocked = sum(
            1 for t in waiting if t.task_id not in ready and any(f.id in stuck for f in inputs[t.task_id])
        )
        pending = [
            WaitingTask(
                t.task_id,
                {f.lfn: f.size for f in inputs[t.task_id] if not self._online(f) and f.id not in live},
            )
            for t in waiting
            if t.task_id not in ready
        ]
        in_window = list(live.values())
        chosen = next_requests(pending, self.window, len(in_window), sum(r.size for r in in_window))
        if not chosen:
            return
        ids = {f.lfn: f.id for task_files in inputs.values() for f in task_files}
        rows.reserve(self.catalog, [ids[lfn] for lfn in chosen])
        self._send({lfn: ids[lfn] for lfn in chosen})
        report.requested += len(chosen)
        event(log, "staging_requested", production=self.production, files=len(chosen))

    def _online(self, file: CatalogFile) -> bool:
        return any(self.data.online(r) for r in file.replicas)

    def _release(self, report: StagingReport) -> None:
        done = rows.releasable(self.catalog)
        if not done:
            return
        self.data.release([r.request_id for r in done if r.request_id])
        files = self.catalog.files_by_id([r.file_id for r in done])
        stores = sorted({r.store for f in files for r in f.replicas if self.data.online(r)})
        rows.mark_released(self.catalog, [r.file_id for r in done], stores)
        report.released += len(done)
        event(log, "staging_released", files=len(done))


def import_files(catalog: Catalog, data: DataManager, query: str) -> int:
    """Register in the catalog the files the data manager finds for a query (those not known yet)."""
    found = data.resolve(query)
    known = catalog.known_lfns([f.lfn for f in found])
    new = [f for f in found if f.lfn not in known]
    catalog.register_files(new)
    return len(new)
