"""Planner and shepherd scale: time and peak memory of planning, and the cost of a pass against history.

Three measurements, each in a fresh subprocess (so that peak RSS belongs to that measurement alone):

1. **pure** - ``core.planner.plan_groups`` over N LST-like sub-run records (per_file, as R0 -> DL1, and
   by_run, as the merge of complete runs): time and peak RSS, records included.
2. **catalog** - N sub-runs registered in a SQLite catalog (set-up, not timed in the figure), then one
   planning pass of the shepherd (``Shepherd.plan``: read the files after the cursor, group, record N
   tasks, their inputs and events in one transaction): time, split by phase, and peak RSS.
3. **passes** - the cost of one shepherd pass (``run_pass``) with H finished tasks in the catalog
   (H = 10, 10,000, 100,000 by default): an idle pass, a pass with K tasks in flight, and the cost per
   task of completing K tasks. The backend is ``bench/simbackend.py`` (jobs finish at once, or when
   released). The history is written in bulk with the rows a real completion writes (tasks done, outputs
   with metadata and replicas, provenance, events); the benchmark checks that the row counts per table
   match those of a real shepherd run over the simulated backend, and says so if they do not.

    python bench/planner.py                # the default sizes (a few minutes)
    python bench/planner.py --quick        # a smoke run
    python bench/planner.py --pure 1000000,3000000 --catalog 1000000 --history 10,100000,1000000
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

console = Console(width=130)

SUBRUNS_PER_RUN = 150
RUNS_PER_NIGHT = 20
PRODUCTION = "scale"
# The LST-1 history the issue sets a target for: about 3 million sub-runs, planned in < 60 s and < 2 GB.
LST1_SUBRUNS = 3_000_000
TARGET_SECONDS = 60.0
TARGET_BYTES = 2 * 1024**3


# ------------------------------------------------------------------------------- the data


def subrun_metadata(i: int) -> dict[str, Any]:
    """Sub-run i of an LST-like history: 20 data runs of 150 sub-runs per night."""
    run = i // SUBRUNS_PER_RUN
    night = date(2019, 11, 1) + timedelta(days=run // RUNS_PER_NIGHT)
    return {
        "data_level": "R0",
        "run_type": "DATA",
        "night": night,
        "run_id": 1000 + run,
        "subrun_id": i % SUBRUNS_PER_RUN,
        "n_subruns": SUBRUNS_PER_RUN,
        "source": "Crab",
    }


def subrun_lfn(i: int) -> str:
    meta = subrun_metadata(i)
    return f"R0/{meta['night']:%Y%m%d}/LST-1.1.Run{meta['run_id']:05d}.{meta['subrun_id']:04d}.fits.fz"


def production_definition(mode: str = "per_file") -> dict[str, Any]:
    grouping: dict[str, Any] = {"mode": mode}
    if mode == "by_run":
        grouping.update(keys=["run_id"], size_key="n_subruns")
        file_name = "dl1_LST-1.Run{run_id:05d}.h5"
    else:
        file_name = "dl1_LST-1.Run{run_id:05d}.{subrun_id:04d}.h5"
    return {
        "name": PRODUCTION,
        "transformations": [
            {
                "name": "calibrate",
                "input": {"query": "data_level = R0 and run_type = DATA"},
                "step": {
                    "argv": ["simulated", "{output.dl1}"],
                    "resources": {"cores": 1, "memory_gb": 1, "walltime": "1h"},
                },
                "grouping": grouping,
                "outputs": [{"name": "dl1", "file_name": file_name, "metadata": {"data_level": "DL1"}}],
            }
        ],
    }


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------------------------------- workers


def worker_pure(n: int, mode: str) -> dict[str, Any]:
    from osa_grid.core.planner import FileRecord, plan_groups
    from osa_grid.services.productions import production_from_definition

    production = production_from_definition(production_definition(mode))
    transformation = production.transformations[0]
    baseline = peak_rss_bytes()
    start = time.perf_counter()
    records = [FileRecord(i + 1, subrun_lfn(i), subrun_metadata(i)) for i in range(n)]
    built = time.perf_counter() - start
    start = time.perf_counter()
    outcome = plan_groups(PRODUCTION, transformation, records, flush=False)
    planned = time.perf_counter() - start
    return {
        "n": n,
        "mode": mode,
        "build_s": built,
        "plan_s": planned,
        "tasks": len(outcome.tasks),
        "pending": len(outcome.pending),
        "peak_rss": peak_rss_bytes(),
        "baseline_rss": baseline,
    }


def register_subruns(catalog: Any, start: int, stop: int, chunk: int = 20_000) -> None:
    from osa_grid.ports import NewFile, Replica

    for first in range(start, stop, chunk):
        batch = []
        for i in range(first, min(stop, first + chunk)):
            lfn = subrun_lfn(i)
            replica = Replica(lfn, "local", f"/data/{lfn}")
            batch.append(NewFile(lfn, 1_000_000, "00000001", subrun_metadata(i), (replica,)))
        catalog.register_files(batch)


def worker_catalog_setup(n: int, url: str) -> dict[str, Any]:
    from osa_grid.catalog.store import Catalog
    from osa_grid.services.productions import definition_of, digest_of, production_from_definition

    production = production_from_definition(production_definition())
    catalog = Catalog.open(url)
    catalog.save_production(production.name, definition_of(production), digest_of(production), None)
    start = time.perf_counter()
    register_subruns(catalog, 0, n)
    seconds = time.perf_counter() - start
    if catalog.engine.dialect.name == "postgresql":
        # Statistics as autovacuum would have them for a catalog in service (copies inherit them).
        with catalog.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    catalog.close()
    return {"n": n, "register_s": seconds, "db_bytes": catalog_bytes(url)}


def worker_catalog_plan(n: int, url: str, root: str) -> dict[str, Any]:
    from simbackend import SimulatedBackend

    from osa_grid.catalog.store import Catalog
    from osa_grid.data.local import LocalStore
    from osa_grid.services.productions import production_from_definition
    from osa_grid.services.shepherd import PassReport, Shepherd

    catalog = Catalog.open(url)
    production = production_from_definition(catalog.production_definition(PRODUCTION))
    shepherd = Shepherd(
        catalog, SimulatedBackend(), LocalStore(Path(root) / "data"), production, Path(root) / "work"
    )
    phases = _Phases()
    for reader in ("query", "planning_batch"):  # planning_batch: a batched reader, where the tree has one
        if hasattr(catalog, reader):
            phases.wrap(catalog, reader, "read new files")
    phases.wrap(catalog, "record_plan", "record tasks")
    import osa_grid.services.shepherd as shepherd_module

    phases.wrap(shepherd_module, "plan_groups", "plan_groups")
    baseline = peak_rss_bytes()
    report = PassReport()
    start, cpu = time.perf_counter(), time.process_time()
    shepherd.plan(report)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    catalog.close()
    if report.created != n:
        raise RuntimeError(f"the pass created {report.created} tasks for {n} sub-runs")
    return {
        "n": n,
        "plan_s": seconds,
        "cpu_s": cpu,
        "created": report.created,
        "phases": phases.totals,
        "peak_rss": peak_rss_bytes(),
        "baseline_rss": baseline,
        "db_bytes": catalog_bytes(url),
    }


class _Phases:
    """Wall time spent in chosen functions (wrapped in place)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    def wrap(self, owner: Any, name: str, label: str) -> None:
        function = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.totals[label] = self.totals.get(label, 0.0) + time.perf_counter() - start

        setattr(owner, name, timed)


