"""``osa-grid query | provenance | runs | datasets``: questions to the catalog, answered from the database."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from osa_grid.catalog.querysql import SortKey
from osa_grid.catalog.store import Catalog, CatalogFile, Dataset, Group, RunLevel
from osa_grid.cli.common import console, handle_errors, settings_of, terminal
from osa_grid.core import query as querylang
from osa_grid.errors import BadInput
from osa_grid.services import datasets as dataset_service
from osa_grid.services import provenance as prov
from osa_grid.services.query import (
    check_fields,
    checked_query,
    default_fields,
    external_search,
    field_value,
    files_of,
    names,
    plain,
    sort_keys,
)
from osa_grid.services.workspace import Workspace, open_workspace


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"
    lfn = "lfn"


class ProvenanceFormat(StrEnum):
    tree = "tree"
    prov_json = "prov-json"
    dot = "dot"
    svg = "svg"
    png = "png"


class ListFormat(StrEnum):
    table = "table"
    json = "json"


datasets_app = typer.Typer(
    help="Named queries (baskets), frozen to their file list on demand; use them as 'in dataset NAME'.",
    invoke_without_command=True,
)


# The top-level commands of this module (loaded on demand by ``osa_grid.cli.app``).
commands = typer.Typer()
commands.add_typer(datasets_app, name="datasets")


# ------------------------------------------------------------------------------------ query


@commands.command("query")
@handle_errors
def query(
    ctx: typer.Context,
    expression: Annotated[
        str,
        typer.Argument(help="Metadata query, e.g. 'data_level = DL1 and night in 2024-01-01..2024-03-31'"),
    ],
    output_format: Annotated[
        Optional[Format],  # noqa: UP045
        typer.Option("--format", "-f", help="table, json (lines), csv or lfn (one per line)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json")] = False,
    fields: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Columns: metadata keys and lfn, size, adler32, created_at, task_id, replicas"),
    ] = None,
    sort: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Sort keys, '-' for descending: --sort=night,-run_id (default: registration)"),
    ] = None,
    limit: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=1, max=querylang.INT64_MAX, help="At most this many files"),  # the database's bound
    ] = None,
    count: Annotated[bool, typer.Option("--count", help="Only the number of matching files")] = False,
    group_by: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--group-by", help="Files and bytes per value of these keys: --group-by night,data_level"
        ),
    ] = None,
    where: Annotated[str, typer.Option(help="catalog, or rucio (its metadata, when configured)")] = "catalog",
) -> None:
    """Files whose metadata match a query (docs/query.md: the language)."""
    shape = _output_format(output_format, as_json)
    _check_combination(shape, fields, sort, limit, count, group_by)
    with open_workspace(settings_of(ctx)) as workspace:
        if where != "catalog":
            _query_elsewhere(workspace, where, expression, shape, count, limit)
            return
        catalog = workspace.catalog
        key_types = catalog.metadata_keys()
        node = checked_query(catalog, expression, key_types)
        if group_by is not None:
            keys = names("--group-by", group_by)
            check_fields("--group-by", keys, key_types)
            _print_groups(catalog.group_counts(node, keys), keys, shape)
        elif count:
            _print_count(catalog.count_matching(node), shape)
        else:
            chosen = names("--fields", fields) if fields is not None else None
            if chosen is not None:
                check_fields("--fields", chosen, key_types)
            order = sort_keys(sort, key_types) if sort is not None else []
            _print_files(catalog, node, shape, chosen, order, limit)


def _output_format(output_format: Format | None, as_json: bool) -> Format:
    if as_json and output_format not in (None, Format.json):
        raise BadInput(f"--json and --format {output_format} contradict each other")
    return Format.json if as_json else (output_format or Format.table)


def _check_combination(
    shape: Format,
    fields: str | None,
    sort: str | None,
    limit: int | None,
    count: bool,
    group_by: str | None,
) -> None:
    """Options that cannot go together are refused, rather than silently ignored."""
    given = [name for name, value in (("--fields", fields), ("--sort", sort), ("--limit", limit)) if value]
    if group_by is not None and given:
        raise BadInput(f"--group-by prints counts per value: {_do_not_apply(given)}")
    if group_by is not None and shape == Format.lfn:
        raise BadInput("--group-by prints counts per value, not LFNs: use --format table, json or csv")
    if group_by is None and count and given:
        raise BadInput(f"--count prints one number: {_do_not_apply(given)}")
    if shape == Format.lfn and fields is not None:
        raise BadInput("--format lfn prints LFNs only: --fields does not apply")


def _do_not_apply(options: list[str]) -> str:
    return f"{', '.join(options)} {'does' if len(options) == 1 else 'do'} not apply"


def _print_count(total: int, shape: Format) -> None:
    print(json.dumps({"count": total}) if shape == Format.json else total)


def _print_files(
    catalog: Catalog,
    node: querylang.Node,
    shape: Format,
    fields: list[str] | None,
    order: Sequence[SortKey],
    limit: int | None,
) -> None:
    if shape == Format.lfn:
        for _, lfn in catalog.match(node, order, limit):
            print(lfn)
        return
    found = files_of(catalog, node, order, limit)
    if shape == Format.json:
        for item in found:
            print(json.dumps(_json_record(item, fields), sort_keys=fields is None, default=str))
        return
    if fields is not None:
        columns = fields
    elif shape == Format.csv:  # every key of the matching files: CSV is for other programs
        columns = ["lfn", *catalog.match_keys(node)]
    else:
        columns = ["lfn", *default_fields(catalog, node)]
    if shape == Format.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_csv_cell(field_value(item, c)) for c in columns] for item in found)
        return
    _print_table(list(found), columns)


def _json_record(item: CatalogFile, fields: list[str] | None) -> dict[str, Any]:
    if fields is None:  # the shape scripts rely on
        return {
            "lfn": item.lfn,
            "size": item.size,
            "adler32": item.checksum,
            "metadata": {k: plain(v) for k, v in item.metadata.items()},
            "replicas": [r.pfn for r in item.replicas],
        }
    return {name: field_value(item, name) for name in fields}


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    return str(plain(value))


def _print_table(found: Sequence[CatalogFile], columns: Sequence[str]) -> None:
    table = Table(title=f"{len(found)} file(s)", title_justify="left")
    for column in columns:
        table.add_column(column, no_wrap=column == "lfn", justify="right" if column == "size" else "left")
    for item in found:
        table.add_row(*(_csv_cell(field_value(item, c)) for c in columns))
    console.print(table)


def _print_groups(groups: Sequence[Group], keys: Sequence[str], shape: Format) -> None:
    if shape == Format.json:
        for group in groups:
            record = {key: plain(value) for key, value in zip(keys, group.values, strict=True)}
            print(json.dumps({**record, "files": group.files, "size": group.size}, default=str))
        return
    if shape == Format.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow([*keys, "files", "size"])
        writer.writerows([*(_csv_cell(v) for v in g.values), g.files, g.size] for g in groups)
        return
    table = Table(
        title=f"{sum(g.files for g in groups)} file(s) in {len(groups)} group(s)", title_justify="left"
    )
    for key in keys:
        table.add_column(key)
    table.add_column("files", justify="right")
    table.add_column("size", justify="right")
    for group in groups:
        cells = [_csv_cell(v) if v is not None else Text("(none)", "dim") for v in group.values]
        table.add_row(*cells, str(group.files), human_size(group.size))
    console.print(table)


def _query_elsewhere(
    workspace: Workspace, where: str, expression: str, shape: Format, count: bool, limit: int | None
) -> None:
    search = external_search(where, workspace.settings.data_manager, _data_manager(workspace, where))
    found = search.search(querylang.parse(expression), None if count else limit)
    if count:
        _print_count(len(found), shape)
        return
    for lfn in found:
        print(json.dumps({"lfn": lfn}) if shape == Format.json else lfn)


def _data_manager(workspace: Workspace, where: str) -> object | None:
    # Only build the data manager the user asked about: a local store cannot answer for Rucio.
    return workspace.data if workspace.settings.data_manager == where else None


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


# ------------------------------------------------------------------------------- provenance


@commands.command("provenance")
@handle_errors
def provenance(
    ctx: typer.Context,
    lfn: Annotated[str, typer.Argument(help="Logical file name")],
    output_format: Annotated[
        ProvenanceFormat,
        typer.Option("--format", "-f", help="tree, prov-json (W3C PROV-JSON), dot, svg or png"),
    ] = ProvenanceFormat.tree,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write to this file")] = None,  # noqa: UP045
    all_inputs: Annotated[
        bool, typer.Option("--all", help="Show every input (trees and pictures fold wide fan-ins)")
    ] = False,
) -> None:
    """Where a file comes from: every task and file upstream of it, down to the raw files."""
    if output_format == ProvenanceFormat.png and output is None and sys.stdout.isatty():
        raise BadInput("--format png writes binary data: give --output FILE")
    with open_workspace(settings_of(ctx)) as workspace:
        graph = prov.upstream(workspace.catalog, lfn)
    shown = graph if all_inputs else prov.folded(graph)
    if output_format == ProvenanceFormat.tree and output is None:
        console.print(provenance_tree(shown))
    elif output_format == ProvenanceFormat.tree:
        _write(output, _plain_text(provenance_tree(shown)))
    elif output_format == ProvenanceFormat.prov_json:
        _write(output, json.dumps(prov.prov_json(graph), indent=2, default=str) + "\n")
    elif output_format == ProvenanceFormat.dot:
        _write(output, prov.dot(shown))
    else:
        _write(output, prov.render(shown, output_format.value))


def _write(output: Path | None, content: str | bytes) -> None:
    data = content.encode() if isinstance(content, str) else content
    if output is not None:
        output.write_bytes(data)
        return
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _plain_text(renderable: Any) -> str:
    buffer = io.StringIO()
    terminal(file=buffer, width=200, color_system=None).print(renderable)
    return buffer.getvalue()


def provenance_tree(graph: prov.Graph) -> Tree:
    root = graph.files[graph.root]
    tree = Tree(_file_text(root))
    _add_producer(tree, graph, root, set())
    return tree


def _add_producer(branch: Tree, graph: prov.Graph, item: prov.FileNode, shown: set[str]) -> None:
    task = graph.producer(item)
    if task is None:
        if item.task_id:
            branch.add(Text(f"made by task {item.task_id}, which is not in the catalog", "dim"))
        return
    if task.task_id in shown:
        branch.add(Text(f"{task.transformation} task {task.task_id[:10]} (shown above)", "dim"))
        return
    shown.add(task.task_id)
    node = branch.add(_task_text(task))
    final = task.final
    if final is not None:
        node.add(Text(f"$ {final.command}", "dim"))
        versions = prov._versions(final.software)
        node.add(Text(f"software: {versions}; config {final.config_digest[:12]}", "dim"))
    for file_id, role in task.inputs:
        child = graph.files.get(file_id)
        if child is None:
            continue
        label = _file_text(child)
        if role != prov.INPUT_ROLE:
            label.append(f"  ({role})", "magenta")
        _add_producer(node.add(label), graph, child, shown)
    if graph.hidden.get(task.task_id):
        node.add(Text(f"{prov.more_inputs(graph.hidden[task.task_id])} (--all shows them)", "dim"))


def _file_text(item: prov.FileNode) -> Text:
    level = item.metadata.get("data_level")
    details = [str(level)] if level is not None else []
    details.append(human_size(item.size))
    if item.task_id is None:
        details.append("raw")
    return Text.assemble((item.lfn, "bold"), "  ", (", ".join(details), "dim"))


def _task_text(task: prov.TaskNode) -> Text:
    text = Text.assemble(
        (task.transformation, "cyan"), f" task {task.task_id[:10]} ", (str(task.state), "dim")
    )
    final = task.final
    if final is None:
        return text
    where = f"{final.backend} job {final.job_id}" if final.job_id else final.backend
    when = _interval(final.started_at, final.ended_at)
    return text.append(f"  attempt {final.attempt} on {final.host} ({where}), exit {final.exit_code}{when}")


def _interval(start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return ""
    text = f", {start:%Y-%m-%d %H:%M:%S}"
    if end is not None:
        text += f" to {end:%H:%M:%S} ({(end - start).total_seconds():.0f} s)"
    return text


# ------------------------------------------------------------------------------------- runs


@commands.command("runs")
@handle_errors
def runs(
    ctx: typer.Context,
    night: Annotated[str, typer.Option("--night", help="The night, YYYY-MM-DD or YYYYMMDD")],
    output_format: Annotated[ListFormat, typer.Option("--format", "-f")] = ListFormat.table,
) -> None:
    """A night's runs: sub-runs, data levels present and files per level."""
    day = night_date(night)
    with open_workspace(settings_of(ctx)) as workspace:
        rows = workspace.catalog.run_summary(day.isoformat())
    summary = run_records(rows)
    if output_format == ListFormat.json:
        print(json.dumps({"night": day.isoformat(), "runs": summary}, default=str))
        return
    if not summary:
        console.print(f"no runs of night {day} in the catalog")
        return
    console.print(_runs_table(day, summary))


