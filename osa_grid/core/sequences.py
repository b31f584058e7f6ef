"""Sequences: the calibration sequence (latest DRS4 + latest PEDCALIB) and one data sequence per DATA run.

Pure: the runs of earlier nights come through a function, so that the look-back is testable without files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

from osa_grid.core.runsummary import NightRuns, RunInfo
from osa_grid.errors import BadInput

DEFAULT_LOOKBACK_NIGHTS = 4


class NoCalibration(BadInput):
    """DATA runs without any calibration run within the look-back."""


@dataclass(frozen=True)
class Calibration:
    drs4: RunInfo
    pedcalib: RunInfo
    night: date  # where the calibration runs were taken (may be an earlier night)


@dataclass(frozen=True)
class Sequence:
    seq_id: int
    kind: str  # "CALIBRATION" or "DATA"
    run: RunInfo
    parent: int | None
    night: date  # the night the run was taken


@dataclass(frozen=True)
class NightPlan:
    night: date
    calibration: Calibration | None
    sequences: tuple[Sequence, ...]

    @property
    def data_runs(self) -> list[RunInfo]:
        return [s.run for s in self.sequences if s.kind == "DATA"]

    def runs_to_process(self) -> list[tuple[RunInfo, date]]:
        """Every run whose raw files the night needs, with the night it was taken (calibration first)."""
        found: list[tuple[RunInfo, date]] = []
        if self.calibration is not None:
            found += [(self.calibration.drs4, self.calibration.night)]
            found += [(self.calibration.pedcalib, self.calibration.night)]
        return found + [(run, self.night) for run in self.data_runs]


def latest(runs: NightRuns, run_type: str) -> RunInfo | None:
    candidates = [r for r in runs.runs if r.run_type == run_type]
    return max(candidates, key=lambda r: r.run_id) if candidates else None


def find_calibration(
    night: date, runs_of: Callable[[date], NightRuns | None], lookback: int = DEFAULT_LOOKBACK_NIGHTS
) -> Calibration | None:
    """The latest DRS4 and PEDCALIB runs of the night, else of the closest night before (within lookback)."""
    for back in range(lookback + 1):
        day = night - timedelta(days=back)
        runs = runs_of(day)
        if runs is None:
            continue
        drs4, pedcalib = latest(runs, "DRS4"), latest(runs, "PEDCALIB")
        if drs4 is not None and pedcalib is not None:
            return Calibration(drs4, pedcalib, day)
    return None


def plan_night(
    night: date, runs_of: Callable[[date], NightRuns | None], lookback: int = DEFAULT_LOOKBACK_NIGHTS
) -> NightPlan:
    """Sequence 0 calibrates, sequences 1.. process the DATA runs in run order."""
    tonight = runs_of(night) or NightRuns(())
    data = sorted((r for r in tonight.runs if r.run_type == "DATA"), key=lambda r: r.run_id)
    if not data:
        return NightPlan(night, None, ())
    calibration = find_calibration(night, runs_of, lookback)
    if calibration is None:
        raise NoCalibration(
            f"night {night}: {len(data)} DATA run(s) but no DRS4 + PEDCALIB calibration on that night "
            f"nor on the {lookback} night(s) before it"
        )
    sequences = [Sequence(0, "CALIBRATION", calibration.pedcalib, None, calibration.night)]
    sequences += [Sequence(index, "DATA", run, 0, night) for index, run in enumerate(data, start=1)]
    return NightPlan(night, calibration, tuple(sequences))
