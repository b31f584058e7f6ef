"""Bad input, fuzzed: whatever a user writes, osa-grid answers with a result or a BadInput, never a crash."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from osa_grid.core import query as querylang
from osa_grid.core.loading import build_campaign, build_production, parse_yaml
from osa_grid.core.metadata import check_metadata
from osa_grid.core.names import metadata_from_name
from osa_grid.core.runsummary import parse_summary
from osa_grid.core.templates import check_relative_path, fields, render
from osa_grid.errors import BadInput
from tests.helpers import TOY_PRODUCTION_YAML

REPO = Path(__file__).resolve().parents[2]
PRODUCTION = (REPO / "workflows" / "toy_nightly.yaml").read_text()
RUN_SUMMARY = """\
# %ECSV 1.0
# ---
# delimiter: ','
run_id,n_subruns,run_type,run_start
1805,5,DRS4,1580157900000000000
1806,6,PEDCALIB,1580158000000000000
1807,194,DATA,1580158100000000000
"""
NIGHT_SUMMARY = "01874  194 DATA  2020-01-27 20:44:13 0003 1580157904186709543 5186709300 0003 15 5\n"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    """A valid document with a few characters deleted, replaced or inserted."""
    chars = list(text)
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, max(len(chars) - 1, 0)))
        action = draw(st.sampled_from(["delete", "replace", "insert"]))
        char = draw(st.sampled_from(list("{}[]:,'\"#-\n\t 0aZ/.\\\x00é")))
        if action == "delete" and chars:
            del chars[position]
        elif action == "replace" and chars:
            chars[position] = char
        else:
            chars.insert(position, char)
    return "".join(chars)


def only_bad_input(function: object, *args: object) -> None:
    try:
        function(*args)  # type: ignore[operator]
    except BadInput as exc:
        assert str(exc), "a BadInput must say what is wrong"


@FUZZ
@given(st.one_of(mutated(PRODUCTION), st.text(max_size=300)))
def test_production_yaml(text: str) -> None:
    only_bad_input(lambda t: build_production(parse_yaml(t, "fuzz.yaml")), text)


@FUZZ
@given(
    st.one_of(mutated("data_level = DL1 and run_id in (1807, 1808) or not night >= 2024-01-01"), st.text())
)
def test_queries(text: str) -> None:
    only_bad_input(querylang.parse, text)


@FUZZ
@given(st.one_of(mutated(RUN_SUMMARY), mutated(NIGHT_SUMMARY), st.text(max_size=300)))
def test_run_summaries(text: str) -> None:
    only_bad_input(parse_summary, text, "RunSummary_fuzz.ecsv")


@FUZZ
@given(st.dictionaries(st.text(max_size=20), st.one_of(st.integers(), st.floats(), st.text(), st.booleans())))
def test_metadata(metadata: dict[str, object]) -> None:
    only_bad_input(check_metadata, metadata)


@FUZZ
@given(st.text(max_size=300))
def test_paths_built_from_metadata_never_escape(text: str) -> None:
    try:
        path = check_relative_path(text)
    except BadInput:
        return
    parts = path.split("/")
    assert not path.startswith("/") and ".." not in parts and "." not in parts and "\x00" not in path


@FUZZ
@given(st.text(max_size=60), st.dictionaries(st.sampled_from(["run_id", "night", "x"]), st.text(max_size=10)))
def test_templates(template: str, values: dict[str, str]) -> None:
    only_bad_input(lambda: render(template, values) if fields(template) is not None else None)


@FUZZ
@given(mutated("LST-1.{stream:d}.Run{run_id:d}.{subrun_id:d}.fits.fz"), st.text(max_size=40))
def test_name_patterns(pattern: str, name: str) -> None:
    only_bad_input(metadata_from_name, pattern, name)


def _campaign_text() -> str:
    production = "".join(f"  {line}\n" for line in TOY_PRODUCTION_YAML.splitlines())
    return (
        "name: fuzz-campaign\nproduction:\n"
        + production
        + "scope:\n  nights: {from: 2026-11-21, to: 2026-11-22}\n  runs: [1807, 1808]\n"
        + "backend: local\nlimits:\n  max_jobs_in_flight: 4\n"
        + "products:\n  dataset: fuzz-dl1\n  query: data_level = DL1_RUN\n"
    )


CAMPAIGN = _campaign_text()


def test_the_campaign_to_fuzz_is_valid() -> None:
    campaign, production = build_campaign(parse_yaml(CAMPAIGN, "campaign.yaml"))
    assert campaign.name == "fuzz-campaign" and production.name == "test-chain"


@FUZZ
@given(st.one_of(mutated(CAMPAIGN), st.text(max_size=300)))
def test_campaign_yaml(text: str) -> None:
    only_bad_input(lambda t: build_campaign(parse_yaml(t, "fuzz.yaml")), text)
