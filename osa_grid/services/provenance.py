"""Where a file comes from: its upstream graph down to the raw files, and its exports.

The walk goes file -> producing task (``files.task_id``) -> the task's inputs (``task_inputs``, with
their roles) -> their producing tasks, one level at a time, each level read in bulk (a handful of
queries whatever its width). Exports:

- W3C PROV-JSON (entities = files, activities = task attempts, agents = the software that ran them,
  plans = transformations; ``used``, ``wasGeneratedBy``, ``wasAssociatedWith``, ``wasDerivedFrom``);
- Graphviz DOT, rendered to SVG or PNG by ``dot`` when it is installed;
- a self-contained SVG drawn here when it is not (layers from the file down to its raw inputs).

Pictures and trees fold wide fan-ins (a run's 150 sub-runs) to their first few inputs; PROV-JSON is
always complete.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape

from osa_grid.catalog.store import INPUT_ROLE, Catalog, CatalogFile
from osa_grid.core import query as querylang
from osa_grid.core.metadata import MetaValue
from osa_grid.errors import BadInput, OsaGridError

OSA_NAMESPACE = "urn:osa-grid:"
LFN_NAMESPACE = "urn:osa-grid:lfn:"
FOLD_AFTER = 4  # inputs of one role shown per task in trees and pictures, unless asked for all


@dataclass(frozen=True)
class Attempt:
    """One run of a task, as the provenance table recorded it."""

    attempt: int
    argv: tuple[str, ...]
    software: Mapping[str, str]
    config_digest: str
    host: str
    backend: str
    job_id: str | None
    started_at: datetime | None
    ended_at: datetime | None
    exit_code: int | None

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class TaskNode:
    task_id: str
    production: str
    transformation: str
    state: str
    inputs: tuple[tuple[int, str], ...]  # (file id, role), inputs first, then side inputs, by LFN
    attempts: tuple[Attempt, ...]

    @property
    def final(self) -> Attempt | None:
        """The attempt that made the outputs: the last successful one (else the last one)."""
        succeeded = [a for a in self.attempts if a.exit_code == 0]
        candidates = succeeded or list(self.attempts)
        return candidates[-1] if candidates else None


@dataclass(frozen=True)
class FileNode:
    id: int
    lfn: str
    size: int
    checksum: str
    created_at: datetime
    task_id: str | None
    metadata: Mapping[str, MetaValue]


@dataclass
class Graph:
    root: int
    files: dict[int, FileNode]
    tasks: dict[str, TaskNode]
    hidden: dict[str, int] = field(default_factory=dict)  # task id -> inputs folded away

    def producer(self, file: FileNode) -> TaskNode | None:
        return self.tasks.get(file.task_id) if file.task_id else None

    def raw_files(self) -> list[FileNode]:
        return sorted((f for f in self.files.values() if self.producer(f) is None), key=lambda f: f.lfn)


# ------------------------------------------------------------------------------------ the walk


def upstream(catalog: Catalog, lfn: str) -> Graph:
    """The file, every task and file upstream of it, down to files no task made."""
    found = catalog.upstream(lfn)
    if found is None:
        raise BadInput(f"no file {lfn!r} in the catalog")
    level = found.level
    graph = Graph(found.root, {i: _file_node(f) for i, f in found.files.items()}, {})
    graph.tasks.update(_task_nodes(level.tasks, level.inputs, level.attempts))
    _sort_inputs(graph, list(graph.tasks))
    return graph


def _file_node(found: CatalogFile) -> FileNode:
    return FileNode(
        found.id, found.lfn, found.size, found.checksum, found.created_at, found.task_id, found.metadata
    )


def _task_nodes(
    rows: Sequence[Any], inputs: Sequence[tuple[str, int, str]], attempts: Sequence[Mapping[str, Any]]
) -> dict[str, TaskNode]:
    edges: dict[str, list[tuple[int, str]]] = {}
    for task_id, file_id, role in inputs:
        edges.setdefault(task_id, []).append((file_id, role))
    runs: dict[str, list[Attempt]] = {}
    for row in attempts:
        runs.setdefault(row["task_id"], []).append(_attempt(row))
    return {
        row.task_id: TaskNode(
            row.task_id,
            row.production,
            row.transformation,
            row.state.value,
            tuple(edges.get(row.task_id, [])),
            tuple(runs.get(row.task_id, [])),
        )
        for row in rows
    }


def _attempt(row: Mapping[str, Any]) -> Attempt:
    return Attempt(
        attempt=int(row["attempt"]),
        argv=tuple(str(a) for a in row["argv"] or ()),
        software={str(k): str(v) for k, v in (row["software"] or {}).items()},
        config_digest=str(row["config_digest"]),
        host=str(row["host"]),
        backend=str(row["backend"]),
        job_id=row["job_id"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        exit_code=row["exit_code"],
    )


def _sort_inputs(graph: Graph, task_ids: Sequence[str]) -> None:
    """Planned inputs first, then side inputs by role; by LFN within each (stable output)."""
    for task_id in task_ids:
        task = graph.tasks.get(task_id)
        if task is None:
            continue

        def order(edge: tuple[int, str]) -> tuple[bool, str, str]:
            file_id, role = edge
            return role != INPUT_ROLE, role, graph.files[file_id].lfn if file_id in graph.files else ""

        graph.tasks[task_id] = replace(task, inputs=tuple(sorted(task.inputs, key=order)))


def folded(graph: Graph, keep: int | None = None) -> Graph:
    """The graph with at most ``keep`` inputs per role and task; what is then unreachable goes too."""
    keep = FOLD_AFTER if keep is None else keep
    tasks: dict[str, TaskNode] = {}
    hidden: dict[str, int] = {}
    for task in graph.tasks.values():
        kept: list[tuple[int, str]] = []
        for edge in task.inputs:
            if sum(1 for _, role in kept if role == edge[1]) < keep:
                kept.append(edge)
        tasks[task.task_id] = replace(task, inputs=tuple(kept))
        if len(kept) < len(task.inputs):
            hidden[task.task_id] = len(task.inputs) - len(kept)
    pruned = Graph(graph.root, graph.files, tasks, hidden)
    files = {f.id: f for f in walk(pruned)}
    reachable_tasks = {f.task_id for f in files.values() if f.task_id in tasks}
    return Graph(
        graph.root,
        files,
        {t: tasks[t] for t in tasks if t in reachable_tasks},
        {t: n for t, n in hidden.items() if t in reachable_tasks},
    )


def more_inputs(count: int) -> str:
    return f"... {count} more input{'' if count == 1 else 's'}"


def walk(graph: Graph) -> Iterator[FileNode]:
    """Every file reachable from the root, each once, breadth first."""
    seen = {graph.root}
    queue = [graph.files[graph.root]]
    while queue:
        current = queue.pop(0)
        yield current
        task = graph.producer(current)
        for file_id, _ in task.inputs if task else ():
            if file_id not in seen and file_id in graph.files:
                seen.add(file_id)
                queue.append(graph.files[file_id])


# ------------------------------------------------------------------------------------ PROV-JSON


def prov_json(graph: Graph) -> dict[str, Any]:
    """The graph as a W3C PROV-JSON document (https://www.w3.org/submissions/prov-json/)."""
    document: dict[str, Any] = {
        "prefix": {"osa": OSA_NAMESPACE, "lfn": LFN_NAMESPACE},
        "entity": {},
        "activity": {},
        "agent": {},
        "used": {},
        "wasGeneratedBy": {},
        "wasAssociatedWith": {},
        "wasDerivedFrom": {},
    }
    for item in graph.files.values():
        document["entity"][entity_id(item)] = _entity(item)
    for task in graph.tasks.values():
        _add_task(document, graph, task)
    return {kind: records for kind, records in document.items() if records}


def production_prov_json(catalog: Catalog, production: str) -> dict[str, Any]:
    """One PROV-JSON document for everything a production made: the upstream graphs of its final products.

    Final products are the production's files that none of its tasks read; their graphs reach every other
    product, task and attempt, and the files the production started from.
    """
    tasks = [row.task_id for row in catalog.tasks(production)]
    read = {f.id for inputs in catalog.task_inputs(tasks).values() for f in inputs}
    read |= {f.id for needs in catalog.task_needs(tasks).values() for f in needs.values()}
    made = catalog.query(f"production = {querylang.literal_text(production)}")
    finals = [f.lfn for f in made if f.id not in read]
    merged: dict[str, dict[str, Any]] = {}
    for lfn in finals:
        for kind, records in prov_json(upstream(catalog, lfn)).items():
            merged.setdefault(kind, {}).update(records)
    return merged


def entity_id(item: FileNode) -> str:
    return "lfn:" + quote(item.lfn, safe="/._-+")


def activity_id(task: TaskNode, attempt: Attempt | None) -> str:
    return f"osa:task_{task.task_id}" + (f"_attempt_{attempt.attempt}" if attempt else "")


def _entity(item: FileNode) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "prov:type": "osa:File",
        "prov:label": item.lfn,
        "osa:lfn": item.lfn,
        "osa:size": item.size,
        "osa:adler32": item.checksum,
        "osa:registered": _time(item.created_at),
    }
    for key, value in sorted(item.metadata.items()):
        attributes[f"osa:{key}"] = _time(value) if isinstance(value, date) else value
    return attributes


