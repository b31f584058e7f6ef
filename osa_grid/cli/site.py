"""``osa-grid site``: a synthetic LST-1 site (nights of R0 data, toy MC) and its registration.

Needs the lstchain extra (``pip install osa-grid[lstchain]``).
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path
from typing import Annotated, Optional

import typer

from osa_grid.cli.common import console, errors, handle_errors, settings_of
from osa_grid.errors import BadInput, DataServiceUnavailable
from osa_grid.services.workspace import open_workspace

site_app = typer.Typer(
    help="A synthetic LST-1 site: simulate nights and the toy MC, register them (needs the lstchain extra).",
    no_args_is_help=True,
)

DateOption = Annotated[str, typer.Option("--date", help="The night, YYYY-MM-DD (the date of the evening)")]


def _night(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise BadInput(f"--date {text!r}: expected YYYY-MM-DD") from exc


def _require_lstchain(*modules: str) -> None:
    from importlib.util import find_spec

    missing = [m for m in modules or ("numpy", "astropy", "ctapipe_io_lst", "protozfits") if not find_spec(m)]
    if missing:
        raise BadInput(
            f"this command needs the lstchain extra ({', '.join(missing)} missing): "
            "pip install 'osa-grid[lstchain]'"
        )


@site_app.command("simulate-night")
@handle_errors
def simulate_night(
    site: Annotated[Path, typer.Argument(help="Site root: R0/ and monitoring/ are written under it")],
    night: DateOption = "2025-11-20",
    runs: Annotated[
        Optional[list[int]],  # noqa: UP045
        typer.Option("--run", help="A data run number (repeat the option; default 1807 and 1808)"),
    ] = None,
    subruns: Annotated[int, typer.Option(min=1, help="Sub-runs per data run")] = 3,
    events: Annotated[int, typer.Option(min=8, help="Events per sub-run (all four streams)")] = 300,
    calibration_events: Annotated[int, typer.Option(min=8, help="Events of each calibration run")] = 200,
    raw_run: Annotated[
        Optional[list[int]],  # noqa: UP045
        typer.Option("--raw-run", help="A data run written raw (two gains, ADC) whatever --data-mode says"),
    ] = None,
    data_mode: Annotated[
        str, typer.Option(help="pe (EVB-calibrated, default) or raw (two gains, ADC)")
    ] = "pe",
    seed: Annotated[int, typer.Option(help="Random seed: the same seed writes the same night")] = 1,
    jobs: Annotated[int, typer.Option(min=1, help="Sub-runs written in parallel")] = 2,
) -> None:
    """Write a night: DRS4 + PEDCALIB runs, data runs with a source in wobble, drive log, RunSummary."""
    _require_lstchain()
    from osa_grid.site import night as night_mod

    if data_mode not in ("pe", "raw"):
        raise BadInput(f"--data-mode {data_mode!r}: expected pe or raw")
    plan = night_mod.plan_night(
        _night(night),
        runs or [1807, 1808],
        subruns,
        events,
        calibration_events=calibration_events,
        data_mode="pe" if data_mode == "pe" else "raw",
        seed=seed,
        raw_runs=raw_run or (),
    )
    start = time.monotonic()
    directory = night_mod.layout(site.resolve(), plan.night)["r0"]
    directory.mkdir(parents=True, exist_ok=True)
    work = [(directory, plan, run, subrun) for run in plan.runs for subrun in range(run.n_subruns)]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        written = sum(len(paths) for paths in pool.map(_write_subrun, work))
    files = night_mod.write_tables(site, plan)
    console.print(
        f"night {plan.night}: {written} R0 files in {directory} ({len(plan.runs)} runs), "
        f"drive log {files['drive_log']}, RunSummary {files['run_summary']} "
        f"in {time.monotonic() - start:.0f} s"
    )


def _write_subrun(job: tuple[Path, object, object, int]) -> list[Path]:
    from osa_grid.site import night as night_mod

    directory, plan, run, subrun = job
    return night_mod.write_subrun(directory, plan, run, subrun)  # type: ignore[arg-type]


@site_app.command("simulate-mc")
@handle_errors
def simulate_mc(
    directory: Annotated[Path, typer.Argument(help="Where the MC files and the analysis configuration go")],
    train_events: Annotated[int, typer.Option(min=10, help="Diffuse gammas and protons, each")] = 600,
    test_events: Annotated[int, typer.Option(min=10, help="Point-like test gammas")] = 400,
    run: Annotated[int, typer.Option(min=0, help="MC run number")] = 1,
    seed: Annotated[int, typer.Option()] = 7,
    jobs: Annotated[int, typer.Option(min=1, help="Files written in parallel")] = 2,
) -> None:
    """Toy MC: diffuse gammas + protons (training) and point-like gammas (IRFs), plus lstchain_config.json."""
    _require_lstchain()
    from osa_grid.site.registration import lstchain_config

    start = time.monotonic()
    directory.mkdir(parents=True, exist_ok=True)
    work = [
        (directory, "gamma_diffuse", run, train_events, seed),
        (directory, "proton", run, train_events, seed),
        (directory, "gamma_point", run, test_events, seed),
    ]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        paths = list(pool.map(_write_mc, work))
    config = lstchain_config(directory / "lstchain_config.json")
    console.print(
        f"{len(paths)} MC files and {config.name} in {directory} in {time.monotonic() - start:.0f} s"
    )


def _write_mc(job: tuple[Path, str, int, int, int]) -> Path:
    from osa_grid.site.mc import mc_file_name, write_mc_file

    directory, kind, run, events, seed = job
    return write_mc_file(directory / mc_file_name(kind, run), kind, run, events, seed)  # type: ignore[arg-type]


@site_app.command("register-mc")
@handle_errors
def register_mc(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(help="Directory written by simulate-mc")],
    tag: Annotated[str, typer.Option(help="Name of this MC production (metadata mc_production)")] = "toy-v1",
) -> None:
    """Register the toy MC files (data_level MC_R1) and their lstchain configuration for lst-mc."""
    _require_lstchain("numpy")
    from osa_grid.site.registration import register_mc as register

    config = directory / "lstchain_config.json"
    if not config.is_file():
        raise BadInput(f"{config}: no such file (run `osa-grid site simulate-mc {directory}` first)")
    with open_workspace(settings_of(ctx)) as workspace:
        lfns = register(workspace.catalog, directory, tag, config)
    console.print(f"registered {len(lfns)} MC file(s)")


@site_app.command("register-night")
@handle_errors
def register_night(
    ctx: typer.Context,
    site: Annotated[Path, typer.Argument(help="Site root written by simulate-night (or a real one)")],
    night: DateOption = "2025-11-20",
    mc_production: Annotated[
        str, typer.Option(help="MC production (mc_production) whose configuration, models and IRFs to use")
    ] = "toy-v1",
    calibration_sample_size: Annotated[
        int, typer.Option(min=1, help="Events per calibration sample (LST-1: 2500)")
    ] = 2500,
    only: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="Only these run types (DRS4, PEDCALIB, DATA); default all"),
    ] = None,
) -> None:
    """Register the night's drive log, RunSummary and R0 files with the metadata the LST productions need."""
    _require_lstchain()
    from osa_grid.site.registration import register_night as register

    run_types = tuple(only or ("DRS4", "PEDCALIB", "DATA"))
    unknown = set(run_types) - {"DRS4", "PEDCALIB", "DATA"}
    if unknown:
        raise BadInput(f"--only: unknown run type(s) {sorted(unknown)}")
    with open_workspace(settings_of(ctx)) as workspace:
        lfns = register(
            workspace.catalog, site, _night(night), mc_production, calibration_sample_size, run_types
        )
    console.print(f"registered {len(lfns)} new file(s) of night {night} (R0, drive log, RunSummary)")


