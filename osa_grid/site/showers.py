"""A toy model of LSTCam images: gamma-ray and hadron showers, flat-field and pedestal events.

The same model makes the synthetic night (R0 files) and the toy Monte Carlo that trains the random
forests, so that what the models learn applies to the night. It is not physics; it has what the
analysis needs to find a source:

- gamma images are ellipses whose major axis points back to the source; the distance from the source
  to the image centroid (``disp``) grows with the impact distance, and so does ``length / width``;
  arrival times grow away from the source and the light profile has its long tail away from it
  (what lstchain's disp-sign classifier uses);
- hadron images are wider, clumpy, with a random orientation and no preferred source position;
- the image intensity follows the energy (a power law), with a spread, so energy can be regressed.

Angles are in degrees on the sky; camera coordinates in metres (``deg * DEG_TO_M``, the effective
focal length LST-1's analysis uses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

EFFECTIVE_FOCAL_LENGTH_M = 29.30565
DEG_TO_M = EFFECTIVE_FOCAL_LENGTH_M * math.pi / 180.0
N_PIXELS = 1855
N_SAMPLES = 40
# Noise of the integrated charge of a pixel from night-sky background and electronics, in p.e.
NSB_CHARGE_PE = 1.2


@dataclass(frozen=True)
class Camera:
    pix_x: np.ndarray  # metres, in the nominal pixel order of LSTEventSource
    pix_y: np.ndarray
    pix_area: np.ndarray  # m^2
    pulse_time: np.ndarray  # ns, the single-p.e. reference pulse (high gain) ...
    pulse_shape: np.ndarray  # ... normalised to unit sum when sampled every ns


@lru_cache(maxsize=1)
def lst_camera() -> Camera:
    """LSTCam from ctapipe_io_lst's own resources (nothing is downloaded)."""
    from ctapipe_io_lst import LSTEventSource

    subarray = LSTEventSource.create_subarray(tel_id=1)
    camera = subarray.tel[1].camera
    geometry = camera.geometry
    readout = camera.readout
    step = readout.reference_pulse_sample_width.to_value("ns")
    shape = np.asarray(readout.reference_pulse_shape[0], dtype=float)
    time = np.arange(len(shape)) * step
    time = time - time[np.argmax(shape)]  # peak at t = 0
    sampled = np.interp(np.arange(-20.0, 30.0), time, shape, left=0.0, right=0.0)
    return Camera(
        pix_x=np.asarray(geometry.pix_x.to_value("m")),
        pix_y=np.asarray(geometry.pix_y.to_value("m")),
        pix_area=np.asarray(geometry.pix_area.to_value("m2")),
        pulse_time=time,
        pulse_shape=shape / sampled.sum(),
    )


@dataclass(frozen=True)
class Shower:
    """One image: where it comes from (``source``) and its shape, in degrees."""

    particle: str  # "gamma" or "proton"
    energy_tev: float
    intensity_pe: float
    source_x: float  # true source position in the camera, deg
    source_y: float
    disp: float  # deg, source -> centroid
    phi: float  # rad, direction source -> centroid (the major axis)
    width: float  # deg
    length: float  # deg
    time_gradient: float  # ns/deg along the axis, away from the source
    impact_m: float
    clumps: tuple[
        tuple[float, float, float], ...
    ] = ()  # hadrons: (offset along axis deg, sigma deg, fraction)

    @property
    def centroid(self) -> tuple[float, float]:
        return (
            self.source_x + self.disp * math.cos(self.phi),
            self.source_y + self.disp * math.sin(self.phi),
        )


def power_law_energy(rng: np.random.Generator, index: float, e_min: float, e_max: float) -> float:
    """An energy (TeV) from dN/dE ~ E^-index between e_min and e_max."""
    g = 1.0 - index
    u = rng.uniform()
    return float((e_min**g + u * (e_max**g - e_min**g)) ** (1.0 / g))


def _intensity(rng: np.random.Generator, energy_tev: float, impact_m: float) -> float:
    light_pool = math.exp(-max(0.0, impact_m - 120.0) / 70.0)
    return float(200.0 * (energy_tev / 0.1) ** 0.95 * light_pool * rng.lognormal(0.0, 0.2))


def gamma_shower(
    rng: np.random.Generator, source_x: float, source_y: float, energy_tev: float, max_impact_m: float = 250.0
) -> Shower:
    impact = max_impact_m * math.sqrt(rng.uniform())
    intensity = _intensity(rng, energy_tev, impact)
    log_size = math.log10(max(intensity, 10.0) / 100.0)
    disp = max(0.05, 0.12 + 1.1 * impact / 250.0 + 0.08 * log_size + rng.normal(0.0, 0.04))
    width = max(0.02, (0.045 + 0.012 * log_size) * rng.lognormal(0.0, 0.1))
    length = width * (1.3 + 2.2 * disp) * rng.lognormal(0.0, 0.08)
    return Shower(
        particle="gamma",
        energy_tev=energy_tev,
        intensity_pe=intensity,
        source_x=source_x,
        source_y=source_y,
        disp=disp,
        phi=rng.uniform(0.0, 2.0 * math.pi),
        width=width,
        length=length,
        time_gradient=2.0 + 14.0 * impact / 250.0 + rng.normal(0.0, 1.0),
        impact_m=impact,
    )


