"""The real payload end to end, at a reduced size: toy MC -> models + IRFs; a synthetic night -> DL3.

The night has one data run calibrated by the event builder and one raw run, which waits for the night's
DRS4 pedestal and calibration files (side inputs).

Everything runs for real: the synthetic R0 files are read by ctapipe_io_lst, every step is the real
lstchain tool run by `osa-grid production run` on the local backend, and gammapy reads the DL3 at the end.
About 4 minutes on 2 cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OSA_GRID = [sys.executable, "-m", "osa_grid.cli.app"]

pytestmark = pytest.mark.integration


def require_lstchain() -> None:
    missing = [
        m
        for m in ("lstchain", "ctapipe_io_lst", "protozfits", "gammapy")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        reason = f"the lstchain extra is not installed ({', '.join(missing)}): pip install -e '.[lstchain]'"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


class Site:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "OSA_GRID_HOME": str(self.home),
            "OSA_GRID_POLL_INTERVAL": "0.5",
            "MPLBACKEND": "Agg",
        }
        env.pop("OSA_GRID_CATALOG_URL", None)
        done = subprocess.run(
            [*OSA_GRID, *args], cwd=self.root, env=env, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, (
            f"osa-grid {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
        return done

    def catalog(self) -> sqlite3.Connection:
        return sqlite3.connect(self.home / "catalog.sqlite")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    require_lstchain()
    return Site(tmp_path_factory.mktemp("lst"))


def test_mc_production_makes_models_and_irfs(site: Site) -> None:
    site.run("site", "simulate-mc", "mc", "--train-events", "300", "--test-events", "150")
    site.run("site", "register-mc", "mc", "--tag", "toy-v1")
    site.run("production", "run", str(ROOT / "workflows" / "lst_mc.yaml"), "--no-live")
    found = site.run("query", "mc_production = toy-v1 and data_level in (MODEL, IRF)", "--json").stdout
    names = sorted(json.loads(line)["lfn"].rsplit("/", 1)[1] for line in found.splitlines() if line.strip())
    assert names == sorted(
        [
            "cls_disp_sign.sav",
            "cls_gh.sav",
            "reg_disp_norm.sav",
            "reg_energy.sav",
            "irf_point-like_toy-v1.fits.gz",
        ]
    )


def test_night_goes_from_r0_to_a_valid_dl3(site: Site) -> None:
    site.run(
        "site", "simulate-night", "onsite", "--date", "2025-11-20", "--run", "1807", "--run", "1808",
        "--subruns", "2", "--events", "60", "--calibration-events", "100", "--raw-run", "1808",
    )  # fmt: skip
    site.run("site", "register-night", "onsite", "--date", "2025-11-20", "--calibration-sample-size", "25")
    site.run("production", "run", str(ROOT / "workflows" / "lst_night.yaml"), "--no-live")

    with site.catalog() as db:
        states = dict(
            db.execute(
                "select transformation, group_concat(distinct state) from tasks "
                "where production = 'lst-night' group by transformation"
            ).fetchall()
        )
        assert states == {
            name: "done"
            for name in (
                "drs4_pedestal",
                "calibration",
                "r0_to_dl1",  # run 1807: calibrated to p.e. by the event builder
                "r0_to_dl1_raw",  # run 1808: raw, with the night's DRS4 pedestal and calibration
                "merge_dl1",
                "dl1_to_dl2",
                "dl3",
                "dl3_index",
            )
        }
        software = [json.loads(row[0]) for row in db.execute("select software from provenance")]
    assert all({"lstchain", "ctapipe", "ctapipe_io_lst"} <= set(s) for s in software)
    assert {s["lstchain"] for s in software} == {"0.12.3"}

    dl3 = site.home / "data" / "lst-night" / "v1" / "DL3" / "20251120"
    assert sorted(p.name for p in dl3.iterdir()) == [
        "dl3_LST-1.Run01807.fits",
        "dl3_LST-1.Run01808.fits",
        "hdu-index.fits.gz",
        "obs-index.fits.gz",
    ]
    report = site.run("site", "check-dl3", str(dl3)).stdout
    assert "run 1807" in report and "run 1808" in report
    totals = report.strip().splitlines()[-1]
    n_on = int(totals.split("ON ")[1].split(",")[0])
    n_off = int(totals.split("OFF ")[1].split(" ")[0])
    # A few dozen events only, but the source is there: more ON than the OFF regions' average.
    assert n_on > n_off / 3 + 2, report


def test_a_second_run_does_nothing_again(site: Site) -> None:
    with site.catalog() as db:
        before = db.execute("select count(*) from provenance").fetchone()[0]
    again = site.run("site", "register-night", "onsite", "--date", "2025-11-20")
    assert "registered 0 new file(s)" in again.stdout
    done = site.run("production", "run", str(ROOT / "workflows" / "lst_night.yaml"), "--no-live")
    assert "nothing left to do" in done.stdout
    with site.catalog() as db:
        assert db.execute("select count(*) from provenance").fetchone()[0] == before


def test_nightly_shepherd_runs_the_lstchain_chain(site: Site) -> None:
    """`osa-grid nightly run` on a synthetic night whose site lost its RunSummary: lstchain remakes it from
    the R0 files, then the night goes through lst_nightly.yaml (gain selection of the raw run, calibration,
    R0 -> DL1, DL1ab, datachecks, merge, DL2) to a closed night. Other run numbers than the night above:
    the nightly production selects raw files by run."""
    base = site.root / "nightsite"
    # 100 events a sub-run: two interleaved pedestal and two flat-field events, the fewest from which
    # lstchain_check_dl1 fills its pedestal and flat-field tables (the quality figures below).
    site.run(
        "site", "simulate-night", str(base), "--date", "2025-11-21", "--run", "1811", "--run", "1812",
        "--subruns", "1", "--events", "100", "--calibration-events", "500", "--raw-run", "1812",
    )  # fmt: skip
    summary = base / "monitoring" / "RunSummary" / "RunSummary_20251121.ecsv"
    summary.unlink()

    # The RunSummary from the R0 files (in a catalog of its own: lst-run-summary takes every night's R0).
    maker = Site(site.root / "runsummary")
    maker.root.mkdir()
    firsts = sorted(str(p) for p in (base / "R0" / "20251121").glob("LST-1.1.Run*.0000.fits.fz"))
    maker.run(
        "files", "register", *firsts, "--pattern", "LST-1.{stream:d}.Run{run_id:d}.{subrun_id:d}.fits.fz",
        "--meta", "data_level=R0", "--meta", "night=2025-11-21", "--lfn-prefix", "R0/20251121",
    )  # fmt: skip
    maker.run("production", "run", str(ROOT / "workflows" / "lst_run_summary.yaml"), "--no-live")
    made = (
        maker.home
        / "data"
        / "lst-run-summary"
        / "v1"
        / "monitoring"
        / "RunSummary"
        / "RunSummary_20251121.ecsv"
    )
    summary.write_text(made.read_text())
    from osa_grid.core.runsummary import parse_summary

    runs = parse_summary(summary.read_text(), str(summary)).runs
    assert [(r.run_id, r.n_subruns, r.run_type, r.evb_preprocessing) for r in runs] == [
        (1809, 1, "DRS4", "NONE"),
        (1810, 1, "PEDCALIB", "NONE"),
        (1811, 1, "DATA", "PE_CALIBRATION"),  # lstchain writes the event builder's flags: 99
        (1812, 1, "DATA", "NONE"),
    ]

    workflow = site.root / "lst_nightly_small.yaml"
    text = (ROOT / "workflows" / "lst_nightly.yaml").read_text()
    workflow.write_text(text.replace("calibration_sample_size: 2500", "calibration_sample_size: 25"))
    nightly = ["--date", "2025-11-21", "--base-dir", str(base), "--workflow", str(workflow)]
    done = site.run("nightly", "run", *nightly, "--poll", "0.5", timeout=900)
    assert "is closed" in done.stdout, done.stdout
    status = json.loads(site.run("nightly", "status", *nightly, "--json").stdout)
    rows = {row["run_id"]: row for row in status["sequences"]}
    assert {run: row["state"] for run, row in rows.items()} == {1810: "COMPLETED", 1811: "COMPLETED",
                                                                 1812: "COMPLETED"}  # fmt: skip
    assert rows[1811]["source"] == rows[1812]["source"] == "Crab"
    for run in (1811, 1812):
        assert rows[run]["progress"] == {"CALIB%": 0.0, "DL1%": 100.0, "DL1AB%": 100.0, "DATACHECK%": 100.0,
                                         "DL2%": 100.0}  # fmt: skip
    night = "20251121"
    datacheck = f"DL1/{night}/v0.1/tailcut84/datacheck"
    expected = [
        *(f"R0G/{night}/LST-1.{s}.Run01812.0000.fits.fz" for s in range(1, 5)),  # the raw run only
        f"calibration/{night}/v0.1/drs4_pedestal.Run01809.0000.h5",
        f"calibration/{night}/v0.1/calibration_filters_52.Run01810.0000.h5",
        *(f"DL1/{night}/v0.1/dl1_LST-1.Run0{r}.0000.h5" for r in (1811, 1812)),
        *(f"DL1/{night}/v0.1/tailcut84/dl1_LST-1.Run0{r}.0000.h5" for r in (1811, 1812)),
        *(f"DL1/{night}/v0.1/tailcut84/dl1_LST-1.Run0{r}.h5" for r in (1811, 1812)),
        *(f"DL1/{night}/v0.1/tailcut84/datacheck/datacheck_dl1_LST-1.Run0{r}.0000.h5" for r in (1811, 1812)),
        *(f"DL1/{night}/v0.1/tailcut84/datacheck/datacheck_dl1_LST-1.Run0{r}.h5" for r in (1811, 1812)),
        *(f"DL2/{night}/v0.1/dl2_LST-1.Run0{r}.h5" for r in (1811, 1812)),
        *(f"web/datacheck/{night}/v0.1/datacheck_dl1_LST-1.Run0{r}.h5" for r in (1811, 1812)),
        *(f"web/datacheck/{night}/v0.1/datacheck_dl1_LST-1.Run0{r}.png" for r in (1811, 1812)),
        *(f"DL1/{night}/v0.1/muons/muons_LST-1.Run0{r}.fits" for r in (1811, 1812)),
        *(
            f"{d}/DL1_datacheck_{night}.{x}"
            for d in (datacheck, f"web/datacheck/{night}/v0.1")
            for x in ("h5", "html")
        ),
        f"running_analysis/{night}/v0.1/NightFinished.txt",
    ]
    assert [p for p in expected if not (base / p).is_file()] == []
    assert not (base / "R0G" / night / "LST-1.1.Run01811.0000.fits.fz").exists()
    page = (base / "web" / "nightly" / f"{night}.html").read_text()
    assert page.count('data-state="COMPLETED"') == 3 and page.count("<td>Crab</td>") == 2
    # Quality figures measured from the run datachecks and muon files, in the table and on the page.
    for run in (1811, 1812):
        quality = rows[run]["quality"]
        assert quality["Rate/s"] > 0 and quality["FF"] > 0 and quality["PedNoise"] > 0, quality
        assert quality["MuRings"] == 0  # the synthetic night has no muons
    assert all(f"<th>{label}</th>" in page for label in ("Rate/s", "PedNoise", "FF", "MuRings")), page
    # A real browser loads and decodes each run's datacheck plot from the page (chromium, skipped without).
    from .browser import loaded_images

    plots = {f"../datacheck/{night}/v0.1/datacheck_dl1_LST-1.Run0{r}.png": r for r in (1811, 1812)}
    widths = loaded_images(base / "web" / "nightly" / f"{night}.html")
    assert set(plots) <= set(widths) and all(widths[src] == 800 for src in plots), widths
    import tables

    with tables.open_file(
        base / f"DL1/{night}/v0.1/tailcut84/datacheck/datacheck_dl1_LST-1.Run01812.h5"
    ) as f:
        assert f.root.dl1datacheck.cosmics.nrows >= 1
    check_night_wise_datacheck(site, base, f"{datacheck}/DL1_datacheck_{night}.h5", page)


def check_night_wise_datacheck(site: Site, base: Path, lfn: str, page: str) -> None:
    """lstchain_longterm_dl1_check's file: a row per data run, the sub-run tables, registered in the catalog
    with the run datachecks as its provenance, its page linked from the night's page."""
    import pandas
    import tables

    with tables.open_file(base / lfn) as f:
        assert {"runsummary", "pixwise_runsummary", "pixwise_runsummary_no_stars", "cosmics", "pedestals",
                "flatfield"} <= set(f.root._v_children), f  # fmt: skip
    runs = pandas.read_hdf(base / lfn, "runsummary")
    assert sorted(runs["runnumber"]) == [1811, 1812] and (runs["num_cosmics"] > 0).all(), runs
    assert len(pandas.read_hdf(base / lfn, "cosmics")) == 2  # one row per sub-run
    found = site.run("query", "data_level = DATACHECK_DL1_NIGHT", "--json").stdout
    assert [json.loads(line)["lfn"] for line in found.splitlines() if line.strip()] == [lfn]
    document = json.loads(site.run("provenance", lfn, "-f", "prov-json", "--all").stdout)
    levels = [e.get("osa:data_level") for e in document["entity"].values()]
    assert levels.count("DATACHECK_DL1_RUN") == 2 and levels.count("MUONS") == 2, levels
    assert "DATACHECK_DL1" in levels and "R0" in levels  # down to the sub-run datachecks and raw files
    name = lfn.rsplit("/", 1)[1].replace(".h5", ".html")
    assert f'<a href="../datacheck/20251121/v0.1/{name}">{name}</a>' in page
