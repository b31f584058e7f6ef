"""A synthetic LST-1 night that the real tools accept.

``write_night`` lays out, under a site root, what LST-1's onsite storage holds after a night:

    R0/YYYYMMDD/LST-1.{1..4}.RunNNNNN.SSSS.fits.fz       CTA R1v1 zfits, four streams per sub-run
    monitoring/DrivePositioning/DrivePosition_log_YYYYMMDD.txt
    monitoring/RunSummary/RunSummary_YYYYMMDD.ecsv       the night's runs (lstchain's columns)
    monitoring/RunCatalog/RunCatalog_YYYYMMDD.ecsv       which source each data run observed

Runs are a DRS4 pedestal run and a PEDCALIB run (raw ADC, two gains) and data runs. Data runs are
either gain-selected and calibrated to photo-electrons by the event builder (``pe``, LST-1's mode since
2025: ``lstchain_data_r0_to_dl1`` needs no DRS4 or calibration file) or raw (``raw``: two gains, ADC,
processed with the night's DRS4 pedestal and calibration files). Data runs interleave pedestal and
flat-field events with showers: hadrons, and gamma rays from a source (the Crab by default) observed
in wobble mode (0.4 deg offset, alternating between runs).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np

from osa_grid.site import showers
from osa_grid.steps.lstchain import r0_file_name, run_summary_name

DataMode = Literal["pe", "raw"]
RunType = Literal["DRS4", "PEDCALIB", "DATA"]

STREAMS = 4
DEAD_TIME_S = 1e-5
N_MODULES = 265
# Where a source is by default, and the wobble offset LST-1 uses.
CRAB = ("Crab", 83.6329, 22.0145)
WOBBLE_OFFSET_DEG = 0.4
# Raw ADC model (the event builder's "raw" mode and calibration runs).
BASELINE_ADC = 400.0
GAIN_ADC_PER_PE = (80.0, 4.5)
ADC_NOISE = (5.0, 1.0)
# p.e. mode encoding: value = (p.e. + offset) * scale, as TelescopeDataStream declares.
PE_SCALE = 50.0
PE_OFFSET = 5.0
# Event builder pre-processing flags (ctapipe_io_lst.evb_preprocessing.EVBPreprocessingFlag).
_GAIN_SELECTION, _BASELINE_SUBTRACTION, _PEDESTAL_SUBTRACTION, _PE_CALIBRATION = 1, 2, 32, 64
PE_MODE_ACTIONS = _GAIN_SELECTION | _BASELINE_SUBTRACTION | _PEDESTAL_SUBTRACTION | _PE_CALIBRATION
# Trigger bits (ctapipe_io_lst.constants.TriggerBits) and event types (ctapipe.containers.EventType).
_MONO, _CALIBRATION, _PEDESTAL = 1, 4, 32
_FLATFIELD, _SKY_PEDESTAL, _SUBARRAY = 0, 2, 32
# High / low gain stored (ctapipe_io_lst.constants.PixelStatus).
_HIGH_GAIN, _LOW_GAIN = 0b0100, 0b1000


@dataclass(frozen=True)
class Source:
    name: str
    ra_deg: float
    dec_deg: float


@dataclass(frozen=True)
class RunPlan:
    run_id: int
    run_type: RunType
    n_subruns: int
    events_per_subrun: int
    start: datetime
    rate_hz: float
    wobble: str | None = None  # "W1" (dec + offset) or "W2" (dec - offset) for data runs
    data_mode: DataMode = "raw"

    @property
    def subrun_seconds(self) -> float:
        """Time reserved for a sub-run: twice the mean time its events take, so sub-runs never overlap."""
        return 2.0 * self.events_per_subrun / self.rate_hz

    @property
    def duration(self) -> timedelta:
        return timedelta(seconds=self.n_subruns * self.subrun_seconds)

    @property
    def evb_preprocessing(self) -> int:
        """The RunSummary value, as lstchain writes it: the event builder's flags for shower events."""
        return PE_MODE_ACTIONS if self.run_type == "DATA" and self.data_mode == "pe" else 0


@dataclass(frozen=True)
class NightPlan:
    night: date
    runs: tuple[RunPlan, ...]
    source: Source = Source(*CRAB)
    gamma_fraction: float = 0.15
    seed: int = 1

    @property
    def yyyymmdd(self) -> str:
        return self.night.strftime("%Y%m%d")

    def runs_of(self, run_type: RunType) -> list[RunPlan]:
        return [r for r in self.runs if r.run_type == run_type]