def night_date(text: str) -> date:
    for form in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.strptime(text, form).date()
        except ValueError:
            continue
    raise BadInput(f"--night {text!r}: expected YYYY-MM-DD or YYYYMMDD")


def run_records(rows: Iterable[RunLevel]) -> list[dict[str, Any]]:
    """One record per run, its levels nested; rows come sorted by run."""
    records: dict[object, dict[str, Any]] = {}
    for row in rows:
        record = records.setdefault(
            row.run_id,
            {"run_id": row.run_id, "run_type": None, "source": None, "n_subruns": None, "subruns": 0},
        )
        record["run_type"] = record["run_type"] or row.run_type
        record["source"] = record["source"] or row.source
        record["n_subruns"] = record["n_subruns"] or row.n_subruns
        record["subruns"] = max(record["subruns"], row.subruns)
        record.setdefault("levels", {})[row.data_level or "(none)"] = {
            "files": row.files,
            "subruns": row.subruns,
            "size": row.size,
        }
    for record in records.values():
        record["files"] = sum(level["files"] for level in record["levels"].values())
        record["size"] = sum(level["size"] for level in record["levels"].values())
    return list(records.values())


def _runs_table(day: date, summary: Sequence[dict[str, Any]]) -> Table:
    files = sum(r["files"] for r in summary)
    size = sum(r["size"] for r in summary)
    title = f"night {day}: {len(summary)} run(s), {files} file(s), {human_size(size)}"
    table = Table(title=title, title_justify="left")
    for column in ("run", "type", "source", "sub-runs", "levels (files)", "files", "size"):
        table.add_column(column, justify="right" if column in ("run", "files", "size") else "left")
    for record in summary:
        expected = f"/{record['n_subruns']}" if record["n_subruns"] is not None else ""
        levels = "  ".join(f"{name} {level['files']}" for name, level in record["levels"].items())
        table.add_row(
            str(record["run_id"]),
            record["run_type"] or "",
            record["source"] or "",
            f"{record['subruns']}{expected}",
            levels,
            str(record["files"]),
            human_size(record["size"]),
        )
    return table


