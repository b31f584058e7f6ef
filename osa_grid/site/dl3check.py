"""Is the DL3 valid, and is the source there? Read a night's DL3 with gammapy, count ON and OFF events.

ON: events within ``theta`` of the source. OFF: events within ``theta`` of the positions that mirror the
source around the pointing direction (``n_off`` of them, evenly spaced on the wobble circle, the first one
opposite the source), so ``alpha = 1 / n_off``. The significance is Li & Ma's (gammapy's
``WStatCountsStatistic``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunCounts:
    obs_id: int
    livetime_s: float
    events: int
    n_on: int
    n_off: int


@dataclass(frozen=True)
class Detection:
    runs: tuple[RunCounts, ...]
    n_on: int
    n_off: int
    alpha: float
    excess: float
    significance: float


def check_dl3(
    directory: Path, ra_deg: float, dec_deg: float, theta_deg: float = 0.2, n_off: int = 3
) -> Detection:
    """Raises whatever gammapy raises when the index or the files are not valid DL3."""
    import astropy.units as u
    import numpy as np
    from astropy.coordinates import SkyCoord
    from gammapy.data import DataStore
    from gammapy.stats import WStatCountsStatistic

    store = DataStore.from_dir(directory)
    source = SkyCoord(ra_deg * u.deg, dec_deg * u.deg, frame="icrs")
    runs: list[RunCounts] = []
    for observation in store.get_observations(required_irf="point-like"):
        events = observation.events
        pointing = observation.get_pointing_icrs(observation.tmid)
        offset = pointing.separation(source)
        angle = pointing.position_angle(source)
        radec = events.radec
        n_on = int(np.sum(radec.separation(source) < theta_deg * u.deg))
        off_count = 0
        for k in range(1, n_off + 1):
            off = pointing.directional_offset_by(angle + k * 360 * u.deg / (n_off + 1), offset)
            off_count += int(np.sum(radec.separation(off) < theta_deg * u.deg))
        runs.append(
            RunCounts(
                int(observation.obs_id),
                float(observation.observation_live_time_duration.to_value(u.s)),
                len(events.table),
                n_on,
                off_count,
            )
        )
    if not runs:
        raise ValueError(f"{directory}: no point-like observation in the DL3 index")
    n_on = sum(r.n_on for r in runs)
    n_off_total = sum(r.n_off for r in runs)
    alpha = 1.0 / n_off
    statistic = WStatCountsStatistic(n_on=n_on, n_off=n_off_total, alpha=alpha)
    return Detection(
        tuple(runs),
        n_on,
        n_off_total,
        alpha,
        float(n_on - alpha * n_off_total),
        float(np.nan_to_num(statistic.sqrt_ts)),
    )