def plan_night(
    night: date,
    data_runs: Sequence[int],
    subruns: int,
    events: int,
    calibration_runs: tuple[int, int] | None = None,
    calibration_events: int = 200,
    data_mode: DataMode = "pe",
    data_start: datetime | None = None,
    rate_hz: float = 2000.0,
    source: Source | None = None,
    gamma_fraction: float = 0.15,
    seed: int = 1,
    raw_runs: Sequence[int] = (),
) -> NightPlan:
    """A night: DRS4 + PEDCALIB (by default the two run numbers before the first data run), then data runs.

    Data runs are in ``data_mode``, except ``raw_runs`` (raw two-gain ADC data, as before 2025).

    The default data-taking start (01:30 UTC after the night's date) has the Crab high in La Palma's sky
    from October to January.
    """
    if not data_runs:
        raise ValueError("a night needs at least one data run")
    if subruns < 1 or events < 8:
        raise ValueError("each data run needs at least one sub-run of at least 8 events")
    first = min(data_runs)
    drs4_run, pedcal_run = calibration_runs or (first - 2, first - 1)
    evening = datetime(night.year, night.month, night.day, 21, 0, tzinfo=UTC)
    runs: list[RunPlan] = [
        RunPlan(drs4_run, "DRS4", 1, calibration_events, evening, rate_hz),
        RunPlan(pedcal_run, "PEDCALIB", 1, calibration_events, evening + timedelta(minutes=5), rate_hz),
    ]
    start = data_start or evening + timedelta(hours=4, minutes=30)
    for index, run_id in enumerate(sorted(data_runs)):
        plan = RunPlan(
            run_id,
            "DATA",
            subruns,
            events,
            start,
            rate_hz,
            wobble="W1" if index % 2 == 0 else "W2",
            data_mode="raw" if run_id in raw_runs else data_mode,
        )
        runs.append(plan)
        start = start + plan.duration + timedelta(minutes=2)
    return NightPlan(night, tuple(runs), source or Source(*CRAB), gamma_fraction, seed)


def drive_log_name(night: date) -> str:
    return f"DrivePosition_log_{night:%Y%m%d}.txt"


def run_catalog_name(night: date) -> str:
    return f"RunCatalog_{night:%Y%m%d}.ecsv"


def layout(root: Path, night: date) -> dict[str, Path]:
    return {
        "r0": root / "R0" / f"{night:%Y%m%d}",
        "drive_log": root / "monitoring" / "DrivePositioning" / drive_log_name(night),
        "run_summary": root / "monitoring" / "RunSummary" / run_summary_name(night),
        "run_catalog": root / "monitoring" / "RunCatalog" / run_catalog_name(night),
    }


# ---------------------------------------------------------------------------------------------- pointing
def _location() -> Any:
    from ctapipe_io_lst.constants import LST1_LOCATION

    return LST1_LOCATION


def wobble_position(source: Source, wobble: str) -> tuple[float, float]:
    sign = 1.0 if wobble == "W1" else -1.0
    return source.ra_deg, source.dec_deg + sign * WOBBLE_OFFSET_DEG


def pointing_altaz(source: Source, wobble: str, times: Any) -> Any:
    """Where the telescope points (an AltAz SkyCoord) at astropy ``times`` when tracking the wobble."""
    import astropy.units as u
    from astropy.coordinates import AltAz, SkyCoord

    ra, dec = wobble_position(source, wobble)
    frame = AltAz(obstime=times, location=_location())
    return SkyCoord(ra=ra * u.deg, dec=dec * u.deg, frame="icrs").transform_to(frame)


