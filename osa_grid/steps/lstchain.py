"""lstchain tools as osa-grid steps: output names, argv builders and the glue some tools need.

Most lstchain tools are called directly by the transformations in ``transformations/lst_*.yaml`` (their argv
is the YAML template, rendered by osa-grid and recorded in the provenance). A few need glue that a
template cannot express; they run through this module, which builds the exact lstchain command with the
pure functions below, runs it, and leaves the outputs where osa-grid expects them:

    gain-selection  a raw sub-run (four streams) -> its gain-selected copy; data the event builder
                  gain-selected already pass through unchanged (lstchain_r0_to_r0g refuses one-gain data)
    run-summary   a night's R0 files -> the night's RunSummary (lstchain reads the whole R0 directory)
    calibration   PEDCALIB run + the night's DRS4 pedestal -> calibration file (lstchain's onsite
                  configuration found in the job's own lstchain installation)
    check-dl1     DL1 sub-run files -> their datacheck file; a run's sub-run datacheck files -> the
                  run-wise one (lstchain reads a file pattern and writes next to its first input)
    night-check   a night's run-wise datacheck files (and sub-run muon files) -> the night-wise
                  datacheck and its web page (lstchain reads whole directories)
    merge         a run's sub-run DL1 files -> one run-wise DL1 file (lstchain wants a directory)
    dl1-to-dl2    DL1 + the four model files -> DL2 (lstchain wants the models in one directory)
    dl3           DL2 + an IRF file -> DL3 (lstchain wants an IRF directory and a file pattern)
    dl3-index     a night's DL3 files -> hdu-index / obs-index (paths relative to the DL3 directory)

Run ``python -m osa_grid.steps.lstchain --help``. Nothing here imports lstchain: the tools run as
subprocesses of the interpreter given by ``--python`` (default: this one).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path

# Python distributions whose versions go into the provenance of every lstchain step.
SOFTWARE = ("lstchain", "ctapipe", "ctapipe_io_lst")

# Tool name -> module run with ``python -m`` (the console scripts may not be on PATH in a job).
TOOLS = {
    "lstchain_create_drs4_pedestal_file": "lstchain.tools.lstchain_create_drs4_pedestal_file",
    "lstchain_create_calibration_file": "lstchain.tools.lstchain_create_calibration_file",
    "lstchain_create_run_summary": "lstchain.scripts.lstchain_create_run_summary",
    "lstchain_r0_to_r0g": "lstchain.scripts.lstchain_r0_to_r0g",
    "lstchain_dl1ab": "lstchain.scripts.lstchain_dl1ab",
    "lstchain_check_dl1": "lstchain.scripts.lstchain_check_dl1",
    "lstchain_data_r0_to_dl1": "lstchain.scripts.lstchain_data_r0_to_dl1",
    "lstchain_merge_hdf5_files": "lstchain.scripts.lstchain_merge_hdf5_files",
    "lstchain_merge_muon_files": "lstchain.scripts.lstchain_merge_muon_files",
    "lstchain_longterm_dl1_check": "lstchain.scripts.lstchain_longterm_dl1_check",
    "lstchain_dl1_to_dl2": "lstchain.tools.lstchain_dl1_to_dl2",
    "lstchain_mc_r0_to_dl1": "lstchain.scripts.lstchain_mc_r0_to_dl1",
    "lstchain_mc_trainpipe": "lstchain.scripts.lstchain_mc_trainpipe",
    "lstchain_create_irf_files": "lstchain.tools.lstchain_create_irf_files",
    "lstchain_create_dl3_file": "lstchain.tools.lstchain_create_dl3_file",
    "lstchain_create_dl3_index_files": "lstchain.tools.lstchain_create_dl3_index_files",
}

# The four models lstchain_mc_trainpipe writes with the standard ``disp_method: disp_norm_sign``.
MODEL_FILES = ("reg_energy.sav", "reg_disp_norm.sav", "cls_disp_sign.sav", "cls_gh.sav")
# LST-1's calibration event selection needs a few hundred events of each kind; small synthetic runs
# have fewer, so the statistics per calibration sample are an argument (default: LST-1's onsite value).
DEFAULT_CALIBRATION_SAMPLE = 2500

_R0 = re.compile(r"^LST-1\.(?P<stream>\d)\.Run(?P<run>\d{5})\.(?P<subrun>\d{4})\.fits\.fz$")
# What lstchain_longterm_dl1_check reads: the run-wise datachecks (its own glob, Run?????) and the sub-run
# muon files it looks up by run and sub-run.
_RUN_DATACHECK = re.compile(r"^datacheck_dl1_LST-1\.Run\d{5}\.h5$")
_SUBRUN_MUONS = re.compile(r"^muons_LST-1\.Run\d{5}\.\d{4}\.fits$")


# ------------------------------------------------------------------------------------------ names
def r0_file_name(stream: int, run_id: int, subrun_id: int) -> str:
    return f"LST-1.{stream}.Run{run_id:05d}.{subrun_id:04d}.fits.fz"


def dl1_subrun_name(run_id: int, subrun_id: int) -> str:
    return f"dl1_LST-1.Run{run_id:05d}.{subrun_id:04d}.h5"


def muons_subrun_name(run_id: int, subrun_id: int) -> str:
    return f"muons_LST-1.Run{run_id:05d}.{subrun_id:04d}.fits"


def dl1_run_name(run_id: int) -> str:
    return f"dl1_LST-1.Run{run_id:05d}.h5"


def dl2_run_name(run_id: int) -> str:
    return f"dl2_LST-1.Run{run_id:05d}.h5"


def dl3_run_name(run_id: int) -> str:
    return f"dl3_LST-1.Run{run_id:05d}.fits"


def drs4_pedestal_name(run_id: int) -> str:
    return f"drs4_pedestal.Run{run_id:05d}.0000.h5"


def calibration_name(run_id: int) -> str:
    return f"calibration_filters_52.Run{run_id:05d}.0000.h5"


def datacheck_dl1_subrun_name(run_id: int, subrun_id: int) -> str:
    return f"datacheck_dl1_LST-1.Run{run_id:05d}.{subrun_id:04d}.h5"


def datacheck_dl1_run_name(run_id: int) -> str:
    return f"datacheck_dl1_LST-1.Run{run_id:05d}.h5"


def datacheck_dl1_night_name(night: date) -> str:
    return f"DL1_datacheck_{night:%Y%m%d}.h5"


def run_summary_name(night: date) -> str:
    return f"RunSummary_{night:%Y%m%d}.ecsv"


def parse_r0_name(name: str) -> tuple[int, int, int]:
    """(stream, run_id, subrun_id) of an R0 file name; ValueError for anything else."""
    match = _R0.match(name)
    if match is None:
        raise ValueError(f"{name!r} is not an LST-1 R0 file name (LST-1.S.RunNNNNN.SSSS.fits.fz)")
    return int(match["stream"]), int(match["run"]), int(match["subrun"])


# ------------------------------------------------------------------------------------------ argv builders
def tool(python: str, name: str) -> list[str]:
    """The argv prefix that runs an lstchain tool with a given interpreter."""
    return [python, "-m", TOOLS[name]]


def script(python: str, name: str) -> list[str]:
    """The argv prefix for an lstchain script without a ``__main__`` guard (``python -m`` would run nothing:
    lstchain_r0_to_r0g 0.12.3 exits 0 having written nothing): its ``main()`` is called."""
    return [python, "-c", f"import sys; from {TOOLS[name]} import main; sys.exit(main())"]


def drs4_pedestal_argv(python: str, r0_file: str, output: str, max_events: int | None = None) -> list[str]:
    argv = [*tool(python, "lstchain_create_drs4_pedestal_file"), f"--input={r0_file}", f"--output={output}"]
    if max_events is not None:
        argv.append(f"--max-events={max_events}")
    return [*argv, "--overwrite"]


def r0_to_r0g_argv(python: str, r0_file: str, output_dir: str, log_file: str) -> list[str]:
    """Gain selection of one sub-run: lstchain reads the four streams next to ``r0_file``."""
    return [
        *script(python, "lstchain_r0_to_r0g"),
        f"--R0-file={r0_file}",
        f"--output-dir={output_dir}",
        f"--log={log_file}",
    ]


# lstchain 0.12.3 fills the counters of CTA R1 data (LST-1's format since 2024) with -1, which numpy 2 refuses
# to put in the uint64 column dragon_reference_counter: the tool fails on every night. Its own module is run
# with that one default set to 0 (what lstchain wrote with numpy 1: the counters are unused for R1 data).
RUN_SUMMARY_NUMPY2_FIX = (
    "import sys, lstchain.scripts.lstchain_create_run_summary as tool; "
    "tool.COUNTER_DEFAULTS['dragon_reference_counter'] = 0; sys.exit(tool.main())"
)


def run_summary_argv(python: str, night: date, r0_root: str, output_dir: str) -> list[str]:
    """The RunSummary of ``night`` from ``r0_root/YYYYMMDD``; run types come from the TCU database when
    lstchain reaches it, else are guessed from the first 500 events of each run."""
    return [
        python,
        "-c",
        RUN_SUMMARY_NUMPY2_FIX,
        f"--date={night:%Y%m%d}",
        f"--r0-path={r0_root}",
        f"--output-dir={output_dir}",
        "--overwrite",
    ]


def dl1ab_argv(python: str, dl1: str, output: str, config: str, pedestal_cleaning: bool = False) -> list[str]:
    """DL1a -> DL1b again with the analysis configuration's cleaning (images kept for the datacheck).

    Pedestal cleaning is off by default: on data calibrated to p.e. by the event builder lstchain's
    thresholds from the interleaved pedestals are not usable (docs/payload.md).
    """
    argv = [
        *tool(python, "lstchain_dl1ab"),
        f"--input-file={dl1}",
        f"--output-file={output}",
        f"--config={config}",
    ]
    return argv if pedestal_cleaning else [*argv, "--no-pedestal-cleaning"]


# lstchain_check_dl1 places the bright stars near each pixel, once per event type: each time astropy tries to
# download the IERS-A table, fails without network and falls back to its bundled IERS-B (16 attempts, 40 of a
# sub-run's 60 s). The tool's module is run with the download off: the same bundled table, the same output.
CHECK_DL1_OFFLINE_IERS = (
    "import runpy; from astropy.utils import iers; iers.conf.auto_download = False; "
    f"runpy.run_module('{TOOLS['lstchain_check_dl1']}', run_name='__main__', alter_sys=True)"
)


def check_dl1_argv(python: str, input_pattern: str, output_dir: str) -> list[str]:
    """lstchain_check_dl1 in batch mode without the PDF (the plots take over a minute): the HDF5 only.

    One process: the step declares one core (lstchain would otherwise start four). astropy's IERS
    auto-download is off (``CHECK_DL1_OFFLINE_IERS``).
    """
    return [
        python,
        "-c",
        CHECK_DL1_OFFLINE_IERS,
        f"--input-file={input_pattern}",
        f"--output-dir={output_dir}",
        "--max-cores=1",
        "--batch",
        "--omit-pdf",
    ]


def longterm_check_argv(python: str, input_dir: str, muons_dir: str, output: str) -> list[str]:
    """The night-wise datacheck over every run-wise datacheck of ``input_dir``; lstchain also writes the web
    page (``.html``) and its warnings (``.log``) next to ``output``. Batch mode: no browser is opened."""
    return [
        *tool(python, "lstchain_longterm_dl1_check"),
        f"--input-dir={input_dir}",
        f"--muons-dir={muons_dir}",
        f"--output-file={output}",
        "--batch",
    ]


def split_night_inputs(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(run-wise datacheck files, sub-run muon files) of a night-wise check's inputs, sorted; ValueError for
    anything else, or no run datacheck: lstchain would skip a misnamed file without a word."""
    datachecks = sorted(n for n in names if _RUN_DATACHECK.match(Path(n).name))
    muons = sorted(n for n in names if _SUBRUN_MUONS.match(Path(n).name))
    others = sorted(set(names) - set(datachecks) - set(muons))
    if others:
        raise ValueError(f"not a run-wise datacheck nor a sub-run muon file: {', '.join(others)}")
    if not datachecks:
        raise ValueError("no run-wise datacheck file (datacheck_dl1_LST-1.RunNNNNN.h5) among the inputs")
    return datachecks, muons


