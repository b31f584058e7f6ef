"""Campaigns: load, plan (dry run), submit, run, stop, resume, retry, cancel, and progress.

A campaign runs as the production named after it (``core.campaign.scoped_production``) under the ordinary
shepherd; its row in the catalog (``campaigns``) steers the loop: ``stopped`` submits nothing new,
``cancelled`` ends it. Every task state is the shepherd's, so stopping and resuming repeat nothing done and
lose nothing: a stop lets running jobs finish (their products are registered) or, with ``kill``, puts them
back to ready; a resume carries on from the catalog.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from osa_grid.catalog.outages import outages
from osa_grid.catalog.store import CampaignRow, Catalog, CatalogFile, TaskRow
from osa_grid.config import Settings
from osa_grid.core import query as querylang
from osa_grid.core.campaign import Campaign, CampaignPlan, InputFile, plan_campaign, scoped_production
from osa_grid.core.loading import build_campaign
from osa_grid.core.models import Production
from osa_grid.core.outages import Outage
from osa_grid.core.planner import input_query
from osa_grid.core.redaction import hidden_values, redact_mapping, redact_production, redact_text
from osa_grid.core.staging import Window
from osa_grid.core.states import ACTIVE, CANCEL, RETRY_FAILED, TaskState
from osa_grid.core.validation import topological_order
from osa_grid.data import data_manager_from_settings
from osa_grid.errors import CampaignInvalid
from osa_grid.logs import event, get_logger
from osa_grid.ports import Backend, DataManager, JobState
from osa_grid.services.notify import notifier_from_url
from osa_grid.services.productions import (
    change_states,
    definition_of,
    digest_of,
    expand_includes,
    hides_secrets,
    read_document,
    save_production,
)
from osa_grid.services.shepherd import PassReport, Shepherd, ShepherdOptions
from osa_grid.services.workspace import Workspace
from osa_grid.system import identity_is_alive, identity_is_dead

log = get_logger("campaign")


@dataclass(frozen=True)
class LoadedCampaign:
    campaign: Campaign
    production: Production  # what runs: scoped, named after the campaign
    file: str | None

    @property
    def name(self) -> str:
        return self.campaign.name

    @property
    def digest(self) -> str:
        text = json.dumps(
            {"campaign": self.record["campaign"], "production": digest_of(self.production)}, sort_keys=True
        )
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def record(self) -> dict[str, Any]:
        """What the catalog keeps: the definitions with the secrets written in them hidden.

        ``secrets_hidden`` says that running the campaign needs its file again (``stored_campaign``).
        """
        campaign = self.campaign.model_dump(mode="json", by_alias=True)
        return {
            "campaign": redact_campaign(campaign),
            "production": definition_of(self.production),
            "secrets_hidden": redact_campaign(campaign) != campaign or hides_secrets(self.production),
        }

    def secrets(self) -> set[str]:
        """The values ``record`` hides."""
        real = {
            "campaign": self.campaign.model_dump(mode="json", by_alias=True),
            "production": self.production.model_dump(mode="json", by_alias=True),
        }
        return hidden_values(real, self.record)


def redact_campaign(definition: Mapping[str, Any]) -> dict[str, Any]:
    """A campaign's definition (its JSON dump) as it may be recorded: secret-named backend options hidden,
    free texts redacted, an inline production as ``definition_of`` records it."""
    recorded = dict(definition)
    recorded["description"] = redact_text(definition.get("description") or "")
    recorded["backend"] = {
        **definition["backend"],
        "options": redact_mapping(definition["backend"]["options"]),
    }
    if definition["software"].get("container"):
        recorded["software"] = {
            **definition["software"],
            "container": redact_text(definition["software"]["container"]),
        }
    if isinstance(definition["production"], Mapping):
        recorded["production"] = redact_production(definition["production"])
    return recorded


def load_campaign(path: Path) -> LoadedCampaign:
    """A campaign file; its production (a file next to it, or inline) is read with its includes."""
    document = read_document(path)
    production = document.data.get("production") if isinstance(document.data, dict) else None
    if isinstance(production, str):
        target = path.parent / production
        production_document = read_document(target)
        expand_includes(production_document, target)
        document.graft(("production",), production_document)
    elif isinstance(production, dict):
        inline = document.part(("production",))
        expand_includes(inline, path)
        document.graft(("production",), inline)
    campaign, base = build_campaign(document)
    stored = campaign.model_copy(update={"production": definition_of(base)})
    return LoadedCampaign(stored, scoped_production(campaign, base), str(path.resolve()))


def stored_campaign(
    catalog: Catalog, name: str, with_secrets: bool = False
) -> tuple[CampaignRow, LoadedCampaign]:
    """The campaign as the catalog keeps it; ``with_secrets``: as it runs, the secrets the catalog hides
    read again from its file (which must still say what the catalog keeps)."""
    row = catalog.campaign(name)
    if row is None:
        raise CampaignInvalid(f"no campaign named {name!r} in the catalog ({catalog.describe_url()})")
    if with_secrets and row.definition.get("secrets_hidden"):
        return row, _with_secrets(row)
    campaign = Campaign.model_validate(row.definition["campaign"])
    production = Production.model_validate(row.definition["production"])
    return row, LoadedCampaign(campaign, production, row.file)


def _with_secrets(row: CampaignRow) -> LoadedCampaign:
    hidden = f"campaign {row.name} has secrets the catalog keeps hidden (***)"
    if row.file is None or not Path(row.file).is_file():
        raise CampaignInvalid(f"{hidden}; they are read from its file {row.file}, which is gone: restore it")
    loaded = load_campaign(Path(row.file))
    if loaded.record != row.definition:
        raise CampaignInvalid(
            f"{hidden}; they are read from its file {row.file}, which has changed since the campaign was "
            "submitted: restore it, or submit the changed campaign under a new name"
        )
    return loaded


def campaign_settings(settings: Settings, campaign: Campaign, backend: str) -> Settings:
    """The settings with the campaign's backend options (``partition`` or ``slurm_partition``)."""
    update: dict[str, Any] = {"backend": backend}
    if campaign.backend.name == backend:
        for key, value in campaign.backend.options.items():
            name = key if key in Settings.model_fields else f"{backend}_{key}"
            if name not in Settings.model_fields:
                raise CampaignInvalid(f"campaign {campaign.name}: backend option {key!r} is not a setting")
            update[name] = value
    if campaign.products.data_manager is not None:
        update["data_manager"] = campaign.products.data_manager
    try:
        return Settings.model_validate({**settings.model_dump(), **update})
    except ValueError as exc:
        raise CampaignInvalid(f"campaign {campaign.name}: backend options: {exc}") from exc