def hadron_shower(rng: np.random.Generator, energy_tev: float, fov_radius_deg: float = 2.5) -> Shower:
    impact = 300.0 * math.sqrt(rng.uniform())
    intensity = _intensity(rng, energy_tev, impact) * 0.6
    log_size = math.log10(max(intensity, 10.0) / 100.0)
    radius = fov_radius_deg * math.sqrt(rng.uniform())
    angle = rng.uniform(0.0, 2.0 * math.pi)
    width = (0.09 + 0.07 * rng.uniform() + 0.015 * log_size) * rng.lognormal(0.0, 0.15)
    length = width * (1.15 + 1.4 * rng.uniform())
    clumps = tuple(
        (float(rng.normal(0.0, length)), float(width * rng.uniform(0.3, 0.7)), float(rng.uniform(0.05, 0.2)))
        for _ in range(int(rng.integers(1, 4)))
    )
    return Shower(
        particle="proton",
        energy_tev=energy_tev,
        intensity_pe=intensity,
        source_x=radius * math.cos(angle),
        source_y=radius * math.sin(angle),
        disp=rng.uniform(0.2, 1.4),
        phi=rng.uniform(0.0, 2.0 * math.pi),
        width=width,
        length=length,
        time_gradient=rng.normal(0.0, 6.0),
        impact_m=impact,
        clumps=clumps,
    )


def shower_image(camera: Camera, shower: Shower, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mean-free charges (p.e., with Poisson and NSB noise) and peak times (ns) of every pixel."""
    cx, cy = shower.centroid
    x = camera.pix_x / DEG_TO_M - cx
    y = camera.pix_y / DEG_TO_M - cy
    cos_phi, sin_phi = math.cos(shower.phi), math.sin(shower.phi)
    along = x * cos_phi + y * sin_phi  # > 0: away from the source
    across = -x * sin_phi + y * cos_phi
    # Asymmetric longitudinal profile: sharp towards the source, a longer tail away from it.
    sigma_long = np.where(along < 0, 0.8 * shower.length, 1.25 * shower.length)
    density = np.exp(-0.5 * ((along / sigma_long) ** 2 + (across / shower.width) ** 2))
    norm = 2.0 * math.pi * shower.width * shower.length * (0.8 + 1.25) / 2.0
    main_fraction = 1.0 - sum(c[2] for c in shower.clumps)
    pixel_area_deg2 = camera.pix_area / DEG_TO_M**2
    mean = shower.intensity_pe * main_fraction * density / norm * pixel_area_deg2
    for offset, sigma, fraction in shower.clumps:
        dx = along - offset
        dy = across - rng.normal(0.0, shower.width)
        clump = np.exp(-0.5 * (dx**2 + dy**2) / sigma**2) / (2.0 * math.pi * sigma**2)
        mean = mean + shower.intensity_pe * fraction * clump * pixel_area_deg2
    charge = rng.poisson(mean).astype(float) + rng.normal(0.0, NSB_CHARGE_PE, N_PIXELS)
    peak_time = 18.0 + shower.time_gradient * along + rng.normal(0.0, 0.4, N_PIXELS)
    faint = mean < 1.0
    peak_time[faint] = rng.uniform(4.0, 34.0, int(faint.sum()))
    return charge, np.clip(peak_time, 3.0, 35.0)


def flat_field_image(rng: np.random.Generator, mean_pe: float = 70.0) -> tuple[np.ndarray, np.ndarray]:
    charge = rng.poisson(mean_pe, N_PIXELS).astype(float) + rng.normal(0.0, NSB_CHARGE_PE, N_PIXELS)
    return charge, rng.normal(20.0, 0.3, N_PIXELS)


def pedestal_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(0.0, NSB_CHARGE_PE, N_PIXELS), rng.uniform(4.0, 34.0, N_PIXELS)


def waveforms(
    camera: Camera, charge: np.ndarray, peak_time: np.ndarray, rng: np.random.Generator, noise: bool = True
) -> np.ndarray:
    """Waveforms in p.e. per 1-ns sample, shape (pixels, N_SAMPLES); a pixel's samples sum to its charge."""
    samples = np.arange(N_SAMPLES, dtype=float)
    relative = samples[np.newaxis, :] - peak_time[:, np.newaxis]
    shape = np.interp(relative, camera.pulse_time, camera.pulse_shape, left=0.0, right=0.0)
    waveform = shape * charge[:, np.newaxis]
    if noise:
        waveform += rng.normal(0.0, NSB_CHARGE_PE / math.sqrt(8.0) * 0.3, waveform.shape)
    return waveform
