"""A realistic LST-1 history for the catalog benchmark (``bench/catalog.py``), generated, not stored.

Five years of ~200 observed nights, ~30 data runs a night, ~150 sub-runs a run. Each run leaves one DL1
and one DL2 file per sub-run and one DL3 file: about 300 files a run, 9,000 a night, 9 million over the
five years. A smaller catalog keeps the structure (whole nights of whole runs) and spreads its nights
evenly over the five years, so that a date range selects the share of the catalog it would in real life.

Provenance follows the files: each DL2 sub-run is made by a task from its DL1 sub-run, each DL3 file by a
task from all the DL2 sub-runs of its run (DL1 files are the roots, as raw files are in a real catalog).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from osa_grid.ports import NewFile, Replica

YEARS = 5
NIGHTS_PER_YEAR = 200
FIRST_NIGHT = date(2020, 1, 1)
RUNS_PER_NIGHT = (20, 40)
SUBRUNS_PER_RUN = (100, 200)
FIRST_RUN = 2000
PRODUCTION = "lst-history"
# Sources with the weights of a typical LST-1 season (Crab as the calibration source dominates).
SOURCES = {
    "Crab": 30,
    "Mrk421": 12,
    "Mrk501": 10,
    "BLLac": 8,
    "1ES1959+650": 6,
    "PG1553+113": 6,
    "LST-offdata": 5,
    "GRB221009A": 2,
    "Cygnus": 8,
    "M87": 5,
    "RSOph": 3,
    "OJ287": 5,
}
LSTCHAIN_RELEASES = [(date(2020, 1, 1), "0.7.5"), (date(2021, 6, 1), "0.9.6"), (date(2023, 1, 1), "0.10.5")]
FILES_PER_NIGHT = sum(RUNS_PER_NIGHT) / 2 * (sum(SUBRUNS_PER_RUN) + 2)  # DL1 + DL2 per sub-run, one DL3


@dataclass(frozen=True)
class Run:
    night: date
    run_id: int
    n_subruns: int
    source: str
    zenith: float
    azimuth: float
    start: datetime

    @property
    def lstchain(self) -> str:
        return [version for since, version in LSTCHAIN_RELEASES if since <= self.night][-1]


def calendar() -> list[date]:
    """The observed nights of the full history: 200 a year, the others lost to weather and the moon."""
    rng = random.Random(1807)
    nights: list[date] = []
    for year in range(YEARS):
        days = [FIRST_NIGHT + timedelta(days=365 * year + d) for d in range(365)]
        nights += sorted(rng.sample(days, NIGHTS_PER_YEAR))
    return nights


def nights_for(n_files: int) -> list[date]:
    """Enough nights for about ``n_files`` files, spread evenly over the history."""
    every = calendar()
    wanted = min(len(every), max(1, math.ceil(n_files / FILES_PER_NIGHT)))
    step = len(every) / wanted
    return [every[int(i * step)] for i in range(wanted)]


def runs(n_files: int, seed: int = 42) -> Iterator[Run]:
    """Runs, night after night, until they hold about ``n_files`` files (whole runs only)."""
    rng = random.Random(seed)
    run_id, total = FIRST_RUN, 0
    for night in nights_for(n_files):
        start = datetime(night.year, night.month, night.day, 21, tzinfo=UTC)
        for _ in range(rng.randint(*RUNS_PER_NIGHT)):
            run = Run(
                night=night,
                run_id=run_id,
                n_subruns=rng.randint(*SUBRUNS_PER_RUN),
                source=rng.choices(list(SOURCES), weights=list(SOURCES.values()))[0],
                zenith=round(rng.uniform(5, 60), 2),
                azimuth=round(rng.uniform(0, 360), 2),
                start=start,
            )
            yield run
            total += files_per_run(run)
            if total >= n_files:
                return
            run_id += 1
            start += timedelta(minutes=20)
        run_id += 5  # calibration runs between nights, not part of this catalog


def files_per_run(run: Run) -> int:
    return 2 * run.n_subruns + 1


def lfn(run: Run, level: str, subrun: int | None = None) -> str:
    night = f"{run.night:%Y%m%d}"
    stem = f"{level.lower()}_LST-1.Run{run.run_id:05d}"
    name = f"{stem}.{subrun:04d}.h5" if subrun is not None else f"{stem}.fits.gz"
    return f"/lst/{level}/{night}/v{run.lstchain}/{name}"


def common_metadata(run: Run) -> dict[str, object]:
    return {
        "telescope": "LST-1",
        "night": run.night,
        "run_id": run.run_id,
        "run_type": "DATA",
        "n_subruns": run.n_subruns,
        "source": run.source,
        "zenith": run.zenith,
        "azimuth": run.azimuth,
        "lstchain_version": run.lstchain,
        "production": PRODUCTION,
    }


def new_file(name: str, metadata: dict[str, object], size: int) -> NewFile:
    checksum = f"{hash(name) & 0xFFFFFFFF:08x}"
    return NewFile(name, size, checksum, metadata, (Replica(name, "disk", "/fefs" + name, "online"),))  # type: ignore[arg-type]


def subrun_files(run: Run, level: str) -> list[NewFile]:
    files = []
    for subrun in range(run.n_subruns):
        metadata = {
            **common_metadata(run),
            "data_level": level,
            "subrun_id": subrun,
            "start": run.start + timedelta(seconds=8 * subrun),
        }
        files.append(
            new_file(lfn(run, level, subrun), metadata, 400_000_000 if level == "DL1" else 60_000_000)
        )
    return files


def dl3_file(run: Run) -> NewFile:
    metadata = {**common_metadata(run), "data_level": "DL3", "start": run.start}
    return new_file(lfn(run, "DL3"), metadata, 5_000_000)