def check_environment(production: Production, backend: Backend) -> None:
    """Jobs on a shared filesystem run in this Python environment: it must have the pinned versions."""
    if not backend.capabilities.shared_filesystem:
        return  # the job sets up its own environment from the pins (a grid job's JDL)
    wrong: list[str] = []
    for transformation in production.transformations:
        for name, wanted in transformation.step.pins.items():
            try:
                found = version(name)
            except PackageNotFoundError:
                found = "not installed"
            if found != wanted:
                wrong.append(f"{transformation.name} needs {name}=={wanted}, this environment has {found}")
    if wrong:
        raise CampaignInvalid(
            f"the {backend.name} backend runs jobs in this environment, which does not match the campaign's "
            "software: " + "; ".join(sorted(set(wrong)))
        )


# --------------------------------------------------------------------------------------------- plan
def make_plan(
    catalog: Catalog, loaded: LoadedCampaign, backend: Backend | None, data: DataManager | None = None
) -> CampaignPlan:
    """The dry run: reads the catalog, writes nothing, submits nothing.

    With a data manager that stages, a file is online when that data manager says so, from the replicas it
    has now (Rucio: a tape replica is "available" but no job can read it; a staged copy may have appeared).
    """
    production = loaded.production
    roots: dict[str, list[InputFile]] = {}
    for transformation in production.transformations:
        if not transformation.input.parents:
            files = catalog.query(input_query(production.name, transformation))
            replicas = _replicas_now(data, files)
            roots[transformation.name] = [
                InputFile(
                    f.record(), f.size, replicas.get(f.lfn, tuple((r.store, r.state) for r in f.replicas))
                )
                for f in files
            ]
    measured = {t.name: catalog.step_durations(t.name, t.version) for t in production.transformations}
    limit = loaded.campaign.limits.max_jobs_in_flight
    slots = backend.free_slots() if backend is not None else 0
    if limit is not None:
        slots = min(slots, limit) if slots > 0 else limit
    existing = catalog.task_counts(production.name) if catalog.campaign(loaded.name) else {}
    return plan_campaign(production, roots, measured, slots, existing)


