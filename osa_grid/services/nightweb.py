"""The night's status page: the sequence table with colours, regenerated on every pass."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path

from osa_grid.core.nightly import SequenceStatus

STATE_COLOURS = {
    "COMPLETED": "#c8f7c5",
    "RUNNING": "#cde3ff",
    "PENDING": "#fff4c2",
    "WAITING": "#eeeeee",
    "FAILED": "#ffc9c9",
    "VETOED": "#f1c6ff",
    "CANCELLED": "#dddddd",
    "INCOMPLETE": "#ffd8a8",
}
HEADERS = ("Seq", "Parent", "Type", "Run", "Subruns", "Source", "Tries", "JobID", "State", "Exit")


def render_page(
    night: date,
    rows: Sequence[SequenceStatus],
    columns: Sequence[str],
    closed: bool,
    images: Sequence[str],
    quality: Sequence[str] = (),
    refresh: int | None = None,
    pages: Sequence[str] = (),
    events: Sequence[str] = (),
) -> str:
    """The page; ``refresh`` (seconds) makes browsers reload it (pages served live by ``osa-grid web``);
    ``pages`` are links to published datacheck pages (the night-wise datacheck's)."""
    header = "".join(f"<th>{html.escape(h)}</th>" for h in (*HEADERS, *columns, *quality))
    body = (
        "\n".join(_row(row, columns, quality) for row in rows)
        or f'<tr><td colspan="{len(HEADERS) + len(columns)}">no runs</td></tr>'
    )
    state = "closed" if closed else "in progress"
    reload = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh else ""
    plots = "\n".join(
        f'<figure><img src="{html.escape(src)}" alt="{html.escape(src)}"></figure>' for src in images
    )
    links = "".join(
        f'<li><a href="{html.escape(href)}">{html.escape(href.rsplit("/", 1)[-1])}</a></li>' for href in pages
    )
    datacheck_pages = f'<ul id="datacheck-pages">{links}</ul>' if links else ""
    notices = "".join(f"<li>{html.escape(line)}</li>" for line in events)
    event_list = f'<h2>Events</h2><ul id="events">{notices}</ul>' if notices else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{reload}<title>osa-grid night {night}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #999; padding: 0.2em 0.6em; text-align: right; }}
th {{ background: #333; color: white; }}
td.state {{ font-weight: bold; text-align: center; }}
figure img {{ max-width: 45%; }}
</style></head>
<body>
<h1>Night {night} <small>({state})</small></h1>
<p id="updated">updated {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC</p>
<table id="sequences"><thead><tr>{header}</tr></thead>
<tbody>
{body}
</tbody></table>
{event_list}
{datacheck_pages}
{plots}
</body></html>
"""


def identity_cells(row: SequenceStatus) -> list[str]:
    """Seq .. JobID of the operators' table, shared by the terminal table and the page."""
    return [
        str(row.seq_id),
        "" if row.parent is None else str(row.parent),
        row.kind,
        f"{row.run_id:05d}",
        str(row.n_subruns),
        row.source,
        str(row.tries),
        row.job_id,
    ]


def _row(row: SequenceStatus, columns: Sequence[str], quality: Sequence[str]) -> str:
    colour = STATE_COLOURS.get(row.state, "white")
    tds = "".join(f"<td>{html.escape(c)}</td>" for c in identity_cells(row))
    why = f'<br><small class="why">{html.escape(row.detail)}</small>' if row.detail else ""
    tds += f'<td class="state" style="background:{colour}">{html.escape(row.state)}{why}</td>'
    tds += f"<td>{'' if row.exit_code is None else row.exit_code}</td>"
    tds += "".join(f"<td>{row.progress.get(c, 0.0):.0f}%</td>" for c in columns)
    tds += "".join(f'<td class="quality">{html.escape(figure(row.quality.get(q)))}</td>' for q in quality)
    return f'<tr data-run="{row.run_id}" data-state="{html.escape(row.state)}">{tds}</tr>'


def figure(value: object) -> str:
    if value is None:
        return ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def write_page(path: Path, content: str) -> None:
    """Atomically: a browser never sees half a page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part")
    partial.write_text(content)
    os.replace(partial, path)