def calibration_argv(
    python: str,
    r0_file: str,
    drs4_pedestal: str,
    output: str,
    config: str,
    sample_size: int = DEFAULT_CALIBRATION_SAMPLE,
    events_to_skip: int = 0,
) -> list[str]:
    return [
        *tool(python, "lstchain_create_calibration_file"),
        f"--input_file={r0_file}",
        f"--output_file={output}",
        f"--pedestal_file={drs4_pedestal}",
        f"--config={config}",
        f"--events_to_skip={events_to_skip}",
        f"--FlatFieldCalculator.sample_size={sample_size}",
        f"--PedestalCalculator.sample_size={sample_size}",
    ]


def merge_argv(python: str, input_dir: str, output: str, run_id: int | None = None) -> list[str]:
    argv = [
        *tool(python, "lstchain_merge_hdf5_files"),
        f"--input-dir={input_dir}",
        f"--output-file={output}",
        "--no-image",
        "--no-progress",
    ]
    if run_id is not None:
        argv.append(f"--run-number={run_id}")
    return argv


def merge_muons_argv(python: str, input_dir: str, output: str, run_id: int) -> list[str]:
    return [
        *tool(python, "lstchain_merge_muon_files"),
        f"--input-dir={input_dir}",
        f"--output-file={output}",
        f"--run-number={run_id}",
        "--pattern=muons_*.fits",
    ]


