"""The night's runs: RunSummary ECSV (both generations), the legacy NightSummary, and the sequence rules."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from osa_grid.core.metadata import check_metadata
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


HEADER = "# %ECSV 1.0\n# ---\n# delimiter: ','\n# schema: astropy-2.0\nrun_id,n_subruns,run_type\n"


@pytest.mark.parametrize(
    ("run_id", "reason"),
    [
        ("1_807", "not a whole number"),  # int() reads it as 1807
        ("١٨٠٧", "not a whole number"),  # Arabic-Indic digits: int() reads them as 1807
        ("\uff11\uff18\uff10\uff17", "not a whole number"),  # fullwidth digits 1807
        ("99999999999999999999", "not a whole number"),  # 20 digits: beyond any catalog integer
        ("100000", "not between 0 and 99999"),  # 6 digits: run ids have 5
        ("9" * 5000, "not a whole number"),  # int() refuses to read it (a traceback before)
        ("-3", "not between 0 and 99999"),
    ],
)
def test_run_ids_are_five_ascii_digits_refused_where_they_are_read(run_id: str, reason: str) -> None:
    with pytest.raises(BadInput, match=r"^RunSummary\.ecsv:6: run_id ") as info:
        parse_summary(HEADER + f"{run_id},3,DATA\n", "RunSummary.ecsv")
    assert reason in str(info.value) and len(str(info.value)) < 200
    with pytest.raises(BadInput, match=r"^NightSummary\.txt:1: run_id "):
        parse_summary(f"{run_id} 3 DATA 2020-01-27 20:44:13\n", "NightSummary.txt")
    catalog = "# %ECSV 1.0\n# ---\n# delimiter: ','\nrun_id,source_name,source_ra,source_dec\n"
    with pytest.raises(BadInput, match=r"^RunCatalog\.ecsv:5: run_id "):
        parse_run_catalog(catalog + f"{run_id},Crab,83.6,22.0\n", "RunCatalog.ecsv")


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("1807,3_0,DATA", "n_subruns '3_0' is not a whole number"),
        ("1807,٣,DATA", "n_subruns '٣' is not a whole number"),
        ("1807,10001,DATA", "n_subruns 10001 is not between 0 and 10000"),  # sub-run ids have 4 digits
    ],
)
def test_sub_run_counts_are_ascii_and_bounded(row: str, reason: str) -> None:
    with pytest.raises(BadInput, match=rf"^RunSummary\.ecsv:6: {reason}"):
        parse_summary(HEADER + row + "\n", "RunSummary.ecsv")


def test_non_ascii_digits_elsewhere_are_refused_not_a_traceback() -> None:
    text = OLD_ECSV.replace("1580158100000000000", "1_580_158_100_000_000_000")
    with pytest.raises(BadInput, match=r"RunSummary\.ecsv:16: run_start '1_580"):
        parse_run_summary(text, "RunSummary.ecsv")
    assert evb_preprocessing_label("²") == "NONE"  # a digit for isdigit(), not for int(): ValueError before
    assert evb_preprocessing_label("\u0661") == "NONE"  # Arabic-Indic one


def test_a_run_listed_twice_names_both_lines() -> None:
    with pytest.raises(
        BadInput, match=r"^RunSummary\.ecsv:7: run 1807 is listed twice \(first at RunSummary\.ecsv:6\)"
    ):
        parse_summary(HEADER + "1807,3,DATA\n1807,4,ERROR\n", "RunSummary.ecsv")


CATALOG = (
    "# %ECSV 1.0\n# ---\n# delimiter: ','\n# schema: astropy-2.0\nrun_id,source_name,source_ra,source_dec\n"
)


def test_a_run_catalog_listing_a_run_twice_differently_is_refused_naming_both_lines() -> None:
    text = CATALOG + "1807,Crab,83.6329,22.0145\n1808,Mrk 421,166.1,38.2\n1807,Mrk 501,253.5,39.8\n"
    with pytest.raises(
        BadInput,
        match=r"^RunCatalog\.ecsv:8: run 1807 is listed twice, differently \(first at RunCatalog\.ecsv:6\)",
    ):
        parse_run_catalog(text, "RunCatalog.ecsv")
    same = CATALOG + "1807,Crab,83.6329,22.0145\n1807,Crab,83.6329,22.0145\n"
    assert parse_run_catalog(same, "RunCatalog.ecsv") == {1807: RunSource("Crab", 83.6329, 22.0145)}


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("1807,Crab,nan,22.0", "must be numbers"),
        ("1807,Crab,83.6,inf", "must be numbers"),
        ("1807,Crab,1e999,22.0", "are not a sky position"),
        ("1807,Crab,83.6,95", "are not a sky position"),
        ("1807,Crab,8_3.6,22.0", "must be numbers"),
        ("1807,Crab,٨٣.٦,22.0", "must be numbers"),
        ("1807,Cr\x00ab,83.6,22.0", "source: value contains a NUL character"),
        ("1807," + "x" * 1100 + ",83.6,22.0", "source: value longer than 1024 characters"),
    ],
)
def test_one_bad_run_catalog_value_is_refused_naming_file_and_line(row: str, reason: str) -> None:
    with pytest.raises(BadInput, match=r"^RunCatalog\.ecsv:6: ") as info:
        parse_run_catalog(CATALOG + row + "\n", "RunCatalog.ecsv")
    assert reason in str(info.value)


@pytest.mark.parametrize("text", ["", "\n", "  \n\t\n"])
def test_an_empty_run_summary_is_refused_not_read_as_no_runs(text: str) -> None:
    with pytest.raises(BadInput, match=r"^RunSummary\.ecsv: the run summary is empty \(still being written"):
        parse_summary(text, "RunSummary.ecsv")


def test_a_run_summary_with_a_header_only_has_no_runs() -> None:
    assert parse_summary(HEADER, "RunSummary.ecsv") == NightRuns(())
    assert parse_summary("# comment only\n", "NightSummary.txt") == NightRuns(())


# Values as a careless or hostile writer makes them: digits of any script, separators, signs, huge numbers.
FIELD = st.one_of(
    st.integers(-(10**25), 10**25).map(str),
    st.text(alphabet=st.sampled_from(list("0123456789_+-.eE ١٨٠٧１２\x00nainf")), max_size=30),
    st.text(max_size=20).filter(lambda t: "," not in t and "\n" not in t and '"' not in t and "\r" not in t),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(FIELD, FIELD, st.sampled_from(["DATA", "DRS4", "ERROR"])), max_size=4))
def test_a_summary_yields_ascii_five_digit_runs_or_one_error_naming_file_and_line(
    rows: list[tuple[str, str, str]],
) -> None:
    text = HEADER + "".join(f"{run},{subruns},{kind}\n" for run, subruns, kind in rows)
    try:
        runs = parse_summary(text, "RunSummary.ecsv")
    except BadInput as exc:
        assert re.match(r"RunSummary\.ecsv:\d+: ", str(exc)), exc
        return
    written = {int(run) for run, _, _ in rows}
    assert {r.run_id for r in runs.runs} | {i.run_id for i in runs.ignored} == written
    assert all(run.strip().lstrip("+-").isascii() for run, _, _ in rows)
    assert all(0 <= r.run_id <= 99_999 and 0 <= r.n_subruns <= 10_000 for r in runs.runs)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(FIELD, FIELD, FIELD, FIELD), max_size=4))
def test_a_run_catalog_yields_registrable_sources_or_one_error_naming_file_and_line(
    rows: list[tuple[str, str, str, str]],
) -> None:
    text = CATALOG + "".join(",".join(row) + "\n" for row in rows)
    try:
        sources = parse_run_catalog(text, "RunCatalog.ecsv")
    except BadInput as exc:
        assert re.match(r"RunCatalog\.ecsv:\d+: ", str(exc)), exc
        return
    for run_id, source in sources.items():
        assert 0 <= run_id <= 99_999
        check_metadata(source.metadata())  # what the night registers with the run's files