def _db_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.glob("catalog.sqlite*"))


def catalog_bytes(url: str) -> int:
    """The size of a catalog: its SQLite files, or its PostgreSQL database."""
    import sqlalchemy as sa

    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _db_bytes(Path(str(parsed.database)).parent)
    engine = sa.create_engine(parsed)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(sa.text("SELECT pg_database_size(current_database())")) or 0)
    finally:
        engine.dispose()


class CatalogCopies:
    """One catalog registered once, then copied for each source tree that plans it (the same data for all).

    SQLite: the file is copied. PostgreSQL (``server``: a URL of the server's maintenance database): a
    database per copy, ``CREATE DATABASE ... TEMPLATE`` of the registered one; all are dropped at the end.
    """

    def __init__(self, root: Path, server: str | None) -> None:
        self.root, self.server = root, server
        self.databases: list[str] = []
        self.prefix = f"osagrid_bench_{os.getpid()}_{int(time.time())}"

    def _admin(self, statement: str) -> None:
        import sqlalchemy as sa

        engine = sa.create_engine(str(self.server), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(statement))
        finally:
            engine.dispose()

    def _url(self, database: str) -> str:
        import sqlalchemy as sa

        return sa.make_url(str(self.server)).set(database=database).render_as_string(hide_password=False)

    def original(self, n: int) -> str:
        if self.server is None:
            return f"sqlite:///{self.root}/catalog.sqlite"
        name = f"{self.prefix}_{n}"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE template0')
        self.databases.append(name)
        return self._url(name)

    def copy(self, n: int, label: str) -> tuple[str, Path]:
        work = self.root / label
        work.mkdir()
        if self.server is None:
            shutil.copy(self.root / "catalog.sqlite", work / "catalog.sqlite")
            return f"sqlite:///{work}/catalog.sqlite", work
        name = f"{self.prefix}_{n}_{len(self.databases)}"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.prefix}_{n}"')
        self.databases.append(name)
        return self._url(name), work

    def drop(self) -> None:
        for name in reversed(self.databases):
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.databases.clear()


