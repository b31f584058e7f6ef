"""The CTAO metadata mapping, query -> Rucio filters, and the staging window (pure logic, no server)."""

from __future__ import annotations

from datetime import date

import pytest

from osa_grid.core import query as querylang
from osa_grid.core.staging import WaitingTask, Window, next_requests
from osa_grid.data.ctao_metadata import from_ctao, to_ctao
from osa_grid.data.rucio import rucio_filters
from osa_grid.errors import BadInput


def test_keys_map_to_the_ctao_data_model_and_back() -> None:
    metadata = {
        "data_level": "R0",
        "run_id": 1807,
        "night": date(2024, 1, 15),
        "subrun_id": 3,
        "version": "v1",
    }
    ctao = to_ctao(metadata)
    assert ctao == {
        "data__level": "R0",
        "instance__obs_id": 1807,
        "instance__observing_night": "2024-01-15",
        "osa__subrun_id": 3,
        "osa__version": "v1",  # never Rucio's own `version` column
    }
    assert from_ctao({**ctao, "someone_else": 1}) == {**metadata, "night": "2024-01-15"}


def test_queries_become_filter_groups() -> None:
    node = querylang.parse("data_level = R0 and run_id in 1807..1810 and (subrun_id < 2 or subrun_id > 8)")
    assert rucio_filters(node) == [
        {
            "data__level": "R0",
            "instance__obs_id.gte": 1807,
            "instance__obs_id.lte": 1810,
            "osa__subrun_id.lt": 2,
        },
        {
            "data__level": "R0",
            "instance__obs_id.gte": 1807,
            "instance__obs_id.lte": 1810,
            "osa__subrun_id.gt": 8,
        },
    ]
    with pytest.raises(BadInput, match="list_dids filters cannot express"):
        rucio_filters(querylang.parse("source ~ Mrk*"))


def task(name: str, *files: tuple[str, int]) -> WaitingTask:
    return WaitingTask(name, dict(files))


def test_the_window_takes_whole_tasks_in_order() -> None:
    tasks = [task("a", ("f1", 10), ("f2", 10)), task("b", ("f3", 10)), task("c", ("f4", 10))]
    assert next_requests(tasks, Window(3, 1000), 0, 0) == ["f1", "f2", "f3"]
    assert next_requests(tasks, Window(3, 1000), 2, 20) == []  # full: wait for releases
    assert next_requests(tasks, Window(10, 25), 0, 0) == ["f1", "f2"]  # bytes bound too
    # A task bigger than the window still goes when nothing else is staged: it cannot wait for ever.
    assert next_requests([task("big", ("g1", 10), ("g2", 10))], Window(1, 5), 0, 0) == ["g1", "g2"]
    # A file shared by two tasks is asked for once.
    assert next_requests([task("a", ("f1", 1)), task("b", ("f1", 1))], Window(5, 5), 0, 0) == ["f1"]
