"""The onsite nightly workflow: what a night's processing is, and how a night's production is made of it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Literal

from pydantic import Field

from osa_grid.core import query as querylang
from osa_grid.core import templates
from osa_grid.core.metadata import MetaValue
from osa_grid.core.models import Production, Strict, Template, Transformation
from osa_grid.core.query import literal_text
from osa_grid.core.sequences import NightPlan
from osa_grid.core.states import TaskState
from osa_grid.core.validation import Producers, dependencies, topological_order

Name = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")]


def _raw_metadata() -> dict[str, MetaValue]:
    return {"data_level": "R0"}


class RawLayout(Strict):
    """Where a night's raw sub-run files are, relative to the base directory, and how they are named."""

    directory: Template = "R0/{night_dir}"
    pattern: str = "LST-1.{stream:d}.Run{run_id:d}.{subrun_id:d}.fits.fz"
    streams: int = Field(4, ge=1, le=64, strict=True)
    metadata: dict[str, MetaValue] = Field(default_factory=_raw_metadata)


class SiteFile(Strict):
    """A night's auxiliary file registered when it appears (e.g. the drive log)."""

    path: Template
    metadata: dict[str, MetaValue]


class Publish(Strict):
    """Products copied to the web directory when the night closes (e.g. datacheck files)."""

    query: str
    directory: Template = "web/datacheck/{night_dir}/{prod_id}"


class ClosingRule(Strict):
    """When the night's run summary counts as final: no run will be added to it any more.

    ``processed``: as soon as every run it lists is processed (a summary written once, in the morning, as
    LSTOSA's cron does); ``time``: from ``at_utc`` on the morning after the night's date; ``marker``: once the
    file ``marker`` (relative to the base directory) exists. ``osa-grid nightly close`` closes by hand.
    """

    summary_final: Literal["processed", "time", "marker"] = "processed"
    at_utc: time = time(10, 0)
    marker: Template = "monitoring/RunSummary/RunSummary_{night_dir}.final"


