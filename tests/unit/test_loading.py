"""YAML text -> Production: errors name the file, the line and the dotted field path."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pytest

from osa_grid.core.loading import Document, Origin, build_production, parse_yaml
from osa_grid.errors import BadInput, ProductionInvalid
from osa_grid.services.productions import load_production

REPO = Path(__file__).resolve().parents[2]

# Line numbers matter below: keep this text as it is (line 1 is "name: prod").
GOOD = """\
name: prod
version: 1.0
transformations:
  - name: calibrate
    input:
      query: data_level = R0
    step:
      argv: [prog, "{input}", "{output.dl1}"]
      env: {THREADS: "{cores}"}
      resources: {cores: 1, walltime: 5m}
    grouping: {mode: per_file}
    outputs:
      - name: dl1
        file_name: "dl1_Run{run_id:05d}.{subrun_id:04d}.h5"
        metadata: {data_level: DL1}
    retry:
      max_attempts: 2
      rules:
        - {exit_codes: [137], scale_memory: 2}
  - name: merge
    input: {query: data_level = DL1, from: calibrate}
    step: {argv: [merge, "{output.run}", "{inputs}"]}
    grouping: {mode: by_run}
    outputs:
      - {name: run, file_name: "dl1_Run{run_id:05d}.h5", metadata: {data_level: DL1_RUN}}