def source_in_camera(source: Source, pointing: Any) -> tuple[np.ndarray, np.ndarray]:
    """The source's position in the camera (deg, ``showers`` convention) for each pointing."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from ctapipe.coordinates import CameraFrame

    frame = CameraFrame(
        focal_length=showers.EFFECTIVE_FOCAL_LENGTH_M * u.m,
        telescope_pointing=pointing,
        obstime=pointing.obstime,
        location=_location(),
    )
    position = SkyCoord(ra=source.ra_deg * u.deg, dec=source.dec_deg * u.deg, frame="icrs")
    camera = position.transform_to(frame)
    to_deg = 1.0 / showers.DEG_TO_M
    return np.atleast_1d(camera.x.to_value(u.m)) * to_deg, np.atleast_1d(camera.y.to_value(u.m)) * to_deg


def write_drive_log(path: Path, plan: NightPlan) -> None:
    """One line per second, ``unix_time azimuth zenith`` (deg), over every data run (+- 1 minute)."""
    from astropy.time import Time

    lines: list[str] = []
    for run in plan.runs_of("DATA"):
        begin = int(run.start.timestamp()) - 60
        end = int((run.start + run.duration).timestamp()) + 60
        seconds = np.arange(begin, end + 1)
        pointing = pointing_altaz(plan.source, run.wobble or "W1", Time(seconds, format="unix"))
        for t, az, alt in zip(seconds, pointing.az.deg, pointing.alt.deg, strict=True):
            lines.append(f"{t} {az:.6f} {90.0 - alt:.6f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------- tables
def write_run_summary(path: Path, plan: NightPlan) -> None:
    """The night's RunSummary with the columns ``lstchain_create_run_summary`` writes."""
    from astropy.table import Table

    runs = sorted(plan.runs, key=lambda r: r.run_id)
    table = Table(
        {
            "run_id": np.array([r.run_id for r in runs], dtype=np.int64),
            "n_subruns": np.array([r.n_subruns for r in runs], dtype=np.int64),
            "run_type": [r.run_type for r in runs],
            "data_format": ["CTA-R1"] * len(runs),
            "evb_preprocessing": np.array([r.evb_preprocessing for r in runs], dtype=np.int64),
            "ucts_timestamp": np.full(len(runs), -1, dtype=np.int64),
            "run_start": np.array([int(r.start.timestamp() * 1e9) for r in runs], dtype=np.int64),
            "dragon_reference_time": np.full(len(runs), -1, dtype=np.int64),
            "dragon_reference_module_id": np.full(len(runs), -1, dtype=np.int16),
            "dragon_reference_module_index": np.full(len(runs), -1, dtype=np.int16),
            "dragon_reference_counter": np.full(len(runs), 0, dtype=np.uint64),
            "dragon_reference_source": ["None"] * len(runs),
        }
    )
    table.meta["date"] = plan.night.isoformat()
    table.meta["generator"] = "osa-grid site simulate-night"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.write(path, format="ascii.ecsv", delimiter=",", overwrite=True)


def write_run_catalog(path: Path, plan: NightPlan) -> None:
    """Which source each data run observed (LST-1 keeps this in its TCU database)."""
    from astropy.table import Table

    runs = plan.runs_of("DATA")
    table = Table(
        {
            "run_id": np.array([r.run_id for r in runs], dtype=np.int64),
            "source_name": [plan.source.name] * len(runs),
            "source_ra": np.full(len(runs), plan.source.ra_deg),
            "source_dec": np.full(len(runs), plan.source.dec_deg),
            "wobble": [r.wobble or "" for r in runs],
        }
    )
    table.meta["date"] = plan.night.isoformat()
    path.parent.mkdir(parents=True, exist_ok=True)
    table.write(path, format="ascii.ecsv", delimiter=",", overwrite=True)


# ---------------------------------------------------------------------------------------------- events
@dataclass
class _Event:
    event_type: int
    trigger: int
    charge: np.ndarray
    peak_time: np.ndarray
    truth: str


def _events(plan: NightPlan, run: RunPlan, rng: np.random.Generator, times: Any) -> Iterator[_Event]:
    """The events of one sub-run (``times``: astropy Time of each)."""
    camera = showers.lst_camera()
    n = len(times)
    if run.run_type == "DRS4":
        for _ in range(n):
            charge, peak_time = showers.pedestal_image(rng)
            yield _Event(_SUBARRAY, _MONO, charge * 0.0, peak_time, "drs4")
        return
    if run.run_type == "PEDCALIB":
        for i in range(n):
            if i % 2 == 0:
                yield _Event(_FLATFIELD, _CALIBRATION, *showers.flat_field_image(rng), "flatfield")
            else:
                yield _Event(_SKY_PEDESTAL, _PEDESTAL, *showers.pedestal_image(rng), "pedestal")
        return
    pointing = pointing_altaz(plan.source, run.wobble or "W1", times)
    source_x, source_y = source_in_camera(plan.source, pointing)
    for i in range(n):
        if i % 50 == 25:
            yield _Event(_SKY_PEDESTAL, _PEDESTAL, *showers.pedestal_image(rng), "pedestal")
        elif i % 50 == 49:
            yield _Event(_FLATFIELD, _CALIBRATION, *showers.flat_field_image(rng), "flatfield")
        elif rng.uniform() < plan.gamma_fraction:
            energy = showers.power_law_energy(rng, 2.6, 0.03, 30.0)
            shower = showers.gamma_shower(rng, float(source_x[i]), float(source_y[i]), energy)
            yield _Event(_SUBARRAY, _MONO, *showers.shower_image(camera, shower, rng), "gamma")
        else:
            energy = showers.power_law_energy(rng, 2.7, 0.05, 50.0)
            shower = showers.hadron_shower(rng, energy)
            yield _Event(_SUBARRAY, _MONO, *showers.shower_image(camera, shower, rng), "proton")