def _replicas_now(
    data: DataManager | None, files: list[CatalogFile]
) -> dict[str, tuple[tuple[str, str], ...]]:
    """(store, "available" | "offline") per file, from the data manager's own view when it stages."""
    if data is None or not data.stages:
        return {}
    describe = getattr(data, "describe", None)  # Rucio: list_replicas now, not the catalog's copy
    current = (
        {f.lfn: f.replicas for f in describe([f.lfn for f in files])}
        if callable(describe)
        else {f.lfn: tuple(f.replicas) for f in files}
    )
    return {
        lfn: tuple((r.store, "available" if data.online(r) else "offline") for r in replicas)
        for lfn, replicas in current.items()
    }


# --------------------------------------------------------------------------------------------- submit
def submit(workspace: Workspace, loaded: LoadedCampaign, backend_name: str | None) -> CampaignRow:
    """Register the campaign (or find it, unchanged, when submitted again) and make it active."""
    catalog = workspace.catalog
    campaign = loaded.campaign
    backend_name = backend_name or campaign.backend.name
    existing = catalog.campaign(loaded.name)
    if existing is not None:
        if existing.digest != loaded.digest:
            raise CampaignInvalid(
                f"campaign {loaded.name} was submitted with another definition: "
                "`campaign resume` carries it on as it was; a changed campaign needs a new name"
            )
        if existing.status == "cancelled":
            raise CampaignInvalid(f"campaign {loaded.name} was cancelled; submit it under a new name")
        catalog.update_campaign(loaded.name, "campaign_resumed", status="active", backend=backend_name)
        return _row(catalog, loaded.name)
    if loaded.name in catalog.production_names():
        raise CampaignInvalid(
            f"a production named {loaded.name!r} exists already: campaigns need their own name"
        )
    workspace.settings = campaign_settings(workspace.settings, campaign, backend_name)
    backend = workspace.backend(backend_name)
    check_environment(loaded.production, backend)
    plan = make_plan(catalog, loaded, backend)
    production = loaded.production
    save_production(catalog, production, loaded.file and Path(loaded.file).read_text(), loaded.secrets())
    if campaign.products.dataset is not None:
        _dataset(catalog, campaign)
    now = datetime.now(UTC)
    catalog.create_campaign(
        CampaignRow(
            name=loaded.name,
            production=production.name,
            file=loaded.file,
            definition=loaded.record,
            digest=loaded.digest,
            status="active",
            kill_requested=False,
            backend=backend_name,
            limits=campaign.limits.model_dump(mode="json"),
            expected=plan.expected(),
            created_at=now,
            updated_at=now,
        )
    )
    event(log, "campaign_submitted", campaign=loaded.name, backend=backend_name, tasks=plan.tasks)
    return _row(catalog, loaded.name)


