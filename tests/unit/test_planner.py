"""Task planning: grouping, stable task ids, retry decisions, upstream state."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from osa_grid.core.models import RetryPolicy, Transformation
from osa_grid.core.planner import (
    FileRecord,
    GroupingOutcome,
    PlannedTask,
    ancestors,
    common_metadata,
    decide_retry,
    group_key,
    grouping_metadata,
    plan_groups,
    task_id,
    upstream_drained,
)


def transformation(
    grouping: dict[str, Any] | None = None, version: str = "1", name: str = "t"
) -> Transformation:
    return Transformation.model_validate(
        {
            "name": name,
            "version": version,
            "input": {"query": "data_level = DL1"},
            "step": {"argv": ["prog", "{inputs}"]},
            "grouping": grouping or {"mode": "per_file"},
        }
    )


PER_FILE = transformation()
BY_RUN = transformation({"mode": "by_run"})
BY_SIZE = transformation({"mode": "by_size", "size": 3})
ALL = transformation({"mode": "all"})


def f(run: int, subrun: int, n_subruns: Any = 3, stream: int = 1, **extra: Any) -> FileRecord:
    metadata: dict[str, Any] = {"run_id": run, "subrun_id": subrun, "stream": stream, **extra}
    if n_subruns is not None:
        metadata["n_subruns"] = n_subruns
    lfn = f"DL1/LST-1.{stream}.Run{run:05d}.{subrun:04d}.h5"
    return FileRecord(id=hash(lfn) % 10**6, lfn=lfn, metadata=metadata)


def lfns(task: PlannedTask) -> list[str]:
    return [r.lfn for r in task.inputs]


def plan(t: Transformation, files: list[FileRecord], flush: bool = False) -> GroupingOutcome:
    return plan_groups("prod", t, files, flush)


# ----------------------------------------------------------------------------------- task_id


def test_task_id_is_order_independent_and_short() -> None:
    a = task_id("prod", PER_FILE, ["x", "y", "z"])
    assert a == task_id("prod", PER_FILE, ["z", "x", "y"])
    assert len(a) == 32
    assert int(a, 16) >= 0


@pytest.mark.parametrize(
    ("production", "t", "names"),
    [
        ("other", PER_FILE, ["x", "y"]),
        ("prod", transformation(version="2"), ["x", "y"]),
        ("prod", transformation(name="u"), ["x", "y"]),
        ("prod", PER_FILE, ["x"]),
        ("prod", PER_FILE, ["x", "y", "z"]),
        ("prod", PER_FILE, ["xy"]),  # no ambiguity from joining names
    ],
)
def test_task_id_depends_on_every_part(production: str, t: Transformation, names: list[str]) -> None:
    assert task_id(production, t, names) != task_id("prod", PER_FILE, ["x", "y"])


def test_task_id_is_known_for_a_given_input() -> None:
    # A pinned value: changing the hash would silently duplicate every task in existing catalogs.
    assert task_id("prod", PER_FILE, ["b", "a"]) == task_id("prod", PER_FILE, ["a", "b"])
    expected = hashlib.sha256(b"prod\x00t\x001\x00a\x00b\x00").hexdigest()[:32]
    assert task_id("prod", PER_FILE, ["a", "b"]) == expected


# ---------------------------------------------------------------------------------- per_file


def test_per_file_one_task_per_file() -> None:
    files = [f(1, 0), f(1, 1), f(2, 0)]
    outcome = plan(PER_FILE, files)
    assert outcome.pending == []
    assert sorted(lfns(t)[0] for t in outcome.tasks) == sorted(r.lfn for r in files)
    for task in outcome.tasks:
        assert task.group_key == task.inputs[0].lfn
        assert task.transformation == "t"
        assert task.task_id == task_id("prod", PER_FILE, lfns(task))


def test_duplicate_candidates_give_one_task() -> None:
    outcome = plan(PER_FILE, [f(1, 0), f(1, 0)])
    assert len(outcome.tasks) == 1


# ----------------------------------------------------------------------------------- by_run


def test_by_run_complete_runs_become_tasks_incomplete_wait() -> None:
    files = [f(1, s) for s in range(3)] + [f(2, s) for s in range(2)]
    outcome = plan(BY_RUN, files)
    (task,) = outcome.tasks
    assert task.group_key == "run_id=1"
    assert lfns(task) == sorted(r.lfn for r in files[:3])
    assert sorted(r.lfn for r, _ in outcome.pending) == sorted(r.lfn for r in files[3:])
    assert {key for _, key in outcome.pending} == {"run_id=2"}


def test_by_run_inputs_sorted_by_lfn() -> None:
    files = [f(1, 2), f(1, 0), f(1, 1)]
    (task,) = plan(BY_RUN, files).tasks
    assert lfns(task) == sorted(lfns(task))


def test_by_run_flush_closes_incomplete_runs() -> None:
    files = [f(1, 0), f(2, 0), f(2, 1), f(2, 2)]
    outcome = plan(BY_RUN, files, flush=True)
    assert outcome.pending == []
    assert sorted(len(t.inputs) for t in outcome.tasks) == [1, 3]


def test_by_run_missing_size_key_waits() -> None:
    files = [f(1, s, n_subruns=None) for s in range(3)]
    outcome = plan(BY_RUN, files)
    assert outcome.tasks == []
    assert len(outcome.pending) == 3
    assert len(plan(BY_RUN, files, flush=True).tasks) == 1


def test_by_run_without_size_key_only_flushes() -> None:
    t = transformation({"mode": "by_run", "size_key": None})
    files = [f(1, s) for s in range(3)]
    assert plan(t, files).tasks == []
    assert len(plan(t, files, flush=True).tasks) == 1


def test_by_run_inconsistent_expected_counts_wait() -> None:
    files = [f(1, 0, n_subruns=2), f(1, 1, n_subruns=3), f(1, 2, n_subruns=2)]
    outcome = plan(BY_RUN, files)
    assert outcome.tasks == []
    assert len(outcome.pending) == 3


@pytest.mark.parametrize("count", ["3", 3.0])
def test_by_run_count_must_be_an_integer(count: Any) -> None:
    files = [f(1, s, n_subruns=count) for s in range(3)]
    assert plan(BY_RUN, files).tasks == []


def test_by_run_with_several_keys() -> None:
    t = transformation({"mode": "by_run", "keys": ["run_id", "stream"], "size_key": "n_subruns"})
    files = [f(1, s, n_subruns=2, stream=st) for s in range(2) for st in (1, 2)]
    outcome = plan(t, files)
    assert sorted(task.group_key for task in outcome.tasks) == ["run_id=1,stream=1", "run_id=1,stream=2"]
    assert all(len(task.inputs) == 2 for task in outcome.tasks)


def test_grouping_metadata_is_what_group_keys_and_completeness_read() -> None:
    assert grouping_metadata(BY_RUN.grouping) == ("run_id", "n_subruns")
    by_night = transformation({"mode": "by_run", "keys": ["night", "telescope"], "size_key": None})
    assert grouping_metadata(by_night.grouping) == ("night", "telescope")
    assert [grouping_metadata(t.grouping) for t in (PER_FILE, BY_SIZE, ALL)] == [(), (), ()]
    # Records holding only those keys group exactly as records holding every key.
    full = [FileRecord(i, f"f{i}", {"run_id": i % 2, "n_subruns": 2, "source": "Crab"}) for i in range(4)]
    trimmed = [
        FileRecord(r.id, r.lfn, {k: r.metadata[k] for k in grouping_metadata(BY_RUN.grouping)}) for r in full
    ]
    assert [t.task_id for t in plan_groups("p", BY_RUN, trimmed, False).tasks] == [
        t.task_id for t in plan_groups("p", BY_RUN, full, False).tasks
    ]


def test_group_key_marks_missing_keys() -> None:
    assert group_key(BY_RUN.grouping, FileRecord(1, "x", {})) == "run_id=?"
    assert group_key(PER_FILE.grouping, FileRecord(1, "x", {})) == "x"
    assert group_key(ALL.grouping, FileRecord(1, "x", {"run_id": 1})) == "all"


def test_by_run_a_complete_run_keeps_its_id_whatever_else_arrives() -> None:
    run1 = [f(1, s) for s in range(3)]
    first = plan(BY_RUN, run1)
    later = plan(BY_RUN, [f(2, 0), *reversed(run1), f(3, 1)])
    assert {t.task_id for t in first.tasks} <= {t.task_id for t in later.tasks}


# ----------------------------------------------------------------------------------- by_size


def test_by_size_full_chunks_and_a_waiting_remainder() -> None:
    files = [f(1, s) for s in range(7)]
    outcome = plan(BY_SIZE, files)
    assert [len(t.inputs) for t in outcome.tasks] == [3, 3]
    assert [r.lfn for r, _ in outcome.pending] == [files[6].lfn]
    assert all(t.group_key == "all" for t in outcome.tasks)


def test_by_size_flush_takes_the_remainder() -> None:
    files = [f(1, s) for s in range(7)]
    outcome = plan(BY_SIZE, files, flush=True)
    assert sorted(len(t.inputs) for t in outcome.tasks) == [1, 3, 3]
    assert outcome.pending == []


def test_by_size_exact_multiple_leaves_nothing() -> None:
    outcome = plan(BY_SIZE, [f(1, s) for s in range(6)])
    assert len(outcome.tasks) == 2
    assert outcome.pending == []


# --------------------------------------------------------------------------------------- all


def test_all_waits_until_flush() -> None:
    files = [f(1, 0), f(2, 0)]
    outcome = plan(ALL, files)
    assert outcome.tasks == []
    assert [key for _, key in outcome.pending] == ["all", "all"]
    (task,) = plan(ALL, files, flush=True).tasks
    assert len(task.inputs) == 2


def test_nothing_to_plan() -> None:
    for t in (PER_FILE, BY_RUN, BY_SIZE, ALL):
        outcome = plan(t, [], flush=True)
        assert outcome.tasks == [] and outcome.pending == []


# ---------------------------------------------------------------------------------- properties

TRANSFORMATIONS = st.sampled_from(
    [PER_FILE, BY_RUN, BY_SIZE, ALL, transformation({"mode": "by_size", "size": 1})]
)
FILES = st.lists(
    st.builds(
        f,
        run=st.integers(1, 4),
        subrun=st.integers(0, 4),
        n_subruns=st.sampled_from([None, 1, 2, 3]),
        stream=st.integers(1, 2),
    ),
    max_size=25,
    unique_by=lambda r: r.lfn,
)


@settings(max_examples=150, deadline=None)
@given(t=TRANSFORMATIONS, files=FILES, flush=st.booleans())
def test_every_file_is_in_one_task_or_pending(
    t: Transformation, files: list[FileRecord], flush: bool
) -> None:
    outcome = plan(t, files, flush)
    placed = Counter(r.lfn for task in outcome.tasks for r in task.inputs)
    waiting = Counter(r.lfn for r, _ in outcome.pending)
    assert all(n == 1 for n in placed.values())
    assert all(n == 1 for n in waiting.values())
    assert not set(placed) & set(waiting)
    assert set(placed) | set(waiting) == {r.lfn for r in files}
    if flush:
        assert outcome.pending == []
    ids = [task.task_id for task in outcome.tasks]
    assert len(ids) == len(set(ids))
    for task in outcome.tasks:
        assert task.task_id == task_id("prod", t, lfns(task))
        assert lfns(task) == sorted(lfns(task))


@settings(max_examples=150, deadline=None)
@given(t=TRANSFORMATIONS, files=FILES, flush=st.booleans(), seed=st.randoms(use_true_random=False))
def test_candidate_order_does_not_matter(
    t: Transformation, files: list[FileRecord], flush: bool, seed: random.Random
) -> None:
    shuffled = list(files)
    seed.shuffle(shuffled)
    first, second = plan(t, files, flush), plan(t, shuffled, flush)
    assert {x.task_id for x in first.tasks} == {x.task_id for x in second.tasks}
    assert sorted(r.lfn for r, _ in first.pending) == sorted(r.lfn for r, _ in second.pending)


@settings(max_examples=150, deadline=None)
@given(t=st.sampled_from([PER_FILE, BY_RUN]), old=FILES, new=FILES)
def test_complete_groups_keep_their_ids_when_more_files_arrive(
    t: Transformation, old: list[FileRecord], new: list[FileRecord]
) -> None:
    before = plan(t, old)
    complete_runs = {task.group_key for task in before.tasks}
    # New files never belong to a run that is already complete (it has all the files it announced).
    arriving = [r for r in new if group_key(t.grouping, r) not in complete_runs]
    after = plan(t, old + arriving)
    assert {task.task_id for task in before.tasks} <= {task.task_id for task in after.tasks}


@settings(max_examples=100, deadline=None)
@given(t=TRANSFORMATIONS, files=FILES, batches=st.integers(1, 4), seed=st.randoms(use_true_random=False))
def test_incremental_planning_never_loses_or_duplicates_files(
    t: Transformation, files: list[FileRecord], batches: int, seed: random.Random
) -> None:
    """Like the shepherd: each round plans the files still pending plus the new ones; a final flush."""
    order = list(files)
    seed.shuffle(order)
    pending: list[FileRecord] = []
    tasks: list[PlannedTask] = []
    for index in range(batches):
        batch = order[index::batches]
        outcome = plan(t, pending + batch)
        tasks += outcome.tasks
        pending = [r for r, _ in outcome.pending]
    tasks += plan(t, pending, flush=True).tasks
    placed = [r.lfn for task in tasks for r in task.inputs]
    assert sorted(placed) == sorted(r.lfn for r in files)
    assert len({task.task_id for task in tasks}) == len(tasks)


# ------------------------------------------------------------------------------ common_metadata


def test_common_metadata() -> None:
    a = FileRecord(1, "a", {"run_id": 1, "subrun_id": 0, "night": "x"})
    b = FileRecord(2, "b", {"run_id": 1, "subrun_id": 1})
    assert common_metadata([a, b]) == {"run_id": 1}
    assert common_metadata([a]) == dict(a.metadata)
    assert common_metadata([]) == {}


def test_common_metadata_distinguishes_types_only_by_equality() -> None:
    a = FileRecord(1, "a", {"k": 1})
    b = FileRecord(2, "b", {"k": "1"})
    assert common_metadata([a, b]) == {}


# --------------------------------------------------------------------------------- decide_retry


def policy(max_attempts: int = 3, rules: list[dict[str, Any]] | None = None) -> RetryPolicy:
    return RetryPolicy.model_validate({"max_attempts": max_attempts, "rules": rules or []})


@pytest.mark.parametrize(("failures", "action"), [(1, "retry"), (2, "retry"), (3, "fail"), (4, "fail")])
def test_retry_until_max_attempts(failures: int, action: str) -> None:
    decision = decide_retry(policy(3), failures, "failed", 1)
    assert decision.action == action
    assert (decision.scale_memory, decision.scale_walltime) == (1.0, 1.0)


def test_retry_reason_counts_attempts() -> None:
    assert decide_retry(policy(3), 1, "failed", 1).reason == "attempt 2 of 3"
    assert "limit is 3" in decide_retry(policy(3), 3, "failed", 1).reason


def test_single_attempt_never_retries() -> None:
    assert decide_retry(policy(1), 1, "failed", 1).action == "fail"


def test_veto_rule_wins_even_on_the_first_failure() -> None:
    p = policy(5, [{"exit_codes": [2], "action": "veto"}])
    decision = decide_retry(p, 1, "failed", 2)
    assert decision.action == "veto"
    assert "exit code 2" in decision.reason
    assert decide_retry(p, 1, "failed", 1).action == "retry"


def test_scaling_rule() -> None:
    p = policy(
        3, [{"failures": ["oom"], "scale_memory": 2.0}, {"failures": ["timeout"], "scale_walltime": 1.5}]
    )
    oom = decide_retry(p, 1, "oom", 137)
    assert (oom.action, oom.scale_memory, oom.scale_walltime) == ("retry", 2.0, 1.0)
    timeout = decide_retry(p, 2, "timeout", None)
    assert (timeout.action, timeout.scale_memory, timeout.scale_walltime) == ("retry", 1.0, 1.5)
    assert decide_retry(p, 3, "oom", 137).action == "fail"


def test_first_matching_rule_applies() -> None:
    p = policy(3, [{"exit_codes": [1], "scale_memory": 3.0}, {"failures": ["failed"], "action": "veto"}])
    assert decide_retry(p, 1, "failed", 1).scale_memory == 3.0
    assert decide_retry(p, 1, "failed", 9).action == "veto"


# ------------------------------------------------------------------------------------------- DAG

# calibrate -> merge -> reconstruct -> summarize; reconstruct also reads calibration (a second root).
PARENTS = {
    "calibrate": [],
    "calibration": [],
    "merge": ["calibrate"],
    "reconstruct": ["merge", "calibration"],
    "summarize": ["reconstruct"],
}


def test_ancestors() -> None:
    assert ancestors(PARENTS, "summarize") == {"reconstruct", "merge", "calibrate", "calibration"}
    assert ancestors(PARENTS, "merge") == {"calibrate"}
    assert ancestors(PARENTS, "calibrate") == set()
    assert ancestors(PARENTS, "unknown") == set()


def test_ancestors_of_a_diamond_visits_each_once() -> None:
    diamond = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
    assert ancestors(diamond, "d") == {"a", "b", "c"}


def test_upstream_drained() -> None:
    assert upstream_drained(PARENTS, "summarize", {}, {})
    assert upstream_drained(PARENTS, "calibrate", {"calibrate": 5}, {})  # its own tasks do not count
    assert not upstream_drained(PARENTS, "summarize", {"calibrate": 1}, {})
    assert not upstream_drained(PARENTS, "summarize", {}, {"merge": 2})
    assert upstream_drained(PARENTS, "merge", {"reconstruct": 3, "calibration": 1}, {"summarize": 4})
    assert not upstream_drained(PARENTS, "reconstruct", {"calibration": 1}, {})
