"""Registering a night's raw files and the toy MC, with the metadata the LST transformations need.

Side inputs (see docs/payload.md) are catalogued files too, found by the transformations' ``input.needs``
queries: the night's drive log (``data_level = DRIVE_LOG``) and RunSummary (``RUN_SUMMARY``) are
registered with the night's R0 files; the analysis configuration (``LSTCHAIN_CONFIG``) with the MC files.
The R0 files carry what those queries are rendered with: ``night``, the night's calibration sequence
(``drs4_run``, ``pedcal_run``: the last DRS4 and PEDCALIB runs, as LSTOSA picks them) and, for data
runs, the MC production whose models and IRFs analyse them (``mc_production``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from osa_grid.catalog.store import Catalog
from osa_grid.core.metadata import MetaValue
from osa_grid.core.runsummary import parse_run_catalog, parse_summary
from osa_grid.errors import BadInput
from osa_grid.services.files import register_paths
from osa_grid.site import night as night_mod
from osa_grid.steps.lstchain import parse_r0_name

R0_PATTERN = "LST-1.{stream:d}.Run{run_id:d}.{subrun_id:d}.fits.fz"
DEFAULT_MC_PRODUCTION = "toy-v1"


def lstchain_config(path: Path) -> Path:
    """The analysis configuration of the toy chain: lstchain's standard one, reading every MC event.

    ``source_config.EventSource.max_events`` is set because lstchain skips a sim_telarray-only step
    (the simulated energy histogram) when it is. The whole configuration is written: the MC tools merge
    a custom configuration into the standard one, but ``lstchain_data_r0_to_dl1`` reads it as it is.
    """
    from lstchain.io import standard_config

    config = json.loads(json.dumps(standard_config))
    config["source_config"]["EventSource"]["max_events"] = 1_000_000_000
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def night_metadata(site: Path, night: date) -> tuple[dict[int, dict[str, MetaValue]], dict[str, MetaValue]]:
    """Per-run metadata from the night's RunSummary and run catalog, and the metadata shared by all files."""
    where = night_mod.layout(site.resolve(), night)
    for key in ("run_summary", "drive_log"):
        if not where[key].is_file():
            raise BadInput(f"{where[key]}: no such file (is {site} the site root of night {night}?)")
    runs = parse_summary(where["run_summary"].read_text(), str(where["run_summary"])).runs
    sources = (
        parse_run_catalog(where["run_catalog"].read_text(), str(where["run_catalog"]))
        if where["run_catalog"].is_file()
        else {}
    )
    drs4 = [r.run_id for r in runs if r.run_type == "DRS4"]
    pedcal = [r.run_id for r in runs if r.run_type == "PEDCALIB"]
    shared: dict[str, MetaValue] = {
        "data_level": "R0",
        "night": night,
        "n_data_runs": sum(1 for r in runs if r.run_type == "DATA"),
    }
    if drs4 and pedcal:
        shared["drs4_run"], shared["pedcal_run"] = max(drs4), max(pedcal)
    per_run: dict[int, dict[str, MetaValue]] = {}
    for run in runs:
        meta: dict[str, MetaValue] = {
            "run_type": run.run_type,
            "n_subruns": run.n_subruns,
            "evb_preprocessing": run.evb_preprocessing,
        }
        if run.run_type == "DATA" and run.run_id in sources:
            meta.update(sources[run.run_id].metadata())
        per_run[run.run_id] = meta
    return per_run, shared


def register_night(
    catalog: Catalog,
    site: Path,
    night: date,
    mc_production: str = DEFAULT_MC_PRODUCTION,
    calibration_sample_size: int = 2500,
    run_types: Sequence[str] = ("DRS4", "PEDCALIB", "DATA"),
) -> list[str]:
    """Register the night's drive log, RunSummary and R0 files (all four streams); returns the new LFNs.

    Files registered already are skipped, so registering again picks up sub-runs that arrived late.
    """
    per_run, shared = night_metadata(site, night)
    where = night_mod.layout(site.resolve(), night)
    registered: list[str] = []
    for key, level in (("drive_log", "DRIVE_LOG"), ("run_summary", "RUN_SUMMARY")):
        lfn = f"monitoring/{where[key].parent.name}/{where[key].name}"
        if catalog.file(lfn) is None:
            registered += register_paths(
                catalog, [where[key]], {"data_level": level, "night": night}, lfn_prefix=str(Path(lfn).parent)
            )
    prefix = f"R0/{night:%Y%m%d}"
    for run_id, meta in sorted(per_run.items()):
        if meta["run_type"] not in run_types:
            continue
        paths = [p for p in sorted(where["r0"].glob(f"LST-1.*.Run{run_id:05d}.*.fits.fz")) if _is_r0(p.name)]
        if not paths:
            raise BadInput(f"run {run_id}: no R0 files in {where['r0']}")
        known = catalog.known_lfns([f"{prefix}/{p.name}" for p in paths])
        paths = [p for p in paths if f"{prefix}/{p.name}" not in known]
        if not paths:
            continue
        extra: dict[str, MetaValue] = {}
        if meta["run_type"] == "DATA":
            extra["mc_production"] = mc_production
        elif meta["run_type"] == "PEDCALIB":
            extra["calibration_sample_size"] = calibration_sample_size
        registered += register_paths(
            catalog, paths, {**shared, **meta, **extra}, R0_PATTERN, lfn_prefix=prefix
        )
    return registered


def _is_r0(name: str) -> bool:
    try:
        parse_r0_name(name)
    except ValueError:
        return False
    return True


def register_mc(catalog: Catalog, directory: Path, production_tag: str, config: Path) -> list[str]:
    """Register toy MC files (``{kind}_run{NNNN}.h5``, data_level MC_R1) and their analysis configuration."""
    from osa_grid.site.mc import KINDS

    found = {kind: sorted(directory.glob(f"{kind}_run*.h5")) for kind in KINDS}
    if not any(found.values()):
        raise BadInput(f"no toy MC files ({', '.join(KINDS)}) in {directory}")
    prefix = f"MC/{production_tag}"
    registered = register_paths(
        catalog,
        [config],
        {"data_level": "LSTCHAIN_CONFIG", "mc_production": production_tag},
        lfn_prefix=prefix,
    )
    for kind, paths in found.items():
        if paths:
            registered += register_paths(
                catalog,
                paths,
                {"data_level": "MC_R1", "mc_kind": kind, "mc_production": production_tag},
                kind + "_run{mc_run:d}.h5",
                lfn_prefix=prefix,
            )
    return registered
