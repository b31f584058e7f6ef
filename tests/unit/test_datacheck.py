"""Quality figures and plots from lstchain's datacheck files (osa_grid.steps.datacheck), on small files of
the same layout as lstchain_check_dl1's (one row per sub-run, per-pixel arrays)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
tables = pytest.importorskip("tables")
pytest.importorskip("matplotlib")

from osa_grid.steps import datacheck  # noqa: E402

PIXELS = 5


def write_datacheck(path: Path, flatfield: list[float], noise: list[float]) -> None:
    row = np.dtype(
        [
            ("subrun_index", "i4"),
            ("elapsed_time", "f8"),
            ("num_events", "i8"),
            ("charge_mean", "f4", (PIXELS,)),
            ("charge_stddev", "f4", (PIXELS,)),
        ]
    )
    n = len(flatfield)
    with tables.open_file(path, "w") as h5:
        group = h5.create_group("/", "dl1datacheck")
        cosmics = np.zeros(n, row)
        cosmics["subrun_index"] = range(n)
        cosmics["elapsed_time"] = 10.0
        cosmics["num_events"] = [1000, 3000][:n]
        h5.create_table(group, "cosmics", cosmics)
        for name, column, values in (
            ("flatfield", "charge_mean", flatfield),
            ("pedestals", "charge_stddev", noise),
        ):
            rows = np.zeros(n, row)
            rows["subrun_index"] = range(n)
            rows["elapsed_time"] = 10.0
            rows["num_events"] = 10
            rows[column] = np.array(values)[:, None]
            rows[column][:, 0] = 0.0  # a dead pixel: left out of the camera mean
            h5.create_table(group, name, rows)


def test_run_figures_rates_and_stability(tmp_path: Path) -> None:
    path = tmp_path / "datacheck_dl1_LST-1.Run01807.h5"
    write_datacheck(path, flatfield=[80.0, 88.0], noise=[1.0, 1.0])
    figures = datacheck.run_figures(path)
    assert figures["dc_subruns"] == 2 and figures["dc_events"] == 4000
    assert figures["dc_cosmics_rate"] == pytest.approx(200.0)  # 4000 events in 20 s
    assert figures["dc_flatfield_pe"] == pytest.approx(84.0)
    assert figures["dc_flatfield_spread_pct"] == pytest.approx(100 * 4.0 / 84.0)
    assert figures["dc_pedestal_noise_pe"] == pytest.approx(1.0)
    assert figures["dc_pedestal_noise_spread_pct"] == pytest.approx(0.0)
    assert figures["dc_flatfield_events"] == 20

    out = tmp_path / "q.json"
    datacheck.write_figures(out, {**figures, "nothing": math.nan})
    assert "nothing" not in json.loads(out.read_text())

    plot = tmp_path / "plot.png"
    datacheck.plot_run(path, plot, "run 1807")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000


def test_a_file_without_cosmics_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.h5"
    with tables.open_file(path, "w") as h5:
        h5.create_group("/", "dl1datacheck")
    with pytest.raises(datacheck.DatacheckError, match="no dl1datacheck/cosmics"):
        datacheck.run_figures(path)