def _time(value: date) -> dict[str, str]:
    kind = "xsd:dateTime" if isinstance(value, datetime) else "xsd:date"
    return {"$": value.isoformat(), "type": kind}


def _add_task(document: dict[str, Any], graph: Graph, task: TaskNode) -> None:
    plan = f"osa:plan_{quote(task.production, safe='')}_{quote(task.transformation, safe='')}"
    document["entity"][plan] = {
        "prov:type": "prov:Plan",
        "prov:label": f"{task.production}/{task.transformation}",
    }
    outputs = [f for f in graph.files.values() if f.task_id == task.task_id]
    final = task.final
    for attempt in task.attempts or (None,):
        activity = activity_id(task, attempt)
        document["activity"][activity] = _activity(task, attempt)
        agent = _agent(document, attempt)
        document["wasAssociatedWith"][f"_:assoc_{activity}"] = {
            "prov:activity": activity,
            "prov:agent": agent,
            "prov:plan": plan,
        }
        for file_id, role in task.inputs:
            used = graph.files.get(file_id)
            if used is not None:
                document["used"][f"_:used_{activity}_{file_id}"] = {
                    "prov:activity": activity,
                    "prov:entity": entity_id(used),
                    "prov:role": role,
                }
        if attempt is final:
            _add_outputs(document, graph, task, activity, outputs, attempt)


