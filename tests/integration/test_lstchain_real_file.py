"""Smoke test on a real LST-1 file: 50 events of run 2008 (2020-02-18), from the protozfits 2.13.1 sdist.

The file is fetched at test time with pip (`pip download --no-deps --no-binary :all: protozfits==2.13.1`)
into pytest's cache directory (never committed). It checks that the tools osa-grid drives read real data:
LSTEventSource reads it and the DRS4 pedestal step (the argv osa-grid builds) turns it into a baseline file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from osa_grid.steps.lstchain import drs4_pedestal_argv

from .test_lstchain_chain import require_lstchain

pytestmark = pytest.mark.integration
MEMBER = "adh-apis/zfits/test_files/LST-1.1.Run02008.0000_first50.fits.fz"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def real_file(request: pytest.FixtureRequest) -> Path:
    require_lstchain()
    cache = Path(request.config.cache.mkdir("protozfits-2.13.1-sdist"))
    # The tools want LST-1's naming (LST-1.1.RunNNNNN.SSSS.fits.fz), so the file is stored under it.
    target = cache / "R0" / "LST-1.1.Run02008.0000.fits.fz"
    if target.is_file():
        return target
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "protozfits==2.13.1"],
        cwd=cache,
        capture_output=True,
        text=True,
        timeout=600,
    )
    archives = sorted(cache.glob("protozfits-2.13.1.tar.gz"))
    if done.returncode != 0 or not archives:
        _unavailable(f"cannot download the protozfits 2.13.1 sdist: {done.stderr[-500:]}")
    with tarfile.open(archives[0]) as archive:
        member = next((m for m in archive.getmembers() if m.name.endswith(MEMBER)), None)
        if member is None:
            _unavailable(f"the protozfits sdist has no {MEMBER}")
        handle = archive.extractfile(member)  # type: ignore[arg-type]
        assert handle is not None
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(handle.read())
    return target


def test_lsteventsource_reads_the_real_file(real_file: Path) -> None:
    from ctapipe_io_lst import LSTEventSource

    with LSTEventSource(real_file, pointing_information=False, apply_drs4_corrections=False) as source:
        events = [event.index.event_id for event in source]
        assert source.local_run_id == 2008
    assert len(events) == 50


def test_drs4_pedestal_step_on_the_real_file(real_file: Path, tmp_path: Path) -> None:
    output = tmp_path / "drs4_pedestal.Run02008.0000.h5"
    argv = drs4_pedestal_argv(sys.executable, str(real_file), str(output))
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    import tables

    with tables.open_file(output) as h5:
        (row,) = h5.root.r1.monitoring.drs4_baseline.tel_001.read()
    # The mean baseline of every capacitor of every pixel and gain, filled from 50 events x 40 samples.
    assert row["baseline_mean"].shape == (2, 1855, 4096)
    assert (row["baseline_counts"] > 0).any()
