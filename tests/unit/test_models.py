"""Transformation and Production models: what a user may write, and what is refused."""

from __future__ import annotations

import copy
from datetime import date, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from osa_grid.core.models import (
    Grouping,
    InputSpec,
    Output,
    Production,
    Resources,
    RetryPolicy,
    RetryRule,
    Step,
    Transformation,
)


def transformation_data(**overrides: Any) -> dict[str, Any]:
    """A complete, valid transformation touching every nested model."""
    data: dict[str, Any] = {
        "name": "calibrate",
        "version": "1.0",
        "input": {"query": "data_level = R0", "from": []},
        "step": {
            "argv": ["prog", "{input}", "{output.dl1}"],
            "env": {"OMP_NUM_THREADS": "{cores}"},
            "resources": {"cores": 2, "memory_gb": 1.5, "walltime": "10m"},
        },
        "grouping": {"mode": "per_file"},
        "outputs": [
            {
                "name": "dl1",
                "file_name": "dl1_Run{run_id:05d}.{subrun_id:04d}.h5",
                "directory": "{production}/DL1",
                "metadata": {"data_level": "DL1"},
            }
        ],
        "retry": {"max_attempts": 2, "rules": [{"exit_codes": [137], "scale_memory": 2.0}]},
    }
    data.update(overrides)
    return data


def test_the_reference_transformation_is_valid() -> None:
    transformation = Transformation.model_validate(transformation_data())
    assert transformation.name == "calibrate"
    assert transformation.step.resources.walltime == timedelta(minutes=10)
    assert transformation.outputs[0].metadata == {"data_level": "DL1"}
    assert transformation.retry.rules[0].exit_codes == [137]


# ------------------------------------------------------------------------------ extra="forbid"

# Where to put an unknown key: a path of keys/indices into transformation_data().
EXTRA_LOCATIONS = [
    (),
    ("input",),
    ("step",),
    ("step", "resources"),
    ("grouping",),
    ("outputs", 0),
    ("retry",),
    ("retry", "rules", 0),
]


@pytest.mark.parametrize("where", EXTRA_LOCATIONS, ids=lambda w: ".".join(map(str, w)) or "top")
def test_unknown_fields_are_refused_at_every_level(where: tuple[str | int, ...]) -> None:
    data = transformation_data()
    target: Any = data
    for part in where:
        target = target[part]
    target["colour"] = "red"
    with pytest.raises(ValidationError) as info:
        Transformation.model_validate(data)
    errors = info.value.errors()
    assert [e["type"] for e in errors] == ["extra_forbidden"]
    assert errors[0]["loc"] == (*where, "colour")


def test_unknown_fields_are_refused_in_a_production() -> None:
    with pytest.raises(ValidationError) as info:
        Production.model_validate({"name": "p", "transformations": [transformation_data()], "owner": "me"})
    assert info.value.errors()[0]["loc"] == ("owner",)


def test_a_production_needs_at_least_one_transformation() -> None:
    with pytest.raises(ValidationError):
        Production.model_validate({"name": "p", "transformations": []})


def test_models_are_frozen() -> None:
    transformation = Transformation.model_validate(transformation_data())
    with pytest.raises(ValidationError):
        transformation.name = "other"  # type: ignore[misc]


# ----------------------------------------------------------------------------------- walltime


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        (90, timedelta(seconds=90)),
        (1.5, timedelta(seconds=1.5)),
        ("90", timedelta(seconds=90)),
        ("30s", timedelta(seconds=30)),
        ("30sec", timedelta(seconds=30)),
        ("10m", timedelta(minutes=10)),
        ("10min", timedelta(minutes=10)),
        (" 10 m ", timedelta(minutes=10)),
        ("2h", timedelta(hours=2)),
        ("1.5h", timedelta(minutes=90)),
        ("1d", timedelta(days=1)),
        ("PT10M", timedelta(minutes=10)),
        ("P1DT2H", timedelta(days=1, hours=2)),
    ],
)
def test_walltime_parsing(written: object, expected: timedelta) -> None:
    assert Resources(walltime=written).walltime == expected


