"""The shepherd: observe -> plan -> act, pass after pass, until the production has nothing left to do.

Every state change is written to the catalog before the outside world is touched (reserve a submission,
then call the backend, then record its job id), so a shepherd killed at any moment can be started again
and carries on: lost jobs run again, finished ones never do.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import platform
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from osa_grid import __version__
from osa_grid.catalog.store import Catalog, CatalogFile, Claim, Completion, Failure, TaskRow
from osa_grid.core import query as querylang
from osa_grid.core.metadata import MetaValue, check_metadata
from osa_grid.core.models import Production, Resources, Transformation
from osa_grid.core.planner import (
    FileRecord,
    decide_retry,
    grouping_metadata,
    input_query,
    plan_groups,
    upstream_drained,
)
from osa_grid.core.redaction import (
    hidden_values,
    hide_values,
    redact_argv,
    redact_env,
    redact_production,
    redact_text,
    redact_transformation,
)
from osa_grid.core.rendering import RenderedOutput, RenderedTask, render_needs, render_outputs, render_task
from osa_grid.core.staging import Window
from osa_grid.core.states import ACTIVE, RUNNABLE, UNFINISHED, TaskState
from osa_grid.core.validation import Producers, dependencies, topological_order
from osa_grid.data.checksums import adler32
from osa_grid.data.verify import clear_workdir, verify_product
from osa_grid.errors import (
    BadInput,
    DataServiceError,
    DataServiceUnavailable,
    LeaseHeld,
    OsaGridError,
    OutputCheckFailed,
    OutputClash,
    StorageError,
)
from osa_grid.logs import event, get_logger
from osa_grid.ports import Backend, DataManager, JobSpec, JobState, JobStatus, NewFile, WatchedService
from osa_grid.services.notify import Notifier
from osa_grid.services.outages import OutageWatch, default_alert_after
from osa_grid.services.staging import Stager
from osa_grid.system import identity_is_alive, identity_is_dead, process_identity

log = get_logger("shepherd")
# Files read, planned and recorded at once when a transformation has a backlog.
PLAN_BATCH_FILES = 50_000
# What fails a finished task's products (and that task alone), by failure class; the first match wins.
_FAILURE_CLASSES: tuple[tuple[type[Exception], str], ...] = (
    (OutputClash, "clash"),
    (OutputCheckFailed, "output"),
    (BadInput, "output"),
    (StorageError, "storage"),
    (OSError, "storage"),  # whatever the filesystem says (e.g. an LFN whose parent is a file)
)
_TASK_FAILURES = tuple(kind for kind, _ in _FAILURE_CLASSES)


# How much of a failed step's stderr its error shows: the last lines, within a bound a table cell can hold.
STDERR_TAIL_LINES = 5
STDERR_TAIL_CHARS = 400


def stderr_tail(path: Path) -> str:
    """The last non-empty lines of a step's stderr, on one line and with secrets hidden ("" if none).

    Only the end of the file is read: a step may write gigabytes there."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 8 * STDERR_TAIL_CHARS))
            data = handle.read()
    except OSError:
        return ""
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    text = redact_text(" | ".join(lines[-STDERR_TAIL_LINES:]))
    return text if len(text) <= STDERR_TAIL_CHARS else "..." + text[-STDERR_TAIL_CHARS:]


def same_failure(previous: str | None, kind: str, exit_code: int | None, error: str) -> bool:
    """Whether a task failed as it did before: same kind and exit code, and the same words (a step's stderr
    differs from one attempt to the next by its timestamps, process ids, addresses: numbers are not compared).
    """
    if previous is None or not previous.startswith(f"{kind} (exit code {exit_code})"):
        return False
    return _NUMBERS.sub("#", previous).startswith(_NUMBERS.sub("#", error) + "; ")


_NUMBERS = re.compile(r"\d+")


def _failure_kind(exc: Exception) -> str:
    return next(name for kind, name in _FAILURE_CLASSES if isinstance(exc, kind))


@dataclass(frozen=True)
class _Product:
    """A checked output in the task's work directory, and the file it will be registered as."""

    produced: Path
    new_file: NewFile


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a batch is planned.

    A batch allocates about a million objects that live until it is recorded (records, tasks, rows),
    none in a reference cycle: the collections their allocations trigger find nothing to free, and
    they cost 10-20% of the planning pass's CPU. Refcounting still frees the batch when it is done.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True)
