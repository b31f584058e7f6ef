"""A toy Monte Carlo for LST-1: ctapipe HDF5 files (R1 waveforms + simulated showers) from ``showers``.

Real productions simulate showers with CORSIKA and the telescope with sim_telarray; neither can run here
and no simulation file can be downloaded, so this module plays their part with the same toy image model
that makes the synthetic nights. Its files are what ``lstchain_mc_r0_to_dl1`` reads (through ctapipe's
``HDF5EventSource``): an R1 waveform per event, the true shower (energy, direction, core), the telescope
pointing and the simulation configuration (thrown energy range, spectral index, scatter radius, view
cone), so that ``lstchain_mc_trainpipe`` trains the random forests and ``lstchain_create_irf_files``
computes effective areas from them.

Kinds of files (as in LST-1's MC productions):
    gamma_diffuse   gammas from anywhere within ``DIFFUSE_RADIUS_DEG`` of the camera centre (training)
    proton          protons, diffuse (training)
    gamma_point     gammas from a point on a ring of ``WOBBLE_OFFSET_DEG`` (testing, point-like IRFs)
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from osa_grid.site import showers
from osa_grid.site.night import WOBBLE_OFFSET_DEG

Kind = Literal["gamma_diffuse", "proton", "gamma_point"]
KINDS: tuple[Kind, ...] = ("gamma_diffuse", "proton", "gamma_point")
DIFFUSE_RADIUS_DEG = 1.5
PROTON_VIEWCONE_DEG = 2.5
# The pointing of the toy MC: close to the Crab's culmination at La Palma, where the synthetic nights point.
POINTING_ALT_DEG = 70.0
POINTING_AZ_DEG = 110.0
SPECTRA = {  # kind -> (spectral index, e_min TeV, e_max TeV, max impact m, primary id)
    "gamma_diffuse": (2.0, 0.05, 30.0, 250.0, 0),
    "gamma_point": (2.0, 0.05, 30.0, 250.0, 0),
    "proton": (2.0, 0.1, 60.0, 300.0, 101),
}


def mc_file_name(kind: str, run_id: int) -> str:
    return f"{kind}_run{run_id:04d}.h5"


def _event_source_class() -> Any:
    """A ctapipe EventSource yielding toy showers (defined lazily: ctapipe is an optional dependency)."""
    import astropy.units as u
    from astropy.coordinates import AltAz, SkyCoord
    from astropy.time import Time
    from ctapipe.containers import (
        ArrayEventContainer,
        CoordinateFrameType,
        EventIndexContainer,
        EventType,
        ObservationBlockContainer,
        PointingMode,
        R1CameraContainer,
        SchedulingBlockContainer,
        SimulatedCameraContainer,
        SimulatedEventContainer,
        SimulatedShowerContainer,
        SimulationConfigContainer,
        TelescopeImpactParameterContainer,
        TelescopePointingContainer,
        TriggerContainer,
    )
    from ctapipe.coordinates import CameraFrame
    from ctapipe.io import DataLevel, EventSource
    from ctapipe_io_lst import LSTEventSource
    from traitlets import Unicode

    class ToyShowerSource(EventSource):
        """Not registered for files: made directly, ``ToyShowerSource(kind=, run_id=, n_events=)``."""

        input_url = Unicode("osa-grid-toy-mc").tag(config=True)

        def __init__(self, kind: Kind, run_id: int, n_events: int, seed: int = 7, **kwargs: Any) -> None:
            self.kind = kind
            self.run_id = run_id
            self.n_events = n_events
            self.seed = seed
            super().__init__(**kwargs)
            self._subarray = LSTEventSource.create_subarray(tel_id=1)
            index, e_min, e_max, impact, _ = SPECTRA[kind]
            viewcone = {"gamma_diffuse": DIFFUSE_RADIUS_DEG, "proton": PROTON_VIEWCONE_DEG}.get(kind, 0.0)
            alt, az = POINTING_ALT_DEG * u.deg, POINTING_AZ_DEG * u.deg
            self._config = SimulationConfigContainer(
                run_number=np.int32(run_id),
                corsika_version=0.0,
                simtel_version=0.0,
                energy_range_min=e_min * u.TeV,
                energy_range_max=e_max * u.TeV,
                prod_site_B_total=0.0 * u.uT,
                prod_site_B_declination=0.0 * u.rad,
                prod_site_B_inclination=0.0 * u.rad,
                prod_site_alt=2200.0 * u.m,
                spectral_index=-index,
                shower_prog_start=0,
                shower_prog_id=0,
                detector_prog_start=0,
                detector_prog_id=0,
                n_showers=n_events,
                shower_reuse=1,
                max_alt=alt.to(u.rad),
                min_alt=alt.to(u.rad),
                max_az=az.to(u.rad),
                min_az=az.to(u.rad),
                diffuse=viewcone > 0,
                max_viewcone_radius=viewcone * u.deg,
                min_viewcone_radius=0.0 * u.deg,
                max_scatter_range=impact * u.m,
                min_scatter_range=0.0 * u.m,
                core_pos_mode=1,
                atmosphere=26,
                corsika_iact_options=0,
                corsika_low_E_model=0,
                corsika_high_E_model=0,
                corsika_bunchsize=5.0,
                corsika_wlen_min=240.0 * u.nm,
                corsika_wlen_max=700.0 * u.nm,
                corsika_low_E_detail=0,
                corsika_high_E_detail=0,
            )
            self._pointing_alt, self._pointing_az = alt, az

        @property
        def is_simulation(self) -> bool:
            return True

        @property
        def datalevels(self) -> tuple[Any, ...]:
            return (DataLevel.R1,)

        @property
        def subarray(self) -> Any:
            return self._subarray

        @property
        def obs_ids(self) -> list[int]:
            return [self.run_id]

        @property
        def simulation_config(self) -> dict[int, Any]:
            return {self.run_id: self._config}

        @property
        def observation_blocks(self) -> dict[int, Any]:
            return {
                self.run_id: ObservationBlockContainer(
                    obs_id=np.uint64(self.run_id),
                    sb_id=np.uint64(self.run_id),
                    producer_id="osa-grid toy MC",
                    subarray_pointing_lon=self._pointing_az.to(u.deg),
                    subarray_pointing_lat=self._pointing_alt.to(u.deg),
                    subarray_pointing_frame=CoordinateFrameType.ALTAZ,
                )
            }

        @property
        def scheduling_blocks(self) -> dict[int, Any]:
            return {
                self.run_id: SchedulingBlockContainer(
                    sb_id=np.uint64(self.run_id),
                    producer_id="osa-grid toy MC",
                    pointing_mode=PointingMode.TRACK,
                )
            }

        @staticmethod
        def is_compatible(file_path: Any) -> bool:
            return False

        def _generator(self) -> Any:
            rng = np.random.default_rng([self.seed, self.run_id, KINDS.index(self.kind)])
            camera = showers.lst_camera()
            index, e_min, e_max, max_impact, primary = SPECTRA[self.kind]
            obstime = Time(datetime(2025, 1, 1, tzinfo=UTC))
            pointing = SkyCoord(alt=self._pointing_alt, az=self._pointing_az, frame=AltAz(obstime=obstime))
            frame = CameraFrame(
                focal_length=showers.EFFECTIVE_FOCAL_LENGTH_M * u.m,
                telescope_pointing=pointing,
                obstime=obstime,
            )
            n = self.n_events
            angle = rng.uniform(0.0, 2.0 * math.pi, n)
            if self.kind == "gamma_point":
                radius: np.ndarray = np.full(n, WOBBLE_OFFSET_DEG)
            else:
                cone = DIFFUSE_RADIUS_DEG if self.kind == "gamma_diffuse" else PROTON_VIEWCONE_DEG
                radius = cone * np.sqrt(rng.uniform(0.0, 1.0, n))
            src_x, src_y = radius * np.cos(angle), radius * np.sin(angle)
            sky = SkyCoord(
                x=src_x * showers.DEG_TO_M * u.m, y=src_y * showers.DEG_TO_M * u.m, frame=frame
            ).transform_to(AltAz(obstime=obstime))
            for i in range(n):
                energy = showers.power_law_energy(rng, index, e_min, e_max)
                if self.kind == "proton":
                    shower = showers.hadron_shower(rng, energy)
                    shower = _moved(shower, float(src_x[i]), float(src_y[i]))
                else:
                    shower = showers.gamma_shower(rng, float(src_x[i]), float(src_y[i]), energy, max_impact)
                charge, peak_time = showers.shower_image(camera, shower, rng)
                waveform = showers.waveforms(camera, charge, peak_time, rng)
                core_angle = rng.uniform(0.0, 2.0 * math.pi)
                event = ArrayEventContainer(
                    index=EventIndexContainer(obs_id=self.run_id, event_id=i + 1),
                    count=i,
                    trigger=TriggerContainer(
                        time=obstime, tels_with_trigger=[1], event_type=EventType.SUBARRAY
                    ),
                )
                event.trigger.tel[1].time = obstime
                event.simulation = SimulatedEventContainer()
                event.simulation.shower = SimulatedShowerContainer(
                    energy=energy * u.TeV,
                    alt=sky.alt[i].to(u.deg),
                    az=sky.az[i].to(u.deg),
                    core_x=shower.impact_m * math.cos(core_angle) * u.m,
                    core_y=shower.impact_m * math.sin(core_angle) * u.m,
                    h_first_int=20_000.0 * u.m,
                    x_max=300.0 * u.g / u.cm**2,
                    starting_grammage=0.0 * u.g / u.cm**2,
                    shower_primary_id=np.int16(primary),
                )
                event.simulation.tel[1] = SimulatedCameraContainer(
                    true_image_sum=np.int32(max(0.0, shower.intensity_pe)),
                    impact=TelescopeImpactParameterContainer(
                        distance=shower.impact_m * u.m, distance_uncert=0.0 * u.m, prefix="true_impact"
                    ),
                )
                r1 = R1CameraContainer(
                    waveform=waveform[np.newaxis].astype(np.float32),
                    selected_gain_channel=np.zeros(showers.N_PIXELS, dtype=np.int8),
                )
                r1.pixel_status = np.full(showers.N_PIXELS, 0b0100, dtype=np.uint8)
                event.r1.tel[1] = r1
                event.pointing.tel[1] = TelescopePointingContainer(
                    altitude=self._pointing_alt.to(u.rad), azimuth=self._pointing_az.to(u.rad)
                )
                event.pointing.array_altitude = self._pointing_alt.to(u.rad)
                event.pointing.array_azimuth = self._pointing_az.to(u.rad)
                yield event

    return ToyShowerSource


def _moved(shower: showers.Shower, source_x: float, source_y: float) -> showers.Shower:
    from dataclasses import replace

    return replace(shower, source_x=source_x, source_y=source_y)


def write_mc_file(path: Path, kind: Kind, run_id: int, n_events: int, seed: int = 7) -> Path:
    """One toy MC file (ctapipe HDF5 with R1 waveforms, stored as int16 in units of 0.05 p.e.)."""
    from ctapipe.io import DataWriter

    source = _event_source_class()(kind=kind, run_id=run_id, n_events=n_events, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with DataWriter(
        event_source=source,
        output_path=path,
        overwrite=True,
        write_r1_waveforms=True,
        write_dl1_images=False,
        write_dl1_parameters=False,
        transform_waveform=True,
        waveform_dtype="int16",
        waveform_scale=20.0,
        waveform_offset=100,
    ) as writer:
        for event in source:
            writer(event)
    return path