def _add_outputs(
    document: dict[str, Any],
    graph: Graph,
    task: TaskNode,
    activity: str,
    outputs: Sequence[FileNode],
    attempt: Attempt | None,
) -> None:
    for output in outputs:
        generation: dict[str, Any] = {"prov:entity": entity_id(output), "prov:activity": activity}
        if attempt is not None and attempt.ended_at is not None:
            generation["prov:time"] = attempt.ended_at.isoformat()
        document["wasGeneratedBy"][f"_:gen_{output.id}"] = generation
        for file_id, _ in task.inputs:
            if file_id in graph.files:
                document["wasDerivedFrom"][f"_:derived_{output.id}_{file_id}"] = {
                    "prov:generatedEntity": entity_id(output),
                    "prov:usedEntity": entity_id(graph.files[file_id]),
                    "prov:activity": activity,
                }


def _activity(task: TaskNode, attempt: Attempt | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "prov:type": "osa:TaskAttempt",
        "prov:label": f"{task.transformation}" + (f" attempt {attempt.attempt}" if attempt else ""),
        "osa:task_id": task.task_id,
        "osa:production": task.production,
        "osa:transformation": task.transformation,
        "osa:state": task.state,
    }
    if attempt is None:
        return attributes
    if attempt.started_at is not None:
        attributes["prov:startTime"] = attempt.started_at.isoformat()
    if attempt.ended_at is not None:
        attributes["prov:endTime"] = attempt.ended_at.isoformat()
    attributes.update(
        {
            "osa:attempt": attempt.attempt,
            "osa:command": attempt.command,
            "osa:config_digest": attempt.config_digest,
            "osa:host": attempt.host,
            "osa:backend": attempt.backend,
        }
    )
    if attempt.job_id is not None:
        attributes["osa:job_id"] = attempt.job_id
    if attempt.exit_code is not None:
        attributes["osa:exit_code"] = attempt.exit_code
    return attributes


