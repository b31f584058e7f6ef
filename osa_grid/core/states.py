"""The task state machine. Every change goes through ``check_transition``."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from osa_grid.errors import InvalidTransition


class TaskState(StrEnum):
    CREATED = "created"
    STAGING = "staging"
    READY = "ready"
    SUBMITTED = "submitted"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    VETOED = "vetoed"
    CANCELLED = "cancelled"


ALLOWED: dict[TaskState, frozenset[TaskState]] = {
    # CREATED -> VETOED: a side input that nothing can produce any more.
    TaskState.CREATED: frozenset({TaskState.STAGING, TaskState.READY, TaskState.CANCELLED, TaskState.VETOED}),
    TaskState.STAGING: frozenset({TaskState.READY, TaskState.FAILED, TaskState.CANCELLED}),
    # READY -> VETOED: an operator stops a task before it runs.
    TaskState.READY: frozenset({TaskState.SUBMITTED, TaskState.CANCELLED, TaskState.VETOED}),
    # SUBMITTED/RUNNING -> READY: the job was lost (shepherd crash, node gone) before it could finish.
    TaskState.SUBMITTED: frozenset(
        {TaskState.RUNNING, TaskState.DONE, TaskState.FAILED, TaskState.READY, TaskState.CANCELLED}
    ),
    TaskState.RUNNING: frozenset({TaskState.DONE, TaskState.FAILED, TaskState.READY, TaskState.CANCELLED}),
    TaskState.DONE: frozenset(),
    TaskState.FAILED: frozenset({TaskState.READY, TaskState.VETOED}),
    TaskState.VETOED: frozenset({TaskState.READY}),
    TaskState.CANCELLED: frozenset({TaskState.READY}),
}

ACTIVE = frozenset({TaskState.SUBMITTED, TaskState.RUNNING})
TERMINAL = frozenset({TaskState.DONE, TaskState.FAILED, TaskState.VETOED, TaskState.CANCELLED})
UNFINISHED = frozenset(TaskState) - TERMINAL
RUNNABLE = frozenset({TaskState.STAGING, TaskState.READY, TaskState.SUBMITTED, TaskState.RUNNING})


@dataclass(frozen=True)
class OperatorAction:
    """An operator's command on tasks: the states it takes them from, the state it puts them in, its event."""

    kind: str
    sources: tuple[TaskState, ...]
    target: TaskState


RETRY = OperatorAction("retry", (TaskState.FAILED, TaskState.VETOED, TaskState.CANCELLED), TaskState.READY)
# A campaign's `retry --failed`: what was cancelled stays cancelled.
RETRY_FAILED = OperatorAction("retry", (TaskState.FAILED, TaskState.VETOED), TaskState.READY)
VETO = OperatorAction("veto", (TaskState.READY, TaskState.FAILED), TaskState.VETOED)
CANCEL = OperatorAction("cancel", tuple(s for s in TaskState if s in UNFINISHED), TaskState.CANCELLED)


def check_transition(task_id: str, current: TaskState, target: TaskState) -> None:
    if target not in ALLOWED[current]:
        raise InvalidTransition(f"task {task_id}: {current} -> {target} is not allowed")
