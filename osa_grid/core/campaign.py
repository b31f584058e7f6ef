"""Campaigns: a production over a scope, with a backend, limits, a software environment (pure, no I/O).

A campaign runs as a production of its own, named after the campaign (``scoped_production``): the
transformations that read from the catalog at large (no declared parents) get the scope added to their
input query; their children follow their parents' outputs, so nothing else needs scoping. Its own name
keeps its tasks, cursors and products apart from any other run of the same production.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from pydantic import ByteSize, Field, field_validator, model_validator

from osa_grid.core import query as querylang
from osa_grid.core.metadata import MetaValue
from osa_grid.core.models import NAME_PATTERN, Production, Strict, Transformation
from osa_grid.core.planner import FileRecord, input_query, plan_groups
from osa_grid.core.query import literal_text
from osa_grid.core.rendering import render_outputs
from osa_grid.core.validation import topological_order
from osa_grid.errors import BadInput

CampaignStatus = Literal["active", "stopped", "cancelled", "done"]
Problem = tuple[tuple[str | int, ...], str]


class NightRange(Strict):
    first: date = Field(alias="from")
    last: date = Field(alias="to")

    @model_validator(mode="after")
    def _ordered(self) -> NightRange:
        if self.first > self.last:
            raise ValueError(f"the range ends ({self.last}) before it starts ({self.first})")
        return self


def _valid_query(value: str | None) -> str | None:
    if value is not None:
        try:
            querylang.parse(value)
        except BadInput as exc:
            raise ValueError(str(exc)) from exc
    return value


class Scope(Strict):
    """Which data: any combination of a query, a range of nights and a list of runs (all must hold)."""

    query: str | None = Field(None, min_length=1)
    nights: NightRange | None = None
    runs: list[Any] | None = Field(None, min_length=1)

    @field_validator("query")
    @classmethod
    def _query(cls, value: str | None) -> str | None:
        return _valid_query(value)

    @field_validator("runs")
    @classmethod
    def _runs(cls, value: list[Any] | None) -> list[Any] | None:
        if value is not None and not all(isinstance(r, int) and not isinstance(r, bool) for r in value):
            raise ValueError("runs are run numbers (integers)")
        return value

    @model_validator(mode="after")
    def _something(self) -> Scope:
        if self.query is None and self.nights is None and self.runs is None:
            raise ValueError("a scope needs a query, nights or runs")
        return self

    def condition(self) -> str:
        """The scope as one query (its parts joined with ``and``)."""
        parts = []
        if self.query is not None:
            parts.append(f"({self.query})")
        if self.nights is not None:
            parts.append(f"night in {self.nights.first.isoformat()}..{self.nights.last.isoformat()}")
        if self.runs is not None:
            parts.append(f"run_id in ({', '.join(str(r) for r in sorted(set(self.runs)))})")
        return " and ".join(parts)


class BackendChoice(Strict):
    name: str = Field("local", pattern=r"^[a-z][a-z0-9_]{0,31}$")
    # Settings of that backend, by name with or without the backend's prefix (partition or slurm_partition).
    options: dict[str, Any] = Field(default_factory=dict)


class StagingWindow(Strict):
    """At most this much data staged from tape and not yet processed (for data managers that stage)."""

    files: int | None = Field(None, ge=1, strict=True)
    bytes: ByteSize | None = None


class Limits(Strict):
    max_jobs_in_flight: int | None = Field(None, ge=1, strict=True)
    staging: StagingWindow = StagingWindow()


class Software(Strict):
    # Distribution -> version, pinned in every step (``lstchain: 0.12.3``).
    packages: dict[str, str] = Field(default_factory=dict)
    container: str | None = Field(None, min_length=1, max_length=512)

    @field_validator("packages", mode="before")
    @classmethod
    def _versions_are_text(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
                for k, v in value.items()
            }
        return value


class Products(Strict):
    data_manager: str | None = Field(None, pattern=r"^[a-z][a-z0-9_]{0,31}$")
    # A dataset (named query) over the campaign's products, created when the campaign is submitted.
    dataset: str | None = None
    # Which of the campaign's products the dataset holds (default: all of them).
    query: str | None = Field(None, min_length=1)

    @field_validator("query")
    @classmethod
    def _query(cls, value: str | None) -> str | None:
        # Checked on load: a typo must not surface only when the campaign ends and makes its dataset.
        return _valid_query(value)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                querylang.check_dataset_name(value)
            except BadInput as exc:
                raise ValueError(str(exc)) from exc
        return value


class Campaign(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    # A production file (relative to the campaign file) or a production written inline.
    production: str | dict[str, Any]
    scope: Scope
    backend: BackendChoice = BackendChoice()
    limits: Limits = Limits()
    software: Software = Software()
    products: Products = Products()

    @field_validator("backend", mode="before")
    @classmethod
    def _backend_by_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    def dataset_query(self) -> str:
        base = f"production = {literal_text(self.name)}"
        return f"{base} and ({self.products.query})" if self.products.query else base


def software_problems(campaign: Campaign, production: Production) -> list[Problem]:
    """Steps that pin another version of a distribution than the campaign or than each other."""
    problems: list[Problem] = []
    chosen: dict[str, tuple[str, str]] = {
        name: (version, "the campaign") for name, version in campaign.software.packages.items()
    }
    for index, transformation in enumerate(production.transformations):
        for name, version in transformation.step.pins.items():
            first = chosen.setdefault(name, (version, f"step {transformation.name}"))
            if first[0] != version:
                problems.append(
                    (
                        ("production", "transformations", index, "step", "software"),
                        f"{name}=={version} mixes versions: {first[1]} uses {name}=={first[0]}",
                    )
                )
    return problems


def scoped_production(campaign: Campaign, production: Production) -> Production:
    """The production the campaign runs: its own name, the scope on its roots, the software pinned."""
    condition = campaign.scope.condition()
    transformations = [_scoped(t, condition, campaign.software) for t in production.transformations]
    return production.model_copy(update={"name": campaign.name, "transformations": transformations})


def _scoped(transformation: Transformation, condition: str, software: Software) -> Transformation:
    step = transformation.step
    pins = step.pins
    entries = list(step.software)
    for name, version in software.packages.items():
        if name not in pins:
            entries = [e for e in entries if e != name] + [f"{name}=={version}"]
    step = step.model_copy(update={"software": entries, "container": step.container or software.container})
    update: dict[str, Any] = {"step": step}
    if not transformation.input.parents:
        scoped_query = f"({transformation.input.query}) and {condition}"
        update["input"] = transformation.input.model_copy(update={"query": scoped_query})
    return transformation.model_copy(update=update)


# ---------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class InputFile:
    """A file the campaign's roots read, as the catalog knows it."""

    record: FileRecord
    size: int
    # (store, state) of each replica; a replica is online when its state is "available".
    replicas: tuple[tuple[str, str], ...]


