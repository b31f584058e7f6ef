"""Side-input (``needs``) queries bind metadata values as literals: a value never changes a query's shape.

Issue 19, High 2: values were pasted into the query text. ``source = Nobody or data_level = EVIL`` made a task
take an arbitrary file as its calibration; ``Crab Nebula``, ``Crab"`` or ``not`` made every pass fail (exit 2,
no task ran); a need selecting the task's own input crashed every pass with an IntegrityError.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from osa_grid.backends.local import LocalBackend
from osa_grid.catalog.store import Catalog
from osa_grid.core import query as querylang
from osa_grid.core.models import Production, Transformation
from osa_grid.core.planner import FileRecord
from osa_grid.core.rendering import render_needs
from osa_grid.core.states import TaskState
from osa_grid.core.validation import check_production
from osa_grid.data.local import LocalStore
from osa_grid.errors import QuerySyntaxError, TemplateError
from osa_grid.ports import NewFile
from osa_grid.services.productions import definition_of, digest_of
from osa_grid.services.shepherd import PassReport, Shepherd

INJECTION = "Nobody or data_level = EVIL"
SELFISH = "data_level = R1 and run_id = {run_id}"
STEP = {"argv": ["prog", "{input}", "{needs.cal}"]}


def _outputs(data_level: str) -> list[dict[str, Any]]:
    return [{"name": "dl1", "file_name": "{task_id}.h5", "metadata": {"data_level": data_level}}]


def _production(needs: str = "data_level = CAL and source = {source}") -> Production:
    return Production.model_validate(
        {
            "name": "p",
            "transformations": [
                {
                    "name": "calibrate",
                    "input": {"query": "data_level = R0", "needs": {"cal": needs}},
                    "step": STEP,
                    "outputs": [
                        {"name": "dl1", "file_name": "{task_id}.h5", "metadata": {"data_level": "DL1"}}
                    ],
                },
                {
                    # Its need selects the very file the task is planned from.
                    "name": "selfish",
                    "input": {
                        "query": "data_level = R1",
                        "needs": {"cal": "data_level = R1 and run_id = {run_id}"},
                    },
                    "step": STEP,
                    "outputs": [
                        {"name": "dl1", "file_name": "{task_id}.h5", "metadata": {"data_level": "DL1B"}}
                    ],
                },
            ],
        }
    )


def _file(lfn: str, **metadata: Any) -> NewFile:
    return NewFile(lfn, 1, "00000001", dict(metadata))


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    production = _production()
    catalog.save_production("p", definition_of(production), digest_of(production), None)
    yield catalog
    catalog.close()


def _plan(catalog: Catalog, tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "state", max_cores=1)
    try:
        Shepherd(catalog, backend, LocalStore(tmp_path / "data"), _production(), tmp_path).plan(PassReport())
    finally:
        backend.close()


def _by_input(catalog: Catalog, transformation: str) -> dict[str, tuple[TaskState, str | None, str | None]]:
    """Input LFN -> (state, the LFN its need resolved to, error)."""
    tasks = catalog.tasks("p", transformation=transformation)
    ids = [t.task_id for t in tasks]
    inputs, needs = catalog.task_inputs(ids), catalog.task_needs(ids)
    result = {}
    for task in tasks:
        (single,) = inputs[task.task_id]
        cal = needs[task.task_id].get("cal")
        result[single.lfn] = (task.state, cal.lfn if cal else None, task.error)
    return result


def test_a_value_holding_query_syntax_selects_only_files_whose_key_equals_it(
    catalog: Catalog, tmp_path: Path
) -> None:
    catalog.register_files(
        [_file("R0/a", data_level="R0", source=INJECTION), _file("CAL/evil", data_level="EVIL")]
    )
    _plan(catalog, tmp_path)
    # Before: "data_level = CAL and source = Nobody or data_level = EVIL" took CAL/evil as the calibration.
    assert _by_input(catalog, "calibrate") == {"R0/a": (TaskState.CREATED, None, None)}
    catalog.register_files([_file("CAL/a", data_level="CAL", source=INJECTION)])
    _plan(catalog, tmp_path)
    assert _by_input(catalog, "calibrate") == {"R0/a": (TaskState.READY, "CAL/a", None)}


def test_ordinary_values_resolve_and_a_bad_need_stops_its_task_only(catalog: Catalog, tmp_path: Path) -> None:
    sources = {"b": "Crab Nebula", "c": 'Crab"', "d": "not", "e": "and", "f": "Crab)"}
    catalog.register_files(
        [_file(f"R0/{k}", data_level="R0", source=v) for k, v in sources.items()]
        + [_file(f"CAL/{k}", data_level="CAL", source=v) for k, v in sources.items()]
        + [_file("CAL/other", data_level="CAL", source="Crab"), _file("R1/x", data_level="R1", run_id=1)]
    )
    _plan(catalog, tmp_path)  # before: QuerySyntaxError (exit 2) on every pass, no task ran
    assert _by_input(catalog, "calibrate") == {
        f"R0/{k}": (TaskState.READY, f"CAL/{k}", None) for k in sources
    }
    # Before: IntegrityError on every pass. Now that task is vetoed, with the reason.
    ((state, cal, error),) = _by_input(catalog, "selfish").values()
    assert (state, cal) == (TaskState.VETOED, None)
    assert error is not None and "needs cal" in error and "R1/x, one of the task's own inputs" in error


def test_a_value_the_template_cannot_format_vetoes_that_task_only(tmp_path: Path) -> None:
    production = _production("data_level = CAL and run_id = {run_id:05d}")
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'c.sqlite'}")
    try:
        catalog.save_production("p", definition_of(production), digest_of(production), None)
        catalog.register_files(
            [
                _file("R0/good", data_level="R0", run_id=7),
                _file("R0/bad", data_level="R0", run_id="seven"),
                _file("CAL/7", data_level="CAL", run_id="00007"),
            ]
        )
        backend = LocalBackend(tmp_path / "state", max_cores=1)
        try:
            Shepherd(catalog, backend, LocalStore(tmp_path / "data"), production, tmp_path).plan(PassReport())
        finally:
            backend.close()
        found = _by_input(catalog, "calibrate")
        assert found["R0/good"] == (TaskState.READY, "CAL/7", None)
        state, _, error = found["R0/bad"]
        assert state == TaskState.VETOED and error is not None and "{run_id:05d}" in error
    finally:
        catalog.close()


# ------------------------------------------------------------------------------ rendering


def _transformation(needs: str) -> Transformation:
    return Transformation.model_validate(
        {"name": "t", "input": {"query": "data_level = R0", "needs": {"cal": needs}}, "step": STEP}
    )


def _record(**metadata: Any) -> FileRecord:
    return FileRecord(1, "R0/a", {"data_level": "R0", **metadata})


@pytest.mark.parametrize("value", [INJECTION, "Crab Nebula", 'Crab"', "not", "a' or 'b", "x) or (y", 7, 2.5])
def test_render_needs_binds_the_value_as_one_literal(value: object) -> None:
    needs = render_needs(_transformation("data_level = CAL and source = {source}"), [_record(source=value)])
    assert needs["cal"] == querylang.And(
        (querylang.Comparison("data_level", "=", "CAL"), querylang.Comparison("source", "=", value))
    )


def test_placeholders_keep_their_type_or_become_text_when_quoted_or_formatted() -> None:
    t = _transformation('night = {night} and run = "{run_id}" and sub in {low:04d}..{high:04d}')
    (node,) = render_needs(t, [_record(night=date(2024, 1, 2), run_id=1807, low=1, high=20)]).values()
    assert querylang.to_text(node) == 'night = 2024-01-02 and run = "1807" and sub in "0001".."0020"'


def test_a_value_that_is_no_query_value_is_a_template_error_naming_the_need() -> None:
    with pytest.raises(TemplateError, match=r"needs cal: .*\{source\} = 'a\\x00b' is no query value"):
        render_needs(_transformation("source = {source}"), [_record(source="a\x00b")])


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{key} = 1", "expected a key, found the placeholder {key}"),
        ("lfn = dl1_{run_id}", "is part of a word"),
        ('lfn = "dl1_{run_id}"', "a placeholder in quotes must be the whole string"),
        ("source in ({a} {b})", "expected ',' or ')' in the list, found the placeholder {b}"),
        ("in dataset {name}", "expected a dataset name"),
    ],
)
def test_a_placeholder_where_no_value_goes_is_refused_on_load(template: str, problem: str) -> None:
    with pytest.raises(QuerySyntaxError, match=re.escape(problem)):
        querylang.parse_template(template)
    production = Production.model_validate(
        {"name": "p", "transformations": [_transformation(template).model_dump(by_alias=True)]}
    )
    assert any(problem in message for _, message in check_production(production))


# ------------------------------------------------------------------ values in argv and directories


def test_a_value_that_would_be_an_option_or_a_directory_level_vetoes_its_task_only(tmp_path: Path) -> None:
    production = Production.model_validate(
        {
            "name": "q",
            "transformations": [
                {
                    "name": "t",
                    "input": {"query": "data_level = R0"},
                    "step": {"argv": [sys.executable, "-c", "pass", "{source}"]},
                    "outputs": [{"name": "o", "file_name": "o.txt", "directory": "{production}/{source}"}],
                }
            ],
        }
    )
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'c.sqlite'}")
    backend = LocalBackend(tmp_path / "state", max_cores=1)
    try:
        catalog.save_production("q", definition_of(production), digest_of(production), None)
        store = LocalStore(tmp_path / "data")
        files = []
        for index, source in enumerate(["-rf", "a/b", "Crab"]):
            (tmp_path / "raw").write_text(source)
            replica = store.store(tmp_path / "raw", f"R0/{index}")
            files.append(
                NewFile(f"R0/{index}", 1, "00000001", {"data_level": "R0", "source": source}, [replica])
            )
        catalog.register_files(files)
        shepherd = Shepherd(catalog, backend, store, production, tmp_path)
        shepherd.plan(PassReport())
        shepherd.act(PassReport())
        tasks = catalog.tasks("q")
        inputs = catalog.task_inputs([t.task_id for t in tasks])
        found = {inputs[t.task_id][0].lfn: (t.state, t.error or "") for t in tasks}
        assert found["R0/2"] == (TaskState.SUBMITTED, ""), found
        assert found["R0/0"][0] == TaskState.VETOED and "starts with '-'" in found["R0/0"][1]
        assert found["R0/1"][0] == TaskState.VETOED and "cannot add a directory level" in found["R0/1"][1]
    finally:
        backend.close()
        catalog.close()