@site_app.command("check-dl3")
@handle_errors
def check_dl3(
    directory: Annotated[Path, typer.Argument(help="Directory with DL3 files and their index files")],
    ra: Annotated[float, typer.Option(help="Source right ascension, deg")] = 83.6329,
    dec: Annotated[float, typer.Option(help="Source declination, deg")] = 22.0145,
    theta: Annotated[float, typer.Option(min=0.01, help="ON/OFF region radius, deg")] = 0.2,
    min_significance: Annotated[float, typer.Option(help="Exit 1 below this significance")] = 0.0,
) -> None:
    """Read the DL3 with gammapy and count ON/OFF events at the source: is it detected?"""
    _require_lstchain("numpy", "astropy", "gammapy")
    from osa_grid.site.dl3check import check_dl3 as check

    try:
        result = check(directory, ra, dec, theta)
    except (OSError, ValueError, KeyError) as exc:
        raise BadInput(f"{directory}: not a valid DL3 directory: {exc}") from exc
    for counts in result.runs:
        console.print(
            f"run {counts.obs_id}: livetime {counts.livetime_s:.2f} s, {counts.events} events, "
            f"ON {counts.n_on}, OFF {counts.n_off}"
        )
    console.print(
        f"total: ON {result.n_on}, OFF {result.n_off} (alpha {result.alpha:.2f}), "
        f"excess {result.excess:.1f}, significance {result.significance:.1f} sigma (Li & Ma)"
    )
    if result.significance < min_significance:
        console.print(f"the source is not detected above {min_significance} sigma")
        raise typer.Exit(1)