@dataclass
class StepPlan:
    name: str
    tasks: int = 0
    waiting_files: int = 0  # files left in incomplete groups (by_run without all sub-runs)
    input_files: int = 0
    cores: int = 1
    seconds_per_task: float = 0.0
    cost_source: Literal["measured", "declared"] = "declared"
    existing: dict[str, int] = field(default_factory=dict)  # tasks the catalog already has, per state

    @property
    def cpu_hours(self) -> float:
        return self.tasks * self.cores * self.seconds_per_task / 3600


@dataclass
class StoreUsage:
    files: int = 0
    bytes: int = 0
    to_stage_files: int = 0
    to_stage_bytes: int = 0


@dataclass
class CampaignPlan:
    campaign: str
    steps: list[StepPlan]
    input_files: int
    input_bytes: int
    stores: dict[str, StoreUsage]
    slots: int

    @property
    def tasks(self) -> int:
        return sum(s.tasks for s in self.steps)

    @property
    def cpu_hours(self) -> float:
        return sum(s.cpu_hours for s in self.steps)

    @property
    def wall_hours(self) -> float:
        """Steps one after the other, each in waves of ``slots`` tasks: a bound from above for a chain."""
        seconds = sum(
            math.ceil(s.tasks * s.cores / self.slots) * s.seconds_per_task for s in self.steps if s.tasks
        )
        return seconds / 3600

    def expected(self) -> dict[str, int]:
        return {s.name: s.tasks for s in self.steps}

    def as_json(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "tasks": self.tasks,
            "input_files": self.input_files,
            "input_bytes": self.input_bytes,
            "slots": self.slots,
            "cpu_hours": round(self.cpu_hours, 4),
            "wall_hours": round(self.wall_hours, 4),
            "stores": {name: vars(usage) for name, usage in sorted(self.stores.items())},
            "steps": [
                {
                    "name": s.name,
                    "tasks": s.tasks,
                    "waiting_files": s.waiting_files,
                    "input_files": s.input_files,
                    "cores": s.cores,
                    "seconds_per_task": round(s.seconds_per_task, 3),
                    "cost": s.cost_source,
                    "cpu_hours": round(s.cpu_hours, 4),
                    "existing": s.existing,
                }
                for s in self.steps
            ],
        }


