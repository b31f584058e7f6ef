"""Checks a product passes before it is registered, and clearing what a finished task no longer needs.

A checksum proves a copy is faithful, not that the step wrote something usable: a product is also opened
with the library of its kind (``Output.verify``) and must hold the content that kind implies. The readers
(h5py, astropy, gammapy) are imported only when a product of their kind is checked.
"""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

from osa_grid.errors import OutputCheckFailed

# What a task's work directory keeps once its products are safe: the logs of the attempt.
KEPT_IN_WORKDIR = frozenset({"stdout.log", "stderr.log"})


def verify_product(kind: str, path: Path, output: str) -> None:
    """Raise ``OutputCheckFailed`` (naming the output and the reason) unless ``path`` is a valid ``kind``."""
    checks = {"json": _json, "csv": _csv, "hdf5": _hdf5, "fits": _fits, "dl3": _dl3}
    check = checks.get(kind)
    if check is None:
        raise OutputCheckFailed(f"output {output}: unknown verification {kind!r}")
    try:
        problem = check(path)
    except ImportError as exc:
        raise OutputCheckFailed(f"output {output}: cannot verify {kind} here: {exc}") from exc
    except Exception as exc:  # whatever the reader raises on a broken file is the verdict
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        raise OutputCheckFailed(f"output {output}: {path.name} is not a valid {kind} file: {problem}")


def _json(path: Path) -> str | None:
    json.loads(path.read_text())
    return None


def _csv(path: Path) -> str | None:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if len(rows) < 2:
        return "no data row after the header"
    width = len(rows[0])
    ragged = next((n for n, row in enumerate(rows, 1) if len(row) != width), None)
    return None if ragged is None else f"row {ragged} has not the {width} columns of the header"


def _hdf5(path: Path) -> str | None:
    import h5py

    with h5py.File(path, "r") as handle:
        if not list(handle.keys()):
            return "no group or dataset"
    return None


def _fits(path: Path) -> str | None:
    from astropy.io import fits

    # astropy only warns about a file shorter than its headers announce: that warning is the verdict here.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with fits.open(path, memmap=False) as hdus:
            hdus.verify("exception")
            empty = not any(hdu.size for hdu in hdus)
    truncated = next((str(w.message) for w in caught if "truncated" in str(w.message)), None)
    if truncated is not None:
        return truncated
    return "every HDU is empty" if empty else None


def _dl3(path: Path) -> str | None:
    """A DL3 file as gammapy reads it: events with time, energy and direction, and a GTI."""
    from gammapy.data import GTI, EventList

    events = EventList.read(path)
    missing = {"TIME", "ENERGY", "RA", "DEC"} - set(events.table.colnames)
    if missing:
        return f"the EVENTS table lacks {', '.join(sorted(missing))}"
    GTI.read(path)
    return None


def clear_workdir(workdir: Path) -> None:
    """Remove a finished task's scratch files (input copies, intermediate files); its logs stay."""
    if not workdir.is_dir():
        return
    for entry in workdir.iterdir():
        if entry.name in KEPT_IN_WORKDIR:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