@site_app.command("pilot")
@handle_errors
def pilot(
    ctx: typer.Context,
    job_group: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--job-group", help="Take jobs of this DIRAC JobGroup (repeat it; default: all)"),
    ] = None,
    slots: Annotated[int, typer.Option(min=1, help="Jobs run at once")] = 2,
    loop: Annotated[
        bool, typer.Option("--loop/--once", help="Run until interrupted, or take the jobs there are and end")
    ] = True,
    heartbeat: Annotated[float, typer.Option(min=0.1, help="Seconds between heartbeats")] = 10.0,
    interval: Annotated[float, typer.Option(min=0.05, help="Seconds between two looks for jobs")] = 1.0,
    spool: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Where the DIRAC backend writes job descriptions (default: the work directory's)"),
    ] = None,
) -> None:
    """Play a grid worker node of the local site for a DiracX 0.7 server (which has no job matching).

    Takes Received jobs, reports Matched/Running with heartbeats, runs them, uploads their logs as the output
    sandbox and reports Done/Failed (docs/dirac.md).
    """
    import os
    from threading import Event

    from osa_grid.backends.dirac import dirac_state_dir
    from osa_grid.backends.dirac_client import DiracSession
    from osa_grid.backends.dirac_pilot import SitePilot

    settings = settings_of(ctx)
    url = settings.dirac_url or os.environ.get("DIRACX_URL")
    if not url:
        raise BadInput("the pilot needs the DiracX server's URL: set OSA_GRID_DIRAC_URL or DIRACX_URL")
    session = DiracSession(url, settings.dirac_credentials_path)
    site_pilot = SitePilot(
        session,
        spool or dirac_state_dir(settings) / "jobs",
        job_groups=job_group or [],
        slots=slots,
        heartbeat_seconds=heartbeat,
    )
    stop = Event()
    try:
        report = site_pilot.run(once=not loop, stop=stop, interval=interval)
    except KeyboardInterrupt:
        stop.set()
        report = site_pilot.report
    finally:
        site_pilot.close()
    counts = f"{report.finished} done, {report.failed} failed, {report.killed} killed"
    console.print(f"pilot: {report.started} started, {counts}")


@site_app.command("transfer")
@handle_errors
def transfer(
    ctx: typer.Context,
    rse: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Only transfers to this RSE (default: every RSE the agent can write)"),
    ] = None,
    loop: Annotated[
        float, typer.Option(min=0, help="Seconds between rounds; 0 (default): one round and exit")
    ] = 0.0,
) -> None:
    """The site transfer agent, FTS's stand-in for Rucio RSEs on local directories (docs/rucio.md).

    Copies the bytes of every replicating rule's transfers to their destination and marks the replicas
    available, so that rules reach OK as they would on a grid site.
    """
    from osa_grid.data.rucio import from_settings
    from osa_grid.data.rucio import transfer as transfer_round

    store = from_settings(settings_of(ctx))
    down = False
    while True:
        try:
            copied = transfer_round(store, rse)
        except DataServiceUnavailable as exc:
            if not loop:
                raise
            if not down:  # an agent outlives a server restart, as FTS does; one message per outage
                errors.print(f"waiting for the Rucio server: {exc}", highlight=False, soft_wrap=True)
            down = True
        else:
            down = False
            console.print(f"transferred {copied} file(s)")
        if not loop:
            return
        time.sleep(loop)


@site_app.command("import")
@handle_errors
def import_files(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="Metadata query over the data manager's files (e.g. Rucio)")],
) -> None:
    """Register in the catalog the files the data manager finds for a query (with their replicas)."""
    from osa_grid.services.staging import import_files as run_import

    with open_workspace(settings_of(ctx)) as workspace:
        count = run_import(workspace.catalog, workspace.data, query)
    console.print(f"imported {count} new file(s)")


# The top-level commands of this module (loaded on demand by ``osa_grid.cli.app``).
commands = typer.Typer()
commands.add_typer(site_app, name="site")