def dl1_to_dl2_argv(python: str, dl1: str, models_dir: str, output_dir: str, config: str) -> list[str]:
    return [
        *tool(python, "lstchain_dl1_to_dl2"),
        f"--input-files={dl1}",
        f"--path-models={models_dir}",
        f"--output-dir={output_dir}",
        f"--config={config}",
    ]


def dl3_argv(
    python: str, dl2: str, irf: str, output_dir: str, source: str, ra_deg: float, dec_deg: float
) -> list[str]:
    irf_path = Path(irf)
    return [
        *tool(python, "lstchain_create_dl3_file"),
        f"--input-dl2={dl2}",
        f"--input-irf-path={irf_path.parent}",
        f"--irf-file-pattern={irf_path.name}",
        f"--output-dl3-path={output_dir}",
        f"--source-name={source}",
        f"--source-ra={ra_deg}deg",
        f"--source-dec={dec_deg}deg",
        "--overwrite",
    ]


def dl3_index_argv(python: str, dl3_dir: str, output_dir: str) -> list[str]:
    return [
        *tool(python, "lstchain_create_dl3_index_files"),
        f"--input-dl3-dir={dl3_dir}",
        f"--output-index-path={output_dir}",
        "--file-pattern=dl3_*.fits*",
        "--overwrite",
    ]


