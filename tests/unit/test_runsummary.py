"""The night's runs: RunSummary ECSV (both generations), the legacy NightSummary, and the sequence rules."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from osa_grid.core.runsummary import (
    NightRuns,
    RunInfo,
    RunSource,
    evb_preprocessing_label,
    parse_night_summary,
    parse_run_catalog,
    parse_run_summary,
    parse_summary,
)
from osa_grid.core.sequences import NoCalibration, plan_night
from osa_grid.errors import BadInput

OLD_ECSV = """\
# %ECSV 1.0
# ---
# delimiter: ','
# datatype:
# - {name: run_id, datatype: int64}
# - {name: n_subruns, datatype: int64}
# - {name: run_type, datatype: string}
# - {name: ucts_timestamp, datatype: int64}
# - {name: run_start, datatype: int64}
# meta: !!omap
# - {lstchain_version: 0.9.6}
# schema: astropy-2.0
run_id,n_subruns,run_type,ucts_timestamp,run_start
1805,5,DRS4,1580157904186709543,1580157900000000000
1806,6,PEDCALIB,1580157904186709543,1580158000000000000
1807,194,DATA,1580157904186709543,1580158100000000000
1808,3,ERROR,-1,-1
"""

NEW_ECSV = """\
# %ECSV 1.0
# ---
# delimiter: ','
# datatype:
# - {name: run_id, datatype: int64}
# - {name: n_subruns, datatype: int64}
# - {name: run_type, datatype: string}
# - {name: run_start, datatype: int64}
# - {name: data_format, datatype: string}
# - {name: evb_preprocessing, datatype: string}
# schema: astropy-2.0
run_id,n_subruns,run_type,run_start,data_format,evb_preprocessing
2001,2,DATA,1700000000000000000,R1v1,"['BASELINE', 'GAIN_SELECTION']"
"""

LEGACY = """\
01874  194 DATA  2020-01-27 20:44:13 0003 1580157904186709543 5186709300 0003 1580157904186709543 5186708700
01873    5 CALI  2020-01-27 20:40:00 nan nan nan nan nan nan
01872    5 DRS4  2020-01-27 20:35:00 0003 1580157904186709543 5186709300 0003 1580157904186709543 5186708700
01875    2 ERROR 2020-01-27 21:00:00 nan nan nan nan nan nan
"""


def test_the_older_run_summary_is_read_and_other_types_ignored() -> None:
    runs = parse_run_summary(OLD_ECSV, "RunSummary_20200127.ecsv")
    assert [(r.run_id, r.n_subruns, r.run_type) for r in runs.runs] == [
        (1805, 5, "DRS4"),
        (1806, 6, "PEDCALIB"),
        (1807, 194, "DATA"),
    ]
    assert runs.runs[0].start == datetime.fromtimestamp(1580157900, tz=UTC)
    assert [(i.run_id, i.run_type) for i in runs.ignored] == [(1808, "ERROR")]


def test_the_newer_run_summary_with_quoted_columns() -> None:
    runs = parse_summary(NEW_ECSV, "RunSummary_20231114.ecsv")
    start = datetime.fromtimestamp(1.7e9, tz=UTC)
    assert runs.runs == (RunInfo(2001, 2, "DATA", start, evb_preprocessing="GAIN_SELECTION"),)


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("0", "NONE"),
        ("1", "GAIN_SELECTION"),
        ("99", "PE_CALIBRATION"),  # gain selection, baseline and pedestal subtraction, p.e. calibration
        ("PE_CALIBRATION", "PE_CALIBRATION"),
        ("['BASELINE', 'GAIN_SELECTION']", "GAIN_SELECTION"),
        ("[]", "NONE"),
        ("NONE", "NONE"),
        ("-", "NONE"),  # lstchain's value when the run's first file is missing
    ],
)
def test_event_builder_preprocessing_labels(text: str, label: str) -> None:
    assert evb_preprocessing_label(text) == label


def test_run_catalog() -> None:
    text = (
        "# %ECSV 1.0\n# ---\n# delimiter: ','\n# schema: astropy-2.0\n"
        "run_id,source_name,source_ra,source_dec,wobble\n"
        "1807,Crab,83.6329,22.0145,W1\n1808,Mrk 421,166.1,38.2,W2\n"
    )
    assert parse_run_catalog(text, "RunCatalog.ecsv") == {
        1807: RunSource("Crab", 83.6329, 22.0145, "W1"),
        1808: RunSource("Mrk 421", 166.1, 38.2, "W2"),
    }
    with pytest.raises(BadInput, match=r"RunCatalog\.ecsv:6: source_ra and source_dec must be numbers"):
        parse_run_catalog(text.replace("83.6329", "east"), "RunCatalog.ecsv")


def test_the_legacy_night_summary() -> None:
    runs = parse_summary(LEGACY, "NightSummary_20200127.txt")
    assert [(r.run_id, r.run_type) for r in runs.runs] == [(1874, "DATA"), (1873, "PEDCALIB"), (1872, "DRS4")]
    assert runs.runs[0].start == datetime(2020, 1, 27, 20, 44, 13, tzinfo=UTC)
    assert [i.run_id for i in runs.ignored] == [1875]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("# %ECSV 1.0\n# ---\n# delimiter: ','\nrun_id,n_subruns\n1,2\n", "lacks the column(s) run_type"),
        (OLD_ECSV.replace("1807,194,DATA", "1807,lots,DATA"), "RunSummary.ecsv:16: n_subruns 'lots'"),
        (
            OLD_ECSV.replace("1807,194,DATA,", "1807,194,DATA,1,2,"),
            "RunSummary.ecsv:16: 7 values for 5 columns",
        ),
        (OLD_ECSV.replace("1806,6,PEDCALIB", "1805,6,PEDCALIB"), "run 1805 is listed twice"),
        ("# %ECSV 1.0\n# ---\n# delimiter: [\nrun_id\n", "header is not valid YAML"),
    ],
)
def test_malformed_run_summaries_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(BadInput, match=r"RunSummary\.ecsv") as info:
        parse_run_summary(text, "RunSummary.ecsv")
    assert message in str(info.value)


def test_malformed_legacy_lines_name_their_line() -> None:
    with pytest.raises(BadInput, match=r"NightSummary.txt:2: expected 'run subruns type"):
        parse_night_summary("01874 194 DATA 2020-01-27 20:44:13\n01875 3\n", "NightSummary.txt")
    with pytest.raises(BadInput, match=r"NightSummary\.txt:1: 2020-13-27 20:44:13 is not a date"):
        parse_night_summary("01874 194 DATA 2020-13-27 20:44:13\n", "NightSummary.txt")


NIGHT = date(2026, 11, 21)


def runs(*items: tuple[int, str]) -> NightRuns:
    return NightRuns(tuple(RunInfo(run_id, 3, run_type) for run_id, run_type in items))  # type: ignore[arg-type]


def test_the_latest_calibration_runs_of_the_night_parent_every_data_sequence() -> None:
    nights = {
        NIGHT: runs(
            (10, "DRS4"), (11, "PEDCALIB"), (12, "DATA"), (13, "DRS4"), (14, "PEDCALIB"), (15, "DATA")
        )
    }
    plan = plan_night(NIGHT, nights.get)
    assert plan.calibration is not None
    assert (plan.calibration.drs4.run_id, plan.calibration.pedcalib.run_id) == (13, 14)
    assert [(s.seq_id, s.kind, s.run.run_id, s.parent) for s in plan.sequences] == [
        (0, "CALIBRATION", 14, None),
        (1, "DATA", 12, 0),
        (2, "DATA", 15, 0),
    ]
    assert [r.run_id for r, _ in plan.runs_to_process()] == [13, 14, 12, 15]


def test_calibration_is_looked_up_in_earlier_nights_up_to_the_limit() -> None:
    earlier = date(2026, 11, 18)
    nights = {NIGHT: runs((20, "DATA")), earlier: runs((5, "DRS4"), (6, "PEDCALIB"))}
    plan = plan_night(NIGHT, nights.get, lookback=3)
    assert plan.calibration is not None and plan.calibration.night == earlier
    with pytest.raises(NoCalibration, match=r"night 2026-11-21: 1 DATA run.*nor on the 2 night"):
        plan_night(NIGHT, nights.get, lookback=2)


def test_a_night_needs_both_calibration_runs_on_the_same_night() -> None:
    nights = {NIGHT: runs((20, "DATA"), (19, "DRS4")), date(2026, 11, 20): runs((6, "PEDCALIB"))}
    with pytest.raises(NoCalibration):
        plan_night(NIGHT, nights.get, lookback=4)


def test_a_night_without_data_runs_has_nothing_to_do() -> None:
    assert plan_night(NIGHT, {NIGHT: runs((1, "DRS4"))}.get).sequences == ()
    assert plan_night(NIGHT, {}.get).sequences == ()


def test_an_impossible_delimiter_is_bad_input() -> None:
    with pytest.raises(BadInput, match="delimiter must be one character"):
        parse_run_summary("# %ECSV 1.0\n# ---\n# delimiter: ''\nrun_id\n", "RunSummary.ecsv")
