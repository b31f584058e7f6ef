"""The task state machine: which changes are allowed."""

from __future__ import annotations

import itertools

import pytest

from osa_grid.core.states import ACTIVE, ALLOWED, TERMINAL, UNFINISHED, TaskState, check_transition
from osa_grid.errors import InvalidTransition, OsaGridError

S = TaskState

ALLOWED_PAIRS = [
    (S.CREATED, S.STAGING),
    (S.CREATED, S.READY),
    (S.CREATED, S.CANCELLED),
    (S.CREATED, S.VETOED),  # a side input nothing can produce any more
    (S.STAGING, S.READY),
    (S.STAGING, S.FAILED),
    (S.STAGING, S.CANCELLED),
    (S.READY, S.SUBMITTED),
    (S.READY, S.CANCELLED),
    (S.READY, S.VETOED),
    (S.SUBMITTED, S.RUNNING),
    (S.SUBMITTED, S.DONE),  # a short job can finish between two polls
    (S.SUBMITTED, S.FAILED),
    (S.SUBMITTED, S.READY),  # lost before it started
    (S.SUBMITTED, S.CANCELLED),
    (S.RUNNING, S.DONE),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.READY),  # lost while running
    (S.RUNNING, S.CANCELLED),
    (S.FAILED, S.READY),  # retried
    (S.FAILED, S.VETOED),
    (S.VETOED, S.READY),  # an operator lifts the veto
    (S.CANCELLED, S.READY),
]


@pytest.mark.parametrize(("current", "target"), ALLOWED_PAIRS)
def test_allowed_transitions(current: TaskState, target: TaskState) -> None:
    check_transition("t1", current, target)


FORBIDDEN_PAIRS = sorted(set(itertools.product(S, S)) - set(ALLOWED_PAIRS))


@pytest.mark.parametrize(("current", "target"), FORBIDDEN_PAIRS)
def test_every_other_transition_is_forbidden(current: TaskState, target: TaskState) -> None:
    with pytest.raises(InvalidTransition) as info:
        check_transition("t1", current, target)
    assert str(info.value) == f"task t1: {current} -> {target} is not allowed"


def test_forbidden_examples() -> None:
    for current, target in [
        (S.DONE, S.READY),
        (S.DONE, S.FAILED),
        (S.CREATED, S.SUBMITTED),  # never submitted without being ready
        (S.CREATED, S.RUNNING),
        (S.READY, S.RUNNING),
        (S.READY, S.DONE),
        (S.FAILED, S.SUBMITTED),  # a retry goes through ready
        (S.VETOED, S.SUBMITTED),
        (S.RUNNING, S.SUBMITTED),
        (S.RUNNING, S.RUNNING),
    ]:
        with pytest.raises(InvalidTransition):
            check_transition("t", current, target)


def test_done_is_final() -> None:
    assert ALLOWED[S.DONE] == frozenset()


def test_no_state_moves_to_itself() -> None:
    assert all(state not in ALLOWED[state] for state in S)


def test_every_state_has_its_rules() -> None:
    assert set(ALLOWED) == set(S)


def test_every_state_is_reachable_from_created() -> None:
    reached = {S.CREATED}
    frontier = [S.CREATED]
    while frontier:
        for target in ALLOWED[frontier.pop()]:
            if target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(S)


def test_state_groups() -> None:
    assert {S.SUBMITTED, S.RUNNING} == ACTIVE
    assert {S.DONE, S.FAILED, S.VETOED, S.CANCELLED} == TERMINAL
    assert {S.CREATED, S.STAGING, S.READY, S.SUBMITTED, S.RUNNING} == UNFINISHED
    assert not ACTIVE & TERMINAL


def test_states_are_their_text() -> None:
    assert S("running") is S.RUNNING
    assert f"{S.DONE}" == "done"


def test_invalid_transition_is_a_failure_not_bad_input() -> None:
    with pytest.raises(OsaGridError) as info:
        check_transition("t", S.DONE, S.READY)
    assert info.value.exit_code == 1
