"""YAML from users and data within bounds (alias bombs, deep nesting, endless aliases), and validation
that stays linear in the number of transformations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from osa_grid.cli.app import app
from osa_grid.core import query as querylang
from osa_grid.core import validation
from osa_grid.core.loading import build_production, parse_yaml
from osa_grid.core.models import Production
from osa_grid.core.runsummary import parse_run_summary
from osa_grid.core.yaml_limits import ALIAS_NODE_FLOOR, MAX_DEPTH
from osa_grid.errors import BadInput, ProductionInvalid
from osa_grid.services.productions import load_production


def laughs(levels: int, width: int = 10) -> str:
    """A small text whose aliases expand to width**levels values; with width 10, the aliases of line 4
    (``a3``) already reach more than 10,000 values."""
    lines = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    lines.append(f"name: *a{levels - 1}")
    return "\n".join(lines) + "\n"


def problem(text: str, source: str = "prod.yaml") -> str:
    with pytest.raises(ProductionInvalid) as info:
        build_production(parse_yaml(text, source))
    assert isinstance(info.value, BadInput)
    return str(info.value)


def test_an_alias_bomb_is_refused_at_the_alias_that_goes_too_far() -> None:
    # 10**5 values from 5 lines: before, the whole tree was built, then rejected as a name.
    text = laughs(levels=5)
    assert len(text.encode()) < 300
    message = problem(text)
    assert message.startswith("prod.yaml:4: not valid YAML: aliases expand to more than")
    assert "alias bomb" in message


def test_the_issue_s_billion_laughs_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(laughs(levels=9, width=9))  # about 400 bytes, 9**9 values: 86 s and 3.5 GB before
    with pytest.raises(ProductionInvalid, match=r"bomb\.yaml:\d+: not valid YAML: aliases expand"):
        load_production(path)


def test_anchors_for_shared_blocks_still_load() -> None:
    """A normal use of anchors: one resources block and one retry policy shared by many transformations."""
    transformations = "".join(
        f"  - name: t{i}\n"
        f"    input: {{query: data_level = L{i}}}\n"
        f"    step: {{argv: [prog, '{{input}}', '{{output.o}}'], resources: *resources}}\n"
        f"    retry: *retry\n"
        f"    outputs: [{{name: o, file_name: 'f{i}_{{run_id}}.h5', metadata: {{data_level: M{i}}}}}]\n"
        for i in range(300)
    )
    text = (
        "name: shared\n"
        "defaults:\n"
        "  - &resources {cores: 2, memory_gb: 4, walltime: 2h}\n"
        "  - &retry {max_attempts: 3, rules: [{exit_codes: [137], scale_memory: 2}]}\n"
        f"transformations:\n{transformations}"
    )
    document = parse_yaml(text, "prod.yaml")
    del document.data["defaults"]  # a place for anchors (Production forbids unknown keys)
    production = build_production(document)
    assert len(production.transformations) == 300
    assert all(t.step.resources.cores == 2 and t.retry.max_attempts == 3 for t in production.transformations)


def test_aliases_may_add_as_many_values_as_the_text_writes_out() -> None:
    """The budget grows with the file: a big file sharing a big block stays loadable."""
    block = "{" + ", ".join(f"k{i}: {i}" for i in range(ALIAS_NODE_FLOOR // 4)) + "}"
    uses = "\n".join(f"u{i}: *block" for i in range(3))  # ~3 * ALIAS_NODE_FLOOR / 2 aliased values
    many = "\n".join(f"w{i}: {i}" for i in range(ALIAS_NODE_FLOOR))  # as many values written out
    document = parse_yaml(f"{many}\nb: &block {block}\n{uses}\n", "big.yaml")
    assert document.data["u2"]["k7"] == 7


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("name: prod\nt: " + "[" * 900 + "]" * 900 + "\n", 2),
        ("name: prod\nt:\n  " + "{a: " * 900 + "1" + "}" * 900 + "\n", 3),
    ],
)
def test_deep_nesting_is_refused_with_file_and_line(text: str, line: int) -> None:
    """900 levels gave a RecursionError traceback."""
    message = problem(text)
    assert message.startswith(f"prod.yaml:{line}: not valid YAML: values are nested more than {MAX_DEPTH}")


def test_nesting_through_aliases_counts_the_expanded_depth() -> None:
    half = MAX_DEPTH // 2 + 5
    text = f"a: &a {'[' * half}1{']' * half}\nname: prod\nb: {'[' * half}*a{']' * half}\n"
    assert "nested more than" in problem(text)
    assert problem(text).startswith("prod.yaml:3:")


def test_an_alias_inside_its_own_value_is_refused() -> None:
    """``&x [*x]`` is an endless value: RecursionError before."""
    message = problem("name: prod\nloop: &x [1, *x]\n")
    assert message.startswith("prod.yaml:2: not valid YAML: alias *x is inside the value it names")


def test_the_cli_exits_2_with_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(laughs(levels=6))
    result = CliRunner().invoke(app, ["--home", str(tmp_path / "home"), "production", "run", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path}:4: not valid YAML: aliases expand" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_a_runsummary_header_is_read_within_the_same_bounds() -> None:
    header = "".join(f"# {line}\n" for line in laughs(levels=5).splitlines())
    text = f"# %ECSV 1.0\n{header}run_id,n_subruns,run_type\n1,2,DATA\n"
    with pytest.raises(
        BadInput, match=r"RunSummary\.ecsv:5: the ECSV header is not valid YAML: aliases expand"
    ):
        parse_run_summary(text, "RunSummary.ecsv")


# ------------------------------------------------------------------------------------ validation scale


def chain(count: int) -> Production:
    """t0 -> t1 -> ... each reading its parent's data level, listed children first (the deepest search)."""
    transformations = [
        {
            "name": f"t{i}",
            "input": {"query": f"data_level = L{i - 1}", **({"from": f"t{i - 1}"} if i else {})},
            "step": {"argv": ["prog", "{input}", "{output.o}"]},
            "outputs": [
                {"name": "o", "file_name": f"f{i}_{{run_id}}.h5", "metadata": {"data_level": f"L{i}"}}
            ],
        }
        for i in range(count)
    ]
    return Production.model_validate({"name": "chain", "transformations": transformations[::-1]})