class ShepherdOptions:
    once: bool = False
    flush: bool = False
    # Close groups by their flush policy once upstream is done. Off while more input data may still arrive.
    auto_flush: bool = True
    poll_interval: float = 2.0
    lease_ttl: timedelta = timedelta(minutes=2)
    # For a data manager that stages (docs/rucio.md): the disk window and how long a staged copy may live.
    staging_window: Window = field(default_factory=lambda: Window(max_files=1000, max_bytes=10 * 1000**4))
    stage_lifetime: int = 7 * 86400
    # At most this many jobs submitted or running at once (a campaign's limit), whatever the backend allows.
    max_in_flight: int | None = None
    # Delete what a finished task leaves in its work directory (but its logs) once its products are stored.
    clean_workdirs: bool = False
    # Per remote service (rucio, dirac): seconds unreached before the operator is told (Settings).
    outage_alert_after: Mapping[str, float] = field(default_factory=default_alert_after)


@dataclass
class PassReport:
    created: int = 0
    submitted: int = 0
    finished: int = 0
    failed: int = 0
    lost: int = 0
    # Staging tasks with an input whose staging is stuck: they cannot run until someone repairs it.
    blocked: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def unfinished(self) -> int:
        return sum(
            n for states in self.counts.values() for s, n in states.items() if TaskState(s) in UNFINISHED
        )

    @property
    def runnable(self) -> int:
        """Tasks that are running or can run now (created tasks may wait for side inputs from outside)."""
        return (
            sum(n for states in self.counts.values() for s, n in states.items() if TaskState(s) in RUNNABLE)
            - self.blocked
        )

    @property
    def active(self) -> int:
        return sum(n for states in self.counts.values() for s, n in states.items() if TaskState(s) in ACTIVE)


