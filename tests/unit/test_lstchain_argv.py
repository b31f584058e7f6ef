"""The lstchain steps: output names, exact argv (builders and rendered transformations), resources.

No lstchain needed: these check what osa-grid would run, not the run itself (tests/integration does that).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from osa_grid.core.models import Production, Transformation
from osa_grid.core.planner import FileRecord
from osa_grid.core.query import Node, to_text
from osa_grid.core.rendering import render_needs, render_task
from osa_grid.services.productions import load_production
from osa_grid.steps import lstchain as steps

ROOT = Path(__file__).resolve().parents[2]
NIGHT = date(2025, 11, 20)
PY = "/venv/bin/python"
WORK = "/work/task/attempt-1"


def need_texts(needs: Mapping[str, Node]) -> dict[str, str]:
    """Side-input queries as text, to compare with what a reader expects."""
    return {name: to_text(node) for name, node in needs.items()}


@pytest.fixture(scope="module")
def night() -> Production:
    return load_production(ROOT / "workflows" / "lst_night.yaml")


@pytest.fixture(scope="module")
def mc() -> Production:
    return load_production(ROOT / "workflows" / "lst_mc.yaml")


def r0(run_id: int, subrun_id: int, run_type: str = "DATA", **extra: Any) -> FileRecord:
    metadata = {
        "data_level": "R0",
        "night": NIGHT,
        "run_id": run_id,
        "subrun_id": subrun_id,
        "stream": 1,
        "run_type": run_type,
        "n_subruns": 3,
        "n_data_runs": 2,
        "drs4_run": 1805,
        "pedcal_run": 1806,
        "evb_preprocessing": "PE_CALIBRATION" if run_type == "DATA" else "NONE",
        "source": "Crab",
        "source_ra": 83.6329,
        "source_dec": 22.0145,
        "wobble": "W1",
        "mc_production": "toy-v1",
        **extra,
    }
    name = steps.r0_file_name(1, run_id, subrun_id)
    return FileRecord(id=run_id * 100 + subrun_id, lfn=f"R0/20251120/{name}", metadata=metadata)


def rendered(t: Transformation, inputs: list[FileRecord], paths: list[str], **needs: str) -> Any:
    return render_task("lst-night", t, "tid", inputs, paths, WORK, 1, t.step.resources, PY, needs)


# ---------------------------------------------------------------------------------------- names
def test_output_names() -> None:
    assert steps.r0_file_name(2, 1807, 3) == "LST-1.2.Run01807.0003.fits.fz"
    assert steps.dl1_subrun_name(1807, 3) == "dl1_LST-1.Run01807.0003.h5"
    assert steps.muons_subrun_name(1807, 3) == "muons_LST-1.Run01807.0003.fits"
    assert steps.dl1_run_name(1807) == "dl1_LST-1.Run01807.h5"
    assert steps.dl2_run_name(1807) == "dl2_LST-1.Run01807.h5"
    assert steps.dl3_run_name(1807) == "dl3_LST-1.Run01807.fits"
    assert steps.drs4_pedestal_name(1805) == "drs4_pedestal.Run01805.0000.h5"
    assert steps.calibration_name(1806) == "calibration_filters_52.Run01806.0000.h5"


def test_parse_r0_name() -> None:
    assert steps.parse_r0_name("LST-1.4.Run02008.0123.fits.fz") == (4, 2008, 123)
    for bad in ("LST-1.1.Run2008.0000.fits.fz", "LST-1.1.Run02008.0000_first50.fits.fz", "dl1.h5"):
        with pytest.raises(ValueError, match="not an LST-1 R0 file name"):
            steps.parse_r0_name(bad)


# ---------------------------------------------------------------------------------------- builders
def test_drs4_pedestal_argv() -> None:
    assert steps.drs4_pedestal_argv(PY, "/r0/a.fits.fz", "/w/drs4.h5", max_events=50) == [
        PY,
        "-m",
        "lstchain.tools.lstchain_create_drs4_pedestal_file",
        "--input=/r0/a.fits.fz",
        "--output=/w/drs4.h5",
        "--max-events=50",
        "--overwrite",
    ]


def test_calibration_argv() -> None:
    assert steps.calibration_argv(PY, "/r0/p.fits.fz", "/c/drs4.h5", "/w/cal.h5", "/cfg.json", 40) == [
        PY,
        "-m",
        "lstchain.tools.lstchain_create_calibration_file",
        "--input_file=/r0/p.fits.fz",
        "--output_file=/w/cal.h5",
        "--pedestal_file=/c/drs4.h5",
        "--config=/cfg.json",
        "--events_to_skip=0",
        "--FlatFieldCalculator.sample_size=40",
        "--PedestalCalculator.sample_size=40",
    ]


def test_merge_dl2_dl3_and_index_argv() -> None:
    assert steps.merge_argv(PY, "/w/inputs", "/w/dl1_LST-1.Run01807.h5", 1807) == [
        PY,
        "-m",
        "lstchain.scripts.lstchain_merge_hdf5_files",
        "--input-dir=/w/inputs",
        "--output-file=/w/dl1_LST-1.Run01807.h5",
        "--no-image",
        "--no-progress",
        "--run-number=1807",
    ]
    assert steps.dl1_to_dl2_argv(PY, "/d/dl1.h5", "/w/models", "/w", "/cfg.json") == [
        PY,
        "-m",
        "lstchain.tools.lstchain_dl1_to_dl2",
        "--input-files=/d/dl1.h5",
        "--path-models=/w/models",
        "--output-dir=/w",
        "--config=/cfg.json",
    ]
    assert steps.dl3_argv(PY, "/d/dl2.h5", "/irf/dir/irf.fits.gz", "/w", "Crab", 83.6329, 22.0145) == [
        PY,
        "-m",
        "lstchain.tools.lstchain_create_dl3_file",
        "--input-dl2=/d/dl2.h5",
        "--input-irf-path=/irf/dir",
        "--irf-file-pattern=irf.fits.gz",
        "--output-dl3-path=/w",
        "--source-name=Crab",
        "--source-ra=83.6329deg",
        "--source-dec=22.0145deg",
        "--overwrite",
    ]
    assert steps.dl3_index_argv(PY, "/w", "/w") == [
        PY,
        "-m",
        "lstchain.tools.lstchain_create_dl3_index_files",
        "--input-dl3-dir=/w",
        "--output-index-path=/w",
        "--file-pattern=dl3_*.fits*",
        "--overwrite",
    ]


def test_every_tool_is_a_module_of_lstchain() -> None:
    for name, module in steps.TOOLS.items():
        assert module.startswith("lstchain.") and module.endswith(name)


# ---------------------------------------------------------------------------------------- transformations
def test_r0_to_dl1_transformation(night: Production) -> None:
    t = night.transformation("r0_to_dl1")
    task = rendered(
        t,
        [r0(1807, 3)],
        ["/site/R0/20251120/LST-1.1.Run01807.0003.fits.fz"],
        drive_log="/site/DrivePosition_log_20251120.txt",
        run_summary="/site/RunSummary_20251120.ecsv",
        config="/mc/lstchain_config.json",
    )
    assert task.argv == [
        PY,
        "-m",
        "lstchain.scripts.lstchain_data_r0_to_dl1",
        "--input-file=/site/R0/20251120/LST-1.1.Run01807.0003.fits.fz",
        f"--output-dir={WORK}",
        "--pointing-file=/site/DrivePosition_log_20251120.txt",
        "--run-summary-path=/site/RunSummary_20251120.ecsv",
        "--config=/mc/lstchain_config.json",
    ]
    dl1, muons = task.outputs
    assert dl1.lfn == "lst-night/v1/DL1/20251120/dl1_LST-1.Run01807.0003.h5"
    assert muons.lfn == "lst-night/v1/muons/20251120/muons_LST-1.Run01807.0003.fits"
    assert dl1.metadata["data_level"] == "DL1" and dl1.metadata["subrun_id"] == 3
    assert "stream" not in dl1.metadata and dl1.metadata["mc_production"] == "toy-v1"
    assert need_texts(render_needs(t, [r0(1807, 3)])) == {
        "drive_log": "data_level = DRIVE_LOG and night = 2025-11-20",
        "run_summary": "data_level = RUN_SUMMARY and night = 2025-11-20",
        "config": "data_level = LSTCHAIN_CONFIG and mc_production = toy-v1",
    }
    # About 2.3 GB resident: the local backend must not start more than the memory admits.
    assert t.step.resources.memory_gb >= 2.5


def test_raw_r0_to_dl1_waits_for_the_nights_calibration(night: Production) -> None:
    t = night.transformation("r0_to_dl1_raw")
    raw = [r0(1808, 1, evb_preprocessing="NONE")]
    assert need_texts(render_needs(t, raw)) == {
        "drive_log": "data_level = DRIVE_LOG and night = 2025-11-20",
        "run_summary": "data_level = RUN_SUMMARY and night = 2025-11-20",
        "config": "data_level = LSTCHAIN_CONFIG and mc_production = toy-v1",
        "drs4": "data_level = DRS4_PEDESTAL and run_id = 1805",
        "calibration": "data_level = CALIBRATION and run_id = 1806",
    }
    needs = {
        "drive_log": "/d.txt",
        "run_summary": "/r.ecsv",
        "config": "/c.json",
        "drs4": "/cal/drs4_pedestal.Run01805.0000.h5",
        "calibration": "/cal/calibration_filters_52.Run01806.0000.h5",
    }
    task = rendered(t, raw, ["/r0/LST-1.1.Run01808.0001.fits.fz"], **needs)
    assert task.argv == [
        PY,
        "-m",
        "lstchain.scripts.lstchain_data_r0_to_dl1",
        "--input-file=/r0/LST-1.1.Run01808.0001.fits.fz",
        f"--output-dir={WORK}",
        "--pointing-file=/d.txt",
        "--run-summary-path=/r.ecsv",
        "--config=/c.json",
        "--pedestal-file=/cal/drs4_pedestal.Run01805.0000.h5",
        "--calibration-file=/cal/calibration_filters_52.Run01806.0000.h5",
    ]
    assert task.outputs[0].file_name == "dl1_LST-1.Run01808.0001.h5"
    # Both modes feed the same run-wise merge.
    assert set(night.transformation("merge_dl1").input.parents) == {"r0_to_dl1", "r0_to_dl1_raw"}


def test_calibration_transformations(night: Production) -> None:
    drs4 = rendered(night.transformation("drs4_pedestal"), [r0(1805, 0, "DRS4")], ["/r0/drs4.fits.fz"])
    assert drs4.argv == [
        PY,
        "-m",
        "lstchain.tools.lstchain_create_drs4_pedestal_file",
        "--input=/r0/drs4.fits.fz",
        f"--output={WORK}/drs4_pedestal.Run01805.0000.h5",
        "--overwrite",
    ]
    assert drs4.outputs[0].metadata["data_level"] == "DRS4_PEDESTAL"
    t = night.transformation("calibration")
    pedcal = [r0(1806, 0, "PEDCALIB", calibration_sample_size=50)]
    assert need_texts(render_needs(t, pedcal)) == {"drs4": "data_level = DRS4_PEDESTAL and run_id = 1805"}
    calib = rendered(t, pedcal, ["/r0/pedcal.fits.fz"], drs4="/store/drs4_pedestal.Run01805.0000.h5")
    assert calib.argv == [
        PY,
        "-m",
        "osa_grid.steps.lstchain",
        f"--workdir={WORK}",
        "calibration",
        "--drs4=/store/drs4_pedestal.Run01805.0000.h5",
        f"--output={WORK}/calibration_filters_52.Run01806.0000.h5",
        "--sample-size=50",
        "/r0/pedcal.fits.fz",
    ]
    assert calib.outputs[0].lfn == "lst-night/v1/calibration/20251120/calibration_filters_52.Run01806.0000.h5"


def test_run_wise_transformations(night: Production) -> None:
    dl1 = [
        FileRecord(i, steps.dl1_subrun_name(1807, i), {**r0(1807, i).metadata, "data_level": "DL1"})
        for i in range(3)
    ]
    merge = rendered(night.transformation("merge_dl1"), dl1, ["/s/a.h5", "/s/b.h5", "/s/c.h5"])
    assert merge.argv == [
        PY,
        "-m",
        "osa_grid.steps.lstchain",
        f"--workdir={WORK}",
        "merge",
        "--run-id=1807",
        f"--output={WORK}/dl1_LST-1.Run01807.h5",
        "/s/a.h5",
        "/s/b.h5",
        "/s/c.h5",
    ]
    run = [FileRecord(9, "dl1_LST-1.Run01807.h5", {**merge.outputs[0].metadata})]
    models = {name.removesuffix(".sav"): f"/m/{name}" for name in steps.MODEL_FILES}
    dl2 = rendered(night.transformation("dl1_to_dl2"), run, ["/s/dl1.h5"], config="/c.json", **models)
    assert dl2.argv == [
        PY,
        "-m",
        "osa_grid.steps.lstchain",
        f"--workdir={WORK}",
        "dl1-to-dl2",
        "--config=/c.json",
        "--model=/m/reg_energy.sav",
        "--model=/m/reg_disp_norm.sav",
        "--model=/m/cls_disp_sign.sav",
        "--model=/m/cls_gh.sav",
        "/s/dl1.h5",
    ]
    assert dl2.outputs[0].lfn == "lst-night/v1/DL2/20251120/dl2_LST-1.Run01807.h5"
    run2 = [FileRecord(10, "dl2_LST-1.Run01807.h5", {**dl2.outputs[0].metadata})]
    dl3 = rendered(night.transformation("dl3"), run2, ["/s/dl2.h5"], irf="/i/irf.fits.gz")
    assert dl3.argv == [
        PY,
        "-m",
        "osa_grid.steps.lstchain",
        f"--workdir={WORK}",
        "dl3",
        "--irf=/i/irf.fits.gz",
        "--source=Crab",
        "--ra=83.6329",
        "--dec=22.0145",
        "/s/dl2.h5",
    ]
    assert dl3.outputs[0].lfn == "lst-night/v1/DL3/20251120/dl3_LST-1.Run01807.fits"
    index = rendered(night.transformation("dl3_index"), run2, ["/s/dl3_1.fits"])
    assert [o.lfn for o in index.outputs] == [
        "lst-night/v1/DL3/20251120/hdu-index.fits.gz",
        "lst-night/v1/DL3/20251120/obs-index.fits.gz",
    ]


def test_mc_transformations(mc: Production) -> None:
    meta = {"data_level": "MC_R1", "mc_kind": "gamma_diffuse", "mc_run": 1, "mc_production": "toy-v1"}
    sim = [FileRecord(1, "MC/toy-v1/gamma_diffuse_run0001.h5", meta)]
    dl1 = rendered(mc.transformation("mc_r0_to_dl1"), sim, ["/mc/g.h5"], config="/c.json")
    assert dl1.argv == [
        PY,
        "-m",
        "lstchain.scripts.lstchain_mc_r0_to_dl1",
        "--input-file=/mc/g.h5",
        f"--output-dir={WORK}",
        "--config=/c.json",
    ]
    assert dl1.outputs[0].file_name == "dl1_gamma_diffuse_run0001.h5"
    train_inputs = [FileRecord(2, "dl1_gamma_diffuse_run0001.h5", dict(dl1.outputs[0].metadata))]
    train = rendered(
        mc.transformation("mc_train"), train_inputs, ["/s/g.h5"], proton="/s/p.h5", config="/c.json"
    )
    assert train.argv == [
        PY,
        "-m",
        "lstchain.scripts.lstchain_mc_trainpipe",
        "--input-file-gamma=/s/g.h5",
        "--input-file-proton=/s/p.h5",
        f"--output-dir={WORK}",
        "--config=/c.json",
    ]
    assert sorted(o.file_name for o in train.outputs) == sorted(steps.MODEL_FILES)
    point = [
        FileRecord(
            3, "dl2_gamma_point_run0001.h5", {**meta, "mc_kind": "gamma_point", "data_level": "MC_DL2"}
        )
    ]
    irf = rendered(mc.transformation("mc_irf"), point, ["/s/dl2.h5"])
    assert irf.argv == [
        PY,
        "-m",
        "lstchain.tools.lstchain_create_irf_files",
        "--input-gamma-dl2=/s/dl2.h5",
        f"--output-irf-file={WORK}/irf_point-like_toy-v1.fits.gz",
        "--point-like",
        "--gh-efficiency=0.7",
        "--theta-containment=0.7",
        "--overwrite",
    ]
    assert irf.outputs[0].metadata == {
        "mc_production": "toy-v1",
        "data_level": "IRF",
        "irf_type": "point-like",
        "production": "lst-night",
        "transformation": "mc_irf",
    }


def test_software_versions_go_into_provenance(night: Production, mc: Production) -> None:
    for production in (night, mc):
        for t in production.transformations:
            assert set(steps.SOFTWARE) <= set(t.step.software), t.name


# ---------------------------------------------------------------------------------------- glue
def test_glue_reports_the_tool_exit_code(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stopped:
        steps._run([sys.executable, "-c", "raise SystemExit(3)"], tmp_path)
    assert stopped.value.code == 3


def test_dl1_to_dl2_refuses_an_incomplete_model_set(tmp_path: Path) -> None:
    argv = [
        "--workdir",
        str(tmp_path),
        "dl1-to-dl2",
        "--config=/c.json",
        "--model=/m/cls_gh.sav",
        "/d/dl1.h5",
    ]
    with pytest.raises(SystemExit, match="expected the models"):
        steps.main(argv)


def test_dl3_index_links_then_removes_the_inputs(tmp_path: Path) -> None:
    """The index tool is replaced by a failing interpreter: the links must not outlive the step."""
    dl3 = tmp_path / "store" / "dl3_LST-1.Run01807.fits"
    dl3.parent.mkdir()
    dl3.write_text("x")
    work = tmp_path / "work"
    work.mkdir()
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\nexit 4\n")
    fake_python.chmod(0o755)
    with pytest.raises(SystemExit) as stopped:
        steps.main(["--python", str(fake_python), "--workdir", str(work), "dl3-index", str(dl3)])
    assert stopped.value.code == 4
    assert list(work.iterdir()) == []


# ---------------------------------------------------------------------------------------- gain selection,
# RunSummary, DL1ab, DL1 datacheck (and the nightly workflow that chains them)
@pytest.fixture(scope="module")
def nightly() -> Any:
    from osa_grid.services.productions import load_nightly_workflow

    return load_nightly_workflow(ROOT / "workflows" / "lst_nightly.yaml")


def nightly_task(workflow: Any, name: str, inputs: list[FileRecord], paths: list[str], **needs: str) -> Any:
    from osa_grid.core.nightly import parameters

    t = next(t for t in workflow.transformations if t.name == name)
    params = parameters(workflow, NIGHT)
    return render_task(
        "lst-nightly-20251120", t, "tid", inputs, paths, WORK, 1, t.step.resources, PY, needs, params
    )


def test_new_tool_builders() -> None:
    assert steps.r0_to_r0g_argv(PY, "/r0/LST-1.1.Run01808.0001.fits.fz", "/w", "/w/r0g.log") == [
        PY,
        "-c",
        "import sys; from lstchain.scripts.lstchain_r0_to_r0g import main; sys.exit(main())",
        "--R0-file=/r0/LST-1.1.Run01808.0001.fits.fz",
        "--output-dir=/w",
        "--log=/w/r0g.log",
    ]
    assert steps.run_summary_argv(PY, NIGHT, "/site/R0", "/w") == [
        PY,
        "-c",
        "import sys, lstchain.scripts.lstchain_create_run_summary as tool; "
        "tool.COUNTER_DEFAULTS['dragon_reference_counter'] = 0; sys.exit(tool.main())",
        "--date=20251120",
        "--r0-path=/site/R0",
        "--output-dir=/w",
        "--overwrite",
    ]
    assert steps.dl1ab_argv(PY, "/d/dl1.h5", "/w/dl1.h5", "/c.json") == [
        PY,
        "-m",
        "lstchain.scripts.lstchain_dl1ab",
        "--input-file=/d/dl1.h5",
        "--output-file=/w/dl1.h5",
        "--config=/c.json",
        "--no-pedestal-cleaning",
    ]
    assert (
        steps.dl1ab_argv(PY, "/d/dl1.h5", "/w/dl1.h5", "/c.json", pedestal_cleaning=True)[-1]
        == "--config=/c.json"
    )
    assert steps.check_dl1_argv(PY, "/w/inputs/datacheck_dl1_*.h5", "/w") == [
        PY,
        "-c",
        "import runpy; from astropy.utils import iers; iers.conf.auto_download = False; "
        "runpy.run_module('lstchain.scripts.lstchain_check_dl1', run_name='__main__', alter_sys=True)",
        "--input-file=/w/inputs/datacheck_dl1_*.h5",
        "--output-dir=/w",
        "--max-cores=1",
        "--batch",
        "--omit-pdf",
    ]
    assert steps.datacheck_dl1_subrun_name(1807, 3) == "datacheck_dl1_LST-1.Run01807.0003.h5"
    assert steps.datacheck_dl1_run_name(1807) == "datacheck_dl1_LST-1.Run01807.h5"
    assert steps.run_summary_name(NIGHT) == "RunSummary_20251120.ecsv"


def test_run_summary_transformation() -> None:
    production = load_production(ROOT / "workflows" / "lst_run_summary.yaml")
    t = production.transformation("run_summary")
    meta: dict[str, Any] = {"data_level": "R0", "night": NIGHT, "stream": 1, "subrun_id": 0}
    files = [FileRecord(i, f"R0/20251120/LST-1.1.Run0{r}.0000.fits.fz", {**meta, "run_id": r}) for i, r in
             enumerate((1805, 1807))]  # fmt: skip
    task = render_task("lst-run-summary", t, "tid", files, ["/s/a.fits.fz", "/s/b.fits.fz"], WORK, 1,
                       t.step.resources, PY, {})  # fmt: skip
    assert task.argv == [PY, "-m", "osa_grid.steps.lstchain", f"--workdir={WORK}", "run-summary",
                         "/s/a.fits.fz", "/s/b.fits.fz"]  # fmt: skip
    (summary,) = task.outputs
    assert summary.lfn == "lst-run-summary/v1/monitoring/RunSummary/RunSummary_20251120.ecsv"
    assert summary.metadata["data_level"] == "RUN_SUMMARY" and summary.metadata["night"] == NIGHT
    assert "run_id" not in summary.metadata


def test_nightly_gain_selection_and_dl1(nightly: Any) -> None:
    raw = [r0(1808, 1, evb_preprocessing="NONE")]
    gain = nightly_task(nightly, "gain_selection", raw, ["/site/R0/20251120/LST-1.1.Run01808.0001.fits.fz"])
    assert gain.argv == [
        PY,
        "-m",
        "osa_grid.steps.lstchain",
        f"--workdir={WORK}",
        "gain-selection",
        "--evb-preprocessing=NONE",
        "/site/R0/20251120/LST-1.1.Run01808.0001.fits.fz",
    ]
    assert [o.lfn for o in gain.outputs] == [
        f"R0G/20251120/LST-1.{s}.Run01808.0001.fits.fz" for s in range(1, 5)
    ]
    assert [(o.metadata["data_level"], o.metadata["stream"]) for o in gain.outputs] == [
        ("R0G", s) for s in range(1, 5)
    ]
    assert gain.outputs[0].metadata["source"] == "Crab" and gain.outputs[0].metadata["drs4_run"] == 1805
    r0g = [FileRecord(5, gain.outputs[0].lfn, dict(gain.outputs[0].metadata))]
    needs = {"drive_log": "/d.txt", "run_summary": "/r.ecsv", "config": "/c.json", "drs4": "/p.h5",
             "calibration": "/cal.h5"}  # fmt: skip
    dl1 = nightly_task(nightly, "r0g_to_dl1", r0g, ["/site/R0G/LST-1.1.Run01808.0001.fits.fz"], **needs)
    assert dl1.argv[3:] == [
        "--input-file=/site/R0G/LST-1.1.Run01808.0001.fits.fz",
        f"--output-dir={WORK}",
        "--pointing-file=/d.txt",
        "--run-summary-path=/r.ecsv",
        "--config=/c.json",
        "--pedestal-file=/p.h5",
        "--calibration-file=/cal.h5",
    ]
    assert [o.lfn for o in dl1.outputs] == [
        "DL1/20251120/v0.1/dl1_LST-1.Run01808.0001.h5",
        "DL1/20251120/v0.1/muons/muons_LST-1.Run01808.0001.fits",
    ]
    a = [FileRecord(6, dl1.outputs[0].lfn, dict(dl1.outputs[0].metadata))]
    dl1ab = nightly_task(nightly, "dl1ab", a, ["/s/dl1_LST-1.Run01808.0001.h5"], config="/c.json")
    assert dl1ab.argv == [
        PY,
        "-m",
        "lstchain.scripts.lstchain_dl1ab",
        "--input-file=/s/dl1_LST-1.Run01808.0001.h5",
        f"--output-file={WORK}/dl1_LST-1.Run01808.0001.h5",
        "--config=/c.json",
        "--no-pedestal-cleaning",
    ]
    assert dl1ab.outputs[0].lfn == "DL1/20251120/v0.1/tailcut84/dl1_LST-1.Run01808.0001.h5"
    assert dl1ab.outputs[0].metadata["data_level"] == "DL1AB"
    b = [FileRecord(7, dl1ab.outputs[0].lfn, dict(dl1ab.outputs[0].metadata))]
    check = nightly_task(nightly, "datacheck_dl1", b, ["/s/dl1ab.h5"])
    assert check.argv == [
        PY,
        "-m",
        "osa_grid.steps.lstchain",
        f"--workdir={WORK}",
        "check-dl1",
        f"--output={WORK}/datacheck_dl1_LST-1.Run01808.0001.h5",
        "/s/dl1ab.h5",
    ]
    assert (
        check.outputs[0].lfn == "DL1/20251120/v0.1/tailcut84/datacheck/datacheck_dl1_LST-1.Run01808.0001.h5"
    )
    subruns = [FileRecord(8 + i, f"x{i}", {**check.outputs[0].metadata, "subrun_id": i}) for i in range(3)]
    run = nightly_task(nightly, "datacheck_dl1_run", subruns, ["/s/a.h5", "/s/b.h5", "/s/c.h5"])
    assert run.argv[4:] == ["check-dl1", f"--output={WORK}/datacheck_dl1_LST-1.Run01808.h5",
                            f"--quality={WORK}/datacheck_dl1_LST-1.Run01808.quality.json",
                            f"--plot={WORK}/datacheck_dl1_LST-1.Run01808.png", "/s/a.h5", "/s/b.h5",
                            "/s/c.h5"]  # fmt: skip
    assert run.outputs[0].metadata["data_level"] == "DATACHECK_DL1_RUN"
    assert run.outputs[1].lfn == "DL1/20251120/v0.1/tailcut84/datacheck/datacheck_dl1_LST-1.Run01808.png"
    assert run.outputs[1].metadata["data_level"] == "DATACHECK_PLOT"
    muon_files = [
        FileRecord(20 + i, f"m{i}", {**r0(1808, i).metadata, "data_level": "MUONS"}) for i in range(3)
    ]
    muons = nightly_task(nightly, "merge_muons", muon_files, ["/m/a.fits", "/m/b.fits", "/m/c.fits"])
    assert muons.argv[4:] == ["merge-muons", "--run-id=1808", f"--output={WORK}/muons_LST-1.Run01808.fits",
                              f"--quality={WORK}/muons_LST-1.Run01808.quality.json", "/m/a.fits",
                              "/m/b.fits", "/m/c.fits"]  # fmt: skip
    assert muons.outputs[0].lfn == "DL1/20251120/v0.1/muons/muons_LST-1.Run01808.fits"
    assert steps.merge_muons_argv(PY, "/w/inputs", "/w/m.fits", 1808) == [
        PY,
        "-m",
        "lstchain.scripts.lstchain_merge_muon_files",
        "--input-dir=/w/inputs",
        "--output-file=/w/m.fits",
        "--run-number=1808",
        "--pattern=muons_*.fits",
    ]
    for name in ("gain_selection", "dl1ab", "datacheck_dl1", "datacheck_dl1_run"):
        t = next(t for t in nightly.transformations if t.name == name)
        assert set(steps.SOFTWARE) <= set(t.step.software) and t.step.resources.memory_gb <= 1.5


def test_nightly_routes_each_run_by_its_event_builder_mode(nightly: Any) -> None:
    from osa_grid.core import query as querylang

    def takers(metadata: Mapping[str, Any]) -> set[str]:
        return {
            t.name
            for t in nightly.transformations
            if querylang.evaluate(querylang.parse(t.input.query), metadata)
        }

    assert takers(r0(1807, 0).metadata) == {"r0_to_dl1"}  # calibrated to p.e. by the event builder
    assert takers(r0(1808, 0, evb_preprocessing="NONE").metadata) == {"gain_selection"}
    assert takers(r0(1809, 0, evb_preprocessing="GAIN_SELECTION").metadata) == {"gain_selection"}


def test_gain_selection_passes_gain_selected_data_through(tmp_path: Path) -> None:
    r0_dir = tmp_path / "R0"
    r0_dir.mkdir()
    for stream in range(1, 5):
        (r0_dir / steps.r0_file_name(stream, 1809, 2)).write_bytes(b"stream %d" % stream)
    work = tmp_path / "work"
    work.mkdir()
    first = r0_dir / steps.r0_file_name(1, 1809, 2)
    # A failing interpreter: lstchain must not be run on data gain-selected already.
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\nexit 4\n")
    fake_python.chmod(0o755)
    argv = ["--python", str(fake_python), "--workdir", str(work), "gain-selection"]
    steps.main([*argv, "--evb-preprocessing=GAIN_SELECTION", str(first)])
    assert sorted(p.name for p in work.iterdir()) == [steps.r0_file_name(s, 1809, 2) for s in range(1, 5)]
    assert (work / steps.r0_file_name(3, 1809, 2)).read_bytes() == b"stream 3"
    with pytest.raises(SystemExit) as stopped:
        steps.main([*argv, "--evb-preprocessing=NONE", str(first)])
    assert stopped.value.code == 4


# ------------------------------------------------------------------------------------ night-wise datacheck
def test_night_check_builder_and_inputs() -> None:
    assert steps.longterm_check_argv(PY, "/w/inputs", "/w/muons", "/w/DL1_datacheck_20251120.h5") == [
        PY,
        "-m",
        "lstchain.scripts.lstchain_longterm_dl1_check",
        "--input-dir=/w/inputs",
        "--muons-dir=/w/muons",
        "--output-file=/w/DL1_datacheck_20251120.h5",
        "--batch",
    ]
    assert steps.datacheck_dl1_night_name(NIGHT) == "DL1_datacheck_20251120.h5"
    run_checks = ["/d/datacheck_dl1_LST-1.Run01808.h5", "/d/datacheck_dl1_LST-1.Run01807.h5"]
    muons = ["/m/muons_LST-1.Run01807.0001.fits", "/m/muons_LST-1.Run01807.0000.fits"]
    assert steps.split_night_inputs([*muons, *run_checks]) == (sorted(run_checks), sorted(muons))
    # A sub-run datacheck or a merged muon file would be skipped by lstchain's globs without a word.
    for stray in ("/d/datacheck_dl1_LST-1.Run01807.0000.h5", "/m/muons_LST-1.Run01807.fits"):
        with pytest.raises(ValueError, match="not a run-wise datacheck"):
            steps.split_night_inputs([*run_checks, stray])
    with pytest.raises(ValueError, match="no run-wise datacheck"):
        steps.split_night_inputs(muons)


def test_nightly_night_wise_datacheck(nightly: Any) -> None:
    t = next(t for t in nightly.transformations if t.name == "datacheck_dl1_night")
    # The night's run datachecks and sub-run muon files, once nothing upstream can add one.
    assert t.grouping.mode == "all" and t.grouping.flush_policy == "when_upstream_done"
    assert set(t.input.parents) == {"datacheck_dl1_run", "r0_to_dl1", "r0g_to_dl1"}
    files = [
        FileRecord(1, "a", {**r0(1807, 0).metadata, "data_level": "DATACHECK_DL1_RUN"}),
        FileRecord(2, "b", {**r0(1808, 0).metadata, "data_level": "DATACHECK_DL1_RUN"}),
        FileRecord(3, "c", {**r0(1808, 0).metadata, "data_level": "MUONS"}),
    ]
    task = nightly_task(nightly, "datacheck_dl1_night", files, ["/s/a.h5", "/s/b.h5", "/s/c.fits"])
    assert task.argv[4:] == ["night-check", f"--output={WORK}/DL1_datacheck_20251120.h5",
                             f"--page={WORK}/DL1_datacheck_20251120.html", "/s/a.h5", "/s/b.h5",
                             "/s/c.fits"]  # fmt: skip
    # Next to the run datachecks, the night only in the metadata (no run of its own).
    assert [(o.lfn, o.metadata["data_level"], o.verify) for o in task.outputs] == [
        ("DL1/20251120/v0.1/tailcut84/datacheck/DL1_datacheck_20251120.h5", "DATACHECK_DL1_NIGHT", "hdf5"),
        (
            "DL1/20251120/v0.1/tailcut84/datacheck/DL1_datacheck_20251120.html",
            "DATACHECK_DL1_NIGHT_PAGE",
            None,
        ),
    ]
    assert all(o.metadata["night"] == NIGHT and "run_id" not in o.metadata for o in task.outputs)
    published = nightly.publish[0].query
    assert "DATACHECK_DL1_NIGHT" in published and "DATACHECK_DL1_NIGHT_PAGE" in published


def fake_longterm_tool(tmp_path: Path, writes: bool) -> Path:
    """An interpreter standing in for lstchain_longterm_dl1_check: it lists the directories it is given and
    writes the three files next to --output-file (or nothing)."""
    script = tmp_path / "python"
    body = (
        'for a in "$@"; do case "$a" in --input-dir=*) ls "${a#*=}" > seen_inputs;; '
        '--muons-dir=*) ls "${a#*=}" > seen_muons;; --output-file=*) out="${a#*=}";; esac; done\n'
    )
    if writes:
        body += (
            'echo h5 > "$out"; echo html > "${out%.h5}.html"; echo "Run 1807: low rate" > "${out%.h5}.log"\n'
        )
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return script


def test_night_check_links_inputs_and_collects_the_page(tmp_path: Path, capsys: Any) -> None:
    data = tmp_path / "data"
    data.mkdir()
    names = [
        "datacheck_dl1_LST-1.Run01807.h5",
        "datacheck_dl1_LST-1.Run01808.h5",
        "muons_LST-1.Run01807.0000.fits",
    ]
    for name in names:
        (data / name).write_text(name)
    work = tmp_path / "work"
    work.mkdir()
    output, page = work / "DL1_datacheck_20251120.h5", work / "night.html"
    python = fake_longterm_tool(tmp_path, writes=True)
    argv = ["--python", str(python), "--workdir", str(work), "night-check", f"--output={output}"]
    steps.main([*argv, f"--page={page}", *(str(data / n) for n in names)])
    assert (work / "seen_inputs").read_text().split() == names[:2]
    assert (work / "seen_muons").read_text().split() == names[2:]
    assert output.read_text() == "h5\n" and page.read_text() == "html\n"
    assert "Run 1807: low rate" in capsys.readouterr().out  # lstchain's warnings land in the task's log
    python = fake_longterm_tool(tmp_path, writes=False)
    output.unlink()
    with pytest.raises(SystemExit) as stopped:
        steps.main(["--python", str(python), *argv[2:], f"--page={page}", str(data / names[0])])
    assert stopped.value.code == 1
    with pytest.raises(SystemExit, match="no run-wise datacheck"):
        steps.main([*argv, f"--page={page}", str(data / names[2])])