# ---------------------------------------------------------------------- passes against history


class World:
    """A catalog with a production, H finished tasks, and a shepherd over the simulated backend."""

    def __init__(self, root: Path) -> None:
        from simbackend import SimulatedBackend

        from osa_grid.catalog.store import Catalog
        from osa_grid.data.local import LocalStore
        from osa_grid.services.productions import definition_of, digest_of, production_from_definition

        self.root = root
        self.production = production_from_definition(production_definition())
        self.catalog = Catalog.open(f"sqlite:///{root}/catalog.sqlite")
        self.catalog.save_production(
            self.production.name, definition_of(self.production), digest_of(self.production), None
        )
        self.data = LocalStore(root / "data")
        self.backend = SimulatedBackend()
        self.registered = 0

    def shepherd(self) -> Any:
        from osa_grid.services.shepherd import Shepherd

        return Shepherd(self.catalog, self.backend, self.data, self.production, self.root / "work")

    def add_raw(self, n: int, on_disk: bool) -> None:
        """n more sub-runs; on disk when tasks will be submitted for them (the data manager checks)."""
        from osa_grid.ports import NewFile, Replica

        start, stop = self.registered, self.registered + n
        if not on_disk:
            register_subruns(self.catalog, start, stop)
        else:
            batch = []
            for i in range(start, stop):
                lfn = subrun_lfn(i)
                path = self.root / "raw" / lfn
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"raw sub-run\n")
                replica = Replica(lfn, "local", str(path))
                batch.append(NewFile(lfn, 12, "00000001", subrun_metadata(i), (replica,)))
            self.catalog.register_files(batch)
        self.registered = stop

    def fast_forward(self, n: int) -> None:
        """n finished tasks, written in bulk with the rows a real completion writes."""
        from osa_grid.services.shepherd import PassReport

        self.add_raw(n, on_disk=False)
        self.shepherd().plan(PassReport())  # the real planner: tasks, task inputs, 'created' events
        write_history(self.catalog, self.production, self.backend.name, self.root / "work")


