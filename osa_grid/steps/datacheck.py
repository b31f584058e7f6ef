"""Quality figures and plots of a run, from lstchain's datacheck products.

- :func:`run_figures`: from a run-wise DL1 datacheck file (``datacheck_dl1_LST-1.RunNNNNN.h5``, one row per
  sub-run in each of its ``cosmics``, ``pedestals`` and ``flatfield`` tables): the cosmics rate, and the
  stability over the run of the interleaved events: the pedestal noise (pixel charge standard deviation)
  and the flat-field charge, camera-averaged, with their sub-run to sub-run spread relative to their mean (%).
- :func:`muon_figures`: from a run's merged muon-ring file (``muons_LST-1.RunNNNNN.fits``): how many good
  rings, their mean intensity and muon efficiency (lstchain keeps muons out of the datacheck HDF5).
- :func:`plot_run`: a PNG of the run's datacheck (rates and charges per sub-run), matplotlib ``Agg``.

These read the files with PyTables and astropy only: importing lstchain would cost seconds per task.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

GROUP = "dl1datacheck"
# Interleaved events: the pedestal's figure is its noise (its mean charge is ~0), the flat-field's its charge.
INTERLEAVED = (
    ("pedestals", "charge_stddev", "dc_pedestal_noise"),
    ("flatfield", "charge_mean", "dc_flatfield"),
)
Figures = dict[str, float | int]


class DatacheckError(Exception):
    """A datacheck product lacks what the figures are computed from."""


def _rows(path: Path, table: str) -> dict[str, np.ndarray[Any, Any]]:
    import tables

    with tables.open_file(path) as h5:
        node = f"/{GROUP}/{table}"
        if node not in h5:
            return {}
        data = h5.get_node(node).read()
    return {name: np.asarray(data[name]) for name in data.dtype.names or ()}


def _camera_mean(charges: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Per sub-run: the camera average (pixels with a positive, finite value: dead pixels read 0)."""
    values = np.atleast_2d(charges.astype(float))
    good = np.isfinite(values) & (values > 0)
    counts = good.sum(axis=1)
    sums = np.where(good, values, 0.0).sum(axis=1)
    return np.divide(sums, counts, out=np.full(len(values), np.nan), where=counts > 0)


def _spread_percent(values: np.ndarray[Any, Any]) -> float:
    finite = values[np.isfinite(values)]
    if finite.size == 0 or np.mean(finite) == 0:
        return math.nan
    return float(100.0 * np.std(finite) / abs(np.mean(finite)))


def run_figures(path: Path) -> Figures:
    """The run's figures from its run-wise DL1 datacheck file."""
    cosmics = _rows(path, "cosmics")
    if not cosmics:
        raise DatacheckError(f"{path}: no {GROUP}/cosmics table")
    events = int(cosmics["num_events"].sum())
    elapsed = float(np.clip(cosmics["elapsed_time"].astype(float), 0, None).sum())
    figures: Figures = {
        "dc_subruns": len(cosmics["num_events"]),
        "dc_events": events,
        "dc_cosmics_rate": events / elapsed if elapsed > 0 else math.nan,
    }
    for table, column, key in INTERLEAVED:
        rows = _rows(path, table)
        if column not in rows:
            continue
        charge = _camera_mean(rows[column])
        figures[f"{key}_events"] = int(rows["num_events"].sum())
        figures[f"{key}_pe"] = float(np.nanmean(charge)) if np.isfinite(charge).any() else math.nan
        figures[f"{key}_spread_pct"] = _spread_percent(charge)
    return figures


def muon_figures(path: Path) -> Figures:
    """Good muon rings of a run (merged muon file): count, mean intensity (p.e.), mean efficiency."""
    from astropy.table import Table

    rings = Table.read(path, format="fits")
    good = np.asarray(rings["good_ring"], dtype=bool) if len(rings) else np.zeros(0, dtype=bool)
    figures: Figures = {"mu_rings": int(good.sum())}
    if good.any():
        figures["mu_intensity"] = float(np.mean(np.asarray(rings["ring_size"])[good]))
        figures["mu_efficiency"] = float(np.mean(np.asarray(rings["muon_efficiency"])[good]))
    return figures


def write_figures(path: Path, figures: Mapping[str, float | int]) -> None:
    """The step's metadata file: NaN (nothing measured) is left out, JSON has no NaN."""
    clean = {k: v for k, v in figures.items() if not (isinstance(v, float) and not math.isfinite(v))}
    path.write_text(json.dumps(clean, indent=1, sort_keys=True) + "\n")


def plot_run(path: Path, output: Path, title: str) -> None:
    """One PNG of the run's datacheck: event rates and mean charges per sub-run."""
    import matplotlib

    matplotlib.use("Agg")  # batch: no display onsite
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cosmics = _rows(path, "cosmics")
    if not cosmics:
        raise DatacheckError(f"{path}: no {GROUP}/cosmics table")
    fig, (rates, charges) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for table, label in (("cosmics", "cosmics"), ("pedestals", "pedestals"), ("flatfield", "flat-field")):
        rows = _rows(path, table)
        if not rows:
            continue
        subruns = rows["subrun_index"]
        elapsed = rows["elapsed_time"].astype(float)
        rate = np.divide(rows["num_events"], elapsed, out=np.full(len(elapsed), np.nan), where=elapsed > 0)
        rates.plot(subruns, rate, "o-", label=label)
    for table, column, key in INTERLEAVED:
        rows = _rows(path, table)
        if column in rows:
            label = "pedestal noise" if key == "dc_pedestal_noise" else "flat-field charge"
            charges.plot(rows["subrun_index"], _camera_mean(rows[column]), "s-", label=label)
    rates.set(xlabel="sub-run", ylabel="events / s", title="event rates")
    charges.set(xlabel="sub-run", ylabel="camera mean (p.e.)", title="interleaved events")
    for axes in (rates, charges):
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if axes.get_legend_handles_labels()[0]:
            axes.legend()
    fig.suptitle(title)
    fig.savefig(output, dpi=80)
    plt.close(fig)