# --------------------------------------------------------------------------------- datasets


@datasets_app.callback()
@handle_errors
def datasets_overview(
    ctx: typer.Context,
    output_format: Annotated[ListFormat, typer.Option("--format", "-f")] = ListFormat.table,
) -> None:
    """Without a command: every dataset, with its query and size."""
    if ctx.invoked_subcommand is None:
        datasets_list(ctx, output_format)


@datasets_app.command("list")
@handle_errors
def datasets_list(
    ctx: typer.Context,
    output_format: Annotated[ListFormat, typer.Option("--format", "-f")] = ListFormat.table,
) -> None:
    """Every dataset: live or frozen, its query, files and size."""
    with open_workspace(settings_of(ctx)) as workspace:
        found = workspace.catalog.datasets()
    if output_format == ListFormat.json:
        for dataset in found:
            print(json.dumps(dataset_service.as_record(dataset)))
        return
    if not found:
        console.print("no datasets yet: osa-grid datasets create NAME --query EXPR")
        return
    table = Table(title=f"{len(found)} dataset(s)", title_justify="left")
    for column in ("name", "kind", "files", "size", "query"):
        table.add_column(column, justify="right" if column in ("files", "size") else "left")
    for dataset in found:
        table.add_row(
            dataset.name,
            _kind(dataset),
            str(dataset.files),
            human_size(dataset.size),
            dataset.query,
        )
    console.print(table)