def _encode(run: RunPlan, event: _Event, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """(waveform as stored, pixel_status, number of channels) for one event."""
    camera = showers.lst_camera()
    pe = showers.waveforms(camera, event.charge, event.peak_time, rng)
    if run.run_type == "DATA" and run.data_mode == "pe":
        low_gain = event.charge > 150.0
        status = np.where(low_gain, _LOW_GAIN, _HIGH_GAIN).astype(np.uint8)
        stored = np.clip(np.round((pe + PE_OFFSET) * PE_SCALE), 0, 65535).astype(np.uint16)
        return stored, status, 1
    adc = np.empty((2, *pe.shape))
    for gain, (adc_per_pe, noise) in enumerate(zip(GAIN_ADC_PER_PE, ADC_NOISE, strict=True)):
        adc[gain] = BASELINE_ADC + adc_per_pe * pe + rng.normal(0.0, noise, pe.shape)
    stored = np.clip(np.round(adc), 0, 4095).astype(np.uint16)
    return stored, np.full(showers.N_PIXELS, _HIGH_GAIN | _LOW_GAIN, dtype=np.uint8), 2


def _camera_configuration(run: RunPlan) -> Any:
    from protozfits.anyarray import numpy_to_any_array
    from protozfits.R1v1_debug_pb2 import DebugCameraConfiguration
    from protozfits.R1v1_pb2 import CameraConfiguration

    pe_mode = run.run_type == "DATA" and run.data_mode == "pe"
    action = PE_MODE_ACTIONS if pe_mode else 0
    # tdp_type[i] is the trigger pattern whose actions are ttype_pattern[i + 1]; ttype_pattern[0] is the
    # default. (The event builder swaps ttype_pattern and tdp_action; ctapipe_io_lst reads it that way.)
    tdp_type = np.zeros(15, dtype=np.uint16)
    tdp_type[:3] = (_MONO, _CALIBRATION, _PEDESTAL)
    actions = np.zeros(16, dtype=np.uint16)
    actions[:4] = action
    return CameraConfiguration(
        tel_id=1,
        local_run_id=run.run_id,
        config_time_s=run.start.timestamp(),
        camera_config_id=1,
        num_modules=N_MODULES,
        num_pixels=showers.N_PIXELS,
        num_channels=2,
        data_model_version="1.0",
        num_samples_nominal=showers.N_SAMPLES,
        pixel_id_map=numpy_to_any_array(np.arange(showers.N_PIXELS, dtype=np.uint16)),
        module_id_map=numpy_to_any_array(np.arange(N_MODULES, dtype=np.uint16)),
        debug=DebugCameraConfiguration(
            cs_serial="osa-grid-synthetic",
            evb_version="osa-grid",
            cdhs_version="osa-grid",
            tdp_type=numpy_to_any_array(tdp_type),
            tdp_action=numpy_to_any_array(np.zeros(16, dtype=np.uint16)),
            ttype_pattern=numpy_to_any_array(actions),
        ),
    )


def write_subrun(directory: Path, plan: NightPlan, run: RunPlan, subrun_id: int) -> list[Path]:
    """The four stream files of one sub-run; events are dealt to the streams in turn, as the EVB does."""
    import protozfits
    from astropy.time import Time
    from ctapipe_io_lst.anyarray_dtypes import CDTS_AFTER_37201_DTYPE, DRAGON_COUNTERS_DTYPE, TIB_DTYPE
    from ctapipe_io_lst.event_time import time_to_cta_high
    from protozfits.anyarray import numpy_to_any_array
    from protozfits.R1v1_debug_pb2 import DebugEvent
    from protozfits.R1v1_pb2 import Event, TelescopeDataStream

    rng = np.random.default_rng([plan.seed, run.run_id, subrun_id])
    n = run.events_per_subrun
    first_event_id = subrun_id * n + 1
    # Poisson arrivals with a 10 us dead time: lstchain's effective-time estimate (from the time between
    # triggered events, ignoring gaps over 10 ms) needs a realistic trigger rate.
    gaps = DEAD_TIME_S + rng.exponential(1.0 / run.rate_hz, n)
    offsets = subrun_id * run.subrun_seconds + np.cumsum(gaps)
    unix = run.start.timestamp() + offsets
    times = Time(unix, format="unix")
    pe_mode = run.run_type == "DATA" and run.data_mode == "pe"
    data_stream = TelescopeDataStream(
        sb_id=run.run_id,
        obs_id=run.run_id,
        waveform_offset=PE_OFFSET if pe_mode else BASELINE_ADC,
        waveform_scale=PE_SCALE if pe_mode else 1.0,
    )
    camera_config = _camera_configuration(run)
    counters = np.zeros(N_MODULES, dtype=DRAGON_COUNTERS_DTYPE).view(np.uint8)
    rows_per_tile = 50
    n_tiles = math.ceil(n / STREAMS / rows_per_tile) + 1
    paths = [directory / r0_file_name(stream, run.run_id, subrun_id) for stream in range(1, STREAMS + 1)]
    clock = np.zeros(N_MODULES, dtype=np.uint64)
    with ExitStack() as stack:
        writers = []
        for path in paths:
            writer = stack.enter_context(
                protozfits.ProtobufZOFits(
                    n_tiles=n_tiles, rows_per_tile=rows_per_tile, compression_block_size_kb=64 * 1024
                )
            )
            writer.open(str(path))
            writer.move_to_new_table("DataStream")
            writer.write_message(data_stream)
            writer.move_to_new_table("CameraConfiguration")
            writer.write_message(camera_config)
            writer.move_to_new_table("Events")
            writers.append(writer)
        previous = float(unix[0])
        for index, event in enumerate(_events(plan, run, rng, times)):
            event_id = first_event_id + index
            waveform, status, n_channels = _encode(run, event, rng)
            seconds, quarter_ns = time_to_cta_high(times[index])
            clock += np.uint64(max(0.0, (float(unix[index]) - previous)) * 133e6)
            previous = float(unix[index])
            timestamp = np.uint64(seconds) * np.uint64(1_000_000_000) + np.uint64(round(quarter_ns / 4.0))
            cdts = np.array(
                [(timestamp, 0, event_id, 0, 0, 0, event.trigger, 0, 0, 0, 1)], dtype=CDTS_AFTER_37201_DTYPE
            )
            tib = np.array([(event_id, 0, (0, 0, 0), 0, event.trigger)], dtype=TIB_DTYPE)
            message = Event(
                event_id=event_id,
                tel_id=1,
                local_run_id=run.run_id,
                event_type=event.event_type,
                event_time_s=int(seconds),
                event_time_qns=int(quarter_ns),
                num_channels=n_channels,
                num_pixels=showers.N_PIXELS,
                num_samples=showers.N_SAMPLES,
                pixel_status=numpy_to_any_array(status),
                waveform=numpy_to_any_array(waveform.ravel()),
                first_cell_id=numpy_to_any_array(rng.integers(0, 4096, N_MODULES * 8).astype(np.uint16)),
                module_hires_local_clock_counter=numpy_to_any_array(clock.copy()),
                debug=DebugEvent(
                    module_status=numpy_to_any_array(np.ones(N_MODULES, dtype=np.uint8)),
                    extdevices_presence=0b011,
                    tdp_action=PE_MODE_ACTIONS if pe_mode else 0,
                    cdts_data=numpy_to_any_array(cdts.view(np.uint8)),
                    tib_data=numpy_to_any_array(tib.view(np.uint8)),
                    counters=numpy_to_any_array(counters),
                ),
            )
            writers[index % STREAMS].write_message(message)
    return paths


def write_tables(root: Path, plan: NightPlan) -> dict[str, Path]:
    """The night's drive log, RunSummary, run catalog and the simulation's truth (JSON)."""
    where = layout(root.resolve(), plan.night)
    write_drive_log(where["drive_log"], plan)
    write_run_summary(where["run_summary"], plan)
    write_run_catalog(where["run_catalog"], plan)
    manifest = {
        "night": plan.night.isoformat(),
        "source": asdict(plan.source),
        "gamma_fraction": plan.gamma_fraction,
        "seed": plan.seed,
        "runs": [{**asdict(r), "start": r.start.isoformat()} for r in plan.runs],
    }
    truth = root.resolve() / "monitoring" / "Simulation" / f"night_{plan.yyyymmdd}.json"
    truth.parent.mkdir(parents=True, exist_ok=True)
    truth.write_text(json.dumps(manifest, indent=2) + "\n")
    return {**where, "truth": truth}
