"""``osa-grid``: production | files | query | status."""

from __future__ import annotations

import importlib
import json
import time
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import typer.main
from rich.console import Group
from rich.live import Live
from rich.table import Table

from osa_grid import __version__
from osa_grid.catalog.outages import outages
from osa_grid.catalog.staging import stuck_inputs
from osa_grid.cli.common import console, errors, handle_errors, settings_of
from osa_grid.cli.views import failures_table, outages_table, production_table, stuck_staging_table
from osa_grid.core.metadata import parse_literal
from osa_grid.core.models import Production
from osa_grid.core.staging import Window
from osa_grid.core.states import CANCEL, RETRY, UNFINISHED, OperatorAction, TaskState
from osa_grid.core.validation import topological_order
from osa_grid.errors import BadInput
from osa_grid.logs import configure
from osa_grid.services.files import describe_paths, register_unless_unchanged
from osa_grid.services.notify import notifier_from_url
from osa_grid.services.productions import (
    change_states,
    load_production,
    production_from_definition,
    save_production,
)
from osa_grid.services.shepherd import PassReport, Shepherd, ShepherdOptions
from osa_grid.services.workspace import Workspace, open_workspace
from osa_grid.system import interrupts_deferred

# Commands defined in modules of their own, imported only when one of them is run or the help lists
# them: a command does not pay for the imports of the others (campaign, nightly, query... each pull in
# their own services), which is most of a short command's start-up. Each module holds its top-level
# commands in a Typer named ``commands``.
LAZY_COMMANDS = {
    "query": "osa_grid.cli.query_cmds",
    "provenance": "osa_grid.cli.query_cmds",
    "runs": "osa_grid.cli.query_cmds",
    "datasets": "osa_grid.cli.query_cmds",
    "nightly": "osa_grid.cli.nightly",
    "web": "osa_grid.cli.nightly",  # the nightly pages, served
    "site": "osa_grid.cli.site",
    "campaign": "osa_grid.cli.campaign",
}


@cache
def _commands_of(module: str) -> typer.core.TyperGroup:
    group = typer.main.get_group(importlib.import_module(module).commands)
    assert isinstance(group, typer.core.TyperGroup)
    return group


class LazyGroup(typer.core.TyperGroup):
    """The top-level group: its own commands, then those of ``LAZY_COMMANDS``, loaded when named."""

    def list_commands(self, ctx: typer.Context) -> list[str]:  # type: ignore[override]
        return [*super().list_commands(ctx), *LAZY_COMMANDS]

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Any:  # type: ignore[override]
        module = LAZY_COMMANDS.get(cmd_name)
        if module is None:
            return super().get_command(ctx, cmd_name)
        return _commands_of(module).get_command(ctx, cmd_name)