def test_validating_2000_transformations_tries_each_query_on_few_outputs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before, every query was tried on every output (2000**2 = 4 million satisfiability checks, 23 s here,
    131 s in the report) and a chain listed children first overflowed the stack in find_cycle."""
    count = 2000
    production = chain(count)
    checks = 0
    satisfiable = querylang.satisfiable

    def counted(node: querylang.Node, known: Any, open_keys: bool) -> bool:
        nonlocal checks
        checks += 1
        if checks > 10 * count:  # fail at once rather than after minutes of quadratic work
            raise AssertionError(f"more than {10 * count} satisfiability checks for {count} transformations")
        return satisfiable(node, known, open_keys)

    monkeypatch.setattr(querylang, "satisfiable", counted)
    assert validation.check_production(production) == []
    order = [t.name for t in validation.topological_order(production)]
    assert order == [f"t{i}" for i in range(count)]
    assert checks <= 10 * count


def test_the_output_index_answers_like_trying_every_output() -> None:
    """Outputs that inherit keys (open) or fix a key to a number, a date or text, for queries the index can
    narrow (``=``, ``in``) and queries it cannot (ranges, ``or``, ``not``)."""
    outputs = [
        {"name": "a", "file_name": "a.h5", "metadata": {"data_level": "DL1"}},
        {"name": "b", "file_name": "b.h5", "metadata": {"data_level": "DL2", "stream": 1}, "inherit": "none"},
        {"name": "c", "file_name": "c.h5", "metadata": {"stream": 2.0}, "inherit": "none"},
        {"name": "d", "file_name": "d.h5", "metadata": {"night": "2026-01-01"}, "inherit": ["run_id"]},
    ]
    production = Production.model_validate(
        {
            "name": "p",
            "transformations": [
                {
                    "name": f"m{i}",
                    "input": {"query": "data_level = R0"},
                    "step": {"argv": ["p"]},
                    "outputs": [o],
                }
                for i, o in enumerate(outputs)
            ],
        }
    )
    index = validation.Producers(production)
    for text in [
        "data_level = DL1",
        "data_level in (DL2, DL3)",
        "stream = 2",
        "stream = 1 and data_level = DL2",
        "stream in 1..2",
        "night = 2026-01-01",
        "transformation = m2",
        "data_level = DL2 or stream = 2",
        "not data_level = DL1",
    ]:
        node = querylang.parse(text)
        every = {t.name for t in production.transformations if validation._feeds(production, t, node)}
        assert index.of(node) == every, text
