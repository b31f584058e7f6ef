"""A failed step's error is what it said: the tail of its stderr, secrets hidden; retries compare words."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from osa_grid.core.nightly import TaskOfRun, run_state
from osa_grid.core.states import TaskState
from osa_grid.services.nightweb import render_page
from osa_grid.services.shepherd import STDERR_TAIL_CHARS, same_failure, stderr_tail


def test_the_tail_of_stderr_on_one_line_with_secrets_hidden(tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    log.write_text("x" * 100_000 + "\nstarting\n\nreading pedestal\nDIRACX_TOKEN=abc123\n" + "line\n" * 3)
    assert stderr_tail(log) == "reading pedestal | DIRACX_TOKEN=*** | line | line | line"
    log.write_text("calibration file is corrupt\n")
    assert stderr_tail(log) == "calibration file is corrupt"
    log.write_text("y" * 10_000)
    tail = stderr_tail(log)
    assert tail.startswith("...") and len(tail) == STDERR_TAIL_CHARS + 3
    log.write_text("")
    assert stderr_tail(log) == ""
    assert stderr_tail(tmp_path / "missing.log") == ""


def test_a_repeated_failure_is_the_same_words_whatever_the_numbers() -> None:
    before = "failed (exit code 1): 02:10:01 ERROR pixel 12 is dead; retry 1 of 3; log: /w/1/stderr.log"
    assert same_failure(before, "failed", 1, "failed (exit code 1): 02:11:40 ERROR pixel 13 is dead")
    assert not same_failure(before, "failed", 1, "failed (exit code 1): 02:11:40 ERROR disk full")
    assert not same_failure(before, "failed", 137, "failed (exit code 137): 02:11:40 ERROR pixel 13 is dead")
    assert not same_failure(None, "failed", 1, "failed (exit code 1)")


def test_a_failed_run_says_why_in_the_table() -> None:
    error = "failed (exit code 1): calibration file is corrupt; vetoed; log: /w/stderr.log"
    tasks = [TaskOfRun("reconstruct", 1807, TaskState.VETOED, 2, "j", 1, None, error)]
    assert run_state(3, tasks, {"calibrate"}, closed=True) == ("VETOED", error)


def test_the_page_lists_the_nights_events_as_text() -> None:
    page = render_page(date(2026, 11, 21), [], [], False, [], events=["night_reopened: reason=<b>fix</b>"])
    assert '<ul id="events"><li>night_reopened: reason=&lt;b&gt;fix&lt;/b&gt;</li></ul>' in page
    assert 'id="events"' not in render_page(date(2026, 11, 21), [], [], False, [])