def _agent(document: dict[str, Any], attempt: Attempt | None) -> str:
    """One software agent per set of versions (the same release stack is the same agent)."""
    software = dict(attempt.software) if attempt else {}
    digest = hashlib.sha256(json.dumps(software, sort_keys=True).encode()).hexdigest()[:12]
    agent = f"osa:software_{digest}"
    attributes: dict[str, Any] = {"prov:type": "prov:SoftwareAgent", "prov:label": _versions(software)}
    for package, version in sorted(software.items()):
        attributes[f"osa:version_{quote(package, safe='')}"] = version
    document["agent"][agent] = attributes
    return agent


def _versions(software: Mapping[str, str]) -> str:
    return ", ".join(f"{package} {version}" for package, version in sorted(software.items())) or "unknown"


# ------------------------------------------------------------------------------------ pictures


def dot(graph: Graph) -> str:
    """Graphviz DOT: files as yellow ellipses, task attempts as blue boxes (PROV's colours)."""
    lines = [
        "digraph provenance {",
        "  rankdir=TB;",
        '  node [fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=9, color="#555555"];',
    ]
    for item in graph.files.values():
        label = _dot_text("\n".join(file_label(item)))
        lines.append(f'  "f{item.id}" [shape=ellipse, style=filled, fillcolor="#FFFC87", label="{label}"];')
    for task in graph.tasks.values():
        label = _dot_text("\n".join(task_label(task)))
        lines.append(f'  "t{task.task_id}" [shape=box, style=filled, fillcolor="#9FB1FC", label="{label}"];')
        for file_id, role in task.inputs:
            attribute = "" if role == INPUT_ROLE else f' [label="{_dot_text(role)}"]'
            lines.append(f'  "t{task.task_id}" -> "f{file_id}"{attribute};')
        if graph.hidden.get(task.task_id):
            more = more_inputs(graph.hidden[task.task_id])
            lines.append(f'  "m{task.task_id}" [shape=plaintext, label="{more}"];')
            lines.append(f'  "t{task.task_id}" -> "m{task.task_id}" [style=dashed];')
    for item in graph.files.values():
        if item.task_id in graph.tasks:
            lines.append(f'  "f{item.id}" -> "t{item.task_id}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def file_label(item: FileNode) -> list[str]:
    level = item.metadata.get("data_level")
    return [item.lfn.rsplit("/", 1)[-1], *([str(level)] if level is not None else [])]


def task_label(task: TaskNode) -> list[str]:
    final = task.final
    lines = [task.transformation, f"task {task.task_id[:10]}"]
    if final is not None:
        lines.append(f"attempt {final.attempt} on {final.host}, exit {final.exit_code}")
    return lines


def graphviz_dot() -> str | None:
    """The ``dot`` program, if Graphviz is installed."""
    return shutil.which("dot")


def render(graph: Graph, image_format: str) -> bytes:
    """SVG or PNG bytes: through Graphviz when installed; SVG also without it."""
    program = graphviz_dot()
    if program is None:
        if image_format == "svg":
            return svg(graph).encode()
        raise OsaGridError(
            "PNG pictures need Graphviz's dot (e.g. apt-get install graphviz); --format svg works without it"
        )
    result = subprocess.run(
        [program, f"-T{image_format}"], input=dot(graph).encode(), capture_output=True, check=False
    )
    if result.returncode != 0:
        raise OsaGridError(f"dot failed (exit {result.returncode}): {result.stderr.decode(errors='replace')}")
    return result.stdout


# ----------------------------------------------------------------- SVG without Graphviz

_CHAR_WIDTH = 6.6  # px per character at font-size 11 (Helvetica-ish), generous enough for LFNs
_ROW_HEIGHT = 90
_GAP = 16
_LINE = 14


@dataclass(frozen=True)
class _Box:
    key: str
    lines: tuple[str, ...]
    kind: str  # file, task, more
    layer: int

    @property
    def width(self) -> float:
        return max(len(line) for line in self.lines) * _CHAR_WIDTH + 20

    @property
    def height(self) -> float:
        return len(self.lines) * _LINE + 12


def svg(graph: Graph) -> str:
    """A layered drawing: the file on top, each task below its outputs, its inputs below it."""
    boxes, edges = _layout(graph)
    rows: dict[int, list[_Box]] = {}
    for box in boxes.values():
        rows.setdefault(box.layer, []).append(box)
    width = max(sum(b.width + _GAP for b in row) for row in rows.values()) + _GAP
    height = (max(rows) + 1) * _ROW_HEIGHT + _GAP
    places: dict[str, tuple[float, float]] = {}
    for layer, row in rows.items():
        x = (width - sum(b.width + _GAP for b in row) + _GAP) / 2
        for box in row:
            places[box.key] = (x, _GAP + layer * _ROW_HEIGHT)
            x += box.width + _GAP
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="Helvetica, Arial, sans-serif" font-size="11">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>',
    ]
    for source, target, label in edges:
        parts.append(_svg_edge(boxes[source], places[source], boxes[target], places[target], label))
    for box in boxes.values():
        parts.append(_svg_box(box, places[box.key]))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _layout(graph: Graph) -> tuple[dict[str, _Box], list[tuple[str, str, str]]]:
    """Boxes by layer (breadth-first from the file) and edges (output -> task -> inputs)."""
    boxes: dict[str, _Box] = {}
    edges: list[tuple[str, str, str]] = []
    depth = {graph.root: 0}
    for item in walk(graph):
        layer = depth[item.id]
        boxes[f"f{item.id}"] = _Box(f"f{item.id}", tuple(file_label(item)), "file", layer)
        task = graph.producer(item)
        if task is None:
            continue
        key = f"t{task.task_id}"
        edges.append((f"f{item.id}", key, ""))
        if key in boxes:
            continue
        boxes[key] = _Box(key, tuple(task_label(task)), "task", layer + 1)
        for file_id, role in task.inputs:
            depth.setdefault(file_id, layer + 2)
            edges.append((key, f"f{file_id}", "" if role == INPUT_ROLE else role))
        if graph.hidden.get(task.task_id):
            more = f"m{task.task_id}"
            boxes[more] = _Box(more, (more_inputs(graph.hidden[task.task_id]),), "more", layer + 2)
            edges.append((key, more, ""))
    return boxes, edges