def _dataset(catalog: Catalog, campaign: Campaign) -> None:
    name = campaign.products.dataset or ""
    if name in {d.name for d in catalog.datasets()}:
        if catalog.dataset(name).query != querylang.to_text(querylang.parse(campaign.dataset_query())):
            raise CampaignInvalid(f"dataset {name!r} exists already with another query")
        return
    catalog.create_dataset(
        name, campaign.dataset_query(), description=f"products of campaign {campaign.name}"
    )


def _row(catalog: Catalog, name: str) -> CampaignRow:
    row = catalog.campaign(name)
    if row is None:
        raise CampaignInvalid(f"no campaign named {name!r} in the catalog ({catalog.describe_url()})")
    return row


# --------------------------------------------------------------------------------------------- run
@dataclass
class RunOutcome:
    report: PassReport
    status: str


def run(
    workspace: Workspace,
    name: str,
    once: bool = False,
    on_pass: Callable[[PassReport], None] | None = None,
) -> RunOutcome:
    """The campaign's shepherd: passes until it is done, stopped or cancelled (one pass with ``once``)."""
    row, loaded = stored_campaign(workspace.catalog, name, with_secrets=True)
    if row.status == "cancelled":
        raise CampaignInvalid(f"campaign {name} was cancelled")
    workspace.settings = campaign_settings(workspace.settings, loaded.campaign, row.backend)
    backend = workspace.backend(row.backend)
    data = data_manager_from_settings(workspace.settings.data_manager, workspace.settings)
    options = ShepherdOptions(
        once=once,
        poll_interval=workspace.settings.poll_interval,
        lease_ttl=timedelta(seconds=workspace.settings.lease_seconds),
        max_in_flight=loaded.campaign.limits.max_jobs_in_flight,
        clean_workdirs=True,
        staging_window=_staging_window(workspace.settings, loaded.campaign),
        stage_lifetime=workspace.settings.rucio_stage_lifetime,
        outage_alert_after=workspace.settings.outage_alert_after,
    )
    shepherd = Shepherd(
        workspace.catalog,
        backend,
        data,
        loaded.production,
        workspace.work_root,
        options,
        on_pass,
        notifier_from_url(workspace.settings.notify),
    )
    with shepherd.lease():
        return _loop(workspace.catalog, shepherd, backend, name, once)


def _staging_window(settings: Settings, campaign: Campaign) -> Window:
    """The campaign's staging window (limits.staging), each bound defaulting to the settings'."""
    staging = campaign.limits.staging
    return Window(
        staging.files or settings.staging_window_files,
        int(staging.bytes) if staging.bytes is not None else settings.staging_window_bytes,
    )


def _loop(catalog: Catalog, shepherd: Shepherd, backend: Backend, name: str, once: bool) -> RunOutcome:
    submitted_once = False
    while True:
        row = _row(catalog, name)
        if row.status == "cancelled":
            return RunOutcome(shepherd.run_pass(submit=False), row.status)
        stopping = row.status == "stopped"
        if stopping and row.kill_requested:
            _kill(catalog, backend, row.production, "campaign stopped with --kill")
            catalog.update_campaign(name, "campaign_killed", kill_requested=False)
        submit = not stopping and not (once and submitted_once)
        report = shepherd.run_pass(submit=submit)
        submitted_once = True
        if report.unfinished == 0:
            if row.status != "done":
                catalog.update_campaign(name, "campaign_done", status="done")
            return RunOutcome(report, "done")
        # A batch system keeps its jobs when we leave; a local pool's jobs die with us, so wait for them.
        detached = backend.capabilities.detached
        if (stopping or once) and (detached or not report.active):
            return RunOutcome(report, row.status)
        if not report.runnable:
            return RunOutcome(report, row.status)  # tasks wait for side inputs from outside
        backend.wait_any(shepherd.options.poll_interval)


