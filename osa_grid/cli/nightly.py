"""``osa-grid nightly``: the onsite shepherd of a night, its status table and the operators' actions."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from osa_grid.cli.common import console, handle_errors, settings_of, terminal
from osa_grid.config import Settings
from osa_grid.core.nightly import NightlyWorkflow, SequenceStatus, Veto
from osa_grid.core.sequences import NightPlan
from osa_grid.core.states import RETRY, OperatorAction
from osa_grid.errors import BadInput
from osa_grid.resources import shipped
from osa_grid.services.nightly import Night, NightlyOptions, NightlyShepherd, save_night_production, simulate
from osa_grid.services.nightweb import figure, identity_cells
from osa_grid.services.notify import notifier_from_url
from osa_grid.services.productions import change_states, load_nightly_workflow
from osa_grid.services.workspace import Workspace, open_workspace

nightly_app = typer.Typer(
    help="The onsite nightly shepherd: one process instead of the cron jungle.", no_args_is_help=True
)

DEFAULT_WORKFLOW = "lst_nightly.yaml"
STATE_STYLES = {
    "COMPLETED": "green",
    "RUNNING": "cyan",
    "PENDING": "yellow",
    "FAILED": "red",
    "VETOED": "magenta",
    "INCOMPLETE": "red",
}

DateOption = Annotated[str, typer.Option("--date", help="The night, YYYY-MM-DD (the date of the evening)")]
BaseDirOption = Annotated[Optional[Path], typer.Option(help="The site's base directory (OSA_GRID_BASE_DIR)")]  # noqa: UP045
WorkflowOption = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(help=f"Nightly workflow YAML (default: workflows/{DEFAULT_WORKFLOW})"),
]
SummaryOption = Annotated[Optional[Path], typer.Option(help="The night's RunSummary (default: the site's)")]  # noqa: UP045


def _night_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadInput(f"--date {text!r}: expected YYYY-MM-DD") from None


def _settings(ctx: typer.Context, base_dir: Path | None) -> Settings:
    """Products land in the site's tree: the store and the work directories live under the base directory."""
    settings = settings_of(ctx)
    base = base_dir or settings.base_dir
    if base is None:
        raise BadInput("no base directory: give --base-dir or set OSA_GRID_BASE_DIR")
    if not base.is_dir():
        raise BadInput(f"base directory {base} does not exist")
    base = base.resolve()
    return settings.model_copy(
        update={"base_dir": base, "data_root": base, "work_root": base / "running_analysis"}
    )


def _workflow(path: Path | None) -> NightlyWorkflow:
    return load_nightly_workflow(path or shipped("workflows") / DEFAULT_WORKFLOW)


def _night(
    workspace: Workspace,
    workflow: Path | None,
    night: str,
    summary: Path | None,
    wait_for_summary: bool = False,
) -> Night:
    assert workspace.settings.base_dir is not None
    return Night(
        _workflow(workflow),
        _night_date(night),
        workspace.settings.base_dir,
        workspace.catalog,
        summary,
        wait_for_summary,
    )


@nightly_app.command("run")
@handle_errors
def run(
    ctx: typer.Context,
    night: DateOption,
    base_dir: BaseDirOption = None,
    workflow: WorkflowOption = None,
    run_summary: SummaryOption = None,
    backend: Annotated[Optional[str], typer.Option(help="local, slurm, ...")] = None,  # noqa: UP045
    once: Annotated[bool, typer.Option(help="One pass (for a site that still wants cron)")] = False,
    simulate_only: Annotated[
        bool, typer.Option("--simulate", help="Print what would be launched, change nothing")
    ] = False,
    poll: Annotated[float, typer.Option(help="Seconds between passes")] = 30.0,
    deadline: Annotated[
        str | None, typer.Option(help="Tell operators if not closed by then (ISO UTC)")
    ] = None,
) -> None:
    """Process a night until it is closed: register data as it arrives, launch each step when it may start."""
    settings = _settings(ctx, base_dir)
    with open_workspace(settings) as workspace:
        # A long-running shepherd waits for a summary still being written; one pass refuses it (exit 2).
        waits = not (once or simulate_only)
        tonight = _night(workspace, workflow, night, run_summary, wait_for_summary=waits)
        if not tonight.plan.sequences and (not waits or tonight.summary_final()):
            console.print(_nothing_to_do(tonight), soft_wrap=True, markup=False)  # a path is data
            return
        if not tonight.plan.sequences:
            console.print(
                f"night {tonight.night}: {tonight.waiting_for()}; waiting", soft_wrap=True, markup=False
            )
        if simulate_only:
            _print_plan(tonight.plan)
            counts = simulate(tonight)
            for name, count in counts.items():
                console.print(f"would launch {count} {name} task(s)")
            if not counts:
                console.print("would launch nothing now (no raw data yet)")
            return
        options = NightlyOptions(
            once=once,
            poll_interval=poll,
            deadline=_deadline(deadline),
            outage_alert_after=settings.outage_alert_after,
        )
        shepherd = NightlyShepherd(
            tonight,
            workspace.backend(backend),
            workspace.data,
            workspace.work_root,
            notifier_from_url(settings.notify),
            options,
        )
        report = shepherd.run()
        if report.nothing_to_do:
            console.print(_nothing_to_do(tonight), soft_wrap=True, markup=False)
            return
        _print_table(tonight, tonight.status())
        if report.closed:
            console.print(f"night {tonight.night} is closed; status page: {tonight.web_page()}")
        else:
            console.print(_not_closed(tonight, report.missing_raw), soft_wrap=True, markup=False)


