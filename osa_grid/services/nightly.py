"""The onsite nightly shepherd: one process that knows where every run of the night stands.

Each pass: read the night's runs, register raw and site files that have appeared, run one shepherd pass of
the night's production, close the night when everything that can be done is done, and write the status page.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path

from osa_grid.catalog.store import Catalog
from osa_grid.core import query as querylang
from osa_grid.core import templates
from osa_grid.core.metadata import MetaValue
from osa_grid.core.names import name_pattern
from osa_grid.core.nightly import (
    NightlyWorkflow,
    SequenceStatus,
    TaskOfRun,
    Veto,
    night_dir,
    night_production,
    parameters,
    per_subrun_transformations,
    production_name,
    render_site_path,
    sequence_table,
    summary_final_at,
)
from osa_grid.core.planner import FileRecord, plan_groups
from osa_grid.core.redaction import redact_text
from osa_grid.core.runsummary import (
    NightRuns,
    RunChange,
    RunInfo,
    RunSource,
    SummaryNotReady,
    parse_run_catalog,
    parse_summary,
    reconcile,
    run_from_record,
    run_record,
)
from osa_grid.core.sequences import NightPlan, plan_night
from osa_grid.core.states import OperatorAction, TaskState
from osa_grid.errors import BadInput, OsaGridError
from osa_grid.logs import event, get_logger
from osa_grid.ports import Backend, DataManager
from osa_grid.services.files import describe_path
from osa_grid.services.nightweb import render_page, write_page
from osa_grid.services.notify import Notifier
from osa_grid.services.outages import default_alert_after
from osa_grid.services.productions import save_production
from osa_grid.services.provenance import production_prov_json
from osa_grid.services.shepherd import PassReport, Shepherd, ShepherdOptions

log = get_logger("nightly")

NIGHT_CLOSED = "night_closed"
NIGHT_REOPENED = "night_reopened"
DEADLINE_MISSED = "night_deadline_missed"
VETO_TOLD = "veto_notified"
NOTIFY_FAILED = "notify_failed"
RUNS_RECORDED = "runs_recorded"
VETO_RULE = "veto_rule"
VETO_LIFTED = "veto_lifted"
# What the page's event list shows: the night's notices and the operators' decisions.
PAGE_EVENTS = (
    NIGHT_CLOSED,
    NIGHT_REOPENED,
    DEADLINE_MISSED,
    VETO_RULE,
    VETO_LIFTED,
    NOTIFY_FAILED,
    "run_summary_unreadable",
)
# A veto rule takes the tasks that have not run, those waiting for side inputs included.
RULE_VETO = OperatorAction("veto", (TaskState.CREATED, TaskState.READY, TaskState.FAILED), TaskState.VETOED)


@dataclass(frozen=True)
class FileSignature:
    """What a file was when it was read: it is read again only when it changed."""

    mtime_ns: int
    size: int
    digest: str

    @classmethod
    def of(cls, stat: os.stat_result, data: bytes) -> FileSignature:
        """``stat`` taken before reading ``data``: a change while reading is seen at the next check."""
        return cls(stat.st_mtime_ns, stat.st_size, hashlib.sha256(data).hexdigest())

    def same_stat(self, path: Path) -> bool:
        stat = path.stat()
        return (stat.st_mtime_ns, stat.st_size) == (self.mtime_ns, self.size)


@dataclass(frozen=True)
class NightReport:
    plan: NightPlan
    registered: int
    missing_raw: int
    report: PassReport | None
    closed: bool
    # A night without sequences whose run summary is final: nothing will ever be processed.
    nothing_to_do: bool = False


class Night:
    """Night ``night`` of the site under ``base_dir``, processed by ``workflow``.

    The night's runs are what its run summary lists, merged with what was recorded of it before (a run is
    never dropped); ``refresh`` reads the summary and the run catalog again when they changed. With
    ``wait_for_summary``, a summary still being written (empty) is waited for instead of refused.
    """

    def __init__(
        self,
        workflow: NightlyWorkflow,
        night: date,
        base_dir: Path,
        catalog: Catalog,
        run_summary: Path | None = None,
        wait_for_summary: bool = False,
    ) -> None:
        self.workflow = workflow
        self.night = night
        self.base_dir = base_dir
        self.catalog = catalog
        self.run_summary = run_summary
        self.name = production_name(workflow, night)
        # Why the summary cannot be followed now (being written, broken): the night is not closed meanwhile.
        self.summary_problem: str | None = None
        self._seen: dict[Path, FileSignature] = {}
        self._unreported: list[RunChange] = []
        recorded = self.recorded_runs()
        try:
            read = self._runs_of(night)
        except SummaryNotReady as exc:
            if not wait_for_summary:
                raise
            self.summary_problem = str(exc)
            read = None
        # None: no run summary yet; read once per change, the plan and the messages see the same runs.
        self.runs, self._unreported = self._merged(recorded, read)
        self.plan = plan_night(night, self._runs_with_tonight, workflow.lookback_nights)
        self.production = night_production(workflow, self.plan)
        self.sources = self._sources()

    # ------------------------------------------------------------------ the night's runs
    def summary_path(self, night: date) -> Path:
        monitoring = self.base_dir / "monitoring" / "RunSummary"
        for candidate in (
            monitoring / f"RunSummary_{night_dir(night)}.ecsv",
            monitoring / f"NightSummary_{night_dir(night)}.txt",
        ):
            if candidate.is_file():
                return candidate
        return monitoring / f"RunSummary_{night_dir(night)}.ecsv"

    def tonight_summary(self) -> Path:
        """The run summary of the night: ``--run-summary`` or the site's."""
        return self.run_summary or self.summary_path(self.night)

    def _runs_with_tonight(self, night: date) -> NightRuns | None:
        return self.runs if night == self.night else self._runs_of(night)

    def _runs_of(self, night: date) -> NightRuns | None:
        path = self.tonight_summary() if night == self.night else self.summary_path(night)
        if not path.is_file():
            if night == self.night and self.run_summary:
                raise BadInput(f"{path}: no such run summary")
            return None
        text = self._read_text(path)
        runs = parse_summary(text, str(path))
        for ignored in runs.ignored:
            event(log, "run_ignored", night=night, run=ignored.run_id, reason=ignored.reason)
        return runs

    def _read_text(self, path: Path) -> str:
        stat = path.stat()
        data = path.read_bytes()
        self._seen[path] = FileSignature.of(stat, data)
        try:
            return data.decode()
        except UnicodeDecodeError as exc:
            raise BadInput(f"{path}: not a text file: {exc}") from exc

    def _changed(self, path: Path) -> bool:
        """Whether ``path`` differs from when it was last read: size and time first, then the content."""
        seen = self._seen.get(path)
        if seen is None:
            return path.is_file()
        if not path.is_file():
            return True
        if seen.same_stat(path):
            return False
        stat = path.stat()
        data = path.read_bytes()
        if seen.digest == hashlib.sha256(data).hexdigest():
            self._seen[path] = FileSignature.of(stat, data)
            return False
        return True

    def recorded_runs(self) -> tuple[RunInfo, ...]:
        """The night's runs as last recorded (``runs_recorded`` events)."""
        for record in reversed(self.catalog.events(production=self.name)):
            if record["kind"] == RUNS_RECORDED:
                return tuple(run_from_record(run) for run in record["detail"]["runs"])
        return ()

    @staticmethod
    def _merged(
        recorded: Sequence[RunInfo], read: NightRuns | None
    ) -> tuple[NightRuns | None, list[RunChange]]:
        if read is None:
            return (NightRuns(tuple(recorded)) if recorded else None), []
        runs, changes = reconcile(recorded, read)
        return NightRuns(runs, read.ignored), changes

    def refresh(self) -> list[RunChange]:
        """Read the run summary and the run catalog again if they changed: new runs, grown runs and new
        sources are taken; what cannot be read now is kept in ``summary_problem`` (the night waits).
        Returns the changes of the runs since they were last recorded."""
        summary = self.tonight_summary()
        if self._changed(summary) or self.summary_problem is not None:
            self.summary_problem = None
            previous = self.runs
            try:
                read = self._runs_of(self.night)
                self.runs, changes = self._merged(previous.runs if previous else self.recorded_runs(), read)
                plan = plan_night(self.night, self._runs_with_tonight, self.workflow.lookback_nights)
            except BadInput as exc:  # the previous runs stay; the next pass reads it again
                self.runs = previous
                self.summary_problem = str(exc)
            else:
                self._unreported += changes
                self.plan = plan
                self.production = night_production(self.workflow, plan)
        if self._changed(self.catalog_path()):
            try:
                self.sources = self._sources()
            except BadInput as exc:
                self.summary_problem = str(exc)
        changes, self._unreported = self._unreported, []
        return changes

    def catalog_path(self) -> Path:
        """The site's run catalog: the source each data run observed (LST-1 keeps it in its TCU database)."""
        return self.base_dir / "monitoring" / "RunCatalog" / f"RunCatalog_{night_dir(self.night)}.ecsv"

    def _sources(self) -> dict[int, RunSource]:
        path = self.catalog_path()
        if not path.is_file():
            return {}
        return parse_run_catalog(self._read_text(path), str(path))

    def record_changes(self, changes: Sequence[RunChange], notifier: Notifier) -> None:
        """Record the night's runs and what changed; a run dropped or changed is told to operators once."""
        if any(not c.is_problem for c in changes):
            runs = self.runs.runs if self.runs else ()
            self.catalog.record_event(RUNS_RECORDED, self.name, runs=[run_record(r) for r in runs])
        told = {
            (e["kind"], (e["detail"] or {}).get("detail")) for e in self.catalog.events(production=self.name)
        }
        for change in changes:
            kind = f"run_{change.kind}"
            if change.is_problem and (kind, change.detail) in told:
                continue
            level = logging.WARNING if change.is_problem else logging.INFO
            event(log, kind, level, night=self.night, run=change.run_id, detail=change.detail)
            self.catalog.record_event(kind, self.name, run_id=change.run_id, detail=change.detail)
            if change.is_problem:
                self.tell(notifier, f"osa-grid: night {self.night}: {change.detail}", change.detail)

    def summary_final(self, now: datetime | None = None) -> bool:
        """Whether the run summary counts as final by the workflow's closing rule (no run will be added)."""
        if self.runs is None or self.summary_problem is not None:
            return False
        rule = self.workflow.close
        if rule.summary_final == "time":
            return (now or datetime.now(UTC)) >= summary_final_at(rule, self.night)
        if rule.summary_final == "marker":
            return (self.base_dir / render_site_path(rule.marker, self.night, self.workflow)).is_file()
        return True

    def waiting_for(self) -> str:
        """Why the night is not closed although what it knows may be done: for the operators."""
        if self.summary_problem is not None:
            return f"the run summary cannot be used now: {self.summary_problem}"
        if self.runs is None:
            return f"no run summary yet ({self.tonight_summary()})"
        rule = self.workflow.close
        if rule.summary_final == "time":
            return f"the run summary is final at {summary_final_at(rule, self.night):%Y-%m-%d %H:%M} UTC"
        marker = self.base_dir / render_site_path(rule.marker, self.night, self.workflow)
        return f"the run summary is final when {marker} exists"

    # ------------------------------------------------------------------ vetoes
    def vetoes(self) -> list[Veto]:
        """The operators' vetoes in force: ``nightly veto`` records one, ``nightly retry`` lifts them."""
        found: list[Veto] = []
        for record in self.catalog.events(production=self.name):
            detail = record["detail"] or {}
            if record["kind"] == VETO_RULE:
                found.append(Veto(detail["run_id"], detail.get("subrun_id")))
            elif record["kind"] == VETO_LIFTED:
                run = detail.get("run_id")
                found = [v for v in found if run is not None and v.run_id != run]
        return found

    def add_veto(self, veto: Veto) -> int:
        """Record the rule and veto the tasks it covers now; later ones are vetoed as they appear."""
        self.catalog.record_event(VETO_RULE, self.name, run_id=veto.run_id, subrun_id=veto.subrun_id)
        event(log, VETO_RULE, logging.WARNING, night=self.night, veto=str(veto))
        return self.apply_vetoes()

    def lift_vetoes(self, run_id: int | None) -> None:
        if self.vetoes():
            self.catalog.record_event(VETO_LIFTED, self.name, run_id=run_id)

    def apply_vetoes(self) -> int:
        """Veto the tasks the rules cover that have not run (running jobs finish); returns how many."""
        vetoes = self.vetoes()
        if not vetoes:
            return 0
        subruns = self._subrun_of_tasks()
        chosen = [
            row.task_id
            for row, run_id in self.catalog.tasks_with_key(self.name, "run_id")
            if row.state in RULE_VETO.sources
            and any(v.covers(run_id, subruns.get(row.task_id, -1)) for v in vetoes)
        ]
        if not chosen:
            return 0
        changed = self.catalog.set_states(
            self.name, list(RULE_VETO.sources), RULE_VETO.target, RULE_VETO.kind, task_ids=chosen
        )
        for row in changed:  # the operators asked for it: no notification per task
            self.catalog.record_task_event(VETO_TOLD, row.task_id, rule=True)
        if changed:
            event(log, "tasks_vetoed", night=self.night, count=len(changed), reason="operators' veto")
        return len(changed)

    def _subrun_of_tasks(self) -> dict[str, int | None]:
        """The sub-run of each per-sub-run task (the others have none)."""
        per_subrun = per_subrun_transformations(self.workflow)
        return {
            row.task_id: subrun if row.transformation in per_subrun else None
            for row, subrun in self.catalog.tasks_with_key(self.name, "subrun_id")
        }

    # ------------------------------------------------------------------ raw and site files
    def missing_raw(self, found: Sequence[tuple[Path, dict[str, MetaValue]]]) -> int:
        """Raw files the night still waits for (none for what the operators vetoed)."""
        vetoes = self.vetoes()

        def wanted(run_id: MetaValue | None, subrun: MetaValue | None) -> bool:
            return not any(v.covers(run_id, subrun) for v in vetoes)

        expected = self.workflow.raw.streams * sum(
            sum(1 for subrun in range(run.n_subruns) if wanted(run.run_id, subrun))
            for run, _ in self.plan.runs_to_process()
        )
        arrived = [
            path
            for path, metadata in found
            if metadata.get("data_level") == "R0"
            and wanted(metadata.get("run_id"), metadata.get("subrun_id"))
        ]
        return max(expected - len(arrived), 0)

    def scan(self) -> list[tuple[Path, dict[str, MetaValue]]]:
        """Raw sub-run files of the night's runs and the night's site files that exist now."""
        found: list[tuple[Path, dict[str, MetaValue]]] = []
        for run, taken in self.plan.runs_to_process():
            found += self._raw_files(run, taken)
        for site_file in self.workflow.site_files:
            path = self.base_dir / render_site_path(site_file.path, self.night, self.workflow)
            if path.is_file():
                found.append((path, {**site_file.metadata, "night": self.night}))
        return found

    def _raw_files(self, run: RunInfo, taken: date) -> list[tuple[Path, dict[str, MetaValue]]]:
        directory = self.base_dir / render_site_path(self.workflow.raw.directory, taken, self.workflow)
        if not directory.is_dir():
            return []
        pattern = name_pattern(self.workflow.raw.pattern)
        found = []
        for entry in os.scandir(directory):
            metadata = pattern.metadata(entry.name) if entry.is_file() else None
            if metadata is None:
                continue
            if metadata.get("run_id") != run.run_id or not self._listed(run, metadata.get("subrun_id")):
                continue
            found.append(
                (
                    Path(entry.path),
                    {**self.workflow.raw.metadata, **metadata, **self._run_metadata(run, taken)},
                )
            )
        return found

    @staticmethod
    def _listed(run: RunInfo, subrun: MetaValue | None) -> bool:
        """A sub-run beyond the run's n_subruns waits until the summary lists it: registered now, it would
        carry a number of sub-runs its own id contradicts (its run merged without the sub-runs between)."""
        return not isinstance(subrun, int) or subrun < run.n_subruns

    def _run_metadata(self, run: RunInfo, taken: date) -> dict[str, MetaValue]:
        metadata: dict[str, MetaValue] = {
            "night": taken,
            "run_type": run.run_type,
            "n_subruns": run.n_subruns,
            "evb_preprocessing": run.evb_preprocessing,
            "n_data_runs": len(self.plan.data_runs),
        }
        if run.run_type == "DATA" and run.run_id in self.sources:
            metadata.update(self.sources[run.run_id].metadata())
        calibration = self.plan.calibration
        if calibration is not None:
            metadata.update(
                drs4_run=calibration.drs4.run_id,
                pedcal_run=calibration.pedcalib.run_id,
                calibration_night=calibration.night,
            )
        return metadata

    def register_new(self, found: list[tuple[Path, dict[str, MetaValue]]]) -> int:
        lfns = {self._lfn(path): (path, metadata) for path, metadata in found}
        known = self.catalog.known_lfns(list(lfns))
        new = [
            describe_path(path, metadata, lfn) for lfn, (path, metadata) in lfns.items() if lfn not in known
        ]
        self.catalog.register_files(new)
        if new:
            event(log, "files_registered", night=self.night, count=len(new))
        return len(new)

    def _lfn(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.base_dir.resolve()))
        except ValueError:
            raise BadInput(f"{path} is outside the base directory {self.base_dir}") from None

    # ------------------------------------------------------------------ status and closing
    def status(self, closed: bool | None = None) -> list[SequenceStatus]:
        """The sequence table; ``closed`` (default: whether the night is) tells unfinished runs INCOMPLETE."""
        subruns = self._subrun_of_tasks()
        tasks = [
            TaskOfRun(
                row.transformation,
                run_id,
                row.state,
                row.attempt,
                row.job_id,
                row.exit_code,
                subruns.get(row.task_id),
                row.error,
            )
            for row, run_id in self.catalog.tasks_with_key(self.production.name, "run_id")
        ]
        name = self.production.name
        quality = {
            label: self.catalog.values_by(name, key, "run_id") for label, key in self.workflow.quality.items()
        }
        sources = {run_id: source.name for run_id, source in self.sources.items()}
        if closed is None:
            closed = self.closed_at() is not None
        return sequence_table(self.workflow, self.plan, tasks, quality, sources, closed, self.vetoes())

    def closed_at(self) -> datetime | None:
        """When the night was closed; None while open (never closed, or reopened since its last close)."""
        for record in reversed(self.catalog.events(production=self.production.name)):
            if record["kind"] == NIGHT_REOPENED:
                return None
            if record["kind"] == NIGHT_CLOSED:
                at: datetime = record["at"]
                return at
        return None

    def reopen(self, notifier: Notifier, reason: str | None) -> datetime | None:
        """Open a closed night again for a repair (None if it was open): the next pass runs what is ready,
        and the night closes again, its products, NightFinished, provenance and page written anew."""
        closed = self.closed_at()
        if closed is None:
            return None
        by = operator_name()
        detail = {"by": by, "closed_at": closed.isoformat(), "reason": reason or ""}
        self.catalog.record_event(NIGHT_REOPENED, self.production.name, **detail)
        # Not finished any more: a consumer of NightFinished.txt must not take the night as done meanwhile.
        (self.analysis_dir() / "NightFinished.txt").unlink(missing_ok=True)
        event(log, NIGHT_REOPENED, logging.WARNING, night=self.night, **detail)
        self.tell(
            notifier,
            f"osa-grid: night {self.night} reopened by {by}",
            f"closed at {closed:%Y-%m-%d %H:%M} UTC" + (f"\nreason: {reason}" if reason else ""),
        )
        return closed

    def notices(self) -> list[str]:
        """The night's events operators are told of, oldest first, one line each (for the page)."""
        lines = []
        for record in self.catalog.events(production=self.production.name):
            if record["kind"] in PAGE_EVENTS:
                detail = ", ".join(f"{k}={v}" for k, v in sorted((record["detail"] or {}).items()) if v != "")
                lines.append(
                    f"{record['at']:%Y-%m-%d %H:%M:%S} UTC {record['kind']}"
                    + (f": {detail}" if detail else "")
                )
        return lines

    def close(self, data: DataManager, notifier: Notifier, forced: bool = False) -> None:
        """Record the night as finished, publish its datacheck products and tell the operators."""
        rows = self.status(closed=True)
        problems = [r for r in rows if r.state != "COMPLETED"]
        published = self._publish()
        summary = status_lines(rows) or "no runs"
        self.catalog.record_event(
            NIGHT_CLOSED, self.production.name, forced=forced, problems=len(problems), published=published
        )
        marker = self.analysis_dir() / "NightFinished.txt"
        marker.parent.mkdir(parents=True, exist_ok=True)
        self._write_provenance()
        marker.write_text(f"night {self.night} closed at {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}\n{summary}\n")
        state = "with problems" if problems else "complete"
        self.tell(notifier, f"osa-grid: night {self.night} closed ({state})", summary)
        event(log, NIGHT_CLOSED, logging.WARNING, night=self.night, problems=len(problems), forced=forced)

    def tell(self, notifier: Notifier, subject: str, body: str) -> None:
        """Tell the operators. A notification that cannot be sent is reported (a warning line and an event of
        the night) and does not fail the night: the catalog, not the message, is the record. It is not sent
        again: the next pass would fail the same way and repeat the warning every poll."""
        try:
            notifier.send(subject, body)
        except OsaGridError as exc:
            error = redact_text(str(exc))
            event(log, NOTIFY_FAILED, logging.WARNING, night=self.night, subject=subject, error=error)
            self.catalog.record_event(NOTIFY_FAILED, self.production.name, subject=subject, error=error)

    def provenance_file(self) -> Path:
        return self.analysis_dir() / f"provenance_{night_dir(self.night)}.json"

    def _write_provenance(self) -> None:
        """The night's provenance (every product, task, command, software version) in one PROV-JSON file."""
        document = production_prov_json(self.catalog, self.production.name)
        path = self.provenance_file()
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(document, indent=1, sort_keys=True, default=str))
        temporary.replace(path)  # a reader never sees half a document

    def web_page(self) -> Path:
        return self.base_dir / "web" / "nightly" / f"{night_dir(self.night)}.html"

    def write_page(self) -> Path:
        """Regenerate the status page; datacheck plots published for the night are shown on it, datacheck
        pages linked from it."""
        page = self.web_page()
        images = [os.path.relpath(p, page.parent) for p in self.datacheck_plots()]
        pages = [os.path.relpath(p, page.parent) for p in self.datacheck_pages()]
        write_page(page, self.page(images, pages=pages))
        return page

    def page(self, images: list[str], refresh: int | None = None, pages: list[str] | None = None) -> str:
        """The status page, showing ``images`` (links to the datacheck plots) and linking ``pages``."""
        return render_page(
            self.night,
            self.status(),
            list(self.workflow.columns),
            self.closed_at() is not None,
            images,
            list(self.workflow.quality),
            refresh,
            pages or [],
            self.notices(),
        )

    def datacheck_plots(self) -> list[Path]:
        """The plots published for the night (the workflow's publish directories)."""
        return self._published("*.png")

    def datacheck_pages(self) -> list[Path]:
        """The web pages published for the night (the night-wise datacheck's)."""
        return self._published("*.html")

    def _published(self, pattern: str) -> list[Path]:
        values = parameters(self.workflow, self.night)
        found: list[Path] = []
        for rule in self.workflow.publish:
            directory = self.base_dir / templates.render(rule.directory, values, "publish")
            if directory.is_dir():
                found += sorted(directory.glob(pattern))
        return found

    def analysis_dir(self) -> Path:
        return self.base_dir / "running_analysis" / night_dir(self.night) / self.workflow.prod_id

    def _publish(self) -> int:
        count = 0
        values = parameters(self.workflow, self.night)
        for rule in self.workflow.publish:
            target = self.base_dir / templates.check_relative_path(
                templates.render(rule.directory, values, "publish")
            )
            query = f"({rule.query}) and production = {querylang.literal_text(self.production.name)}"
            for found in self.catalog.query(query):
                for replica in found.replicas:
                    source = Path(replica.pfn)
                    if source.is_file():
                        target.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(source, target / source.name)
                        count += 1
                        break
        return count