# ------------------------------------------------------------------------------------------ glue
def _run(argv: Sequence[str], cwd: Path) -> None:
    """Run one tool (its output goes to the task's logs); a failure ends this step with its exit code."""
    print("+ " + " ".join(argv), flush=True)
    code = subprocess.run(list(argv), cwd=cwd, check=False).returncode
    if code != 0:
        print(
            f"{Path(argv[2] if len(argv) > 2 else argv[0]).name} failed with exit code {code}",
            file=sys.stderr,
        )
        raise SystemExit(code if 0 < code < 256 else 1)


def _link_into(directory: Path, files: Sequence[str]) -> Path:
    """Symbolic links to ``files`` in a fresh ``directory`` (for tools that read a whole directory)."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    for name in files:
        source = Path(name).resolve()
        (directory / source.name).symlink_to(source)
    return directory


def _require(path: Path, what: str) -> None:
    if not path.is_file() or path.stat().st_size == 0:
        print(f"{what}: {path} was not written", file=sys.stderr)
        raise SystemExit(1)


def onsite_calibration_config() -> str:
    """The camera calibration configuration LST-1 uses onsite, from the lstchain installed here."""
    from importlib.resources import files

    return str(files("lstchain") / "data" / "onsite_camera_calibration_param.json")


def gain_selection(args: argparse.Namespace) -> None:
    """Raw two-gain data go through lstchain_r0_to_r0g; data the event builder gain-selected already are
    linked (or copied) unchanged, so every data run has its R0G files whatever its mode."""
    work = Path(args.workdir)
    stream, run_id, subrun_id = parse_r0_name(Path(args.input).name)
    if stream != 1:
        raise SystemExit(f"gain-selection: give the stream-1 file of the sub-run, not {args.input}")
    sources = [Path(args.input).parent / r0_file_name(s, run_id, subrun_id) for s in range(1, 5)]
    targets = [work / source.name for source in sources]
    if args.evb_preprocessing == "NONE":
        log = work / f"R0_to_R0g_Run{run_id:05d}.{subrun_id:04d}.log"
        _run(r0_to_r0g_argv(args.python, args.input, str(work), str(log)), work)
    else:
        print(f"run {run_id}: gain-selected by the event builder ({args.evb_preprocessing}): passed through")
        for source, target in zip(sources, targets, strict=True):
            _require(source, "R0 stream")
            target.unlink(missing_ok=True)
            try:
                os.link(source, target)
            except OSError:  # another file system: a copy
                shutil.copy2(source, target)
    for target in targets:
        _require(target, "gain-selected stream")


def run_summary(args: argparse.Namespace) -> None:
    """The night's RunSummary from the R0 directory holding ``inputs`` (``<r0 root>/YYYYMMDD/``)."""
    directories = {Path(name).resolve().parent for name in args.inputs}
    if len(directories) != 1:
        raise SystemExit(f"run-summary: the R0 files are in {len(directories)} directories, expected one")
    (night_dir,) = directories
    night = date(int(night_dir.name[:4]), int(night_dir.name[4:6]), int(night_dir.name[6:8]))
    work = Path(args.workdir)
    _run(run_summary_argv(args.python, night, str(night_dir.parent), str(work)), work)
    _require(work / run_summary_name(night), "RunSummary")


