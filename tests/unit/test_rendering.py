"""From a task to its argv, environment and expected outputs."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

import pytest

from osa_grid.core.models import Resources, Transformation
from osa_grid.core.planner import FileRecord
from osa_grid.core.query import Node, to_text
from osa_grid.core.rendering import render_needs, render_outputs, render_task
from osa_grid.errors import TemplateError, UnsafeName

NIGHT = date(2024, 1, 2)


def need_texts(needs: Mapping[str, Node]) -> dict[str, str]:
    """Side-input queries as text, to compare with what a reader expects."""
    return {name: to_text(node) for name, node in needs.items()}


def transformation(
    argv: list[str] | None = None,
    outputs: list[dict[str, Any]] | None = None,
    env: dict[str, str] | None = None,
    grouping: dict[str, Any] | None = None,
) -> Transformation:
    return Transformation.model_validate(
        {
            "name": "calibrate",
            "input": {"query": "data_level = R0"},
            "step": {"argv": argv or ["prog"], "env": env or {}},
            "grouping": grouping or {"mode": "per_file"},
            "outputs": outputs
            if outputs is not None
            else [
                {
                    "name": "dl1",
                    "file_name": "dl1_Run{run_id:05d}.{subrun_id:04d}.h5",
                    "directory": "{production}/DL1/{night}",
                    "metadata": {"data_level": "DL1"},
                }
            ],
        }
    )


def record(subrun: int, run: int = 1807, **extra: Any) -> FileRecord:
    metadata = {"run_id": run, "subrun_id": subrun, "night": NIGHT, "data_level": "R0", **extra}
    return FileRecord(id=subrun, lfn=f"raw/LST-1.1.Run{run:05d}.{subrun:04d}.fits.fz", metadata=metadata)


def render(t: Transformation, inputs: list[FileRecord], paths: list[str] | None = None, **kw: Any) -> Any:
    paths = paths if paths is not None else [f"/store/{r.lfn}" for r in inputs]
    return render_task(
        "prod",
        t,
        "tid42",
        inputs,
        paths,
        kw.pop("workdir", "/work/t1"),
        kw.pop("attempt", 1),
        kw.pop("resources", Resources(cores=4, memory_gb=2.5)),
        **kw,
    )


# ------------------------------------------------------------------------------------ argv


def test_single_input_and_output_paths_under_workdir() -> None:
    t = transformation(argv=["{python}", "-m", "tool", "{input}", "--out={output.dl1}"])
    task = render(t, [record(3)], python="/venv/bin/python")
    assert task.argv == [
        "/venv/bin/python",
        "-m",
        "tool",
        "/store/raw/LST-1.1.Run01807.0003.fits.fz",
        "--out=/work/t1/dl1_Run01807.0003.h5",
    ]


def test_inputs_expands_to_one_argument_per_file() -> None:
    t = transformation(
        argv=["merge", "{output.run}", "{inputs}", "--n", "{cores}"],
        grouping={"mode": "by_run"},
        outputs=[{"name": "run", "file_name": "dl1_Run{run_id:05d}.h5"}],
    )
    paths = ["/a/0.fz", "/a/1.fz", "/a/2.fz"]
    task = render(t, [record(0), record(1), record(2)], paths)
    assert task.argv == ["merge", "/work/t1/dl1_Run01807.h5", *paths, "--n", "4"]


def test_input_with_several_files_is_a_template_error() -> None:
    t = transformation(argv=["prog", "{input}"], grouping={"mode": "all"}, outputs=[])
    with pytest.raises(TemplateError, match=r"no value for \{input\}"):
        render(t, [record(0), record(1)])


def test_reserved_values_are_available() -> None:
    t = transformation(
        argv=[
            "p",
            "{task_id}",
            "{workdir}",
            "{attempt}",
            "{cores}",
            "{memory_gb}",
            "{production}",
            "{transformation}",
        ],
    )
    task = render(t, [record(0)], attempt=3)
    assert task.argv == ["p", "tid42", "/work/t1", "3", "4", "2.5", "prod", "calibrate"]


def test_argv_uses_input_metadata_with_specs() -> None:
    t = transformation(argv=["p", "--run={run_id:05d}", "--night={night}"])
    assert render(t, [record(0)]).argv == ["p", "--run=01807", "--night=2024-01-02"]


def test_argv_metadata_not_shared_by_every_input_is_missing() -> None:
    t = transformation(argv=["p", "{subrun_id}", "{inputs}"], grouping={"mode": "all"}, outputs=[])
    with pytest.raises(TemplateError) as info:
        render(t, [record(0), record(1)])
    assert "no value for {subrun_id}" in str(info.value)
    assert "run_id" in str(info.value)  # the known names are listed


def test_input_metadata_cannot_replace_the_interpreter() -> None:
    # BUG: render_task builds values as {"python": python, **metadata, ...}, so an input file with
    # metadata `python: /tmp/evil` chooses argv[0]. Reserved names must win over metadata.
    t = transformation(argv=["{python}", "tool"])
    task = render(t, [record(0, python="/tmp/evil")], python="/venv/bin/python")
    assert task.argv[0] == "/venv/bin/python"


@pytest.mark.parametrize("name", ["workdir", "attempt", "cores", "task_id", "production", "transformation"])
def test_input_metadata_cannot_replace_other_reserved_values(name: str) -> None:
    t = transformation(argv=["p", f"{{{name}}}"])
    default = render(t, [record(0)]).argv[1]
    hijack: dict[str, Any] = {name: "hijacked"}
    assert render(t, [record(0, **hijack)]).argv[1] == default


def test_empty_program_name_is_refused() -> None:
    t = transformation(argv=["{tool}", "x"])
    with pytest.raises(TemplateError, match="empty program name"):
        render(t, [record(0, tool="")])


def test_no_argv_at_all_is_a_template_error() -> None:
    # BUG: argv ["{inputs}"] with no inputs renders to [] and render_task does `argv[0]` -> IndexError.
    t = transformation(argv=["{inputs}"], grouping={"mode": "all"}, outputs=[])
    with pytest.raises(TemplateError):
        render(t, [], [])


# ------------------------------------------------------------------------------------ env


def test_environment_rendering() -> None:
    t = transformation(env={"OMP_NUM_THREADS": "{cores}", "RUN": "{run_id:05d}", "OUT": "{output.dl1}"})
    assert render(t, [record(0)]).env == {
        "OMP_NUM_THREADS": "4",
        "RUN": "01807",
        "OUT": "/work/t1/dl1_Run01807.0000.h5",
    }


def test_environment_missing_name() -> None:
    t = transformation(env={"X": "{nope}"})
    with pytest.raises(TemplateError, match="environment X"):
        render(t, [record(0)])


def test_resources_are_passed_through() -> None:
    resources = Resources(cores=8, memory_gb=16)
    assert render(transformation(), [record(0)], resources=resources).resources == resources


# --------------------------------------------------------------------------------- outputs


def test_output_metadata_is_inherited_plus_overrides_plus_automatic_keys() -> None:
    (out,) = render_outputs("prod", transformation(), "tid", [record(3, source="Crab")])
    assert out.name == "dl1"
    assert out.file_name == "dl1_Run01807.0003.h5"
    assert out.lfn == "prod/DL1/2024-01-02/dl1_Run01807.0003.h5"
    assert out.metadata == {
        "run_id": 1807,
        "subrun_id": 3,
        "night": NIGHT,
        "source": "Crab",
        "data_level": "DL1",  # the override wins over the inherited R0
        "production": "prod",
        "transformation": "calibrate",
    }


def test_inherit_all_takes_only_what_every_input_shares() -> None:
    outputs = [{"name": "run", "file_name": "Run{run_id:05d}.h5", "directory": ""}]
    t = transformation(outputs=outputs, grouping={"mode": "by_run"})
    (out,) = render_outputs("prod", t, "tid", [record(0), record(1)])
    assert "subrun_id" not in out.metadata
    assert out.metadata["run_id"] == 1807
    assert out.metadata["data_level"] == "R0"
    assert out.lfn == "Run01807.h5"


def test_inherit_none() -> None:
    outputs = [
        {"name": "o", "file_name": "o_{run_id}.h5", "metadata": {"data_level": "DL1"}, "inherit": "none"}
    ]
    (out,) = render_outputs("prod", transformation(outputs=outputs), "tid", [record(0)])
    assert out.metadata == {"data_level": "DL1", "production": "prod", "transformation": "calibrate"}
    assert out.file_name == "o_1807.h5"  # names still use the input metadata


def test_inherit_list_ignores_keys_the_inputs_lack() -> None:
    outputs = [{"name": "o", "file_name": "o.h5", "inherit": ["run_id", "night", "not_there"]}]
    (out,) = render_outputs("prod", transformation(outputs=outputs), "tid", [record(0)])
    assert out.metadata == {
        "run_id": 1807,
        "night": NIGHT,
        "production": "prod",
        "transformation": "calibrate",
    }


def test_automatic_keys_replace_inherited_ones() -> None:
    parent_output = record(0, production="prod", transformation="parent")
    (out,) = render_outputs("prod", transformation(), "tid", [parent_output])
    assert out.metadata["transformation"] == "calibrate"


def test_several_outputs_and_task_id_in_names() -> None:
    outputs = [
        {"name": "a", "file_name": "a_{task_id}.h5", "directory": "{production}"},
        {"name": "b", "file_name": "b_{run_id}.log", "directory": "{transformation}/logs/"},
    ]
    a, b = render_outputs("prod", transformation(outputs=outputs), "tid7", [record(0)])
    assert (a.lfn, b.lfn) == ("prod/a_tid7.h5", "calibrate/logs/b_1807.log")


@pytest.mark.parametrize("value", ["../../etc", "a/b", "..", "x\x00y", "tab\tname"])
def test_unsafe_metadata_in_a_file_name(value: str) -> None:
    outputs = [{"name": "o", "file_name": "{source}", "directory": "{production}"}]
    with pytest.raises(UnsafeName):
        render_outputs("prod", transformation(outputs=outputs), "tid", [record(0, source=value)])


@pytest.mark.parametrize("value", ["../../etc", "..", "a/../../b", "a//b", ""])
def test_unsafe_metadata_in_a_directory(value: str) -> None:
    outputs = [{"name": "o", "file_name": "f.h5", "directory": "{production}/{source}"}]
    with pytest.raises(UnsafeName):
        render_outputs("prod", transformation(outputs=outputs), "tid", [record(0, source=value)])


def test_absolute_metadata_value_as_a_directory_is_refused() -> None:
    # BUG: the rendered directory is .strip("/")-ed, so a metadata value "/etc" used as
    # `directory: "{night}"` silently becomes "etc" instead of being refused as UnsafeName.
    outputs = [{"name": "o", "file_name": "f.h5", "directory": "{source}"}]
    with pytest.raises(UnsafeName):
        render_outputs("prod", transformation(outputs=outputs), "tid", [record(0, source="/etc")])


def test_output_missing_key_is_a_template_error() -> None:
    outputs = [{"name": "o", "file_name": "f_{zenith}.h5"}]
    with pytest.raises(TemplateError, match=r"output o .*no value for \{zenith\}"):
        render_outputs("prod", transformation(outputs=outputs), "tid", [record(0)])


def test_output_spec_that_does_not_suit_the_value() -> None:
    outputs = [{"name": "o", "file_name": "f_{source:05d}.h5"}]
    with pytest.raises(TemplateError, match="cannot format"):
        render_outputs("prod", transformation(outputs=outputs), "tid", [record(0, source="Crab")])


def test_render_task_outputs_match_render_outputs() -> None:
    t = transformation()
    assert render(t, [record(5)]).outputs == render_outputs("prod", t, "tid42", [record(5)])


# ------------------------------------------------------------------------------------ side inputs


def with_needs(needs: dict[str, str], argv: list[str]) -> Transformation:
    data = transformation(argv=argv).model_dump(by_alias=True)
    data["input"]["needs"] = needs
    return Transformation.model_validate(data)


def test_needs_are_rendered_with_the_common_metadata() -> None:
    t = with_needs({"calibration": "data_level = CALIB and night = {night}"}, ["prog"])
    assert need_texts(render_needs(t, [record(0), record(1)])) == {
        "calibration": "data_level = CALIB and night = 2024-01-02"
    }


def test_needs_paths_are_placeholders_of_the_argv() -> None:
    t = with_needs({"calibration": "data_level = CALIB"}, ["prog", "--calib", "{needs.calibration}"])
    rendered = render(t, [record(0)], needs={"calibration": "/store/calib.h5"})
    assert rendered.argv == ["prog", "--calib", "/store/calib.h5"]


def test_a_need_without_the_metadata_it_names_cannot_render() -> None:
    t = with_needs({"drive": "kind = drive and night = {night}"}, ["prog"])
    with pytest.raises(TemplateError, match="night"):
        render_needs(t, [record(0, night="x"), record(1)])


# ----------------------------------------------------------- values that must stay data (issue 19)


@pytest.mark.parametrize("value", ["-rf", "--help", "-", "--output=/etc/passwd"])
def test_a_value_starting_with_a_dash_is_refused_as_a_whole_argument(value: str) -> None:
    t = transformation(argv=["prog", "{source}"])
    with pytest.raises(
        TemplateError, match=r"argument \{source\} = .* starts with '-' and would read as an option"
    ):
        render(t, [record(0, source=value)])


@pytest.mark.parametrize("value", ["-rf", "--help", "-5"])
def test_a_value_starting_with_a_dash_is_fine_inside_an_option_or_after_the_end_of_options(
    value: str,
) -> None:
    t = transformation(argv=["prog", "--source={source}", "--", "{source}"])
    assert render(t, [record(0, source=value)]).argv == ["prog", f"--source={value}", "--", value]


@pytest.mark.parametrize("value", ["a/b", "Crab/../..", "/etc", "a\\b"])
def test_a_slash_from_a_value_never_adds_a_directory_level(value: str) -> None:
    outputs = [{"name": "o", "file_name": "f.h5", "directory": "{production}/{source}"}]
    with pytest.raises(
        UnsafeName, match=r"\{source\} = .* contains '/' or .*: a value cannot add a directory"
    ):
        render_outputs("prod", transformation(outputs=outputs), "tid", [record(0, source=value)])


def test_the_templates_own_slashes_make_directory_levels() -> None:
    outputs = [{"name": "o", "file_name": "f.h5", "directory": "{production}/DL1/{night:%Y/%m}/{source}"}]
    (output,) = render_outputs("prod", transformation(outputs=outputs), "tid", [record(0, source="Crab")])
    assert output.lfn == "prod/DL1/2024/01/Crab/f.h5"