class NightlyWorkflow(Strict):
    name: Name
    version: str = "1"
    description: str = ""
    prod_id: str = Field("v0.1", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    lookback_nights: int = Field(4, ge=0, le=60, strict=True)
    raw: RawLayout = RawLayout()
    site_files: list[SiteFile] = Field(default_factory=list)
    # Status table: column label -> the transformation(s) whose progress it shows (several when a step has
    # variants, e.g. R0 -> DL1 of event-builder calibrated and of gain-selected data).
    columns: dict[str, Name | list[Name]] = Field(default_factory=dict)
    # Quality figures: column label -> a metadata key of the run's products (written by datacheck steps).
    quality: dict[str, str] = Field(default_factory=dict)
    publish: list[Publish] = Field(default_factory=list)
    close: ClosingRule = ClosingRule()
    transformations: list[Transformation] = Field(min_length=1)


def summary_final_at(rule: ClosingRule, night: date) -> datetime:
    """With the ``time`` rule: when the night's summary becomes final (the next morning, UTC)."""
    return datetime.combine(night + timedelta(days=1), rule.at_utc, tzinfo=UTC)


def night_dir(night: date) -> str:
    return f"{night:%Y%m%d}"


def production_name(workflow: NightlyWorkflow, night: date) -> str:
    return f"{workflow.name}-{night_dir(night)}"


def parameters(workflow: NightlyWorkflow, night: date) -> dict[str, MetaValue]:
    return {"night_dir": night_dir(night), "prod_id": workflow.prod_id, "processing_night": night}


def night_production(workflow: NightlyWorkflow, plan: NightPlan) -> Production:
    """The night's production: the workflow's transformations restricted to the night's sequences.

    Transformations that start from raw data take only the runs of the night's sequences (the calibration
    runs may come from an earlier night); every other input and side input must come from this production.
    """
    name = production_name(workflow, plan.night)
    raw = raw_consumers(workflow)
    makers = Producers(Production(name=workflow.name, transformations=workflow.transformations))
    runs = ", ".join(str(run.run_id) for run, _night in plan.runs_to_process()) or "-1"
    own = f"production = {literal_text(name)}"
    transformations = []
    for transformation in workflow.transformations:
        restriction = f"run_id in ({runs})" if transformation.name in raw else own
        # Side inputs the workflow makes (e.g. the calibration file) must be tonight's; the others (drive
        # log, analysis configuration, models) come from the site or another production.
        needs = {
            key: f"({query}) and {own}" if makers.of(_need_node(query)) else query
            for key, query in transformation.input.needs.items()
        }
        spec = transformation.input.model_copy(
            update={"query": f"({transformation.input.query}) and {restriction}", "needs": needs}
        )
        transformations.append(transformation.model_copy(update={"input": spec}))
    return Production(
        name=name,
        version=workflow.version,
        description=f"{workflow.description} (night {plan.night})".strip(),
        parameters=parameters(workflow, plan.night),
        transformations=transformations,
    )


def _need_node(template: str) -> querylang.Node:
    return querylang.parse_template(template).shape


def column_transformations(workflow: NightlyWorkflow, label: str) -> list[str]:
    chosen = workflow.columns[label]
    return [chosen] if isinstance(chosen, str) else list(chosen)


def per_subrun_transformations(workflow: NightlyWorkflow) -> set[str]:
    """Per-file transformations fed, through per-file steps only, by the raw sub-run files: one task per
    sub-run (their progress is counted against the run's number of sub-runs). A step that selects sub-runs
    (the calibration's ``subrun_id = 0``) is not: it does not run for every sub-run."""
    generic = Production(name=workflow.name, transformations=workflow.transformations)
    parents = dependencies(generic)
    modes = {t.name: t.grouping.mode for t in workflow.transformations}
    raw = raw_consumers(workflow)
    found: set[str] = set()
    for transformation in topological_order(generic):
        name = transformation.name
        if modes[name] != "per_file" or "subrun_id" in query_keys(
            querylang.parse(transformation.input.query)
        ):
            continue
        if name in raw or (parents[name] and all(p in found for p in parents[name])):
            found.add(name)
    return found


def query_keys(node: querylang.Node) -> set[str]:
    """The metadata keys a query looks at."""
    if isinstance(node, querylang.And | querylang.Or):
        return set().union(*(query_keys(item) for item in node.items))
    if isinstance(node, querylang.Not):
        return query_keys(node.item)
    key = getattr(node, "key", None)
    return {key} if isinstance(key, str) else set()


def raw_consumers(workflow: NightlyWorkflow) -> set[str]:
    """Transformations whose inputs no other transformation makes: they start from the site's raw files."""
    makers = Producers(Production(name=workflow.name, transformations=workflow.transformations))
    return {t.name for t in workflow.transformations if not makers.of(querylang.parse(t.input.query), t.name)}


def render_site_path(template: str, night: date, workflow: NightlyWorkflow) -> str:
    return templates.check_relative_path(templates.render(template, parameters(workflow, night), "site path"))


# ---------------------------------------------------------------------------------------- status


@dataclass(frozen=True)
class TaskOfRun:
    """A task of the night with the run its inputs belong to."""

    transformation: str
    run_id: int | None
    state: TaskState
    attempt: int
    job_id: str | None
    exit_code: int | None
    subrun_id: int | None = None  # the sub-run of a per-sub-run task
    error: str | None = None  # why it failed (the tail of its stderr, its log)


@dataclass(frozen=True)
class SequenceStatus:
    seq_id: int
    parent: int | None
    kind: str
    run_id: int
    n_subruns: int
    source: str
    tries: int
    job_id: str
    state: str
    exit_code: int | None
    progress: dict[str, float]  # column label -> percent
    quality: dict[str, MetaValue] = field(default_factory=dict)  # column label -> figure
    detail: str = ""  # what a WAITING run waits for, what an INCOMPLETE run misses and why


@dataclass(frozen=True)
class Veto:
    """An operator's rule: the run (or one sub-run of it) is not processed, its tasks now or later."""

    run_id: int
    subrun_id: int | None = None

    def covers(self, run_id: MetaValue | None, subrun_id: MetaValue | None) -> bool:
        return run_id == self.run_id and (self.subrun_id is None or subrun_id == self.subrun_id)

    def __str__(self) -> str:
        return f"run {self.run_id}" + ("" if self.subrun_id is None else f" sub-run {self.subrun_id}")


def sequence_state(states: Sequence[TaskState]) -> str:
    """One word for where a sequence stands, in the spirit of the operators' table."""
    if not states:
        return "WAITING"
    if TaskState.RUNNING in states:
        return "RUNNING"
    if any(s in (TaskState.SUBMITTED, TaskState.READY, TaskState.STAGING) for s in states):
        return "PENDING"
    if TaskState.CREATED in states:
        return "WAITING"
    if TaskState.FAILED in states:
        return "FAILED"
    if TaskState.VETOED in states:
        return "VETOED"
    if TaskState.CANCELLED in states:
        return "CANCELLED"
    return "COMPLETED"


def sequence_table(
    workflow: NightlyWorkflow,
    plan: NightPlan,
    tasks: Sequence[TaskOfRun],
    quality: Mapping[str, Mapping[int, MetaValue]] | None = None,
    sources: Mapping[int, str] | None = None,
    closed: bool = False,
    vetoes: Sequence[Veto] = (),
) -> list[SequenceStatus]:
    """One row per sequence; ``quality`` maps a quality column to its figure per run, ``sources`` a data
    run to the source it observed. A run is COMPLETED only when each of its sub-runs went through every
    per-sub-run step; on a ``closed`` night a run that is not is INCOMPLETE."""
    by_run: dict[int, list[TaskOfRun]] = {}
    for task in tasks:
        if task.run_id is not None:
            by_run.setdefault(task.run_id, []).append(task)
    per_subrun = per_subrun_transformations(workflow)
    rows = []
    for sequence in plan.sequences:
        mine = by_run.get(sequence.run.run_id, [])
        latest = max(mine, key=lambda t: (t.attempt, t.job_id or ""), default=None)
        progress = {}
        for label in workflow.columns:
            chosen = column_transformations(workflow, label)
            steps = [t for t in mine if t.transformation in chosen]
            by_subrun = any(name in per_subrun for name in chosen)
            expected = sequence.run.n_subruns if by_subrun else max(len(steps), 1)
            done = sum(1 for t in steps if t.state == TaskState.DONE)
            progress[label] = 100.0 * min(done, expected) / expected if expected else 0.0
        run_vetoes = [v for v in vetoes if v.run_id == sequence.run.run_id]
        state, detail = run_state(sequence.run.n_subruns, mine, per_subrun, closed, run_vetoes)
        rows.append(
            SequenceStatus(
                seq_id=sequence.seq_id,
                parent=sequence.parent,
                kind=sequence.kind,
                run_id=sequence.run.run_id,
                n_subruns=sequence.run.n_subruns,
                source=(sources or {}).get(sequence.run.run_id, ""),
                tries=max((t.attempt for t in mine), default=0),
                job_id=(latest.job_id or "") if latest else "",
                state=state,
                exit_code=latest.exit_code if latest else None,
                progress=progress,
                quality={
                    label: values[sequence.run.run_id]
                    for label, values in (quality or {}).items()
                    if sequence.run.run_id in values
                },
                detail=detail,
            )
        )
    return rows


def run_state(
    n_subruns: int,
    tasks: Sequence[TaskOfRun],
    per_subrun: set[str],
    closed: bool,
    vetoes: Sequence[Veto] = (),
) -> tuple[str, str]:
    """Where a run stands and, for a run not COMPLETED, why (the sub-runs it waits for or misses)."""
    if any(v.subrun_id is None for v in vetoes):
        return "VETOED", "vetoed by the operators"
    state = sequence_state([t.state for t in tasks])
    missing = missing_subruns(n_subruns, tasks, per_subrun, vetoes)
    if state == "COMPLETED" and not missing:
        return state, "" if not vetoes else f"vetoed: {', '.join(str(v) for v in vetoes)}"
    if state in ("FAILED", "VETOED", "CANCELLED"):
        return state, "; ".join(filter(None, (missing, _last_error(tasks))))
    if closed:
        return "INCOMPLETE", missing or f"closed while {state}"
    if state == "COMPLETED":  # what there is went through; more sub-runs are expected
        return "WAITING", missing
    if state == "WAITING" and not tasks:
        return state, "no raw file yet"
    return state, missing


def _last_error(tasks: Sequence[TaskOfRun]) -> str:
    """The error of the run's latest stopped task: what an operator reads first."""
    stopped = [t for t in tasks if t.state in _STOPPED and t.error]
    latest = max(stopped, key=lambda t: t.attempt, default=None)
    return latest.error or "" if latest else ""


def missing_subruns(
    n_subruns: int, tasks: Sequence[TaskOfRun], per_subrun: set[str], vetoes: Sequence[Veto] = ()
) -> str:
    """The run's sub-runs that did not go through every per-sub-run step (vetoed ones excepted), with why."""
    steps = {t.transformation for t in tasks if t.transformation in per_subrun}
    if not steps:
        return ""
    vetoed = {v.subrun_id for v in vetoes}
    why: dict[str, list[int]] = {}
    for subrun in range(n_subruns):
        if subrun in vetoed:
            continue
        of_subrun = [t for t in tasks if t.transformation in steps and t.subrun_id == subrun]
        if {t.transformation for t in of_subrun if t.state == TaskState.DONE} == steps:
            continue
        stopped = [t.state.value for t in of_subrun if t.state in _STOPPED]
        reason = stopped[0] if stopped else "not processed yet" if of_subrun else "no raw file"
        why.setdefault(reason, []).append(subrun)
    return "; ".join(f"sub-run(s) {_ranges(numbers)}: {reason}" for reason, numbers in why.items())


_STOPPED = (TaskState.FAILED, TaskState.VETOED, TaskState.CANCELLED)


def _ranges(numbers: Sequence[int]) -> str:
    """0,1,2,5 -> '0-2,5' (a run has up to 10000 sub-runs)."""
    parts: list[str] = []
    start = previous = numbers[0]
    for number in [*numbers[1:], None]:
        if number is not None and number == previous + 1:
            previous = number
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if number is not None:
            start = previous = number
    return ",".join(parts)