def check_dl1(args: argparse.Namespace) -> None:
    """One DL1 file -> its sub-run datacheck; several sub-run datacheck files -> the run's datacheck."""
    work = Path(args.workdir)
    if len(args.inputs) == 1 and Path(args.inputs[0]).name.startswith("dl1_"):
        _run(check_dl1_argv(args.python, args.inputs[0], str(work)), work)
        _require(Path(args.output), "DL1 datacheck")
        return
    names = [Path(name).name for name in args.inputs]
    if not all(name.startswith("datacheck_dl1_") for name in names):
        raise SystemExit("check-dl1: expected one DL1 file or a run's datacheck_dl1_* sub-run files")
    if len(args.inputs) == 1:
        # lstchain merges only two files or more; a one-sub-run run's datacheck is its sub-run's.
        shutil.copy2(args.inputs[0], args.output)
    else:
        # lstchain writes the merged file next to the first input: links in a directory of our own.
        inputs = _link_into(work / "inputs", args.inputs)
        _run(check_dl1_argv(args.python, str(inputs / "datacheck_dl1_*.h5"), str(work)), work)
        shutil.move(inputs / Path(args.output).name, args.output)
    _require(Path(args.output), "run-wise DL1 datacheck")
    _run_quality(Path(args.output), args.quality, args.plot)


def _run_quality(run_datacheck: Path, quality: str | None, plot: str | None) -> None:
    """The run's quality figures (the output's metadata file) and its datacheck plot."""
    from osa_grid.steps import datacheck

    try:
        if quality:
            datacheck.write_figures(Path(quality), datacheck.run_figures(run_datacheck))
        if plot:
            datacheck.plot_run(run_datacheck, Path(plot), f"DL1 datacheck, {run_datacheck.stem}")
    except datacheck.DatacheckError as exc:
        raise SystemExit(f"check-dl1: {exc}") from None