"""


def load(text: str, source: str = "prod.yaml"):  # type: ignore[no-untyped-def]
    return build_production(parse_yaml(text, source))


def problem(text: str, source: str = "prod.yaml") -> str:
    with pytest.raises(ProductionInvalid) as info:
        load(text, source)
    assert isinstance(info.value, BadInput)
    return str(info.value)


def replace_line(text: str, line: int, new: str) -> str:
    lines = text.splitlines()
    lines[line - 1] = new
    return "\n".join(lines) + "\n"


def test_good_production_loads() -> None:
    production = load(GOOD)
    assert production.name == "prod"
    assert production.version == "1.0"
    assert [t.name for t in production.transformations] == ["calibrate", "merge"]
    assert production.transformation("merge").input.parents == ["calibrate"]


# ---------------------------------------------------------------------------- parse_yaml


def test_parse_yaml_records_origins() -> None:
    document = parse_yaml(GOOD, "prod.yaml")
    assert document.origins[("name",)] == Origin("prod.yaml", 1)
    assert document.origins[("transformations", 0, "step", "argv")] == Origin("prod.yaml", 8)
    assert document.origins[("transformations", 1, "input", "from")] == Origin("prod.yaml", 21)
    assert (
        str(document.origin(("transformations", 0, "outputs", 0, "metadata", "data_level"))) == "prod.yaml:15"
    )


def test_document_origin_falls_back_to_the_deepest_known_part() -> None:
    document = parse_yaml(GOOD, "prod.yaml")
    assert document.origin(("transformations", 0, "step", "argv", 99, "nope")) == Origin("prod.yaml", 8)
    assert document.origin(("nothing", "here")) == Origin("prod.yaml", 1)


def test_document_graft_keeps_both_origins() -> None:
    document = parse_yaml("name: p\ntransformations:\n  - include: x.yaml\n", "p.yaml")
    included = parse_yaml("name: t\nversion: 2\n", "x.yaml")
    document.graft(("transformations", 0), included)
    assert document.data["transformations"][0] == {"name": "t", "version": 2}
    assert document.origin(("transformations", 0, "version")) == Origin("x.yaml", 2)
    assert document.origin(("name",)) == Origin("p.yaml", 1)


def test_yaml_values_keep_their_types() -> None:
    document = parse_yaml("a: 1\nb: 1.5\nc: text\nd: 2024-01-02\ne: [1, x]\n", "p.yaml")
    assert document.data == {"a": 1, "b": 1.5, "c": "text", "d": date(2024, 1, 2), "e": [1, "x"]}


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a: 1\nb: [1, 2\nc: 3\n", 3),
        ("a: 1\nb:\n\tc: 1\n", 3),
        ("a: 1\n  b: 2\n", 2),
        ('a: "unterminated\n', 2),
        ("a: 1\n---\nb: 2\n", 2),
    ],
)
def test_invalid_yaml_reports_its_line(text: str, line: int) -> None:
    with pytest.raises(ProductionInvalid) as info:
        parse_yaml(text, "prod.yaml")
    assert str(info.value).startswith(f"prod.yaml:{line}: not valid YAML")


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("a: 1\nb: 2\na: 3\n", 3, "a"),
        ("t:\n  - name: x\n    step: 1\n    name: y\n", 4, "name"),
        ("t: {k: 1, k: 2}\n", 1, "k"),
    ],
)
def test_duplicate_keys_are_refused_with_their_line(text: str, line: int, key: str) -> None:
    with pytest.raises(ProductionInvalid) as info:
        parse_yaml(text, "prod.yaml")
    assert str(info.value) == f"prod.yaml:{line}: key {key!r} appears twice"


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(text: str) -> None:
    with pytest.raises(ProductionInvalid, match=r"^prod\.yaml: the file is empty$"):
        parse_yaml(text, "prod.yaml")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    assert problem(text) == "prod.yaml:1: a production must be a mapping"


def test_complex_mapping_keys_are_refused_with_the_source() -> None:
    # BUG: loading._scalar reports "line 1: ..." without the file name.
    with pytest.raises(ProductionInvalid) as info:
        parse_yaml("? [a, b]\n: 1\n", "prod.yaml")
    assert str(info.value).startswith("prod.yaml:1:")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("name: p\nnight: 2024-13-45\n", 2),  # looks like a date, is not one
        ("name: p\nx: !!int abc\n", 2),
        ("name: p\nx: !custom value\n", 2),
        ("name: p\nx: !!python/name:os.system ''\n", 2),
    ],
)
def test_scalars_yaml_cannot_construct_are_reported_with_their_line(text: str, line: int) -> None:
    # BUG: loading._scalar calls SafeConstructor.construct_object outside any try: a ValueError or
    # a yaml ConstructorError escapes parse_yaml instead of a ProductionInvalid naming file and line.
    with pytest.raises(ProductionInvalid) as info:
        parse_yaml(text, "prod.yaml")
    assert str(info.value).startswith(f"prod.yaml:{line}:")


# ------------------------------------------------------------------------ model errors


@pytest.mark.parametrize(
    ("line", "new", "expected"),
    [
        (1, "name: 1 bad name", "prod.yaml:1: name: String should match pattern"),
        (6, "      query: ''", "prod.yaml:6: transformations[0].input.query:"),
        (
            8,
            '      argv: "prog {input}"',
            "prod.yaml:8: transformations[0].step.argv: Input should be a valid list",
        ),
        (8, "      argv: []", "prod.yaml:8: transformations[0].step.argv: List should have at least 1 item"),
        (8, '      argv: [prog, "{input"]', "prod.yaml:8: transformations[0].step.argv[1]: Value error,"),
        (9, "      env: {1BAD: x}", "prod.yaml:9: transformations[0].step.env: Value error, environment"),
        (10, "      resources: {cores: 0}", "prod.yaml:10: transformations[0].step.resources.cores:"),
        (10, "      resources: {walltime: 10x}", "prod.yaml:10: transformations[0].step.resources.walltime:"),
        (
            11,
            "    grouping: {mode: by_size}",
            "prod.yaml:11: transformations[0].grouping: Value error, grouping by_size",
        ),
        (11, "    grouping: {mode: nightly}", "prod.yaml:11: transformations[0].grouping.mode:"),
        (13, "      - name: dl-1", "prod.yaml:13: transformations[0].outputs[0].name:"),
        (14, '        file_name: "a/{run_id}.h5"', "prod.yaml:14: transformations[0].outputs[0].file_name:"),
        (
            15,
            "        metadata: {ok: true}",
            "prod.yaml:15: transformations[0].outputs[0].metadata: Value error,",
        ),
        (17, "      max_attempts: 0", "prod.yaml:17: transformations[0].retry.max_attempts:"),
        (
            19,
            "        - {exit_codes: [137], action: explode}",
            "prod.yaml:19: transformations[0].retry.rules[0].action:",
        ),
        (19, "        - {exit_codes: [x]}", "prod.yaml:19: transformations[0].retry.rules[0].exit_codes[0]:"),
        (
            21,
            "    input: {query: data_level = DL1, frm: calibrate}",
            "prod.yaml:21: transformations[1].input.frm:",
        ),
    ],
)
def test_model_errors_name_source_line_and_field(line: int, new: str, expected: str) -> None:
    message = problem(replace_line(GOOD, line, new))
    assert expected in message


def test_extra_key_is_reported_at_its_own_line() -> None:
    text = GOOD.replace(
        "        metadata: {data_level: DL1}\n", "        metadata: {data_level: DL1}\n        colour: red\n"
    )
    message = problem(text)
    assert "prod.yaml:16: transformations[0].outputs[0].colour: Extra inputs are not permitted" in message


def test_several_problems_are_all_reported() -> None:
    text = replace_line(replace_line(GOOD, 8, "      argv: 1"), 17, "      max_attempts: 0")
    message = problem(text)
    assert message.startswith("the production has 2 problems:")
    assert "prod.yaml:8: transformations[0].step.argv" in message
    assert "prod.yaml:17: transformations[0].retry.max_attempts" in message


def test_one_problem_is_singular() -> None:
    assert problem(replace_line(GOOD, 8, "      argv: 1")).startswith("the production has 1 problem:")


def test_the_source_name_is_used() -> None:
    assert "workflows/night.yaml:8: transformations[0].step.argv" in problem(
        replace_line(GOOD, 8, "      argv: 1"), source="workflows/night.yaml"
    )


# --------------------------------------------------------------------- production checks

PARENT_CHILD = """\
name: prod
transformations:
  - name: parent
    input: {{query: data_level = R0}}
    step: {{argv: [prog, "{{input}}"]}}
    outputs:
      - {{name: dl1, file_name: "f_{{run_id}}.h5", metadata: {{data_level: DL1}}, inherit: {inherit}}}
  - name: child
    input: {{query: "{query}", from: parent}}
    step: {{argv: [prog, "{{input}}"]}}