def write_history(catalog: Any, production: Any, backend: str, work_root: Path) -> None:
    """Ready tasks -> done, as if each had run: outputs (metadata, replicas), provenance, events."""
    import hashlib
    import platform
    import socket

    import sqlalchemy as sa

    from osa_grid import __version__
    from osa_grid.catalog import schema as s
    from osa_grid.catalog.values import metadata_rows
    from osa_grid.core.rendering import render_outputs

    transformation = production.transformations[0]
    digest = hashlib.sha256(transformation.model_dump_json().encode()).hexdigest()
    software = {"osa-grid": __version__, "python": platform.python_version()}
    host = socket.gethostname()
    from osa_grid.core.states import TaskState

    ready = [t.task_id for t in catalog.tasks(production.name, states=[TaskState.READY])]
    for chunk in _chunked(ready, 5000):
        inputs = catalog.task_inputs(chunk)
        now = datetime.now(UTC)
        files: list[dict[str, Any]] = []
        outputs: dict[str, list[Any]] = {}
        for task_id in chunk:
            rendered = render_outputs(
                production.name, transformation, task_id, [f.record() for f in inputs[task_id]]
            )
            outputs[task_id] = rendered
            files += [
                {"lfn": o.lfn, "size": 17, "checksum": "3c8a05e1", "created_at": now, "task_id": task_id}
                for o in rendered
            ]
        with catalog.transaction() as conn:
            conn.execute(
                sa.update(s.tasks)
                .where(s.tasks.c.task_id == sa.bindparam("b_task_id"))
                .values(
                    state="done",
                    attempt=1,
                    backend=backend,
                    job_id=sa.bindparam("b_job_id"),
                    workdir=sa.bindparam("b_workdir"),
                    exit_code=0,
                    updated_at=now,
                ),
                [
                    {
                        "b_task_id": task_id,
                        "b_job_id": f"sim-ff-{task_id[:12]}",
                        "b_workdir": str(
                            work_root / production.name / transformation.name / task_id / "attempt-1"
                        ),
                    }
                    for task_id in chunk
                ],
            )
            conn.execute(sa.insert(s.files), files)
            ids = dict(
                conn.execute(
                    sa.select(s.files.c.lfn, s.files.c.id).where(s.files.c.lfn.in_([f["lfn"] for f in files]))
                ).all()
            )
            metadata: list[dict[str, Any]] = []
            replicas: list[dict[str, Any]] = []
            for rendered in outputs.values():
                for o in rendered:
                    metadata += metadata_rows(ids[o.lfn], o.metadata)
                    replicas.append(
                        {
                            "file_id": ids[o.lfn],
                            "store": "local",
                            "pfn": f"/data/{o.lfn}",
                            "state": "available",
                            "created_at": now,
                        }
                    )
            conn.execute(sa.insert(s.file_metadata), metadata)
            keys = getattr(
                s, "metadata_keys", None
            )  # the registry of (key, type) pairs, where the tree has one
            if keys is not None:
                known = {(row.key, row.vtype) for row in conn.execute(sa.select(keys))}
                pairs = {(row["key"], row["vtype"]) for row in metadata} - known
                if pairs:
                    conn.execute(sa.insert(keys), [{"key": k, "vtype": t} for k, t in sorted(pairs)])
            conn.execute(sa.insert(s.replicas), replicas)
            conn.execute(
                sa.insert(s.provenance),
                [
                    {
                        "task_id": task_id,
                        "attempt": 1,
                        "argv": ["simulated", f"{task_id}/out"],
                        "env": {},
                        "software": software,
                        "config_digest": digest,
                        "host": host,
                        "backend": backend,
                        "job_id": f"sim-ff-{task_id[:12]}",
                        "started_at": now,
                        "ended_at": now,
                        "exit_code": 0,
                    }
                    for task_id in chunk
                ],
            )
            conn.execute(
                sa.insert(s.events),
                [
                    {
                        "at": now,
                        "production": production.name,
                        "task_id": task_id,
                        "kind": kind,
                        "from_state": before,
                        "to_state": after,
                        "detail": None,
                    }
                    for task_id in chunk
                    for kind, before, after in (
                        ("submitting", "ready", "submitted"),
                        ("submitted", None, None),
                        ("done", "submitted", "done"),
                    )
                ],
            )