@pytest.mark.parametrize("written", ["10x", "ten minutes", "10 m 5 s", "", "-5m", "1e3", "Pbad", [10], None])
def test_walltime_bad_values_are_refused(written: object) -> None:
    with pytest.raises(ValidationError) as info:
        Resources(walltime=written)
    assert info.value.errors()[0]["loc"] == ("walltime",)


@pytest.mark.parametrize("written", [0, "0s", -5, -0.5])
def test_walltime_must_be_positive(written: object) -> None:
    with pytest.raises(ValidationError, match="positive"):
        Resources(walltime=written)


def test_walltime_bad_duration_message_shows_the_accepted_forms() -> None:
    with pytest.raises(ValidationError, match=r"'10x' is not a duration \(use e.g. 90, 30s"):
        Resources(walltime="10x")


@pytest.mark.parametrize("written", [float("inf"), 10**20, "99999999999d"])
def test_walltime_out_of_range_is_a_validation_error(written: object) -> None:
    # BUG: timedelta() raises OverflowError, which pydantic does not turn into a ValidationError,
    # so `walltime: .inf` or `walltime: 99999999999d` in YAML crashes loading with a raw OverflowError.
    with pytest.raises(ValidationError):
        Resources(walltime=written)


def test_walltime_refuses_booleans() -> None:
    # BUG: `walltime: true` is read as one second (the bool falls through _duration to pydantic).
    with pytest.raises(ValidationError):
        Resources(walltime=True)


