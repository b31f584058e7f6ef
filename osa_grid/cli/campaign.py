"""``osa-grid campaign plan|submit|status|stop|resume|retry|cancel``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from osa_grid.cli.common import console, handle_errors, settings_of
from osa_grid.cli.query_cmds import human_size
from osa_grid.cli.views import failures_table, outages_table
from osa_grid.core.campaign import CampaignPlan
from osa_grid.errors import BadInput, OsaGridError
from osa_grid.services import campaign as campaigns
from osa_grid.services.shepherd import PassReport
from osa_grid.services.workspace import Workspace, open_workspace

campaign_app = typer.Typer(
    help="Campaigns: a production over a scope of data, with a backend and limits.", no_args_is_help=True
)

BackendOption = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Backend (local, slurm, dirac ...); overrides the campaign file's"),
]
OnceOption = Annotated[bool, typer.Option(help="One pass (for cron): submit what can run, then exit")]
LiveOption = Annotated[bool, typer.Option(help="Show live progress while running")]


def _name(workspace: Workspace, name_or_file: str) -> str:
    """A campaign's name, or its file (the name is read from it)."""
    path = Path(name_or_file)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return campaigns.load_campaign(path).name
    return name_or_file


@campaign_app.command("plan")
@handle_errors
def plan(
    ctx: typer.Context,
    campaign_file: Annotated[Path, typer.Argument(help="Campaign YAML file")],
    backend: BackendOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """A dry run: tasks per step, input volume, files to stage, CPU hours and wall time. Submits nothing."""
    loaded = campaigns.load_campaign(campaign_file)
    with open_workspace(settings_of(ctx)) as workspace:
        name = backend or loaded.campaign.backend.name
        workspace.settings = campaigns.campaign_settings(workspace.settings, loaded.campaign, name)
        try:
            chosen = workspace.backend(name)
        except OsaGridError as exc:
            # A plan is still useful where the backend is not reachable: slots then come from the limit.
            console.print(
                Text(f"backend {name} unavailable ({exc}); slots from the campaign's limit", "yellow")
            )
            chosen = None
        result = campaigns.make_plan(workspace.catalog, loaded, chosen, workspace.data)
    if as_json:
        console.print_json(json.dumps(result.as_json()))
        return
    console.print(plan_view(result))


def plan_view(result: CampaignPlan) -> Group:
    steps = Table(title=f"campaign {result.campaign}: plan (nothing submitted)", title_justify="left")
    for column in (
        "step",
        "tasks",
        "input files",
        "waiting files",
        "cores",
        "s/task",
        "cost",
        "CPU h",
        "in catalog",
    ):
        steps.add_column(column, justify="left" if column in ("step", "cost", "in catalog") else "right")
    for step in result.steps:
        existing = ", ".join(f"{state} {n}" for state, n in sorted(step.existing.items()))
        steps.add_row(
            step.name,
            str(step.tasks),
            str(step.input_files),
            str(step.waiting_files or ""),
            str(step.cores),
            f"{step.seconds_per_task:.1f}",
            step.cost_source,
            f"{step.cpu_hours:.3f}",
            existing,
        )
    stores = Table(title="input files per store", title_justify="left")
    for column in ("store", "files", "size", "to stage", "size to stage"):
        stores.add_column(column, justify="left" if column == "store" else "right")
    for store, usage in sorted(result.stores.items()):
        stores.add_row(
            store,
            str(usage.files),
            human_size(usage.bytes),
            str(usage.to_stage_files),
            human_size(usage.to_stage_bytes),
        )
    summary = (
        f"{result.tasks} task(s) over {result.input_files} input file(s) ({human_size(result.input_bytes)}); "
        f"{result.cpu_hours:.3f} CPU hours; about {_duration(result.wall_hours * 3600)} of wall time "
        f"on {result.slots} slot(s)"
    )
    return Group(steps, stores, summary)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@campaign_app.command("submit")
@handle_errors
def submit(
    ctx: typer.Context,
    campaign_file: Annotated[Path, typer.Argument(help="Campaign YAML file")],
    backend: BackendOption = None,
    once: OnceOption = False,
    live: LiveOption = True,
) -> None:
    """Register the campaign and run its shepherd until it is done, stopped or cancelled."""
    loaded = campaigns.load_campaign(campaign_file)
    with open_workspace(settings_of(ctx)) as workspace:
        row = campaigns.submit(workspace, loaded, backend)
        console.print(f"campaign {row.name} submitted on the {row.backend} backend")
    _run(ctx, row.name, once, live)


@campaign_app.command("resume")
@handle_errors
def resume(
    ctx: typer.Context,
    campaign: Annotated[str, typer.Argument(help="Campaign name or file")],
    backend: BackendOption = None,
    once: OnceOption = False,
    live: LiveOption = True,
) -> None:
    """Make a stopped campaign active again and run its shepherd (nothing done runs again)."""
    with open_workspace(settings_of(ctx)) as workspace:
        name = _name(workspace, campaign)
        campaigns.resume(workspace, name, backend)
    _run(ctx, name, once, live)


def _run(ctx: typer.Context, name: str, once: bool, live: bool) -> None:
    with open_workspace(settings_of(ctx)) as workspace:
        if live and console.is_terminal:
            with Live(console=console, refresh_per_second=4) as display:

                def show(report: PassReport) -> None:
                    display.update(progress_view(campaigns.progress(workspace.catalog, name)))

                outcome = campaigns.run(workspace, name, once, show)
        else:
            outcome = campaigns.run(workspace, name, once)
        state = campaigns.progress(workspace.catalog, name)
    console.print(Group(*_outages_view([state]), progress_view(state)))
    if outcome.status == "stopped":
        console.print(f"campaign {name} stopped; `osa-grid campaign resume {name}` carries it on.")
    elif outcome.status == "active" and state.remaining:
        console.print(f"{state.remaining} task(s) still to do: `osa-grid campaign resume {name}` carries on.")
    if state.failures:
        raise typer.Exit(1)


@campaign_app.command("status")
@handle_errors
def status(
    ctx: typer.Context,
    campaign: Annotated[Optional[str], typer.Argument(help="Campaign name or file (default: all)")] = None,  # noqa: UP045
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
    watch: Annotated[
        bool, typer.Option(help="Live progress bars until the campaign has no work left")
    ] = False,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between refreshes with --watch")] = 2.0,
    window: Annotated[float, typer.Option(min=0.01, help="Hours over which rates are measured")] = 1.0,
) -> None:
    """Per step: done/running/queued/failed of the total, rates (tasks per hour) and an ETA."""
    from datetime import timedelta

    span = timedelta(hours=window)
    with open_workspace(settings_of(ctx)) as workspace:
        names = [_name(workspace, campaign)] if campaign else workspace.catalog.campaign_names()
        if not names:
            console.print(f"no campaigns in the catalog ({workspace.catalog.describe_url()})")
            return
        states = [campaigns.progress(workspace.catalog, n, span) for n in names]
        if as_json:
            payload: Any = states[0].as_json() if campaign else [s.as_json() for s in states]
            console.print_json(json.dumps(payload, default=str))
            return
        if not watch:
            console.print(Group(*_outages_view(states), *(progress_view(s) for s in states)))
            return
        with Live(console=console, refresh_per_second=2) as display:
            while True:
                states = [campaigns.progress(workspace.catalog, n, span) for n in names]
                display.update(Group(*_outages_view(states), *(progress_bars(s) for s in states)))
                if all(s.status != "active" or s.remaining == 0 for s in states):
                    break
                time.sleep(interval)
        console.print(Group(*_outages_view(states), *(progress_view(s) for s in states)))


def _outages_view(states: list[campaigns.Progress]) -> list[Any]:
    """The services not reached, once above the campaigns (every campaign's progress carries them)."""
    down = states[0].outages if states else []
    return [outages_table(down, states[0].updated_at)] if down else []


def progress_view(state: campaigns.Progress) -> Group:
    table = Table(
        title=f"campaign {state.campaign} ({state.status}, {state.backend})",
        title_justify="left",
    )
    for column in ("step", "done", "running", "queued", "failed", "total", "waiting files", "tasks/h"):
        table.add_column(column, justify="left" if column == "step" else "right")
    table.add_column("progress", width=20)
    for step in state.steps:
        bar = Progress(BarColumn(bar_width=12), MofNCompleteColumn())
        bar.add_task(step.name, total=max(step.total, 1), completed=step.done)
        table.add_row(
            step.name,
            str(step.done),
            str(step.running or ""),
            str(step.queued or ""),
            Text(str(step.failed), "red") if step.failed else "",
            str(step.total),
            str(step.waiting_files or ""),
            f"{step.rate_per_hour:.1f}",
            bar,
        )
    eta = state.eta_seconds
    line = (
        f"{state.remaining} task(s) to go; {state.rate_per_hour:.1f} task(s)/h over the last "
        f"{_duration(state.window_hours * 3600)}; ETA {'-' if eta == 0 else _duration(eta)}"
    )
    parts: list[Any] = [table, line]
    if state.failures:
        parts.append(failures_table(state.problems))
    return Group(*parts)


def progress_bars(state: campaigns.Progress) -> Progress:
    bars = Progress(
        TextColumn("{task.description}", markup=False),  # names are data: no markup, no format fields
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}", markup=False),
    )
    for step in state.steps:
        bars.add_task(
            f"{state.campaign} {step.name}",
            total=max(step.total, 1),
            completed=step.done,
            rate=f"{step.rate_per_hour:.1f}/h, {step.running} running, {step.failed} failed",
        )
    return bars