def _kill(catalog: Catalog, backend: Backend, production: str, reason: str) -> int:
    """Cancel the running jobs and put their tasks back to ready: they run again on resume, from scratch."""
    active = catalog.tasks(production, states=list(ACTIVE))
    job_ids = [t.job_id for t in active if t.job_id]
    if job_ids:
        backend.cancel(job_ids)
        # A job that had ended well before the cancel reached it keeps its result: the next pass collects it.
        ended = {job for job, status in backend.poll(job_ids).items() if status.state == JobState.SUCCEEDED}
        active = [t for t in active if t.job_id not in ended]
    if active:
        catalog.requeue_lost([t.task_id for t in active], reason)
    event(log, "campaign_jobs_killed", production=production, count=len(active))
    return len(active)


# --------------------------------------------------------------------------------------------- steering
def stop(workspace: Workspace, name: str, kill: bool) -> str:
    """No new submissions; running jobs finish (or are killed). Says what happens next."""
    row, loaded = stored_campaign(workspace.catalog, name, with_secrets=kill)
    if row.status in ("cancelled", "done"):
        raise CampaignInvalid(f"campaign {name} is {row.status}: nothing to stop")
    workspace.catalog.update_campaign(name, "campaign_stopped", status="stopped", kill_requested=kill)
    if _shepherd_alive(workspace.catalog, row.production):
        return "its shepherd stops submitting" + (
            " and kills the running jobs" if kill else "; running jobs finish"
        )
    if kill:
        workspace.settings = campaign_settings(workspace.settings, loaded.campaign, row.backend)
        killed = _kill(
            workspace.catalog, workspace.backend(row.backend), row.production, "campaign stopped with --kill"
        )
        workspace.catalog.update_campaign(name, "campaign_killed", kill_requested=False)
        return f"{killed} running job(s) killed; their tasks run again on resume"
    return "nothing more is submitted; jobs already submitted finish and are collected on resume"


def _shepherd_alive(catalog: Catalog, production: str) -> bool:
    holder = catalog.lease_holder(f"production/{production}")
    if holder is None or identity_is_dead(holder[0]):
        return False
    # A holder seen running on this host is alive whatever the wall clock says (it may have jumped).
    return holder[1] > datetime.now(UTC) or identity_is_alive(holder[0])


def resume(workspace: Workspace, name: str, backend_name: str | None) -> CampaignRow:
    row = _row(workspace.catalog, name)
    if row.status == "cancelled":
        raise CampaignInvalid(f"campaign {name} was cancelled; it cannot be resumed")
    values: dict[str, Any] = {"status": "active", "kill_requested": False}
    if backend_name is not None and backend_name != row.backend:
        active = workspace.catalog.tasks(row.production, states=list(ACTIVE))
        if active:
            raise CampaignInvalid(
                f"campaign {name} has {len(active)} job(s) on the {row.backend} backend: resume it there "
                "until they are collected, or stop it with --kill first"
            )
        values["backend"] = backend_name
    workspace.catalog.update_campaign(name, "campaign_resumed", **values)
    return _row(workspace.catalog, name)


def retry_failed(workspace: Workspace, name: str) -> int:
    """Failed and vetoed tasks back to ready with their failure count reset; the campaign becomes active."""
    row = _row(workspace.catalog, name)
    if row.status == "cancelled":
        raise CampaignInvalid(f"campaign {name} was cancelled")
    changed = change_states(workspace, row.production, RETRY_FAILED)
    if changed and row.status == "done":
        workspace.catalog.update_campaign(name, "campaign_resumed", status="active")
    return len(changed)


def cancel(workspace: Workspace, name: str) -> int:
    row, loaded = stored_campaign(workspace.catalog, name, with_secrets=True)
    workspace.settings = campaign_settings(workspace.settings, loaded.campaign, row.backend)
    workspace.catalog.update_campaign(name, "campaign_cancelled", status="cancelled", kill_requested=False)
    return len(change_states(workspace, row.production, CANCEL))