app = typer.Typer(
    cls=LazyGroup,
    help="osa-grid: data-driven processing for Cherenkov telescope observatories.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
production_app = typer.Typer(
    help="Run and steer productions (chains of transformations).", no_args_is_help=True
)
files_app = typer.Typer(help="Register and inspect files in the catalog.", no_args_is_help=True)

# Arguments and options several production commands share.
ProductionArgument = Annotated[str, typer.Argument(help="Production name or file")]
TaskOption = Annotated[Optional[list[str]], typer.Option(help="Only these task ids (prefixes allowed)")]  # noqa: UP045
TransformationOption = Annotated[Optional[str], typer.Option(help="Only this transformation")]  # noqa: UP045
app.add_typer(production_app, name="production")
app.add_typer(files_app, name="files")


def _version(value: bool) -> None:
    if value:
        console.print(f"osa-grid {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(help="TOML settings file (default: ./osa-grid.toml)")] = None,
    home: Annotated[Optional[Path], typer.Option(help="Workspace directory (OSA_GRID_HOME)")] = None,  # noqa: UP045
    catalog: Annotated[str | None, typer.Option(help="Catalog database URL (OSA_GRID_CATALOG_URL)")] = None,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log lines")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True)] = False,
) -> None:
    configure(-1 if quiet else verbose)
    ctx.obj = {"config": config, "home": home, "catalog_url": catalog}


def _production(workspace: Workspace, name_or_file: str) -> Production:
    """A production file (saved to the catalog) or the name of one the catalog knows."""
    path = Path(name_or_file)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        production = load_production(path)
        save_production(workspace.catalog, production, path.read_text())
        return production
    return production_from_definition(workspace.catalog.production_definition(name_or_file))


@production_app.command("run")
@handle_errors
def production_run(
    ctx: typer.Context,
    production_file: Annotated[Path, typer.Argument(help="Production YAML file")],
    once: Annotated[bool, typer.Option(help="One observe-plan-act pass (for cron), then exit")] = False,
    flush: Annotated[bool, typer.Option(help="Also close incomplete groups (runs missing sub-runs)")] = False,
    backend: Annotated[Optional[str], typer.Option(help="Backend name (default from settings)")] = None,  # noqa: UP045
    max_cores: Annotated[Optional[int], typer.Option(help="Cores the local backend may use")] = None,  # noqa: UP045
    live: Annotated[bool, typer.Option(help="Show a live table while running")] = True,
) -> None:
    """Run a production until every task is finished (or one pass with --once)."""
    settings = settings_of(ctx)
    if max_cores is not None:
        settings = settings.model_copy(update={"max_cores": max_cores})
    with open_workspace(settings) as workspace:
        production = load_production(production_file)
        save_production(workspace.catalog, production, production_file.read_text())
        options = ShepherdOptions(
            once=once,
            flush=flush,
            poll_interval=settings.poll_interval,
            lease_ttl=_ttl(settings.lease_seconds),
            staging_window=Window(settings.staging_window_files, settings.staging_window_bytes),
            stage_lifetime=settings.rucio_stage_lifetime,
            outage_alert_after=settings.outage_alert_after,
        )
        order = [t.name for t in topological_order(production)]
        show_live = live and console.is_terminal

        def render(report: PassReport) -> Any:
            return production_table(
                production.name, report.counts, order, workspace.catalog.waiting_counts(production.name)
            )

        shepherd = Shepherd(
            workspace.catalog,
            workspace.backend(backend),
            workspace.data,
            production,
            workspace.work_root,
            options,
            notifier=notifier_from_url(settings.notify),
        )
        if show_live:
            with Live(console=console, refresh_per_second=4) as display:
                shepherd.on_pass = lambda report: display.update(render(report))
                report = shepherd.run()
        else:
            report = shepherd.run()
        _summarize(workspace, production, report, order)


def _ttl(seconds: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=seconds)


def _summarize(workspace: Workspace, production: Production, report: PassReport, order: list[str]) -> None:
    waiting = workspace.catalog.waiting_counts(production.name)
    console.print(production_table(production.name, report.counts, order, waiting))
    problems = workspace.catalog.tasks(production.name, states=[TaskState.FAILED, TaskState.VETOED])
    if problems:
        console.print(failures_table(problems))
    stuck = stuck_inputs(workspace.catalog, production.name)
    if stuck:
        console.print(stuck_staging_table(stuck))
    if report.unfinished:
        console.print(f"{report.unfinished} task(s) still to do: run the command again to carry on.")
    else:
        console.print(f"production {production.name}: nothing left to do.")
    if any(waiting.values()):
        console.print(
            "Some files wait in incomplete groups (e.g. runs missing sub-runs): --flush processes them."
        )
    if problems or stuck:
        raise typer.Exit(1)


@production_app.command("status")
@handle_errors
def production_status(
    ctx: typer.Context,
    production: ProductionArgument,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """Tasks per transformation and state, and the tasks that failed."""
    with open_workspace(settings_of(ctx)) as workspace:
        prod = _production(workspace, production)
        counts = workspace.catalog.task_counts(prod.name)
        waiting = workspace.catalog.waiting_counts(prod.name)
        problems = workspace.catalog.tasks(prod.name, states=[TaskState.FAILED, TaskState.VETOED])
        stuck = stuck_inputs(workspace.catalog, prod.name)
        if as_json:
            payload = {
                "production": prod.name,
                "counts": counts,
                "waiting_files": waiting,
                "failed": [
                    {
                        "task_id": t.task_id,
                        "transformation": t.transformation,
                        "state": t.state.value,
                        "exit_code": t.exit_code,
                        "error": t.error,
                        "workdir": t.workdir,
                    }
                    for t in problems
                ],
                "staging_stuck": [
                    {
                        "lfn": r.lfn,
                        "request_id": r.request_id,
                        "error": r.error,
                        "since": r.updated_at.isoformat(),
                    }
                    for r in stuck
                ],
            }
            console.print_json(json.dumps(payload))
            return
        console.print(production_table(prod.name, counts, [t.name for t in topological_order(prod)], waiting))
        if problems:
            console.print(failures_table(problems))
        if stuck:
            console.print(stuck_staging_table(stuck))


def _operator_action(
    ctx: typer.Context,
    production: str,
    action: OperatorAction,
    task: list[str] | None,
    transformation: str | None,
) -> int:
    with open_workspace(settings_of(ctx)) as workspace:
        prod = _production(workspace, production)
        if transformation is not None:
            prod.transformation(transformation) if transformation in {
                t.name for t in prod.transformations
            } else _unknown(transformation, prod)
        task_ids = _expand_ids(workspace, prod.name, task)
        return len(change_states(workspace, prod.name, action, task_ids, transformation))


def _unknown(transformation: str, production: Production) -> None:
    names = ", ".join(t.name for t in production.transformations)
    raise BadInput(f"production {production.name} has no transformation {transformation!r} ({names})")


def _expand_ids(workspace: Workspace, production: str, prefixes: list[str] | None) -> list[str] | None:
    """Task ids may be abbreviated, as ``status`` shows them."""
    if not prefixes:
        return None
    every = [row.task_id for row in workspace.catalog.tasks(production)]
    found: list[str] = []
    for prefix in prefixes:
        matches = [task_id for task_id in every if task_id.startswith(prefix)]
        if len(matches) != 1:
            raise BadInput(f"task {prefix!r} matches {len(matches)} tasks of {production}")
        found += matches
    return found


@production_app.command("retry")
@handle_errors
def production_retry(
    ctx: typer.Context,
    production: ProductionArgument,
    task: TaskOption = None,
    transformation: TransformationOption = None,
) -> None:
    """Make failed, vetoed and cancelled tasks ready again (their failure count starts over)."""
    n = _operator_action(ctx, production, RETRY, task, transformation)
    console.print(f"{n} task(s) ready again; `osa-grid production run` runs them.")


@production_app.command("cancel")
@handle_errors
def production_cancel(
    ctx: typer.Context,
    production: ProductionArgument,
    task: TaskOption = None,
    transformation: TransformationOption = None,
) -> None:
    """Cancel tasks that have not finished (running jobs are killed)."""
    n = _operator_action(ctx, production, CANCEL, task, transformation)
    console.print(f"{n} task(s) cancelled.")


@app.command("status")
@handle_errors
def status(
    ctx: typer.Context,
    watch: Annotated[bool, typer.Option(help="Keep refreshing until no production has work left")] = False,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between refreshes with --watch")] = 2.0,
) -> None:
    """Every production in the catalog: tasks per transformation and state, with progress bars.

    Services the shepherds cannot reach (Rucio, DiracX) come first: since when, the last error.
    """
    with open_workspace(settings_of(ctx)) as workspace:
        if not workspace.catalog.production_names():
            if down := outages(workspace.catalog):
                console.print(outages_table(down, datetime.now(UTC)))
            console.print(f"no productions in the catalog ({workspace.catalog.describe_url()})")
            return
        if not watch:
            console.print(_all_productions(workspace)[0])
            return
        with Live(_all_productions(workspace)[0], console=console, refresh_per_second=2) as display:
            while True:
                view, unfinished = _all_productions(workspace)
                display.update(view)
                if not unfinished:
                    break
                time.sleep(interval)


def _all_productions(workspace: Workspace) -> tuple[Group, int]:
    tables: list[Table] = []
    if down := outages(workspace.catalog):
        tables.append(outages_table(down, datetime.now(UTC)))
    unfinished = 0
    for name in workspace.catalog.production_names():
        prod = production_from_definition(workspace.catalog.production_definition(name))
        order = [t.name for t in topological_order(prod)]
        counts = workspace.catalog.task_counts(name)
        unfinished += sum(
            n for states in counts.values() for st, n in states.items() if TaskState(st) in UNFINISHED
        )
        tables.append(production_table(name, counts, order, workspace.catalog.waiting_counts(name)))
    return Group(*tables), unfinished


@files_app.command("register")
@handle_errors
def files_register(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Existing files (registered in place)")],
    meta: Annotated[
        list[str] | None, typer.Option("--meta", "-m", help="key=value, typed like a query literal")
    ] = None,
    pattern: Annotated[
        str | None,
        typer.Option(help="Metadata from names, e.g. 'LST-1.{stream:d}.Run{run_id:d}.{subrun_id:d}.fits.fz'"),
    ] = None,
    lfn_prefix: Annotated[str, typer.Option(help="LFN = prefix/file name")] = "",
) -> None:
    """Add existing files with their metadata to the catalog (all or nothing).

    Files registered already with the same size, adler32 and metadata are skipped, so running the
    command again does nothing; one registered with other content is an error, and nothing is registered.
    """
    metadata = dict(_key_value(item) for item in meta or [])
    try:
        new_files = describe_paths(paths, metadata, pattern, lfn_prefix)
    except KeyboardInterrupt:
        errors.print("interrupted while reading the files: nothing was registered")
        raise typer.Exit(130) from None
    with open_workspace(settings_of(ctx)) as workspace:
        catalog = workspace.catalog  # opened first: Ctrl-C stops a connection that hangs
        # Ctrl-C waits for the commit and its report: the message then says what the catalog holds.
        with interrupts_deferred() as interrupt:
            done = register_unless_unchanged(catalog, new_files)
            unchanged = (
                f"; {len(done.unchanged)} already registered with the same content" if done.unchanged else ""
            )
            console.print(f"registered {len(done.registered)} file(s){unchanged}")
    if interrupt.received:
        errors.print("interrupted: the registration was completed first (running it again does nothing)")
        raise typer.Exit(130)


@files_app.command("show")
@handle_errors
def files_show(ctx: typer.Context, lfn: Annotated[str, typer.Argument(help="Logical file name")]) -> None:
    """A file's metadata, replicas and the task that made it."""
    with open_workspace(settings_of(ctx)) as workspace:
        found = workspace.catalog.file(lfn)
        if found is None:
            raise BadInput(f"no file {lfn!r} in the catalog")
        payload: dict[str, Any] = {
            "lfn": found.lfn,
            "size": found.size,
            "adler32": found.checksum,
            "metadata": {
                k: str(v) if not isinstance(v, int | float) else v for k, v in found.metadata.items()
            },
            "replicas": [{"store": r.store, "pfn": r.pfn, "state": r.state} for r in found.replicas],
        }
        if found.task_id:
            payload["made_by"] = {
                "task_id": found.task_id,
                "provenance": workspace.catalog.provenance(found.task_id)[-1:],
            }
        console.print_json(json.dumps(payload, default=str))


def _key_value(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise BadInput(f"--meta {item!r}: expected key=value")
    return key.strip(), parse_literal(value.strip())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