"""


def parent_child(query: str, inherit: str = "all") -> str:
    return PARENT_CHILD.format(query=query, inherit=inherit)


@pytest.mark.parametrize(
    ("query", "inherit"),
    [
        ("data_level = DL1", "none"),
        ("data_level = DL1", "all"),
        ("data_level in (DL1, DL2)", "none"),
        ("run_id = 5", "all"),
        ("data_level = DL1 and run_id = 5", "all"),
        ("data_level = DL1 and run_id = 5", "[run_id]"),
        ("data_level != DL2", "none"),
    ],
)
def test_child_query_satisfiable_by_parent_outputs(query: str, inherit: str) -> None:
    production = load(parent_child(query, inherit))
    assert production.transformation("child").input.query == query


@pytest.mark.parametrize(
    ("query", "inherit"),
    [
        ("data_level = DL2", "none"),
        ("data_level = DL2", "all"),  # overrides are certain even when the rest is inherited
        ("run_id = 5", "none"),
        ("data_level = DL1 and run_id = 5", "none"),
        ("not data_level = DL1", "all"),
    ],
)
def test_child_query_unsatisfiable_by_parent_outputs(query: str, inherit: str) -> None:
    message = problem(parent_child(query, inherit))
    assert (
        f"prod.yaml:9: transformations[1].input.query: no output of parent 'parent' can match {query!r}"
        in message
    )


def test_child_may_select_on_the_automatic_keys() -> None:
    # BUG: rendering gives every output `production` and `transformation` metadata, but
    # validation._satisfies only looks at output.metadata, so with `inherit: none` a child that
    # selects its parent's files by `transformation = parent` is wrongly refused.
    load(parent_child("data_level = DL1 and transformation = parent", "none"))


def test_unknown_parent() -> None:
    text = GOOD.replace("from: calibrate", "from: calibrat")
    assert "prod.yaml:21: transformations[1].input.from: unknown parent transformation 'calibrat'" in problem(
        text
    )


def test_own_parent() -> None:
    text = GOOD.replace("from: calibrate", "from: merge")
    assert "transformations[1].input.from: a transformation cannot be its own parent" in problem(text)


def test_duplicate_transformation_names() -> None:
    text = GOOD.replace("  - name: merge", "  - name: calibrate").replace("from: calibrate", "from: []")
    assert "prod.yaml:20: transformations[1].name: transformation 'calibrate' is defined twice" in problem(
        text
    )


CYCLE = """\
name: prod
transformations:
  - name: a
    input: {query: level = B, from: b}
    step: {argv: [prog]}
    outputs: [{name: o, file_name: a.h5, metadata: {level: A}}]
  - name: b
    input: {query: level = A, from: a}
    step: {argv: [prog]}
    outputs: [{name: o, file_name: b.h5, metadata: {level: B}}]
  - name: c
    input: {query: level = B, from: b}
    step: {argv: [prog]}
