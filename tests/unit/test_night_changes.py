"""A night that changes: runs reconciled with what was recorded, honest run states, closing rules."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

from osa_grid.core.nightly import ClosingRule, TaskOfRun, Veto, run_state, summary_final_at
from osa_grid.core.runsummary import IgnoredRun, NightRuns, RunInfo, reconcile, run_from_record, run_record
from osa_grid.core.states import TaskState

DATA = RunInfo(1807, 3, "DATA")


def test_new_and_grown_runs_are_taken() -> None:
    runs, changes = reconcile([DATA], NightRuns((RunInfo(1807, 5, "DATA"), RunInfo(1808, 2, "DATA"))))
    assert runs == (RunInfo(1807, 5, "DATA"), RunInfo(1808, 2, "DATA"))
    assert [(c.run_id, c.kind, c.is_problem) for c in changes] == [
        (1807, "grown", False),
        (1808, "added", False),
    ]


def test_a_run_that_disappears_changes_type_or_shrinks_is_kept_and_reported() -> None:
    known = [DATA, RunInfo(1808, 2, "DATA"), RunInfo(1809, 4, "DATA")]
    read = NightRuns(
        (RunInfo(1808, 2, "PEDCALIB"), RunInfo(1809, 1, "DATA")),
        (IgnoredRun(1807, "ERROR", "not processed"),),
    )
    runs, changes = reconcile(known, read)
    assert runs == tuple(known)
    assert [(c.run_id, c.kind) for c in changes] == [
        (1807, "type_changed"),
        (1808, "type_changed"),
        (1809, "shrunk"),
    ]
    assert all(c.is_problem for c in changes)
    gone, changes = reconcile(known, NightRuns(()))
    assert gone == tuple(known) and {c.kind for c in changes} == {"dropped"}


def test_a_run_record_round_trips() -> None:
    run = RunInfo(1807, 3, "DATA", datetime(2026, 11, 21, 22, 0, tzinfo=UTC), "GAIN_SELECTION")
    assert run_from_record(run_record(run)) == run


def _task(step: str, subrun: int | None, state: TaskState = TaskState.DONE) -> TaskOfRun:
    return TaskOfRun(step, 1807, state, 1, "j", 0, subrun)


def test_a_run_is_completed_only_when_every_sub_run_went_through() -> None:
    done = [_task("calibrate", 0), _task("calibrate", 1), _task("calibrate", 2), _task("merge", None)]
    assert run_state(3, done, {"calibrate"}, closed=False) == ("COMPLETED", "")
    two = done[:2]
    assert run_state(3, two, {"calibrate"}, closed=False) == ("WAITING", "sub-run(s) 2: no raw file")
    assert run_state(3, two, {"calibrate"}, closed=True) == ("INCOMPLETE", "sub-run(s) 2: no raw file")
    failed = [*two, _task("calibrate", 2, TaskState.VETOED)]
    assert run_state(3, failed, {"calibrate"}, closed=True) == ("VETOED", "sub-run(s) 2: vetoed")
    waiting = [*two, _task("calibrate", 2, TaskState.CREATED)]
    assert run_state(3, waiting, {"calibrate"}, closed=True) == (
        "INCOMPLETE",
        "sub-run(s) 2: not processed yet",
    )
    assert run_state(3, [], {"calibrate"}, closed=True) == ("INCOMPLETE", "closed while WAITING")


def test_vetoes_are_rules_on_a_run_or_a_sub_run() -> None:
    two = [_task("calibrate", 0), _task("calibrate", 1)]
    assert run_state(3, two, {"calibrate"}, False, [Veto(1807)]) == ("VETOED", "vetoed by the operators")
    state = run_state(3, two, {"calibrate"}, False, [Veto(1807, 2)])
    assert state == ("COMPLETED", "vetoed: run 1807 sub-run 2")
    assert Veto(1807).covers(1807, 5) and Veto(1807, 2).covers(1807, 2) and not Veto(1807, 2).covers(1807, 1)


def test_the_time_rule_makes_the_summary_final_the_next_morning() -> None:
    rule = ClosingRule(summary_final="time", at_utc=time(9, 30))
    assert summary_final_at(rule, date(2026, 11, 21)) == datetime(2026, 11, 22, 9, 30, tzinfo=UTC)


def test_a_step_on_one_sub_run_is_not_expected_for_every_sub_run() -> None:
    """The calibration reads sub-run 0: a PEDCALIB run of 5 sub-runs is complete without the others."""
    from pathlib import Path

    from osa_grid.core.nightly import per_subrun_transformations
    from osa_grid.services.productions import load_nightly_workflow

    workflow = load_nightly_workflow(Path(__file__).parents[2] / "workflows" / "lst_nightly.yaml")
    per_subrun = per_subrun_transformations(workflow)
    assert "r0_to_dl1" in per_subrun and not {"calibration", "drs4_pedestal"} & per_subrun
    calibration = [TaskOfRun("calibration", 1810, TaskState.DONE, 1, "j", 0, None)]
    assert run_state(5, calibration, per_subrun, closed=True) == ("COMPLETED", "")