def night_check(args: argparse.Namespace) -> None:
    """The night's run-wise datachecks and muon files -> the night-wise datacheck (HDF5) and its web page."""
    try:
        datachecks, muons = split_night_inputs(args.inputs)
    except ValueError as exc:
        raise SystemExit(f"night-check: {exc}") from None
    work = Path(args.workdir)
    inputs = _link_into(work / "inputs", datachecks)
    muons_dir = _link_into(work / "muons", muons)
    output = Path(args.output)
    _run(longterm_check_argv(args.python, str(inputs), str(muons_dir), str(output)), work)
    _require(output, "night-wise DL1 datacheck")
    written = output.with_suffix(".html")
    _require(written, "night-wise DL1 datacheck page")
    if written != Path(args.page):
        shutil.move(written, args.page)
    warnings = output.with_suffix(".log")
    if warnings.is_file():  # lstchain's list of values beyond their limits: kept in the task's log
        print(warnings.read_text(), end="")


def merge_muons(args: argparse.Namespace) -> None:
    """A run's sub-run muon-ring files -> one run-wise file, and the run's muon figures."""
    from osa_grid.steps import datacheck

    work = Path(args.workdir)
    inputs = _link_into(work / "inputs", args.inputs)
    Path(args.output).unlink(missing_ok=True)  # the tool refuses to overwrite (a retried attempt)
    _run(merge_muons_argv(args.python, str(inputs), args.output, args.run_id), work)
    _require(Path(args.output), "merged muon rings")
    if args.quality:
        datacheck.write_figures(Path(args.quality), datacheck.muon_figures(Path(args.output)))


def calibration(args: argparse.Namespace) -> None:
    work = Path(args.workdir)
    config = args.config or onsite_calibration_config()
    _run(
        calibration_argv(args.python, args.input, args.drs4, args.output, config, args.sample_size),
        work,
    )
    _require(Path(args.output), "calibration file")


def merge(args: argparse.Namespace) -> None:
    work = Path(args.workdir)
    inputs = _link_into(work / "inputs", args.inputs)
    _run(merge_argv(args.python, str(inputs), args.output, args.run_id), work)
    _require(Path(args.output), "merged DL1")


def dl1_to_dl2(args: argparse.Namespace) -> None:
    names = sorted(Path(m).name for m in args.model)
    if names != sorted(MODEL_FILES):
        raise SystemExit(f"dl1-to-dl2: expected the models {', '.join(MODEL_FILES)}, got {', '.join(names)}")
    work = Path(args.workdir)
    models = _link_into(work / "models", args.model)
    _run(dl1_to_dl2_argv(args.python, args.input, str(models), str(work), args.config), work)
    _require(work / Path(args.input).name.replace("dl1_", "dl2_", 1), "DL2")


def dl3(args: argparse.Namespace) -> None:
    work = Path(args.workdir)
    _run(dl3_argv(args.python, args.input, args.irf, str(work), args.source, args.ra, args.dec), work)
    dl3_name = Path(args.input).name.replace("dl2_", "dl3_", 1).removesuffix(".h5") + ".fits"
    _require(work / dl3_name, "DL3")


