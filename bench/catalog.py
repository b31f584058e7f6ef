"""Catalog at scale: a realistic LST-1 history in a fresh catalog, then registration and query timings.

For each database and size, a fresh catalog is filled run by run (``bench/catalog_history.py``: DL1 and
DL2 per sub-run, DL3 per run, with the tasks, inputs and provenance that made DL2 and DL3), through
``Catalog.register_files`` in batches of whole runs. Then each query of the fixed set runs ``--repeat``
times with parameters drawn from the history (a random night, run, range...), the way the CLI runs it
(parse, check against the catalog's keys, plan, fetch every matching LFN), and the table shows p50/p95.

    python bench/catalog.py                               # 100k and 1M files, SQLite and PostgreSQL
    python bench/catalog.py --quick                       # 20k files: a smoke run (CI)
    python bench/catalog.py --sizes 10000000 --databases postgresql --repeat 50
    python bench/catalog.py --json figures.json           # also write the figures

The issue's targets: p95 < 100 ms at 1M files on SQLite and 10M on PostgreSQL, and >= 10,000 files/s
registered in bulk. ``--rucio URL`` is the hook for the comparison with a real Rucio server holding the
same metadata (``list_dids`` with filters): it belongs to the Rucio issue, which provides
``bench/catalog_rucio.py`` (``RucioSide``: fill a scope with the same history, answer the same queries).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from catalog_history import PRODUCTION, Run, dl3_file, files_per_run, lfn, runs, subrun_files  # noqa: E402

from osa_grid.catalog import schema as s  # noqa: E402
from osa_grid.catalog.store import Catalog, bulk_insert  # noqa: E402
from osa_grid.services import provenance as prov  # noqa: E402
from osa_grid.services.query import checked_query  # noqa: E402

console = Console(width=160)
PG_ADMIN_URL = os.environ.get("OSA_GRID_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
BATCH_FILES = 10_000  # files per registration call (whole runs)
TARGET_P95_MS = 100.0
TARGET_FILES_PER_SECOND = 10_000


# ----------------------------------------------------------------------------------- databases


@contextmanager
def database(kind: str, size: int, keep: Path | None) -> Iterator[str]:
    """The URL of a fresh, empty database, removed afterwards unless kept."""
    if kind == "sqlite":
        directory = keep or Path(tempfile.mkdtemp(prefix="osa-grid-bench-"))
        path = directory / f"catalog-{size}.sqlite"
        for stale in directory.glob(f"catalog-{size}.sqlite*"):
            stale.unlink()
        try:
            yield f"sqlite:///{path}"
        finally:
            if keep is None:
                for leftover in directory.glob(f"catalog-{size}.sqlite*"):
                    leftover.unlink()
                directory.rmdir()
        return
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"osagrid_bench_{size}_{secrets.token_hex(3)}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE template0'))
    try:
        yield sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        if keep is None:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        else:
            console.print(f"kept PostgreSQL database {name}")
        admin.dispose()


# ------------------------------------------------------------------------------------- filling


@dataclass
class Fill:
    files: int = 0
    registering: float = 0.0  # seconds inside Catalog.register_files
    total: float = 0.0  # with generation and the provenance rows
    runs: list[Run] = field(default_factory=list)
    dl3: dict[int, str] = field(default_factory=dict)  # run_id -> DL3 LFN
    analyzed_at: int = 0  # files when statistics were last refreshed

    @property
    def rate(self) -> float:
        return self.files / self.registering if self.registering else 0.0


def fill(catalog: Catalog, size: int) -> Fill:
    """Register the history in batches of whole runs; write the tasks and provenance of DL2 and DL3."""
    stats = Fill()
    start = shown = time.perf_counter()
    batch: list[Run] = []
    for run in runs(size):
        batch.append(run)
        if sum(2 * r.n_subruns + 1 for r in batch) >= BATCH_FILES:
            _register(catalog, batch, stats)
            batch = []
            if time.perf_counter() - shown > 60:
                console.print(f"  ... {stats.files:,} files, {stats.rate:,.0f} files/s", highlight=False)
                shown = time.perf_counter()
    if batch:
        _register(catalog, batch, stats)
    stats.total = time.perf_counter() - start
    return stats


def _keep_statistics(catalog: Catalog, stats: Fill) -> None:
    """ANALYZE when the catalog grew by half, as autovacuum does in service (by 10%, once a minute).

    A PostgreSQL table loaded faster than autovacuum wakes up has no statistics: the planner then
    takes it for a few pages and checks new LFNs by sequential scans, which is not what a catalog in
    service sees.
    """
    if catalog.engine.dialect.name == "postgresql" and stats.files > 1.5 * stats.analyzed_at:
        analyze(catalog)
        stats.analyzed_at = stats.files


def _register(catalog: Catalog, batch: Sequence[Run], stats: Fill) -> None:
    files = []
    for run in batch:
        files += subrun_files(run, "DL1") + subrun_files(run, "DL2") + [dl3_file(run)]
    start = time.perf_counter()
    ids = catalog.register_files(files)
    stats.registering += time.perf_counter() - start
    stats.files += len(files)
    stats.runs += batch
    id_of = dict(zip((f.lfn for f in files), ids, strict=True))
    _record_provenance(catalog, batch, id_of)
    stats.dl3.update({run.run_id: lfn(run, "DL3") for run in batch})
    _keep_statistics(catalog, stats)


def _record_provenance(catalog: Catalog, batch: Sequence[Run], id_of: dict[str, int]) -> None:
    """The rows a shepherd would have written for DL2 (per sub-run) and DL3 (per run): bench set-up."""
    tasks: list[dict[str, Any]] = []
    inputs: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    made_by: list[dict[str, Any]] = []
    for run in batch:
        dl2_ids = []
        for subrun in range(run.n_subruns):
            dl1_id, dl2_id = id_of[lfn(run, "DL1", subrun)], id_of[lfn(run, "DL2", subrun)]
            task_id = f"dl2-{dl1_id}"
            _task(run, task_id, "dl1_to_dl2", [dl1_id], tasks, inputs, attempts)
            made_by.append({"fid": dl2_id, "tid": task_id})
            dl2_ids.append(dl2_id)
        task_id = f"dl3-{run.run_id}"
        _task(run, task_id, "dl2_to_dl3", dl2_ids, tasks, inputs, attempts)
        made_by.append({"fid": id_of[lfn(run, "DL3")], "tid": task_id})
    with catalog.transaction() as conn:
        bulk_insert(conn, s.tasks, tasks)
        bulk_insert(conn, s.task_inputs, inputs)
        bulk_insert(conn, s.provenance, attempts)
        _set_producers(conn, made_by)


def _set_producers(conn: sa.Connection, made_by: Sequence[dict[str, Any]]) -> None:
    """files.task_id of the outputs, in bulk (register_files takes one task id per call)."""
    if conn.dialect.name != "postgresql":
        conn.exec_driver_sql(
            "UPDATE files SET task_id = ? WHERE id = ?", [(m["tid"], m["fid"]) for m in made_by]
        )
        return
    conn.exec_driver_sql("CREATE TEMPORARY TABLE made_by (fid BIGINT, tid VARCHAR(64)) ON COMMIT DROP")
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor.copy("COPY made_by (fid, tid) FROM STDIN") as copy:
        for m in made_by:
            copy.write_row((m["fid"], m["tid"]))
    conn.exec_driver_sql("UPDATE files SET task_id = made_by.tid FROM made_by WHERE files.id = made_by.fid")


def _task(
    run: Run,
    task_id: str,
    transformation: str,
    input_ids: Sequence[int],
    tasks: list[dict[str, Any]],
    inputs: list[dict[str, Any]],
    attempts: list[dict[str, Any]],
) -> None:
    ended = run.start + timedelta(hours=10)
    tasks.append(
        {
            "task_id": task_id,
            "production": PRODUCTION,
            "transformation": transformation,
            "group_key": task_id,
            "state": "done",
            "attempt": 1,
            "failures": 0,
            "backend": "slurm",
            "job_id": task_id,
            "created_at": ended,
            "updated_at": ended,
        }
    )
    inputs += [{"task_id": task_id, "file_id": file_id, "role": "input"} for file_id in input_ids]
    attempts.append(
        {
            "task_id": task_id,
            "attempt": 1,
            "argv": ["lstchain_" + transformation, "--input", str(input_ids[0])],
            "env": {},
            "software": {"lstchain": run.lstchain},
            "config_digest": "0" * 64,
            "host": "cp01",
            "backend": "slurm",
            "job_id": task_id,
            "started_at": ended - timedelta(minutes=5),
            "ended_at": ended,
            "exit_code": 0,
        }
    )


def analyze(catalog: Catalog) -> None:
    """Fresh planner statistics, as a catalog in service has them (autovacuum; SQLite's PRAGMA optimize)."""
    if catalog.engine.dialect.name == "postgresql":
        with catalog.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
    else:
        with catalog.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")


# ------------------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class Query:
    name: str
    description: str
    make: Callable[[random.Random, Fill], str]  # a query text (or an LFN / night) for one repetition
    kind: str = "list"  # list | provenance | runs
    target: bool = True  # one of the fixed set (p95 < 100 ms)


def _night(rng: random.Random, history: Fill) -> date:
    return rng.choice(history.runs).night


def _run(rng: random.Random, history: Fill) -> Run:
    return rng.choice(history.runs)


def _quarter(rng: random.Random, history: Fill) -> str:
    first = _night(rng, history)
    return f"night in {first}..{first + timedelta(days=90)} and data_level = DL3"


def _run_range(rng: random.Random, history: Fill) -> str:
    first = _run(rng, history).run_id
    return f"run_id in {first}..{first + 500} and data_level = DL3"


def _run_list(rng: random.Random, history: Fill) -> str:
    chosen = sorted(r.run_id for r in rng.sample(history.runs, min(5, len(history.runs))))
    return f"run_id in ({', '.join(map(str, chosen))}) and data_level = DL2"


def _glob_year(rng: random.Random, history: Fill) -> str:
    year = _night(rng, history).year
    return f"source ~ 'Mrk*' and data_level = DL3 and night in {year}-01-01..{year}-12-31"


def _dl3(rng: random.Random, history: Fill) -> str:
    return history.dl3[_run(rng, history).run_id]


def _one_night(rng: random.Random, history: Fill) -> str:
    return f"night = {_night(rng, history)}"


def _one_run(rng: random.Random, history: Fill) -> str:
    return f"run_id = {_run(rng, history).run_id}"


def _one_run_level(rng: random.Random, history: Fill) -> str:
    return f"run_id = {_run(rng, history).run_id} and data_level = DL2"


def _night_text(rng: random.Random, history: Fill) -> str:
    return str(_night(rng, history))


def _level(rng: random.Random, history: Fill) -> str:
    return "data_level = DL2"


QUERIES = [
    Query("night", "night = D", _one_night),
    Query("run", "run_id = R", _one_run),
    Query("run_level", "run_id = R and data_level = DL2", _one_run_level),
    Query("date_range", "night in D..D+90 and data_level = DL3", _quarter),
    Query("run_range", "run_id in R..R+500 and data_level = DL3", _run_range),
    Query("in_list", "run_id in (5 runs) and data_level = DL2", _run_list),
    Query("glob", "source ~ 'Mrk*' and data_level = DL3 and night in <year>", _glob_year),
    Query("provenance", "provenance of a DL3 file (~150 DL2, ~150 DL1, ~150 tasks)", _dl3, "provenance"),
    Query("runs_night", "runs --night D (per-run summary)", _night_text, "runs", target=False),
    Query("count_level", "--count data_level = DL2 (a third of all files)", _level, "count", target=False),
]


def answer(catalog: Catalog, query: Query, parameter: str) -> int:
    """Run one query as the CLI does; the number of rows answered."""
    if query.kind == "provenance":
        return len(prov.upstream(catalog, parameter).files)
    if query.kind == "runs":
        return len(catalog.run_summary(parameter))
    node = checked_query(catalog, parameter)
    if query.kind == "count":
        return catalog.count_matching(node)
    return len(catalog.match(node))


@dataclass
class Timing:
    p50: float
    p95: float
    rows: float  # median rows answered


def measure(catalog: Catalog, history: Fill, query: Query, repeat: int, seed: int) -> Timing:
    rng = random.Random(seed)
    answer(catalog, query, query.make(rng, history))  # warm-up: caches as in a catalog in service
    seconds: list[float] = []
    rows: list[int] = []
    for _ in range(repeat):
        parameter = query.make(rng, history)
        start = time.perf_counter()
        rows.append(answer(catalog, query, parameter))
        seconds.append(time.perf_counter() - start)
    return Timing(_percentile(seconds, 50) * 1000, _percentile(seconds, 95) * 1000, statistics.median(rows))


def _percentile(values: Sequence[float], percent: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(percent / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


# -------------------------------------------------------------------------------------- runner


@dataclass
class Result:
    database: str
    size: int
    files: int
    rate: float
    fill_seconds: float
    timings: dict[str, Timing]


def replay(size: int) -> Fill:
    """The history ``fill`` registers, without registering it (for queries on a kept catalog)."""
    stats = Fill()
    for run in runs(size):
        stats.runs.append(run)
        stats.files += files_per_run(run)
        stats.dl3[run.run_id] = lfn(run, "DL3")
    return stats


def bench(
    kind: str, size: int, repeat: int, keep: Path | None, statistics_first: bool, reuse: str | None = None
) -> Result:
    console.print(
        f"[bold]{kind}, {size:,} files[/bold]: {'reusing' if reuse else 'filling'} ...", highlight=False
    )
    with nullcontext(reuse) if reuse else database(kind, size, keep) as url:
        catalog = Catalog.open(url)
        try:
            history = replay(size) if reuse else fill(catalog, size)
            rate = f"register_files: {history.rate:,.0f} files/s"
            console.print(f"  {history.files:,} files in {history.total:.0f} s; {rate}", highlight=False)
            if statistics_first:
                analyze(catalog)
            timings = {q.name: measure(catalog, history, q, repeat, seed=size) for q in QUERIES}
        finally:
            catalog.close()
    return Result(kind, size, history.files, history.rate, history.total, timings)


def show(results: Sequence[Result]) -> None:
    table = Table(title="catalog benchmark: p50 / p95 ms (rows answered)", title_justify="left")
    table.add_column("query")
    for result in results:
        table.add_column(f"{result.database}\n{result.files:,} files", justify="right")
    for query in QUERIES:
        cells = []
        for result in results:
            timing = result.timings[query.name]
            slow = query.target and timing.p95 > TARGET_P95_MS
            text = f"{timing.p50:.1f} / {timing.p95:.1f} ({timing.rows:,.0f})"
            cells.append(f"[red]{text}[/red]" if slow else text)
        marker = "" if query.target else " *"
        table.add_row(f"{query.name}{marker}\n[dim]{query.description}[/dim]", *cells)
    rates = [
        "- (reused)"
        if not r.rate
        else f"{r.rate:,.0f}"
        if r.rate >= TARGET_FILES_PER_SECOND
        else f"[red]{r.rate:,.0f}[/red]"
        for r in results
    ]
    table.add_row("register_files (files/s)", *rates)
    table.add_row("fill, all included (s)", *(f"{r.fill_seconds:.0f}" if r.rate else "-" for r in results))
    console.print(table)
    console.print(
        f"red: above the targets (p95 {TARGET_P95_MS:.0f} ms; {TARGET_FILES_PER_SECOND:,} files/s); "
        "* not in the issue's fixed set. Rucio: see --rucio.",
        highlight=False,
    )


def rucio_hook(url: str, sizes: Sequence[int], repeat: int) -> None:
    """The comparison with Rucio's list_dids is the Rucio issue's: it plugs in bench/catalog_rucio.py."""
    try:
        import catalog_rucio
    except ImportError:
        console.print(
            f"--rucio {url}: bench/catalog_rucio.py is not there yet (the Rucio issue provides it: "
            "a RucioSide that fills a scope with the same history and answers QUERIES with list_dids)."
        )
        raise SystemExit(2) from None
    config = os.environ.get("RUCIO_CONFIG")
    catalog_rucio.compare(url, Path(config) if config else None, sizes, repeat)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100000,1000000", help="files per catalog, comma-separated")
    parser.add_argument("--databases", default="sqlite,postgresql", help="sqlite, postgresql or both")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs of each query")
    parser.add_argument("--quick", action="store_true", help="20k files, 5 repetitions: a smoke run")
    parser.add_argument("--keep", type=Path, help="keep the SQLite files here (and PostgreSQL databases)")
    parser.add_argument(
        "--reuse",
        metavar="URL",
        help="query this catalog, kept from a fill of the one --sizes, without filling",
    )
    parser.add_argument("--no-analyze", action="store_true", help="query without fresh planner statistics")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--rucio", metavar="URL", help="compare with a Rucio server (the Rucio issue's hook)")
    args = parser.parse_args(argv)
    sizes = [20_000] if args.quick else [int(x) for x in args.sizes.split(",")]
    repeat = 5 if args.quick else args.repeat
    if args.rucio:
        rucio_hook(args.rucio, sizes, repeat)
        return
    kinds = [k.strip() for k in args.databases.split(",")]
    if args.reuse and (len(sizes) != 1 or len(kinds) != 1):
        parser.error("--reuse takes one size and one database: the ones the kept catalog was filled with")
    results = [
        bench(kind, size, repeat, args.keep, not args.no_analyze, args.reuse)
        for kind in kinds
        for size in sizes
    ]
    show(results)
    if args.json:
        figures = [
            {
                "database": r.database,
                "files": r.files,
                "files_per_second": round(r.rate),
                "fill_seconds": round(r.fill_seconds, 1),
                "queries": {n: vars(t) for n, t in r.timings.items()},
                "at": datetime.now(UTC).isoformat(),
            }
            for r in results
        ]
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