def _chunked(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def table_counts(catalog: Any) -> dict[str, int]:
    import sqlalchemy as sa

    from osa_grid.catalog import schema as s

    with catalog.engine.connect() as conn:
        return {
            t.name: int(conn.scalar(sa.select(sa.func.count()).select_from(t)) or 0)
            for t in s.metadata.sorted_tables
        }


def worker_fidelity(root: str) -> dict[str, Any]:
    """Row counts per table: 10 tasks run by the real shepherd vs 10 fast-forwarded."""
    real = World(Path(root) / "real")
    real.add_raw(10, on_disk=True)
    real.shepherd().run()
    bulk = World(Path(root) / "bulk")
    bulk.fast_forward(10)
    real_counts, bulk_counts = table_counts(real.catalog), table_counts(bulk.catalog)
    # The real run also logs taking its lease (one event); the bulk history never held one.
    real_counts["events"] -= 1
    return {"real": real_counts, "bulk": bulk_counts}


def _median_pass(shepherd: Any, passes: int) -> tuple[float, dict[str, float]]:
    times: list[float] = []
    phases: dict[str, list[float]] = {"observe": [], "plan": [], "act": [], "other": []}
    for _ in range(passes):
        marks: dict[str, float] = {}
        originals = {name: getattr(shepherd, name) for name in ("observe", "plan", "act")}

        def timed(
            name: str, function: Callable[..., Any], marks: dict[str, float] = marks
        ) -> Callable[..., Any]:
            def run(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    marks[name] = time.perf_counter() - start

            return run

        for name, function in originals.items():
            setattr(shepherd, name, timed(name, function))
        start = time.perf_counter()
        shepherd.run_pass()
        total = time.perf_counter() - start
        for name, function in originals.items():
            setattr(shepherd, name, function)
        times.append(total)
        for name in ("observe", "plan", "act"):
            phases[name].append(marks.get(name, 0.0))
        phases["other"].append(total - sum(marks.values()))
    return statistics.median(times), {k: statistics.median(v) for k, v in phases.items()}


def worker_passes(history: int, in_flight: list[int], root: str, repeats: int) -> dict[str, Any]:
    world = World(Path(root))
    start = time.perf_counter()
    world.fast_forward(history)
    built = time.perf_counter() - start
    # The history is old news: fold the bulk writes into the database file and drop their garbage, so
    # that the passes measured below see a settled catalog, as a long-running one would be.
    with world.catalog.engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    gc.collect()
    shepherd = world.shepherd()
    with _hold_lease(shepherd):
        result = _measure_passes(world, shepherd, in_flight, repeats)
    result.update(history=history, build_s=built, db_bytes=_db_bytes(Path(root)))
    world.catalog.close()
    return result


def _hold_lease(shepherd: Any) -> contextlib.AbstractContextManager[Any]:
    """What Shepherd.run does first: the production's lease, held while the passes are timed."""
    lease = getattr(shepherd, "lease", None)
    if callable(lease):
        return cast("contextlib.AbstractContextManager[Any]", lease())
    shepherd._take_lease()  # trees before Shepherd.lease(): released when the worker process ends
    return contextlib.nullcontext()


def _measure_passes(world: World, shepherd: Any, in_flight: list[int], repeats: int) -> dict[str, Any]:
    shepherd.run_pass()  # warm caches, settle
    result: dict[str, Any] = {}
    idle, idle_phases = _median_pass(shepherd, repeats)
    result["idle_ms"] = idle * 1000
    result["idle_phases_ms"] = {k: v * 1000 for k, v in idle_phases.items()}
    result["in_flight"] = {}
    for k in in_flight:
        world.add_raw(k, on_disk=True)
        world.backend.hold = True
        start = time.perf_counter()
        shepherd.run_pass()  # plans k tasks and submits them; they stay running
        submit = time.perf_counter() - start
        assert world.backend.in_flight == k, (world.backend.in_flight, k)
        held, held_phases = _median_pass(shepherd, repeats)
        world.backend.hold = False
        world.backend.release()
        start = time.perf_counter()
        shepherd.run_pass()  # observes k completions: outputs checked, stored, registered
        complete = time.perf_counter() - start
        result["in_flight"][str(k)] = {
            "plan_submit_ms": submit * 1000,
            "pass_ms": held * 1000,
            "phases_ms": {n: v * 1000 for n, v in held_phases.items()},
            "complete_ms": complete * 1000,
        }
    return result


# ------------------------------------------------------------------------------- driver


def run_worker(*args: str, tree: Path | None = None) -> dict[str, Any]:
    """A worker in a fresh process; ``tree``: import osa_grid from that source tree."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", *args]
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"worker {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def worker_main(args: list[str]) -> None:
    kind, rest = args[0], args[1:]
    if kind == "pure":
        out = worker_pure(int(rest[0]), rest[1])
    elif kind == "catalog-setup":
        out = worker_catalog_setup(int(rest[0]), rest[1])
    elif kind == "catalog-plan":
        out = worker_catalog_plan(int(rest[0]), rest[1], rest[2])
    elif kind == "fidelity":
        out = worker_fidelity(rest[0])
    elif kind == "passes":
        out = worker_passes(int(rest[0]), [int(x) for x in rest[1].split(",") if x], rest[2], int(rest[3]))
    else:
        raise SystemExit(f"unknown worker {kind}")
    print(json.dumps(out))


def _sizes(text: str) -> list[int]:
    """Sizes separated by commas; "none": skip that measurement."""
    if text.strip().lower() == "none":
        return []
    return [int(float(x)) for x in text.split(",") if x.strip()]


def _mb(value: float) -> str:
    return f"{value / 1024**2:,.0f}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        worker_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pure", type=_sizes, default=None, help="sizes for plan_groups (default 10k,100k,1M; none: skip)"
    )
    parser.add_argument(
        "--catalog",
        type=_sizes,
        default=None,
        help="sizes for the catalog pass (default 10k,100k; none: skip)",
    )
    parser.add_argument(
        "--history", type=_sizes, default=None, help="finished tasks (default 10,10k,100k; none: skip)"
    )
    parser.add_argument(
        "--osa-grid-tree",
        type=Path,
        action="append",
        default=[],
        help="also plan the same registered catalog with osa-grid from this source tree (before/after)",
    )
    parser.add_argument(
        "--catalog-url",
        default=None,
        help="run the catalog pass on PostgreSQL: URL of the server's maintenance database, e.g. "
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres (a database per copy, dropped after)",
    )
    parser.add_argument("--in-flight", type=_sizes, default=None, help="tasks in flight (default 10,1000)")
    parser.add_argument("--repeats", type=int, default=None, help="passes per median (default 15)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the catalogs go (default: a temp dir)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    quick = args.quick
    pure = (
        args.pure if args.pure is not None else ([10_000, 100_000] if quick else [10_000, 100_000, 1_000_000])
    )
    catalog_sizes = args.catalog if args.catalog is not None else ([10_000] if quick else [10_000, 100_000])
    history = (
        args.history
        if args.history is not None
        else ([10, 1_000, 10_000] if quick else [10, 10_000, 100_000])
    )
    in_flight = args.in_flight or ([10, 100] if quick else [10, 1000])
    repeats = args.repeats or (5 if quick else 15)

    base = Path(tempfile.mkdtemp(prefix="osa-grid-planner-", dir=args.workdir))
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
    }
    started = time.perf_counter()
    try:
        results["pure"] = [run_worker("pure", str(n), mode) for n in pure for mode in ("per_file", "by_run")]
        if results["pure"]:
            console.print(pure_table(results["pure"]))
        trees = [None, *(t.resolve() for t in args.osa_grid_tree)]
        results["catalog"] = [
            row
            for n in catalog_sizes
            for row in catalog_pass(base / f"catalog-{n}", n, trees, args.catalog_url)
        ]
        if results["catalog"]:
            console.print(catalog_table(results["catalog"], "PostgreSQL" if args.catalog_url else "SQLite"))
        if history:
            fidelity = run_worker("fidelity", str(base / "fidelity"))
            results["fidelity"] = fidelity
            if fidelity["real"] != fidelity["bulk"]:
                console.print(
                    "[yellow]the bulk history differs from a real run's rows: "
                    f"real {fidelity['real']} bulk {fidelity['bulk']}[/]"
                )
        results["passes"] = []
        for h in history:
            root = base / f"history-{h}"
            root.mkdir()
            results["passes"].append(
                run_worker("passes", str(h), ",".join(map(str, in_flight)), str(root), str(repeats))
            )
            shutil.rmtree(root, ignore_errors=True)
        if results["passes"]:
            console.print(passes_table(results["passes"], in_flight))
        for line in verdicts(results):
            console.print(line)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    results["bench_seconds"] = round(time.perf_counter() - started, 1)
    console.print(f"[dim]the planner benchmark took {results['bench_seconds']} s[/]")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def catalog_pass(
    root: Path, n: int, trees: Sequence[Path | None], server: str | None
) -> list[dict[str, Any]]:
    """N sub-runs registered once (with this tree), then one planning pass per tree on a copy of them."""
    root.mkdir()
    copies = CatalogCopies(root, server)
    rows = []
    try:
        setup = run_worker("catalog-setup", str(n), copies.original(n))
        for index, tree in enumerate(trees):
            url, work = copies.copy(n, f"tree-{index}")
            planned = run_worker("catalog-plan", str(n), url, str(work), tree=tree)
            label = "this tree" if tree is None else str(tree)
            rows.append(
                {**planned, "tree": label, "register_s": setup["register_s"], "db_before": setup["db_bytes"]}
            )
            shutil.rmtree(work, ignore_errors=True)
    finally:
        copies.drop()
        shutil.rmtree(root, ignore_errors=True)
    return rows


def pure_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="plan_groups (pure): N sub-run records -> tasks", title_justify="left")
    for column in ("N", "grouping", "tasks", "build records s", "plan_groups s", "us/file", "peak RSS MB"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            f"{row['n']:,}",
            row["mode"],
            f"{row['tasks']:,}",
            f"{row['build_s']:.2f}",
            f"{row['plan_s']:.2f}",
            f"{row['plan_s'] / row['n'] * 1e6:.1f}",
            _mb(row["peak_rss"]),
        )
    return table


def catalog_table(rows: list[dict[str, Any]], database: str) -> Table:
    table = Table(
        title=f"catalog-backed planning pass ({database}): N new sub-runs -> N tasks", title_justify="left"
    )
    columns = (
        "N",
        "tree",
        "register s (set-up)",
        "pass s",
        "pass cpu s",
        "us/sub-run",
        "read files s",
        "plan_groups s",
        "record s",
        "peak RSS MB",
    )
    for column in (*columns, "catalog MB"):
        table.add_column(column, justify="right")
    for row in rows:
        phases = row["phases"]
        table.add_row(
            f"{row['n']:,}",
            row["tree"],
            f"{row['register_s']:.1f}",
            f"{row['plan_s']:.2f}",
            f"{row.get('cpu_s', 0):.2f}",
            f"{row['plan_s'] / row['n'] * 1e6:.0f}",
            f"{phases.get('read new files', 0):.2f}",
            f"{phases.get('plan_groups', 0):.2f}",
            f"{phases.get('record tasks', 0):.2f}",
            _mb(row["peak_rss"]),
            _mb(row["db_bytes"]),
        )
    return table


def passes_table(rows: list[dict[str, Any]], in_flight: list[int]) -> Table:
    table = Table(title="one shepherd pass (simulated backend), ms, medians", title_justify="left")
    table.add_column("finished tasks", justify="right")
    table.add_column("idle pass", justify="right")
    for phase in ("observe", "plan", "act", "rest"):
        table.add_column(f"idle: {phase}", justify="right")
    for k in in_flight:
        table.add_column(f"pass, {k} in flight", justify="right")
    for k in in_flight:
        table.add_column(f"finish {k}: ms/task", justify="right")
    for row in rows:
        phases = row["idle_phases_ms"]
        cells = [
            f"{row['history']:,}",
            f"{row['idle_ms']:.2f}",
            *(f"{phases[p]:.2f}" for p in ("observe", "plan", "act", "other")),
        ]
        cells += [f"{row['in_flight'][str(k)]['pass_ms']:.2f}" for k in in_flight]
        cells += [f"{row['in_flight'][str(k)]['complete_ms'] / k:.2f}" for k in in_flight]
        table.add_row(*cells)
    return table


def verdicts(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    passes = results.get("passes", [])
    if len(passes) >= 2:
        first, last = passes[0], passes[-1]
        growth = last["idle_ms"] / first["idle_ms"]
        flat = last["idle_ms"] <= 1.5 * first["idle_ms"] + 1.0  # 1 ms of slack: the machine is shared
        lines.append(
            f"target: a pass costs the same with {first['history']:,} or {last['history']:,} finished tasks: "
            f"{'MET' if flat else 'NOT MET'} - idle pass {first['idle_ms']:.2f} ms -> "
            f"{last['idle_ms']:.2f} ms (x{growth:.1f})"
        )
    pure = [r for r in results.get("pure", []) if r["mode"] == "per_file"]
    if pure:
        biggest = max(pure, key=lambda r: r["n"])
        scale = LST1_SUBRUNS / biggest["n"]
        seconds = (biggest["build_s"] + biggest["plan_s"]) * scale
        memory = biggest["baseline_rss"] + (biggest["peak_rss"] - biggest["baseline_rss"]) * scale
        how = "measured" if scale == 1 else f"extrapolated linearly from {biggest['n']:,}"
        lines.append(
            f"pure plan_groups of {LST1_SUBRUNS:,} sub-runs, records included ({how}): "
            f"{seconds:.0f} s, {memory / 1024**3:.2f} GB (the catalog-backed pass below is the target)"
        )
    catalog = [r for r in results.get("catalog", []) if r["tree"] == "this tree"]
    for row in results.get("catalog", []):
        mine = next((r for r in catalog if r["n"] == row["n"]), None)
        if row["tree"] != "this tree" and mine is not None:
            lines.append(
                f"{row['n']:,} sub-runs: this tree {mine['plan_s']:.1f} s "
                f"({mine.get('cpu_s', 0):.1f} s cpu), "
                f"{row['tree']} {row['plan_s']:.1f} s ({row.get('cpu_s', 0):.1f} s cpu): "
                f"x{row['plan_s'] / mine['plan_s']:.2f} of this tree's time"
            )
    if catalog:
        biggest = max(catalog, key=lambda r: r["n"])
        scale = LST1_SUBRUNS / biggest["n"]
        seconds = biggest["plan_s"] * scale
        # The pass holds one batch of files at a time: its memory grows with N up to a batch, then stays flat.
        from osa_grid.services.shepherd import PLAN_BATCH_FILES

        held = min(LST1_SUBRUNS, PLAN_BATCH_FILES) / min(biggest["n"], PLAN_BATCH_FILES)
        memory = biggest["baseline_rss"] + (biggest["peak_rss"] - biggest["baseline_rss"]) * held
        met = seconds < TARGET_SECONDS and memory < TARGET_BYTES
        how = "measured"
        if scale != 1:
            how = f"time extrapolated from {biggest['n']:,}, memory: one batch of {PLAN_BATCH_FILES:,}"
        lines.append(
            f"target: {LST1_SUBRUNS:,} sub-runs planned in < {TARGET_SECONDS:.0f} s and < 2 GB ({how}): "
            f"{'MET' if met else 'NOT MET'} - {seconds:.0f} s, {memory / 1024**3:.2f} GB"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