def operator_name() -> str:
    """Who acts, for the record: the login name, else the user id."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def status_lines(rows: Sequence[SequenceStatus]) -> str:
    """The table in lines, for NightFinished.txt and the notifications: a run not COMPLETED says why."""
    return "\n".join(
        f"seq {r.seq_id} {r.kind} run {r.run_id}: {r.state}" + (f" ({r.detail})" if r.detail else "")
        for r in rows
    )


def save_night_production(catalog: Catalog, night: Night) -> None:
    save_production(catalog, night.production, None)


@dataclass(frozen=True)
class NightlyOptions:
    once: bool = False
    poll_interval: float = 30.0
    deadline: datetime | None = None
    # Per remote service: seconds unreached before the operator is told (Settings.outage_alert_after).
    outage_alert_after: Mapping[str, float] = field(default_factory=default_alert_after)


class NightlyShepherd:
    """Passes over a night until it is closed (or a single pass with ``once``)."""

    def __init__(
        self,
        night: Night,
        backend: Backend,
        data: DataManager,
        work_root: Path,
        notifier: Notifier,
        options: NightlyOptions,
    ) -> None:
        self.night = night
        self.data = data
        self.notifier = notifier
        self.options = options
        self._problem_told: str | None = None
        self.shepherd = Shepherd(
            night.catalog,
            backend,
            data,
            night.production,
            work_root,
            ShepherdOptions(
                poll_interval=options.poll_interval, outage_alert_after=options.outage_alert_after
            ),
            notifier=notifier,
            on_planned=self._apply_vetoes,
        )

    def run(self) -> NightReport:
        save_night_production(self.night.catalog, self.night)
        with self.shepherd.lease():
            report = self.run_pass()
            while not (report.closed or report.nothing_to_do or self.options.once):
                self.shepherd.backend.wait_any(self.options.poll_interval)
                report = self.run_pass()
            if self.options.once and not self.shepherd.backend.capabilities.detached:
                report = self._drain(report)
            return report

    def _drain(self, report: NightReport) -> NightReport:
        """A local pool's jobs die with this process: let this pass's jobs finish, start no others."""
        while report.report is not None and report.report.active:
            self.shepherd.backend.wait_any(self.options.poll_interval)
            report = self.run_pass(submit=False)
        return report

    def run_pass(self, submit: bool = True) -> NightReport:
        night = self.night
        if night.closed_at() is not None:
            return NightReport(night.plan, 0, 0, None, closed=True)
        self._follow_summary()
        if not night.plan.sequences:
            return NightReport(night.plan, 0, 0, None, False, nothing_to_do=night.summary_final())
        found = night.scan()
        registered = night.register_new(found)
        missing = night.missing_raw(found)
        # Night-wise steps wait until every raw file of the night is there and no run can be added.
        final = night.summary_final()
        self.shepherd.options = replace(self.shepherd.options, auto_flush=missing == 0 and final)
        report = self.shepherd.run_pass(submit=submit)
        self._check_deadline()
        self._tell_vetoes()
        try:
            night.write_page()
        except OSError as exc:  # the page is a convenience: never let it stop the night
            event(log, "page_not_written", logging.WARNING, night=night.night, error=str(exc))
        closed = False
        if report.runnable == 0 and missing == 0 and submit and final:
            if not self.shepherd.options.flush:
                # Runs missing sub-runs that failed: process what there is before closing.
                self.shepherd.options = replace(self.shepherd.options, flush=True)
                report = self.shepherd.run_pass()
            # Read the summary once more: a run added meanwhile is processed before the night closes.
            if report.runnable == 0 and not self._follow_summary():
                night.close(self.data, self.notifier)
                night.write_page()
                closed = True
        return NightReport(night.plan, registered, missing, report, closed)

    def _follow_summary(self) -> bool:
        """Take the run summary's changes: the production follows new runs. True when there is more to do."""
        night = self.night
        changes = night.refresh()
        night.record_changes(changes, self.notifier)
        if night.summary_problem is not None and night.summary_problem != self._problem_told:
            # Once per problem, not every poll: the night goes on with the runs it knows.
            event(
                log, "run_summary_unreadable", logging.WARNING, night=night.night, error=night.summary_problem
            )
            night.catalog.record_event("run_summary_unreadable", night.name, error=night.summary_problem)
        self._problem_told = night.summary_problem
        more = any(not change.is_problem for change in changes)
        if night.production != self.shepherd.production:
            save_night_production(night.catalog, night)
            self.shepherd.use_production(night.production)
            more = True
        if more:  # groups are closed incomplete only once the night's runs are known: not a new run's
            self.shepherd.options = replace(self.shepherd.options, flush=False)
        return more

    def _apply_vetoes(self) -> None:
        self.night.apply_vetoes()

    def _tell_vetoes(self) -> None:
        catalog = self.night.catalog
        name = self.night.production.name
        vetoed = catalog.tasks(name, states=[TaskState.VETOED])
        if not vetoed:
            return
        told = {e["task_id"] for e in catalog.events(production=name) if e["kind"] == VETO_TOLD}
        for task in vetoed:
            if task.task_id in told:
                continue
            self.night.tell(
                self.notifier,
                f"osa-grid: night {self.night.night}: a {task.transformation} task was vetoed",
                f"task {task.task_id}\nerror: {task.error}\nlogs: {task.workdir}",
            )
            catalog.record_task_event(VETO_TOLD, task.task_id)
            event(
                log,
                "task_vetoed",
                logging.WARNING,
                night=self.night.night,
                task=task.task_id,
                error=task.error,
            )

    def _check_deadline(self) -> None:
        deadline = self.options.deadline
        if deadline is None or datetime.now(UTC) < deadline:
            return
        events = self.night.catalog.events(production=self.night.production.name)
        if any(e["kind"] == DEADLINE_MISSED for e in events):
            return
        self.night.catalog.record_event(
            DEADLINE_MISSED, self.night.production.name, deadline=deadline.isoformat()
        )
        event(log, DEADLINE_MISSED, logging.WARNING, night=self.night.night, deadline=deadline.isoformat())
        self.night.tell(
            self.notifier,
            f"osa-grid: night {self.night.night} not closed by {deadline:%Y-%m-%d %H:%M} UTC",
            status_lines(self.night.status()),
        )


def simulate(night: Night) -> dict[str, int]:
    """What one pass would launch now, computed without writing anything: tasks per root transformation."""
    found = night.scan()
    records = [
        FileRecord(-index - 1, night._lfn(path), metadata) for index, (path, metadata) in enumerate(found)
    ]
    counts: dict[str, int] = {}
    for transformation in night.production.transformations:
        node = querylang.parse(transformation.input.query)
        candidates = [r for r in records if querylang.evaluate(node, r.metadata)]
        if candidates:
            counts[transformation.name] = len(
                plan_groups(night.production.name, transformation, candidates, False).tasks
            )
    return counts