@pytest.mark.parametrize("field", [{"cores": 0}, {"cores": 1025}, {"memory_gb": 0}, {"memory_gb": -1}])
def test_resource_bounds(field: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Resources(**field)


def test_resources_scaled() -> None:
    resources = Resources(cores=2, memory_gb=2.0, walltime="1h")
    scaled = resources.scaled(memory=1.5, walltime=2.0)
    assert (scaled.cores, scaled.memory_gb, scaled.walltime) == (2, 3.0, timedelta(hours=2))
    assert resources.memory_gb == 2.0  # the original is untouched


# ------------------------------------------------------------------------------------ version


@pytest.mark.parametrize(("written", "expected"), [(1, "1"), (1.0, "1.0"), (2.5, "2.5"), ("v0.10", "v0.10")])
def test_version_is_coerced_to_text(written: object, expected: str) -> None:
    assert Transformation.model_validate(transformation_data(version=written)).version == expected
    production = Production.model_validate(
        {"name": "p", "version": written, "transformations": [transformation_data()]}
    )
    assert production.version == expected


def test_version_true_is_not_text() -> None:
    with pytest.raises(ValidationError):
        Transformation.model_validate(transformation_data(version=True))


# ---------------------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["", "1calib", "has space", "a/b", "a" * 65, "é"])
def test_bad_transformation_names(name: str) -> None:
    with pytest.raises(ValidationError):
        Transformation.model_validate(transformation_data(name=name))


@pytest.mark.parametrize("name", ["a", "calibrate", "toy-chain", "Merge_2", "a" * 64])
def test_good_transformation_names(name: str) -> None:
    assert Transformation.model_validate(transformation_data(name=name)).name == name


# ------------------------------------------------------------------------------------ grouping


def test_grouping_defaults() -> None:
    grouping = Grouping()
    assert (grouping.mode, grouping.keys, grouping.size_key, grouping.size) == (
        "per_file",
        ["run_id"],
        "n_subruns",
        None,
    )


def test_by_size_needs_size() -> None:
    with pytest.raises(ValidationError, match="by_size needs 'size'"):
        Grouping(mode="by_size")
    assert Grouping(mode="by_size", size=10).size == 10


@pytest.mark.parametrize("mode", ["per_file", "by_run", "all"])
def test_size_only_applies_to_by_size(mode: str) -> None:
    with pytest.raises(ValidationError, match="only applies to by_size"):
        Grouping(mode=mode, size=3)


@pytest.mark.parametrize("size", [0, -1])
def test_by_size_size_must_be_positive(size: int) -> None:
    with pytest.raises(ValidationError):
        Grouping(mode="by_size", size=size)


def test_grouping_by_run_needs_keys() -> None:
    with pytest.raises(ValidationError):
        Grouping(mode="by_run", keys=[])


@pytest.mark.parametrize(
    ("mode", "flush", "policy"),
    [
        ("by_run", None, "never"),
        ("per_file", None, "when_upstream_done"),
        ("all", None, "when_upstream_done"),
        ("by_run", "when_upstream_done", "when_upstream_done"),
        ("all", "never", "never"),
    ],
)
def test_flush_policy(mode: str, flush: str | None, policy: str) -> None:
    size = 2 if mode == "by_size" else None
    assert Grouping(mode=mode, flush=flush, size=size).flush_policy == policy


def test_unknown_grouping_mode_refused() -> None:
    with pytest.raises(ValidationError):
        Grouping(mode="by_night")


# ---------------------------------------------------------------------------------------- step


def test_step_needs_a_command() -> None:
    with pytest.raises(ValidationError):
        Step(argv=[])


@pytest.mark.parametrize("element", ["--files={inputs}", "{inputs}.txt", "{inputs:>5}"])
def test_inputs_must_be_an_argv_element_alone(element: str) -> None:
    with pytest.raises(ValidationError, match="several arguments"):
        Step(argv=["prog", element])


@pytest.mark.parametrize("element", ["{unclosed", "closed}", "{bad name}", "{x:q}", "{}"])
def test_argv_templates_are_checked(element: str) -> None:
    with pytest.raises(ValidationError):
        Step(argv=["prog", element])


@pytest.mark.parametrize("name", ["1X", "A-B", "", "A B"])
def test_bad_environment_names(name: str) -> None:
    with pytest.raises(ValidationError, match="environment variable name"):
        Step(argv=["prog"], env={name: "x"})


def test_environment_values_are_templates() -> None:
    with pytest.raises(ValidationError):
        Step(argv=["prog"], env={"X": "{oops"})
    assert Step(argv=["prog"], env={"X": "{cores}"}).env == {"X": "{cores}"}


# -------------------------------------------------------------------------------------- outputs


def output(**fields: Any) -> Output:
    return Output.model_validate({"name": "dl1", "file_name": "f_{run_id}.h5", **fields})


@pytest.mark.parametrize("file_name", ["dir/f_{run_id}.h5", "{night}/f.h5", "a\\b", "..", ".", "{{}}/x"])
def test_separators_in_the_static_part_of_a_file_name_are_refused(file_name: str) -> None:
    with pytest.raises(ValidationError) as info:
        output(file_name=file_name)
    assert info.value.errors()[0]["loc"] == ("file_name",)


def test_a_slash_produced_by_a_placeholder_is_a_render_time_matter() -> None:
    # The static part is "x.h5": safe; what the value renders to is checked by rendering.
    assert output(file_name="{night}.h5").file_name == "{night}.h5"


@pytest.mark.parametrize("file_name", ["f_{run_id:q}.h5", "f_{run_id:05zz}.h5", "f_{run_id.h5", "f_}.h5"])
def test_bad_format_specs_and_braces_in_file_names_are_refused(file_name: str) -> None:
    with pytest.raises(ValidationError):
        output(file_name=file_name)


def test_escaped_braces_in_file_names_are_fine() -> None:
    assert output(file_name="f_{{literal}}_{run_id:05d}.h5").file_name == "f_{{literal}}_{run_id:05d}.h5"


@pytest.mark.parametrize("name", ["1dl1", "dl-1", "", "dl1.h5"])
def test_output_names_are_identifiers(name: str) -> None:
    with pytest.raises(ValidationError):
        output(name=name)


@pytest.mark.parametrize("directory", ["/abs/{production}", "{production}/../up", "..", "../x"])
def test_output_directory_must_stay_inside_the_store(directory: str) -> None:
    with pytest.raises(ValidationError, match="must be relative"):
        output(directory=directory)


def test_output_names_must_be_unique() -> None:
    outputs = [{"name": "dl1", "file_name": "a"}, {"name": "dl1", "file_name": "b"}]
    with pytest.raises(ValidationError, match="output names must be unique: dl1"):
        Transformation.model_validate(transformation_data(outputs=outputs))


@pytest.mark.parametrize("value", [True, False])
def test_booleans_are_refused_as_metadata(value: bool) -> None:
    with pytest.raises(ValidationError, match="booleans are not a metadata type") as info:
        output(metadata={"is_good": value})
    assert info.value.errors()[0]["loc"] == ("metadata",)


@pytest.mark.parametrize(
    "metadata",
    [{"k": [1, 2]}, {"k": {"a": 1}}, {"k": None}, {"1bad": 1}, {"k": "a\x00b"}, {"k": float("nan")}],
)
def test_other_bad_metadata_is_refused(metadata: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        output(metadata=metadata)


def test_good_metadata_keeps_its_types() -> None:
    metadata = {"data_level": "DL1", "run_id": 5, "zenith": 20.5, "night": date(2024, 1, 2)}
    assert output(metadata=metadata).metadata == metadata
    assert type(output(metadata={"n": 5}).metadata["n"]) is int


@pytest.mark.parametrize("inherit", ["all", "none", ["run_id", "night"], []])
def test_inherit_forms(inherit: Any) -> None:
    assert output(inherit=inherit).inherit == inherit


@pytest.mark.parametrize("inherit", ["some", ["bad key"], ["1x"]])
def test_bad_inherit(inherit: Any) -> None:
    with pytest.raises(ValidationError):
        output(inherit=inherit)


# ---------------------------------------------------------------------------------------- input


def test_input_from_accepts_one_name_or_a_list() -> None:
    assert InputSpec.model_validate({"query": "x = 1", "from": "calibrate"}).parents == ["calibrate"]
    assert InputSpec.model_validate({"query": "x = 1", "from": ["a", "b"]}).parents == ["a", "b"]
    assert InputSpec.model_validate({"query": "x = 1"}).parents == []


def test_input_query_cannot_be_empty() -> None:
    with pytest.raises(ValidationError):
        InputSpec.model_validate({"query": ""})


# ---------------------------------------------------------------------------------------- retry


@pytest.mark.parametrize(
    ("rule", "kind", "exit_code", "matches"),
    [
        ({}, "failed", 1, True),
        ({}, "oom", None, True),
        ({"exit_codes": [137]}, "failed", 137, True),
        ({"exit_codes": [137]}, "failed", 1, False),
        ({"exit_codes": [137]}, "timeout", None, False),
        ({"failures": ["oom"]}, "oom", 137, True),
        ({"failures": ["oom"]}, "timeout", 137, False),
        ({"failures": ["oom", "timeout"], "exit_codes": [1]}, "timeout", 1, True),
        ({"failures": ["oom", "timeout"], "exit_codes": [1]}, "timeout", 2, False),
        ({"failures": ["oom", "timeout"], "exit_codes": [1]}, "failed", 1, False),
    ],
)
def test_retry_rule_matching(rule: dict[str, Any], kind: str, exit_code: int | None, matches: bool) -> None:
    assert RetryRule.model_validate(rule).matches(kind, exit_code) is matches


@pytest.mark.parametrize(
    "rule",
    [{"failures": ["segfault"]}, {"action": "explode"}, {"scale_memory": 0}, {"scale_walltime": -1}],
)
def test_bad_retry_rules(rule: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RetryRule.model_validate(rule)


@pytest.mark.parametrize("max_attempts", [0, 101])
def test_max_attempts_bounds(max_attempts: int) -> None:
    with pytest.raises(ValidationError):
        RetryPolicy(max_attempts=max_attempts)


def test_production_transformation_lookup() -> None:
    second = copy.deepcopy(transformation_data(name="merge"))
    production = Production.model_validate({"name": "p", "transformations": [transformation_data(), second]})
    assert production.transformation("merge").name == "merge"
    with pytest.raises(KeyError):
        production.transformation("nope")