def _not_closed(tonight: Night, missing_raw: int) -> str:
    why = [f"{missing_raw} raw file(s) still expected"] if missing_raw else []
    if not tonight.summary_final():
        why.append(tonight.waiting_for())
    return f"night {tonight.night} is not closed yet ({'; '.join(why) or 'steps still to run'})"


def _nothing_to_do(tonight: Night) -> str:
    """Why a night has no sequence: no summary yet, a summary without runs yet, or no DATA run among them."""
    summary = tonight.tonight_summary()
    if tonight.runs is None:
        return (
            f"night {tonight.night}: no run summary yet ({summary}); nothing to do yet, the night stays open"
        )
    if not tonight.runs.runs and not tonight.runs.ignored:
        why = f"the run summary {summary} has no runs yet"
    else:
        why = "no DATA runs"
    return f"night {tonight.night}: {why}, nothing to do"


def _deadline(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(f"--deadline {text!r}: expected an ISO date and time") from None
    if value.tzinfo is None:
        raise BadInput(f"--deadline {text!r}: give the time zone (e.g. 2026-11-22T12:00Z)")
    return value


@nightly_app.command("status")
@handle_errors
def status(
    ctx: typer.Context,
    night: DateOption,
    base_dir: BaseDirOption = None,
    workflow: WorkflowOption = None,
    run_summary: SummaryOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """The sequence table operators know, read from the state store."""
    with open_workspace(_settings(ctx, base_dir)) as workspace:
        tonight = _night(workspace, workflow, night, run_summary)
        rows = tonight.status()
        if as_json:
            closed = tonight.closed_at()
            payload = {
                "night": str(tonight.night),
                "closed": closed.isoformat() if closed else None,
                "sequences": [asdict(row) for row in rows],
            }
            console.print_json(json.dumps(payload))
            return
        _print_table(tonight, rows)


def _print_plan(plan: NightPlan) -> None:
    if plan.calibration is not None:
        c = plan.calibration
        console.print(
            f"calibration: DRS4 run {c.drs4.run_id}, PEDCALIB run {c.pedcalib.run_id} (night {c.night})"
        )
    for sequence in plan.sequences:
        run = sequence.run
        subruns = f"{run.n_subruns} sub-runs"
        console.print(f"sequence {sequence.seq_id}: {sequence.kind} run {run.run_id} ({subruns})")


def _print_table(tonight: Night, rows: list[SequenceStatus]) -> None:
    closed = tonight.closed_at()
    title = f"night {tonight.night}" + (f" (closed {closed:%Y-%m-%d %H:%M} UTC)" if closed else "")
    table = Table(title=title, title_justify="left")
    for header in ("Seq", "Parent", "Type", "Run", "Subruns", "Source", "Tries", "JobID", "State", "Exit"):
        table.add_column(header, justify="right")
    for label in (*tonight.workflow.columns, *tonight.workflow.quality):
        table.add_column(label, justify="right")
    table.add_column("Why", justify="left")
    for row in rows:
        table.add_row(
            *identity_cells(row),
            Text(row.state, style=STATE_STYLES.get(row.state, "")),
            "" if row.exit_code is None else str(row.exit_code),
            *(f"{row.progress[label]:.0f}%" for label in tonight.workflow.columns),
            *(figure(row.quality.get(label)) for label in tonight.workflow.quality),
            row.detail,
        )
    out = console
    if not console.is_terminal:
        # A log or a pipe: the whole table, not 160 columns of cut cells (the quality figures widen it).
        needed = Measurement.get(console, console.options.update_width(1000), table).maximum
        out = terminal(width=max(console.width, needed))
    out.print(table)


def _operator(
    ctx: typer.Context,
    night: str,
    base_dir: Path | None,
    workflow: Path | None,
    run_summary: Path | None,
    run_id: int | None,
    action: OperatorAction,
) -> int:
    settings = _settings(ctx, base_dir)
    with open_workspace(settings) as workspace:
        tonight = _night(workspace, workflow, night, run_summary)
        save_night_production(workspace.catalog, tonight)
        _check_run(tonight, run_id)
        if action == RETRY:  # the operators' vetoes of the run (or the night) are lifted with the retry
            tonight.lift_vetoes(run_id)
        name = tonight.production.name
        chosen = [
            row.task_id
            for row, run in workspace.catalog.tasks_with_key(name, "run_id")
            if run_id is None or run == run_id
        ]
        changed = len(change_states(workspace, name, action, task_ids=chosen))
        if action == RETRY and changed:
            # A repair of a closed night: it is reopened, so the next pass runs the tasks and closes it again.
            what = f"run {run_id}" if run_id is not None else "the night"
            note = f"nightly retry of {what}: {changed} task(s)"
            if tonight.reopen(notifier_from_url(settings.notify), note) is not None:
                tonight.write_page()
                console.print(f"night {tonight.night} was closed: reopened ({note})", markup=False)
        return changed


def _check_run(tonight: Night, run_id: int | None) -> None:
    if run_id is not None and run_id not in {s.run.run_id for s in tonight.plan.sequences}:
        raise BadInput(f"run {run_id} is not a sequence of night {tonight.night}")


@nightly_app.command("retry")
@handle_errors
def retry(
    ctx: typer.Context,
    night: DateOption,
    run: Annotated[Optional[int], typer.Option(help="Only this run")] = None,  # noqa: UP045
    base_dir: BaseDirOption = None,
    workflow: WorkflowOption = None,
    run_summary: SummaryOption = None,
) -> None:
    """Failed and vetoed steps of the night (or of one run) run again on the next pass; vetoes are lifted.
    A closed night is reopened (recorded as an event) and closes again once they have run."""
    n = _operator(ctx, night, base_dir, workflow, run_summary, run, RETRY)
    console.print(f"{n} task(s) ready again")


@nightly_app.command("reopen")
@handle_errors
def reopen(
    ctx: typer.Context,
    night: DateOption,
    reason: Annotated[Optional[str], typer.Option(help="Why, for the record and the page")] = None,  # noqa: UP045
    base_dir: BaseDirOption = None,
    workflow: WorkflowOption = None,
    run_summary: SummaryOption = None,
) -> None:
    """Reopen a closed night for a repair: `nightly run` then processes what is ready (new data, retried
    steps) and closes it again, rewriting NightFinished, the provenance and the page."""
    settings = _settings(ctx, base_dir)
    with open_workspace(settings) as workspace:
        tonight = _night(workspace, workflow, night, run_summary)
        save_night_production(workspace.catalog, tonight)
        closed = tonight.reopen(notifier_from_url(settings.notify), reason)
        if closed is None:
            console.print(f"night {tonight.night} is not closed: nothing to reopen")
            return
        tonight.write_page()
    console.print(
        f"night {tonight.night} reopened (it was closed at {closed:%Y-%m-%d %H:%M} UTC); "
        "`nightly run` processes it and closes it again",
        soft_wrap=True,
        markup=False,
    )


@nightly_app.command("veto")
@handle_errors
def veto(
    ctx: typer.Context,
    night: DateOption,
    run: Annotated[int, typer.Option(help="The run to stop")],
    subrun: Annotated[Optional[int], typer.Option(min=0, help="Only this sub-run of the run")] = None,  # noqa: UP045
    base_dir: BaseDirOption = None,
    workflow: WorkflowOption = None,
    run_summary: SummaryOption = None,
) -> None:
    """Stop a run (or one sub-run): a rule, its steps not yet run are vetoed now and those of sub-runs
    arriving later as they appear (running jobs finish); `nightly retry` lifts it."""
    with open_workspace(_settings(ctx, base_dir)) as workspace:
        tonight = _night(workspace, workflow, night, run_summary)
        save_night_production(workspace.catalog, tonight)
        _check_run(tonight, run)
        rule = Veto(run, subrun)
        n = tonight.add_veto(rule)
    console.print(f"{rule} vetoed: {n} task(s) vetoed now, its later ones as they appear")


@nightly_app.command("close")
@handle_errors
def close(
    ctx: typer.Context,
    night: DateOption,
    base_dir: BaseDirOption = None,
    workflow: WorkflowOption = None,
    run_summary: SummaryOption = None,
) -> None:
    """Close the night now, whatever is still missing (the operators' decision)."""
    settings = _settings(ctx, base_dir)
    with open_workspace(settings) as workspace:
        tonight = _night(workspace, workflow, night, run_summary)
        save_night_production(workspace.catalog, tonight)
        if tonight.closed_at() is not None:
            console.print(f"night {tonight.night} was already closed")
            return
        tonight.close(workspace.data, notifier_from_url(settings.notify), forced=True)
        tonight.write_page()
        console.print(f"night {tonight.night} closed")


@handle_errors
def web(
    ctx: typer.Context,
    base_dir: BaseDirOption = None,
    workflow: WorkflowOption = None,
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="TCP port on 127.0.0.1 (0: any free one)")
    ] = 8080,
    refresh: Annotated[int, typer.Option(min=1, help="Seconds between a page's reloads")] = 30,
) -> None:
    """Serve the nightly status pages (live from the state store, read-only) on 127.0.0.1."""
    from osa_grid.services.nightserver import NightPages, serve

    settings = _settings(ctx, base_dir)
    assert settings.base_dir is not None
    with open_workspace(settings) as workspace:
        pages = NightPages(_workflow(workflow), settings.base_dir, workspace.catalog, refresh)
        serve(pages, port, lambda url: console.print(f"serving the nightly pages on {url}", soft_wrap=True))


# The top-level commands of this module (loaded on demand by ``osa_grid.cli.app``).
commands = typer.Typer()
commands.add_typer(nightly_app, name="nightly")
commands.command("web")(web)  # the nightly pages, served