"""


def test_cycles_are_reported() -> None:
    message = problem(CYCLE)
    assert "prod.yaml:3: transformations: the transformations form a cycle: a -> b -> a" in message


def test_outputs_that_feed_their_own_transformation_are_refused() -> None:
    text = "name: prod\ntransformations:\n  - name: a\n    input: {query: kind = bench}\n"
    text += "    step: {argv: [prog]}\n    outputs: [{name: o, file_name: a.h5}]\n"
    message = problem(text)
    expected = "prod.yaml:6: transformations[0].outputs: the outputs of 'a' could match its own input query"
    assert expected in message
    fixed = text.replace("file_name: a.h5}", "file_name: a.h5, metadata: {kind: copy}}")
    assert build_production(parse_yaml(fixed, "prod.yaml")).name == "prod"


def test_undeclared_feeding_counts_as_a_dependency_for_cycles() -> None:
    text = CYCLE.replace(", from: b}", "}").replace(", from: a}", "}")
    assert "the transformations form a cycle" in problem(text)


def test_bad_query_shows_the_caret() -> None:
    text = replace_line(GOOD, 6, "      query: data_level == R0")
    message = problem(text)
    assert (
        "prod.yaml:6: transformations[0].input.query: unknown operator '==': use '=' at position 11"
        in message
    )
    lines = message.splitlines()
    query_line = next(i for i, line in enumerate(lines) if line.strip() == "data_level == R0")
    assert lines[query_line + 1].index("^") == lines[query_line].index("data_level") + 11


def test_single_input_with_grouping_by_run_is_refused() -> None:
    text = GOOD.replace('[merge, "{output.run}", "{inputs}"]', '[merge, "{output.run}", "{input}"]')
    message = problem(text)
    assert "prod.yaml:22: transformations[1].step.argv[2]: {input} is one file" in message


@pytest.mark.parametrize("mode", ["{mode: all}", "{mode: by_size, size: 4}"])
def test_single_input_with_other_multi_file_groupings_is_refused(mode: str) -> None:
    text = replace_line(GOOD, 11, f"    grouping: {mode}")
    assert "transformations[0].step.argv[1]: {input} is one file" in problem(text)


def test_undeclared_output_is_refused() -> None:
    text = GOOD.replace('"{output.dl1}"', '"{output.dl2}"')
    assert "prod.yaml:8: transformations[0].step.argv[2]: {output.dl2} names no declared output" in problem(
        text
    )


def test_environment_templates_are_checked_like_argv() -> None:
    # BUG: validation._check_argv only looks at step.argv; an env value naming an undeclared
    # output (or {input} with grouping by run) passes loading and fails only when a task renders.
    text = replace_line(GOOD, 9, '      env: {OUT: "{output.nope}"}')
    assert "transformations[0].step.env" in problem(text)


def test_directory_checked_like_the_lfn_it_builds() -> None:
    # BUG: Output._directory only refuses a leading '/' and '..'; "./x" or "a//b" load fine and
    # every task then fails in check_relative_path when its outputs are rendered.
    text = GOOD.replace(
        "        metadata: {data_level: DL1}\n",
        '        directory: "./{production}"\n        metadata: {data_level: DL1}\n',
        1,
    )
    assert "transformations[0].outputs[0].directory" in problem(text)


# ---------------------------------------------------------------------- load_production


def test_load_the_toy_chain_with_includes() -> None:
    production = load_production(REPO / "workflows" / "toy_chain.yaml")
    assert production.name == "toy-chain"
    assert [t.name for t in production.transformations] == [
        "pedestal",
        "calibrate",
        "merge",
        "reconstruct",
        "summarize",
    ]
    merge = production.transformation("merge")
    assert merge.input.parents == ["calibrate"]
    assert merge.grouping.mode == "by_run"
    assert merge.outputs[0].inherit == ["night", "run_id", "run_type", "source", "n_subruns"]
    assert production.transformation("summarize").grouping.mode == "all"


def test_include_with_overrides(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text("name: calib\nversion: 1\ninput: {query: x = 1}\nstep: {argv: [prog]}\n")
    (tmp_path / "p.yaml").write_text("name: p\ntransformations:\n  - include: t.yaml\n    version: 7\n")
    production = load_production(tmp_path / "p.yaml")
    assert production.transformations[0].name == "calib"
    assert production.transformations[0].version == "7"


def test_errors_inside_an_included_file_name_that_file(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text("name: calib\ninput: {query: x = 1}\nstep: {argv: prog}\n")
    (tmp_path / "p.yaml").write_text("name: p\ntransformations:\n  - include: t.yaml\n")
    with pytest.raises(ProductionInvalid) as info:
        load_production(tmp_path / "p.yaml")
    assert f"{tmp_path / 't.yaml'}:3: transformations[0].step.argv" in str(info.value)


def test_missing_include(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: p\ntransformations:\n  - include: missing.yaml\n")
    with pytest.raises(ProductionInvalid) as info:
        load_production(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: include 'missing.yaml' found neither")


def test_missing_production_file(tmp_path: Path) -> None:
    with pytest.raises(ProductionInvalid, match=re.escape(f"{tmp_path / 'nope.yaml'}: no such file")):
        load_production(tmp_path / "nope.yaml")


def test_build_production_accepts_a_document_built_by_hand() -> None:
    document = Document(
        data={
            "name": "p",
            "transformations": [{"name": "t", "input": {"query": "x = 1"}, "step": {"argv": [1]}}],
        }
    )
    with pytest.raises(ProductionInvalid) as info:
        build_production(document)
    assert "transformations[0].step.argv[0]: Input should be a valid string" in str(info.value)


NEEDS = """\
name: prod
transformations:
  - name: calib
    input: {query: run_type = PEDCALIB and data_level = R0}
    step: {argv: [prog, "{output.c}"]}
    outputs: [{name: c, file_name: "c_{run_id}.h5", metadata: {data_level: CALIB}}]
  - name: dl1
    input:
      query: run_type = DATA and data_level = R0
      needs: {calibration: "data_level = CALIB and night = {night}"}
    step: {argv: [prog, "{input}", "{needs.calibration}", "{output.d}"]}
    outputs: [{name: d, file_name: "d_{run_id}.h5", metadata: {data_level: DL1}}]
"""


def test_needs_make_their_producers_come_first() -> None:
    from osa_grid.core.validation import dependencies, topological_order

    production = build_production(parse_yaml(NEEDS, "prod.yaml"))
    assert dependencies(production)["dl1"] == ["calib"]
    assert [t.name for t in topological_order(production)] == ["calib", "dl1"]


def test_undeclared_needs_and_bad_need_queries_are_reported() -> None:
    message = problem(NEEDS.replace("{needs.calibration}", "{needs.drive}"))
    assert "prod.yaml:11: transformations[1].step.argv[2]: {needs.drive} names no declared need" in message
    message = problem(NEEDS.replace("night = {night}", "night == {night}"))
    assert "transformations[1].input.needs.calibration" in message
