"""Rich renderings of production state, shared by ``status`` and the live display of ``production run``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from rich.console import Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from osa_grid.catalog.staging import StagingRow
from osa_grid.catalog.store import TaskRow
from osa_grid.core.outages import Outage, duration_text

COLUMNS = ("ready", "submitted", "running", "done", "failed", "vetoed", "cancelled")


def production_table(
    name: str, counts: Mapping[str, Mapping[str, int]], order: list[str], waiting: Mapping[str, int]
) -> Table:
    table = Table(title=f"production {name}", title_justify="left", expand=False)
    table.add_column("transformation")
    for column in COLUMNS:
        table.add_column(column, justify="right")
    table.add_column("waiting files", justify="right")
    table.add_column("progress", width=24)
    for transformation in order:
        states = counts.get(transformation, {})
        total = sum(states.values())
        done = states.get("done", 0)
        bar = ProgressBar(total=max(total, 1), completed=done, width=16)
        row: list[Text | ProgressBar | Group | str] = [transformation]
        row += [_cell(states.get(column, 0), column) for column in COLUMNS]
        row += [str(waiting.get(transformation, 0) or ""), Group(bar, Text(f"{done}/{total}"))]
        table.add_row(*row)
    return table


def _cell(value: int, column: str) -> Text:
    style = {"failed": "red", "vetoed": "magenta", "done": "green", "running": "cyan"}.get(column, "")
    return Text(str(value) if value else "", style=style if value else "")


def failures_table(rows: list[TaskRow]) -> Table:
    table = Table(title="tasks that did not succeed", title_justify="left")
    for column in ("task", "transformation", "state", "tries", "exit", "error", "logs"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row.task_id[:12],
            row.transformation,
            row.state.value,
            str(row.attempt),
            "" if row.exit_code is None else str(row.exit_code),
            (row.error or "")[:1000],
            row.workdir or "",
        )
    return table


def stuck_staging_table(rows: list[StagingRow]) -> Table:
    table = Table(title="inputs whose staging is stuck (their tasks wait)", title_justify="left")
    for column in ("file", "request", "since", "reason"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row.lfn, row.request_id or "", row.updated_at.isoformat(timespec="seconds"), row.error or ""
        )
    return table


def outages_table(outages: Sequence[Outage], now: datetime) -> Table:
    """Services the shepherds cannot reach (credentials were redacted before they were stored)."""
    table = Table(title="services not reached (shepherds wait; no task fails for it)", title_justify="left")
    for column in ("service", "url", "since (UTC)", "for", "last failed", "operator told", "last error"):
        table.add_column(column, overflow="fold", style="red" if column == "service" else "")
    for outage in outages:
        # Text cells: an error message is data, never read as markup.
        table.add_row(
            Text(outage.service),
            Text(outage.url),
            Text(f"{outage.since:%Y-%m-%d %H:%M:%S}"),
            Text(duration_text(outage.lasted(now))),
            Text(f"{outage.last_failure_at:%Y-%m-%d %H:%M:%S}"),
            Text(f"{outage.alerted_at:%Y-%m-%d %H:%M:%S}" if outage.alerted_at else "not yet"),
            Text(outage.last_error[:300]),
        )
    return table