# --------------------------------------------------------------------------------------------- progress
@dataclass
class StepProgress:
    name: str
    total: int
    counts: dict[str, int]
    rate_per_hour: float
    waiting_files: int

    @property
    def done(self) -> int:
        return self.counts.get("done", 0)

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0) + self.counts.get("vetoed", 0)

    @property
    def running(self) -> int:
        return self.counts.get("running", 0) + self.counts.get("submitted", 0)

    @property
    def queued(self) -> int:
        return sum(self.counts.get(s, 0) for s in ("created", "staging", "ready"))

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.done - self.failed - self.counts.get("cancelled", 0))


@dataclass
class Progress:
    campaign: str
    status: str
    backend: str
    steps: list[StepProgress]
    window_hours: float
    updated_at: datetime
    problems: list[TaskRow] = field(default_factory=list)  # failed and vetoed tasks
    # Remote services (Rucio, DiracX) not reached now: the campaign waits for them.
    outages: list[Outage] = field(default_factory=list)

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [
            {
                "task_id": t.task_id,
                "transformation": t.transformation,
                "state": t.state.value,
                "attempts": t.attempt,
                "exit_code": t.exit_code,
                "error": t.error,
                "log": str(Path(t.workdir) / "stderr.log") if t.workdir else None,
            }
            for t in self.problems
        ]

    @property
    def rate_per_hour(self) -> float:
        return sum(s.rate_per_hour for s in self.steps)

    @property
    def remaining(self) -> int:
        return sum(s.remaining for s in self.steps)

    @property
    def eta_seconds(self) -> float | None:
        if self.remaining == 0:
            return 0.0
        if self.status != "active" or self.rate_per_hour <= 0:
            return None
        return self.remaining / self.rate_per_hour * 3600

    def as_json(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "status": self.status,
            "backend": self.backend,
            "rate_per_hour": round(self.rate_per_hour, 3),
            "window_hours": round(self.window_hours, 4),
            "remaining": self.remaining,
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "steps": [
                {
                    "name": s.name,
                    "total": s.total,
                    "done": s.done,
                    "running": s.running,
                    "queued": s.queued,
                    "failed": s.failed,
                    "counts": s.counts,
                    "waiting_files": s.waiting_files,
                    "rate_per_hour": round(s.rate_per_hour, 3),
                }
                for s in self.steps
            ],
            "failures": self.failures,
            "service_outages": [
                {
                    "service": o.service,
                    "url": o.url,
                    "since": o.since.isoformat(),
                    "last_failure_at": o.last_failure_at.isoformat(),
                    "alerted_at": o.alerted_at.isoformat() if o.alerted_at else None,
                    "last_error": o.last_error,
                }
                for o in self.outages
            ],
        }


def progress(catalog: Catalog, name: str, window: timedelta = timedelta(hours=1)) -> Progress:
    """Per step: tasks by state against the planned total, and the rate of the last ``window``."""
    row, loaded = stored_campaign(catalog, name)
    now = datetime.now(UTC)
    # A young campaign's rate is over its life so far, not diluted over a window it has not lived.
    span = max(min(window, now - row.created_at), timedelta(seconds=1))
    recent: dict[str, int] = {}
    for transformation, _ in catalog.done_times(row.production, now - span):
        recent[transformation] = recent.get(transformation, 0) + 1
    counts = catalog.task_counts(row.production)
    waiting = catalog.waiting_counts(row.production)
    expected: Mapping[str, int] = row.expected or {}
    hours = span.total_seconds() / 3600
    steps = [
        StepProgress(
            t.name,
            max(expected.get(t.name, 0), sum(counts.get(t.name, {}).values())),
            dict(counts.get(t.name, {})),
            recent.get(t.name, 0) / hours,
            waiting.get(t.name, 0),
        )
        for t in topological_order(loaded.production)
    ]
    problems = catalog.tasks(row.production, states=[TaskState.FAILED, TaskState.VETOED])
    return Progress(name, row.status, row.backend, steps, hours, now, problems, outages(catalog))