@campaign_app.command("stop")
@handle_errors
def stop(
    ctx: typer.Context,
    campaign: Annotated[str, typer.Argument(help="Campaign name or file")],
    kill: Annotated[
        bool, typer.Option(help="Also kill running jobs (their tasks run again on resume)")
    ] = False,
) -> None:
    """No new submissions; running jobs finish (or are killed with --kill); everything is kept."""
    with open_workspace(settings_of(ctx)) as workspace:
        name = _name(workspace, campaign)
        what = campaigns.stop(workspace, name, kill)
    console.print(f"campaign {name} stopped: {what}.")


@campaign_app.command("retry")
@handle_errors
def retry(
    ctx: typer.Context,
    campaign: Annotated[str, typer.Argument(help="Campaign name or file")],
    failed: Annotated[bool, typer.Option("--failed", help="Failed and vetoed tasks, attempts reset")] = False,
) -> None:
    """Make the failed and vetoed tasks ready again; `campaign resume` runs them."""
    if not failed:
        raise BadInput("say what to retry: --failed (failed and vetoed tasks)")
    with open_workspace(settings_of(ctx)) as workspace:
        name = _name(workspace, campaign)
        n = campaigns.retry_failed(workspace, name)
    console.print(f"{n} task(s) ready again; `osa-grid campaign resume {name}` runs them.")


@campaign_app.command("cancel")
@handle_errors
def cancel(
    ctx: typer.Context,
    campaign: Annotated[str, typer.Argument(help="Campaign name or file")],
) -> None:
    """Cancel the campaign: unfinished tasks are cancelled and running jobs killed; products stay."""
    with open_workspace(settings_of(ctx)) as workspace:
        name = _name(workspace, campaign)
        n = campaigns.cancel(workspace, name)
    console.print(f"campaign {name} cancelled ({n} unfinished task(s)).")


# The top-level commands of this module (loaded on demand by ``osa_grid.cli.app``).
commands = typer.Typer()
commands.add_typer(campaign_app, name="campaign")