class Shepherd:
    def __init__(
        self,
        catalog: Catalog,
        backend: Backend,
        data: DataManager,
        production: Production,
        work_root: Path,
        options: ShepherdOptions | None = None,
        on_pass: Callable[[PassReport], None] | None = None,
        notifier: Notifier | None = None,
        on_planned: Callable[[], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.backend = backend
        self.data = data
        self.production = production
        self.work_root = work_root
        self.options = options or ShepherdOptions()
        self.on_pass = on_pass
        # Called between planning and submitting: rules on the tasks just created (a nightly veto).
        self.on_planned = on_planned
        self.identity = process_identity()
        self.lease_name = f"production/{production.name}"
        self._order: list[Transformation] = []
        self._parents: dict[str, list[str]] = {}
        self._need_makers: dict[tuple[str, str], set[str]] = {}
        self._digests: dict[str, str] = {}
        self.use_production(production)
        self._software: dict[str, dict[str, str]] = {}
        self._lease_renewed_at = -float("inf")
        # Inputs of the tasks this shepherd submitted, read once at submission and kept until they end.
        self._inputs: dict[str, list[CatalogFile]] = {}
        # How each of them was rendered at submission: its outputs and provenance need it again.
        self._rendered: dict[str, RenderedTask] = {}
        # The data service's outage (its message) while it lasts: reported once, waited out, not a failure.
        self._outage: str | None = None
        self._down_this_pass = False
        # Outages of Rucio / DiracX as their clients saw them: recorded, alerted after a while, ended.
        self.outages = OutageWatch(
            catalog, self.options.outage_alert_after, notifier, noticed_by=production.name
        )

    def use_production(self, production: Production) -> None:
        """Go on with a new definition of the same production (a night whose run summary grew)."""
        if production.name != self.production.name:
            raise ValueError(f"{production.name} is not {self.production.name}")
        self.production = production
        self._order = topological_order(production)
        self._parents = dependencies(production)
        self._need_makers = {}
        self._digests = {}
        self._producers = Producers(production)
        # The values the production's recorded definition hides, wherever a template puts them.
        dump = production.model_dump(mode="json", by_alias=True)
        self._secrets = hidden_values(dump, redact_production(dump))

    # ------------------------------------------------------------------ loop
    def run(self) -> PassReport:
        """Passes until nothing is left to do; with ``once``, a single pass (see ``_finish_once``)."""
        with self.lease():
            report = self.run_pass()
            if self.options.once:
                report = self._finish_once(report)
                if self._outage is not None:
                    message = f"{self._outage}; nothing is lost, run again when it answers"
                    raise DataServiceUnavailable(message)
                return report
            while report.runnable:
                self.backend.wait_any(self.options.poll_interval)
                report = self.run_pass()
            report.counts = self.catalog.task_counts(self.production.name)
            return report

    @contextmanager
    def lease(self) -> Iterator[None]:
        """Hold the production's lease: no second shepherd can run it meanwhile."""
        self._take_lease()
        try:
            yield
        finally:
            self.catalog.release_lease(self.lease_name, self.identity)

    def _finish_once(self, report: PassReport) -> PassReport:
        """A local pool's jobs die with this process: wait for those this pass started, start no others."""
        if self.backend.capabilities.detached:
            return report
        while report.active:
            self.backend.wait_any(self.options.poll_interval)
            report = self.run_pass(submit=False)
        report.counts = self.catalog.task_counts(self.production.name)
        return report

    def _take_lease(self) -> None:
        holder = self.catalog.lease_holder(self.lease_name)
        dead = holder[0] if holder is not None and identity_is_dead(holder[0]) else None
        if dead is not None:
            event(log, "lease_stale", production=self.production.name, previous=dead)
        elif holder is not None and holder[0] != self.identity and identity_is_alive(holder[0]):
            # Its expiry is wall-clock time, which jumps (NTP, an operator): a holder that runs keeps it.
            raise LeaseHeld(
                f"{self.lease_name} is held by {holder[0]}, which runs: another shepherd is running it"
            )
        self.catalog.acquire_lease(self.lease_name, self.identity, self.options.lease_ttl, dead_holder=dead)

    def run_pass(self, submit: bool = True) -> PassReport:
        report = PassReport()
        self._down_this_pass = False
        self._renew_lease()
        self.observe(report)
        self.plan(report)
        if self.on_planned is not None:
            self.on_planned()
        try:
            if self.data.stages:
                staged = Stager(
                    self.catalog,
                    self.data,
                    self.production.name,
                    self.options.staging_window,
                    self.options.stage_lifetime,
                ).run()
                report.blocked = staged.blocked
            if submit:
                self.act(report)
        except DataServiceUnavailable as exc:
            # Every request and task is a row before the service is asked: the next pass resumes them.
            self._data_unavailable(exc)
        if self._outage is not None and not self._down_this_pass:
            event(log, "data_service_back", logging.WARNING, production=self.production.name)
            self._outage = None
        self._watch_services()
        if self.on_pass is not None:
            report.counts = self.catalog.task_counts(self.production.name)
            self.on_pass(report)
        else:
            # What the loop needs; counting the finished tasks too would make a pass grow with history.
            report.counts = self.catalog.unfinished_counts(self.production.name)
        return report

    def _watch_services(self) -> None:
        for component in (self.data, self.backend):
            if isinstance(component, WatchedService):
                self.outages.observe(component.health)

    def _data_unavailable(self, exc: DataServiceUnavailable) -> None:
        """One message when the outage starts, none while it lasts; passes go on and retry."""
        self._down_this_pass = True
        if self._outage is None:
            event(
                log,
                "data_service_unavailable",
                logging.WARNING,
                production=self.production.name,
                error=str(exc),
                action="waiting; no task fails for it",
            )
        self._outage = str(exc)

    def _renew_lease(self) -> None:
        """Renewed once a quarter of its time has gone, not every pass: one write transaction less a pass."""
        now = time.monotonic()
        if now - self._lease_renewed_at >= self.options.lease_ttl.total_seconds() / 4:
            self.catalog.acquire_lease(self.lease_name, self.identity, self.options.lease_ttl)
            self._lease_renewed_at = now

    # ------------------------------------------------------------------ observe
    def observe(self, report: PassReport) -> None:
        active = self.catalog.tasks(self.production.name, states=list(ACTIVE))
        unsent = [t for t in active if t.job_id is None]
        if unsent:
            active = self._recover_unsent(active, unsent, report)
        sent = [t for t in active if t.job_id is not None]
        if not sent:
            return
        statuses = self.backend.poll([t.job_id for t in sent if t.job_id is not None])
        started: list[str] = []
        succeeded: list[tuple[TaskRow, JobStatus]] = []
        for task in sent:
            status = statuses.get(task.job_id or "", JobStatus(JobState.LOST))
            if status.state == JobState.RUNNING and task.state == TaskState.SUBMITTED:
                started.append(task.task_id)
            elif status.state == JobState.SUCCEEDED:
                succeeded.append((task, status))
            elif status.state == JobState.FAILED:
                stderr = Path(task.workdir) / "stderr.log" if task.workdir else None
                failure = status.failure or "failed"
                self._fail(task, failure, status.exit_code, status.message, status, report, stderr)
            elif status.state == JobState.LOST:
                self._lost(task, report)
        # One write transaction for both: the jobs that started and those that finished since the last pass.
        self._finish(succeeded, started, report)

    def _recover_unsent(
        self, active: list[TaskRow], unsent: list[TaskRow], report: PassReport
    ) -> list[TaskRow]:
        """Reserved, but the job id was never recorded: the shepherd died around the submission."""
        adopted = self.backend.adopt([t.task_id for t in unsent])
        if adopted:
            self.catalog.record_job_ids(adopted)
            event(log, "jobs_adopted", count=len(adopted))
        lost = [t.task_id for t in unsent if t.task_id not in adopted]
        if lost:
            self.catalog.requeue_lost(lost, "reserved but never submitted")
            report.lost += len(lost)
        return self.catalog.tasks(self.production.name, states=list(ACTIVE))

    def _lost(self, task: TaskRow, report: PassReport) -> None:
        if task.job_id is not None:
            self.backend.cancel([task.job_id])  # an orphan of an earlier shepherd may still be running
        self.catalog.requeue_lost(
            [task.task_id], f"job {task.job_id} unknown to the {self.backend.name} backend"
        )
        self._forget(task.task_id)
        event(log, "task_lost", task=task.task_id, job=task.job_id)
        report.lost += 1

    def _finish(
        self, succeeded: Sequence[tuple[TaskRow, JobStatus]], started: Sequence[str], report: PassReport
    ) -> None:
        """Store the outputs of the tasks that succeeded; record them and those that started in one go."""
        if not succeeded and not started:
            return
        inputs = self._inputs_of([task.task_id for task, _ in succeeded])
        checked: list[tuple[TaskRow, JobStatus, list[_Product]]] = []
        for task, status in succeeded:
            transformation = self.production.transformation(task.transformation)
            try:
                outputs = self._expected_outputs(task, transformation, inputs[task.task_id])
                checked.append((task, status, [self._checked_product(task, output) for output in outputs]))
            except _TASK_FAILURES as exc:
                self._fail(task, _failure_kind(exc), 0, str(exc), status, report)
        # Before any byte lands at its place: a product never goes where another task's is (or is going).
        claims = self.catalog.claim_lfns(
            {task.task_id: [p.new_file.lfn for p in products] for task, _, products in checked}
        )
        completions: list[Completion] = []
        for task, status, products in checked:
            transformation = self.production.transformation(task.transformation)
            try:
                new_files = self._store_products(products, claims[task.task_id])
            except DataServiceUnavailable as exc:
                # The job succeeded: it stays active and its products are published at a later pass.
                self._data_unavailable(exc)
                break
            except _TASK_FAILURES as exc:
                self._fail(task, _failure_kind(exc), 0, str(exc), status, report)
                continue
            provenance = self._provenance(task, transformation, inputs[task.task_id], status, 0)
            completions.append(Completion(task.task_id, new_files, provenance))
        self.catalog.complete_many(completions, started)
        workdirs = {task.task_id: task.workdir for task, _ in succeeded}
        for completion in completions:
            self._forget(completion.task_id)
            event(log, "task_done", task=completion.task_id, outputs=len(completion.outputs))
            if self.options.clean_workdirs and workdirs[completion.task_id]:
                clear_workdir(Path(workdirs[completion.task_id] or ""))
        report.finished += len(completions)

    def _expected_outputs(
        self, task: TaskRow, transformation: Transformation, inputs: Sequence[CatalogFile]
    ) -> list[RenderedOutput]:
        rendered = self._rendered.get(task.task_id)
        if rendered is not None:
            return rendered.outputs
        return render_outputs(
            self.production.name,
            transformation,
            task.task_id,
            [f.record() for f in inputs],
            self.production.parameters,
        )

    def _forget(self, task_id: str) -> None:
        """The task's attempt is over (done, failed or lost): what act kept for it goes."""
        self._inputs.pop(task_id, None)
        self._rendered.pop(task_id, None)

    def _inputs_of(self, task_ids: Sequence[str]) -> dict[str, list[CatalogFile]]:
        """Inputs of the tasks, from memory for those this shepherd submitted, else from the catalog."""
        unknown = [task_id for task_id in task_ids if task_id not in self._inputs]
        found = self.catalog.task_inputs(unknown) if unknown else {}
        return {task_id: self._inputs.get(task_id) or found[task_id] for task_id in task_ids}

    def _checked_product(self, task: TaskRow, output: RenderedOutput) -> _Product:
        """An output as the step left it in its work directory, checked; with size, checksum and metadata."""
        produced = Path(task.workdir or "") / output.file_name
        if produced.is_symlink():
            raise OutputCheckFailed(
                f"output {output.name}: {produced} is a symbolic link (to {os.readlink(produced)}): "
                "a step must write its product, not link to one"
            )
        if not produced.is_file():
            raise OutputCheckFailed(f"output {output.name}: {produced} was not written")
        size = produced.stat().st_size
        if size == 0:
            raise OutputCheckFailed(f"output {output.name}: {produced} is empty")
        if output.verify is not None:
            verify_product(output.verify, produced, output.name)
        metadata = {**self._measured(task, output), **output.metadata}
        return _Product(produced, NewFile(output.lfn, size, adler32(produced), metadata))

    def _store_products(self, products: Sequence[_Product], claim: Claim) -> list[NewFile]:
        """Move a task's products into the store and publish them; on any failure, none of them stays."""
        if claim.clashes:
            raise OutputClash(
                "; ".join(f"{lfn} is {holder}" for lfn, holder in sorted(claim.clashes.items()))
                + ": a registered product never changes (different tasks, or a new version of a "
                "transformation, must write different LFNs: see {version} in docs/productions.md)"
            )
        stored: list[str] = []
        try:
            new_files = []
            for product in products:
                lfn = product.new_file.lfn
                replica = self.data.store(product.produced, lfn, replace=lfn in claim.reclaimed)
                stored.append(lfn)
                new = product.new_file
                new_files.append(NewFile(lfn, new.size, new.checksum, new.metadata, (replica,)))
            return self.data.register(new_files, self.production.name)
        except Exception:
            for lfn in stored:  # claimed by this task and not registered: nobody else's product
                with suppress(StorageError):
                    self.data.discard(lfn)
            raise

    @staticmethod
    def _measured(task: TaskRow, output: RenderedOutput) -> dict[str, MetaValue]:
        """Figures the step wrote for the output (its declared metadata, set by osa-grid, wins over them)."""
        if output.metadata_file is None:
            return {}
        path = Path(task.workdir or "") / output.metadata_file
        try:
            measured = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise OutputCheckFailed(
                f"output {output.name}: metadata file {path} is unreadable: {exc}"
            ) from exc
        if not isinstance(measured, dict) or not all(
            isinstance(v, int | float | str) and not isinstance(v, bool) for v in measured.values()
        ):
            raise OutputCheckFailed(
                f"output {output.name}: {path} must hold a flat JSON object of numbers and text"
            )
        try:
            return check_metadata(measured)
        except BadInput as exc:
            raise OutputCheckFailed(f"output {output.name}: {path}: {exc}") from exc

    def _fail(
        self,
        task: TaskRow,
        kind: str,
        exit_code: int | None,
        message: str,
        status: JobStatus | None,
        report: PassReport,
        stderr: Path | None = None,
    ) -> None:
        """``stderr``: the failed job's, whose last lines say why (the backend only knows the exit code)."""
        transformation = self.production.transformation(task.transformation)
        tail = stderr_tail(stderr) if stderr is not None else ""
        # What the step said is the reason operators need, not "exit code 1" twice.
        said = "" if message == f"exit code {exit_code}" else message
        error = f"{kind} (exit code {exit_code}): {' - '.join(filter(None, (said, tail)))}".strip().rstrip(
            ":"
        )
        repeated = same_failure(task.error, kind, exit_code, error)
        decision = decide_retry(transformation.retry, task.failures + 1, kind, exit_code, repeated)
        target = {"retry": TaskState.READY, "veto": TaskState.VETOED, "fail": TaskState.FAILED}[
            decision.action
        ]
        resources = self._resources(task, transformation)
        if decision.action == "retry":
            resources = resources.scaled(decision.scale_memory, decision.scale_walltime)
        inputs = self._inputs_of([task.task_id])[task.task_id]
        provenance = self._provenance(task, transformation, inputs, status, exit_code)
        self._forget(task.task_id)
        self.catalog.fail(
            Failure(
                task.task_id,
                target,
                exit_code,
                f"{error}; {decision.reason}" + (f"; log: {stderr}" if tail else ""),
                resources.model_dump(mode="json"),
                provenance,
            )
        )
        event(
            log,
            "task_failed",
            task=task.task_id,
            kind=kind,
            exit=exit_code,
            next=target.value,
            log=task.workdir,
        )
        report.failed += 1

    def _resources(self, task: TaskRow, transformation: Transformation) -> Resources:
        if task.resources:
            return Resources.model_validate(task.resources)
        return transformation.step.resources

    # ------------------------------------------------------------------ plan
    def plan(self, report: PassReport) -> None:
        counts = self.catalog.unfinished_counts(self.production.name)
        unfinished = {
            name: sum(n for s, n in states.items() if TaskState(s) in UNFINISHED)
            for name, states in counts.items()
        }
        runnable = {
            name: sum(n for s, n in states.items() if TaskState(s) in RUNNABLE)
            for name, states in counts.items()
        }
        waiting = self.catalog.waiting_counts(self.production.name)
        newest = self.catalog.max_file_id()  # read first: a file registered meanwhile is seen next pass
        for transformation in self._order:
            created = self._plan_transformation(transformation, unfinished, runnable, waiting, newest)
            unfinished[transformation.name] = unfinished.get(transformation.name, 0) + created
            # Counted as runnable until the next pass knows better (a task waiting for side inputs is not).
            runnable[transformation.name] = runnable.get(transformation.name, 0) + created
            report.created += created
            if transformation.input.needs:
                self._resolve_needs(transformation, unfinished, waiting)

    def _resolve_needs(
        self, transformation: Transformation, unfinished: dict[str, int], waiting: dict[str, int]
    ) -> None:
        """Created tasks whose side inputs exist become ready; those whose side inputs never can, vetoed.

        A task whose needs cannot be resolved (a value that is no query value, a need that is the task's own
        input) is vetoed alone, with the reason: the other tasks go on.
        """
        blocked = self.catalog.tasks(self.production.name, [TaskState.CREATED], transformation.name)
        if not blocked:
            return
        inputs = self.catalog.task_inputs([t.task_id for t in blocked])
        # One catalog query per distinct need, however many tasks share it: the newest match, or why none.
        newest: dict[querylang.Node, int | BadInput | None] = {}
        resolved: dict[str, dict[str, int]] = {}
        impossible: dict[str, str] = {}
        for task in blocked:
            own = inputs[task.task_id]
            try:
                queries = render_needs(transformation, [f.record() for f in own])
            except BadInput as exc:
                impossible[task.task_id] = f"cannot resolve its needs: {exc}"
                continue
            found: dict[str, int] = {}
            for name, node in queries.items():
                if node not in newest:
                    newest[node] = self._newest_match(node)
                file_id = newest[node]
                problem = _need_problem(name, node, file_id, own, found)
                if (
                    problem is None
                    and file_id is None
                    and self._need_cannot_appear(transformation, name, unfinished, waiting)
                ):
                    problem = (
                        f"needs {name}: no file matches {querylang.to_text(node)!r} "
                        "and nothing left can make one"
                    )
                if problem is not None:
                    impossible[task.task_id] = problem
                if problem is not None or not isinstance(file_id, int):
                    break
                found[name] = file_id
            else:
                resolved[task.task_id] = found
        if resolved:
            self.catalog.resolve_needs(resolved)
        if impossible:
            self.catalog.veto_created(impossible)
            event(log, "tasks_vetoed", transformation=transformation.name, count=len(impossible))

    def _newest_match(self, node: querylang.Node) -> int | BadInput | None:
        try:
            return self.catalog.newest_match(node)
        except BadInput as exc:  # the catalog cannot ask it (a value beyond what it stores): this need only
            return exc

    def _need_cannot_appear(
        self, transformation: Transformation, name: str, unfinished: dict[str, int], waiting: dict[str, int]
    ) -> bool:
        """True when transformations of this production could make the need and all of them are finished."""
        makers = self._need_makers.get((transformation.name, name))
        if makers is None:
            node = querylang.parse_template(transformation.input.needs[name]).shape
            makers = self._need_makers[(transformation.name, name)] = self._producers.of(node)
        # Files a need expects from outside (registered by a site service) may still come: keep waiting.
        return bool(makers) and all(unfinished.get(m, 0) == 0 and waiting.get(m, 0) == 0 for m in makers)

    def _plan_transformation(
        self,
        transformation: Transformation,
        unfinished: dict[str, int],
        runnable: dict[str, int],
        waiting: dict[str, int],
        newest: int,
    ) -> int:
        """Plan from the files registered since the transformation's cursor: a pass costs what is new.

        A backlog (a campaign over years of data) is planned in batches, each recorded with the cursor in
        its own transaction: memory stays bounded and a crash loses at most the batch being planned.
        """
        tid, cursor = self.catalog.transformation_cursor(self.production.name, transformation.name)
        name = transformation.name
        # A forced flush (runs missing sub-runs) still waits for what upstream is making: a group closed
        # before would miss those files, and their own late group would remake the same outputs. Tasks
        # waiting for side inputs from outside (not runnable) do not hold it back.
        forced = self.options.flush and upstream_drained(self._parents, name, runnable, waiting)
        flush = forced or (
            self.options.auto_flush
            and transformation.grouping.flush_policy == "when_upstream_done"
            and upstream_drained(self._parents, name, unfinished, waiting)
        )
        query = input_query(self.production.name, transformation)
        keys = grouping_metadata(transformation.grouping)
        created = 0
        while True:
            with _collector_paused():
                new: list[FileRecord] = []
                read_up_to = cursor
                if newest > cursor:
                    new, read_up_to = self.catalog.planning_batch(
                        query, cursor, newest, PLAN_BATCH_FILES, keys
                    )
                # Flushing closes incomplete groups: only once every file up to ``newest`` has been read.
                last_batch = read_up_to >= newest
                if not new and not (last_batch and flush and waiting.get(transformation.name)):
                    if newest > cursor:
                        self.catalog.move_cursor(tid, newest)  # nothing new matched: never read those again
                    return created
                created += self._record_batch(
                    transformation, tid, new, read_up_to, flush and last_batch, waiting
                )
            cursor = read_up_to
            if last_batch:
                return created

    def _record_batch(
        self,
        transformation: Transformation,
        transformation_id: int,
        new: list[FileRecord],
        cursor: int,
        flush: bool,
        waiting: dict[str, int],
    ) -> int:
        candidates = self.catalog.pending_files(transformation_id) + new
        outcome = plan_groups(self.production.name, transformation, candidates, flush)
        initial = TaskState.CREATED if transformation.input.needs else TaskState.READY
        if initial == TaskState.READY and self.data.stages:
            initial = TaskState.STAGING  # ready once its inputs are online (services.staging)
        created = self.catalog.record_plan(
            self.production.name, transformation_id, outcome.tasks, outcome.pending, cursor, initial
        )
        waiting[transformation.name] = len(outcome.pending)
        if created:
            event(
                log,
                "tasks_created",
                transformation=transformation.name,
                count=created,
                waiting=len(outcome.pending),
            )
        return created

    # ------------------------------------------------------------------ act
    def act(self, report: PassReport) -> None:
        slots = self.backend.free_slots()
        if self.options.max_in_flight is not None:
            counts = self.catalog.task_counts(self.production.name, ACTIVE)
            in_flight = sum(n for states in counts.values() for n in states.values())
            slots = min(slots, self.options.max_in_flight - in_flight)
        if slots <= 0:
            return
        ready = self.catalog.tasks(self.production.name, states=[TaskState.READY], limit=slots)
        if not ready:
            return
        inputs = self.catalog.task_inputs([t.task_id for t in ready])
        self._inputs.update(inputs)
        workdirs = {t.task_id: str(self._workdir(t, t.attempt + 1)) for t in ready}
        reserved = self.catalog.reserve_submissions(self.backend.name, workdirs)
        specs: list[JobSpec] = []
        for task in reserved:
            spec = self._job_spec(task, inputs[task.task_id], report)
            if spec is not None:
                specs.append(spec)
        if not specs:
            return
        job_ids = self.backend.submit(specs)
        self.catalog.record_job_ids(
            {spec.task_id: job_id for spec, job_id in zip(specs, job_ids, strict=True)}
        )
        report.submitted += len(specs)

    def _workdir(self, task: TaskRow, attempt: int) -> Path:
        return (
            self.work_root / self.production.name / task.transformation / task.task_id / f"attempt-{attempt}"
        )

    def _job_spec(self, task: TaskRow, inputs: Sequence[CatalogFile], report: PassReport) -> JobSpec | None:
        transformation = self.production.transformation(task.transformation)
        workdir = Path(task.workdir or "")
        try:
            rendered = self._render(task, transformation, inputs)
            workdir.mkdir(parents=True, exist_ok=True)
        except DataServiceError:
            raise  # the data service's trouble, not the task's: it must not be vetoed for it
        except OsaGridError as exc:
            # The same inputs would fail the same way: stop here rather than retry.
            self.catalog.fail(
                Failure(task.task_id, TaskState.VETOED, None, f"cannot prepare the task: {exc}", None, None)
            )
            event(log, "task_vetoed", task=task.task_id, reason=str(exc))
            report.failed += 1
            return None
        self._rendered[task.task_id] = rendered
        return JobSpec(
            task_id=task.task_id,
            argv=rendered.argv,
            env=rendered.env,
            workdir=workdir,
            stdout=workdir / "stdout.log",
            stderr=workdir / "stderr.log",
            resources=rendered.resources,
            name=f"{self.production.name}.{transformation.name}",
            software=transformation.step.pins,
            container=transformation.step.container,
            input_lfns=[f.lfn for f in inputs],
            inherit=transformation.step.inherit,
        )

    def _render(
        self, task: TaskRow, transformation: Transformation, inputs: Sequence[CatalogFile]
    ) -> RenderedTask:
        """The exact argv of this attempt, with local paths of its inputs and side inputs."""
        needs = self.catalog.task_needs([task.task_id])[task.task_id] if transformation.input.needs else {}
        return render_task(
            self.production.name,
            transformation,
            task.task_id,
            [f.record() for f in inputs],
            [str(self.data.locate(f.lfn, f.replicas)) for f in inputs],
            str(task.workdir or ""),
            task.attempt,
            self._resources(task, transformation),
            sys.executable,
            {name: str(self.data.locate(f.lfn, f.replicas)) for name, f in needs.items()},
            self.production.parameters,
        )

    # ------------------------------------------------------------------ provenance
    def _provenance(
        self,
        task: TaskRow,
        transformation: Transformation,
        inputs: Sequence[CatalogFile],
        status: JobStatus | None,
        exit_code: int | None,
    ) -> dict[str, Any]:
        argv, env = self._submitted_command(task, transformation, inputs)
        return {
            "attempt": task.attempt,
            # Provenance is kept for years and read by many: the tokens a step is given are not kept.
            "argv": [hide_values(arg, self._secrets) for arg in redact_argv(argv)],
            "env": {name: hide_values(value, self._secrets) for name, value in redact_env(env).items()},
            "software": self._software_versions(transformation),
            "config_digest": self._config_digest(transformation),
            "host": socket.gethostname(),
            "backend": self.backend.name,
            "job_id": task.job_id,
            "started_at": status.started_at if status else None,
            "ended_at": (status.ended_at if status else None) or datetime.now(UTC),
            "exit_code": exit_code,
        }

    def _submitted_command(
        self, task: TaskRow, transformation: Transformation, inputs: Sequence[CatalogFile]
    ) -> tuple[list[str], dict[str, str]]:
        """The argv and environment of this attempt, as ``act`` rendered them.

        Rendered again for a task an earlier shepherd submitted; the step's templates if that fails.
        """
        rendered = self._rendered.get(task.task_id)
        if rendered is not None:
            return rendered.argv, rendered.env
        try:
            rendered = self._render(task, transformation, inputs)
            return list(rendered.argv), dict(rendered.env)
        except OsaGridError:
            return list(transformation.step.argv), dict(transformation.step.env)

    def _config_digest(self, transformation: Transformation) -> str:
        if transformation.name not in self._digests:
            # Of the transformation as recorded: a digest of its secrets would let one test guesses of them.
            recorded = redact_transformation(transformation.model_dump(mode="json", by_alias=True))
            shown = Transformation.model_validate(recorded).model_dump_json()
            digest = hashlib.sha256(shown.encode()).hexdigest()
            self._digests[transformation.name] = digest
        return self._digests[transformation.name]

    def _software_versions(self, transformation: Transformation) -> dict[str, str]:
        if transformation.name not in self._software:
            versions = {"osa-grid": __version__, "python": platform.python_version()}
            for distribution in transformation.step.distributions:
                try:
                    versions[distribution] = version(distribution)
                except PackageNotFoundError:
                    versions[distribution] = "not installed"
            if transformation.step.container is not None:
                versions["container"] = transformation.step.container
            self._software[transformation.name] = versions
        return self._software[transformation.name]


def _need_problem(
    name: str,
    node: querylang.Node,
    file_id: int | BadInput | None,
    own: Sequence[CatalogFile],
    found: dict[str, int],
) -> str | None:
    """Why a need's newest match cannot be the task's side input (None: it can, or nothing matches yet)."""
    if isinstance(file_id, BadInput):
        return f"needs {name}: the catalog cannot ask {querylang.to_text(node)!r}: {file_id}"
    inputs = {f.id: f.lfn for f in own}
    if file_id in inputs:
        return (
            f"needs {name}: {querylang.to_text(node)!r} selects {inputs[file_id]}, one of the task's own "
            "inputs (a side input must be another file: make the need's query exclude the input's)"
        )
    same = [other for other, chosen in found.items() if chosen == file_id]
    if file_id is not None and same:
        return f"needs {name} and {same[0]} select the same file: each need must select its own file"
    return None