_STYLES = {
    "file": 'rx="14" fill="#FFFC87" stroke="#808080"',
    "task": 'fill="#9FB1FC" stroke="#0000FF"',
    "more": 'fill="none" stroke="none"',
}


def _svg_box(box: _Box, place: tuple[float, float]) -> str:
    x, y = place
    texts = "".join(
        f'<text x="{x + box.width / 2:.1f}" y="{y + 16 + i * _LINE:.1f}" text-anchor="middle">'
        f"{escape(line)}</text>"
        for i, line in enumerate(box.lines)
    )
    size = f'width="{box.width:.1f}" height="{box.height:.1f}"'
    rect = f'<rect x="{x:.1f}" y="{y:.1f}" {size} {_STYLES[box.kind]}/>'
    return f'<g class="{box.kind}">{rect}{texts}</g>'


def _svg_edge(
    source: _Box, source_at: tuple[float, float], target: _Box, target_at: tuple[float, float], label: str
) -> str:
    x1, y1 = source_at[0] + source.width / 2, source_at[1] + source.height
    x2, y2 = target_at[0] + target.width / 2, target_at[1]
    if target_at[1] <= source_at[1]:  # an input already drawn higher up (shared by several tasks)
        y1, y2 = source_at[1] + source.height / 2, target_at[1] + target.height
    line = (
        f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="#555" '
        'marker-end="url(#arrow)"/>'
    )
    if not label:
        return line
    middle = f'x="{(x1 + x2) / 2:.1f}" y="{(y1 + y2) / 2:.1f}"'
    return f'{line}<text {middle} fill="#333" font-size="9">{escape(label)}</text>'