def plan_campaign(
    production: Production,
    roots: Mapping[str, Sequence[InputFile]],
    measured: Mapping[str, Sequence[float]],
    slots: int,
    existing: Mapping[str, Mapping[str, int]] | None = None,
) -> CampaignPlan:
    """Every task the campaign will run, from the files its roots match, without touching anything.

    Transformations without declared parents take ``roots[name]`` (their scoped query's matches); the others
    take the outputs their parents' planned tasks would register (rendered as the shepherd renders them), so
    the count is the full chain's. A step's cost per task is the mean of ``measured[name]`` (seconds of
    finished tasks of the same transformation and version) when there is one, else its declared wall time.
    """
    made: list[FileRecord] = []
    next_id = -1  # planned products get negative ids: they exist nowhere yet
    steps: list[StepPlan] = []
    for transformation in topological_order(production):
        node = querylang.parse(input_query(production.name, transformation))
        candidates = (
            [f.record for f in roots.get(transformation.name, ())] if not transformation.input.parents else []
        )
        candidates += [f for f in made if querylang.evaluate(node, f.metadata)]
        outcome = plan_groups(production.name, transformation, candidates, flush=_flushes(transformation))
        step = StepPlan(
            transformation.name,
            tasks=len(outcome.tasks),
            waiting_files=len(outcome.pending),
            input_files=len({f.lfn for f in candidates}),
            cores=transformation.step.resources.cores,
            existing=dict((existing or {}).get(transformation.name, {})),
        )
        durations = [d for d in measured.get(transformation.name, ()) if d >= 0]
        if durations:
            step.seconds_per_task, step.cost_source = sum(durations) / len(durations), "measured"
        else:
            step.seconds_per_task = transformation.step.resources.walltime.total_seconds()
        steps.append(step)
        for task in outcome.tasks:
            for output in render_outputs(
                production.name, transformation, task.task_id, task.inputs, production.parameters
            ):
                made.append(FileRecord(next_id, output.lfn, dict[str, MetaValue](output.metadata)))
                next_id -= 1
    inputs = {f.record.lfn: f for files in roots.values() for f in files}
    return CampaignPlan(
        production.name,
        steps,
        len(inputs),
        sum(f.size for f in inputs.values()),
        _stores(inputs.values()),
        max(1, slots),
    )


def _flushes(transformation: Transformation) -> bool:
    """In a plan every upstream step has finished, so groups close by their own flush policy."""
    return transformation.grouping.flush_policy == "when_upstream_done"


def _stores(files: Sequence[InputFile] | Any) -> dict[str, StoreUsage]:
    """Files and bytes per store; a file with no online replica is to be staged from each store holding it."""
    usage: dict[str, StoreUsage] = defaultdict(StoreUsage)
    for item in files:
        online = any(state == "available" for _, state in item.replicas)
        for store in sorted({store for store, _ in item.replicas}):
            usage[store].files += 1
            usage[store].bytes += item.size
            if not online:
                usage[store].to_stage_files += 1
                usage[store].to_stage_bytes += item.size
    return dict(usage)