def dl3_index(args: argparse.Namespace) -> None:
    """Index files next to links to the DL3 files, so their paths are relative to the DL3 directory."""
    work = Path(args.workdir)
    links = [work / Path(name).name for name in args.inputs]
    for link, name in zip(links, args.inputs, strict=True):
        link.unlink(missing_ok=True)
        link.symlink_to(Path(name).resolve())
    try:
        _run(dl3_index_argv(args.python, str(work), str(work)), work)
    finally:
        for link in links:
            link.unlink(missing_ok=True)
    for index in ("hdu-index.fits.gz", "obs-index.fits.gz"):
        _require(work / index, "DL3 index")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m osa_grid.steps.lstchain", description=__doc__.split("\n\n")[0]
    )
    top.add_argument("--python", default=sys.executable, help="interpreter that runs the lstchain tools")
    top.add_argument("--workdir", default=".", help="the task's work directory")
    sub = top.add_subparsers(dest="command", required=True)

    gain = sub.add_parser("gain-selection", help="raw sub-run -> gain-selected (written in --workdir)")
    gain.add_argument(
        "--evb-preprocessing", required=True, help="the run's RunSummary value: NONE = raw two-gain data"
    )
    gain.add_argument("input", help="the sub-run's stream-1 R0 file (the other streams are next to it)")
    gain.set_defaults(func=gain_selection)

    summary = sub.add_parser("run-summary", help="a night's R0 files -> its RunSummary (in --workdir)")
    summary.add_argument("inputs", nargs="+", help="R0 files of the night (their directory is read)")
    summary.set_defaults(func=run_summary)

    check = sub.add_parser("check-dl1", help="DL1 -> datacheck; sub-run datachecks -> the run's")
    check.add_argument("--output", required=True, help="the datacheck file lstchain writes")
    check.add_argument("--quality", default=None, help="run-wise: write the run's figures here (JSON)")
    check.add_argument("--plot", default=None, help="run-wise: write the run's datacheck plot here (PNG)")
    check.add_argument("inputs", nargs="+")
    check.set_defaults(func=check_dl1)

    night = sub.add_parser("night-check", help="a night's run datachecks (+ muon files) -> night-wise check")
    night.add_argument("--output", required=True, help="the night-wise datacheck (HDF5)")
    night.add_argument("--page", required=True, help="its web page (HTML)")
    night.add_argument("inputs", nargs="+", help="run-wise datacheck files and sub-run muon files")
    night.set_defaults(func=night_check)

    muons = sub.add_parser("merge-muons", help="a run's sub-run muon files -> one file + muon figures")
    muons.add_argument("--run-id", type=int, required=True)
    muons.add_argument("--output", required=True)
    muons.add_argument("--quality", default=None, help="write the run's muon figures here (JSON)")
    muons.add_argument("inputs", nargs="+")
    muons.set_defaults(func=merge_muons)

    calib = sub.add_parser("calibration", help="PEDCALIB run + DRS4 pedestal -> calibration file")
    calib.add_argument("--drs4", required=True, help="the night's DRS4 pedestal file")
    calib.add_argument("--output", required=True)
    calib.add_argument("--config", default=None, help="default: lstchain's onsite calibration configuration")
    calib.add_argument("--sample-size", type=int, default=DEFAULT_CALIBRATION_SAMPLE)
    calib.add_argument("input", help="the PEDCALIB run's R0 file (stream 1, sub-run 0)")
    calib.set_defaults(func=calibration)

    merge_cmd = sub.add_parser("merge", help="sub-run DL1 files -> one run-wise DL1 file")
    merge_cmd.add_argument("--run-id", type=int, default=None)
    merge_cmd.add_argument("--output", required=True)
    merge_cmd.add_argument("inputs", nargs="+")
    merge_cmd.set_defaults(func=merge)

    dl2 = sub.add_parser("dl1-to-dl2", help="DL1 + random forests -> DL2 (written in --workdir)")
    dl2.add_argument("--config", required=True)
    dl2.add_argument("--model", action="append", required=True, help="a model file (repeat for each)")
    dl2.add_argument("input")
    dl2.set_defaults(func=dl1_to_dl2)

    dl3_cmd = sub.add_parser("dl3", help="DL2 + IRF -> DL3 (written in --workdir)")
    dl3_cmd.add_argument("--irf", required=True)
    dl3_cmd.add_argument("--source", required=True)
    dl3_cmd.add_argument("--ra", type=float, required=True, help="deg")
    dl3_cmd.add_argument("--dec", type=float, required=True, help="deg")
    dl3_cmd.add_argument("input")
    dl3_cmd.set_defaults(func=dl3)

    index = sub.add_parser("dl3-index", help="a night's DL3 files -> hdu-index and obs-index")
    index.add_argument("inputs", nargs="+")
    index.set_defaults(func=dl3_index)
    return top


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    args.func(args)


if __name__ == "__main__":
    main()