@datasets_app.command("create")
@handle_errors
def datasets_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A letter, then letters, digits, '_', '-' or '.'")],
    query_text: Annotated[str, typer.Option("--query", "-q", help="The files it holds, as a metadata query")],
    frozen: Annotated[
        bool, typer.Option("--frozen", help="Store the matching files now (fixed list)")
    ] = False,
    description: Annotated[Optional[str], typer.Option(help="What it is for")] = None,  # noqa: UP045
) -> None:
    """A named query, live (files registered later join it) or frozen to the files it matches now."""
    with open_workspace(settings_of(ctx)) as workspace:
        dataset = dataset_service.create(workspace.catalog, name, query_text, description, frozen)
    console.print(f"dataset {dataset.name}: {_kind(dataset)}, {dataset.files} file(s) now")


@datasets_app.command("show")
@handle_errors
def datasets_show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Dataset name")],
    output_format: Annotated[ListFormat, typer.Option("--format", "-f")] = ListFormat.table,
) -> None:
    """One dataset: its query, state, files and size (its files: osa-grid query 'in dataset NAME')."""
    with open_workspace(settings_of(ctx)) as workspace:
        dataset = workspace.catalog.dataset(name)
    record = dataset_service.as_record(dataset)
    if output_format == ListFormat.json:
        print(json.dumps(record))
        return
    table = Table(show_header=False, title=f"dataset {dataset.name}", title_justify="left")
    for key, value in record.items():
        shown = human_size(int(value)) if key == "size" else "" if value is None else str(value)
        table.add_row(key, shown)
    console.print(table)
    console.print(f"its files: osa-grid query 'in dataset {dataset.name}'")


@datasets_app.command("freeze")
@handle_errors
def datasets_freeze(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Dataset name")]) -> None:
    """Fix a live dataset to the files its query matches now."""
    with open_workspace(settings_of(ctx)) as workspace:
        dataset = workspace.catalog.freeze_dataset(name)
    console.print(f"dataset {dataset.name} frozen with {dataset.files} file(s)")


@datasets_app.command("delete")
@handle_errors
def datasets_delete(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Dataset name")]) -> None:
    """Forget a dataset (its files stay in the catalog)."""
    with open_workspace(settings_of(ctx)) as workspace:
        workspace.catalog.delete_dataset(name)
    console.print(f"dataset {name} deleted")


def _kind(dataset: Dataset) -> str:
    return f"frozen {dataset.frozen_at:%Y-%m-%d %H:%M}" if dataset.frozen_at else "live"
