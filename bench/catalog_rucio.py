"""The Rucio side of ``bench/catalog.py --rucio URL``: the same history in a Rucio scope, the same queries.

The history of ``bench/catalog_history.py`` is registered in a real Rucio server, in a scope of its own
(``bench``), the metadata under the CTAO names, tagged ``osa__bench = <token>`` so that runs on one server
stay apart: a sample through the API (replicas on an RSE in bulk with ``add_replicas``, metadata with
``set_dids_metadata_bulk``: the registration rate), the rest bulk-loaded into Rucio's tables by
``scripts/rucio/bench_load.py`` (the API's 200 files/s would take hours at a million files), and removed
again at the end. Then each list query of the fixed set
runs through ``list_dids`` with the filters ``osa-grid query --where rucio`` uses, and the table puts its
p50/p95 next to osa-grid's catalog (SQLite, the same files) with the ratio. Queries list_dids cannot
express (a glob) or that have no Rucio counterpart (provenance, run summaries) are shown as such.

    RUCIO_CONFIG=.services/rucio/etc/client/rucio.cfg \
        python bench/catalog.py --rucio http://127.0.0.1:18480 --sizes 20000 --repeat 10
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from catalog import QUERIES, Fill, Query, Timing, _percentile, analyze, console, database, fill, measure
from osa_grid.catalog.store import Catalog
from osa_grid.core import query as querylang
from osa_grid.data.ctao_metadata import to_ctao
from osa_grid.data.rucio import RucioStore
from osa_grid.errors import BadInput

RSE = "LST_ONSITE"  # bookkeeping only: no bytes are written, as for files Rucio only catalogues
SCOPE = "bench"  # its own scope: list_dids of the project's scope never scans the benchmark's rows
BATCH = 1000
API_SAMPLE = 5000  # files registered through the API (the registration rate); the rest is bulk-loaded
RUCIO_DIR = Path(__file__).resolve().parent.parent / ".services" / "rucio"
LOADER = Path(__file__).resolve().parent.parent / "scripts" / "rucio" / "bench_load.py"


class RucioSide:
    """A scope of a real Rucio holding the benchmark's history, asked with list_dids."""

    def __init__(self, url: str, config: Path | None) -> None:
        self.store = RucioStore(
            Path("."), SCOPE, "LST_TAPE", "LST_CACHE", "LST_DL3", [], config=config, url=url
        )
        self.tag = f"b{secrets.token_hex(4)}"
        self.loaded = 0

    def fill(self, history: Fill) -> float:
        """Register the history's files; returns the API's registration rate in files per second.

        The first API_SAMPLE files go through the API exactly as a production registers them; the rest,
        at about 200 files/s through the API, would take hours at a million files, so they are
        bulk-loaded into Rucio's tables (scripts/rucio/bench_load.py writes the rows the API writes).
        """
        from catalog_history import dl3_file, subrun_files

        self._ensure_scope()
        files = [
            f
            for run in history.runs
            for f in (*subrun_files(run, "DL1"), *subrun_files(run, "DL2"), dl3_file(run))
        ]
        # Every other file of the first runs: a query on those runs is answered from both ways of loading.
        picked = range(1, 2 * API_SAMPLE, 2)
        sample = [files[i] for i in picked if i < len(files)]
        rest = [f for i, f in enumerate(files) if i not in picked]
        start = time.perf_counter()
        for first in range(0, len(sample), BATCH):
            self._register(sample[first : first + BATCH])
        rate = len(sample) / (time.perf_counter() - start)
        self._bulk_load(rest)
        self.loaded = len(files)
        return rate

    def _ensure_scope(self) -> None:
        from rucio.common.exception import Duplicate

        with contextlib.suppress(Duplicate):
            self.store.client().add_scope("root", SCOPE)

    def _register(self, chunk: Sequence[Any]) -> None:
        client = self.store.client()
        records = [
            {"scope": SCOPE, "name": self._name(f.lfn), "bytes": f.size, "adler32": f.checksum} for f in chunk
        ]
        self.store._call("add replicas", client.add_replicas, RSE, records)
        dids = [{"scope": SCOPE, "name": self._name(f.lfn), "meta": self._meta(f)} for f in chunk]
        self.store._call("set metadata", client.set_dids_metadata_bulk, dids)

    def _meta(self, new_file: Any) -> dict[str, Any]:
        return {**to_ctao(new_file.metadata), "osa__bench": self.tag}

    def _bulk_load(self, files: Sequence[Any]) -> None:
        lines = "".join(
            json.dumps(
                {"name": self._name(f.lfn), "bytes": f.size, "adler32": f.checksum, "meta": self._meta(f)}
            )
            + "\n"
            for f in files
        )
        self._loader("load", lines)

    def remove(self) -> None:
        """The benchmark's rows leave the server (its database outlives the run and serves the tests)."""
        self._loader("delete", "")

    def _loader(self, action: str, lines: str) -> None:
        python = RUCIO_DIR / "venv" / "bin" / "python"
        config = RUCIO_DIR / "etc" / "server" / "rucio.cfg"
        if not python.exists() or not config.exists():
            raise SystemExit(f"no Rucio server environment under {RUCIO_DIR}: run scripts/rucio/start.sh")
        done = subprocess.run(
            [str(python), str(LOADER), action, SCOPE, self.tag],
            input=lines,
            capture_output=True,
            text=True,
            env={**os.environ, "RUCIO_CONFIG": str(config)},
        )
        if done.returncode != 0:
            raise SystemExit(f"bulk {action} into Rucio failed: {done.stderr.strip()}")

    def _name(self, lfn: str) -> str:
        return f"{self.tag}{lfn}"

    def answer(self, text: str) -> int:
        return len(self.store.search(querylang.parse(f"bench = {self.tag} and ({text})"), None))

    def measure(self, history: Fill, query: Query, repeat: int, seed: int) -> Timing | str:
        if query.kind not in ("list", "count"):
            return "no Rucio counterpart"
        rng = random.Random(seed)
        try:
            self.answer(query.make(rng, history))  # warm-up, as on the catalog side
        except BadInput:
            return "not expressible"
        seconds: list[float] = []
        rows: list[int] = []
        for _ in range(repeat):
            text = query.make(rng, history)
            start = time.perf_counter()
            rows.append(self.answer(text))
            seconds.append(time.perf_counter() - start)
        return Timing(
            _percentile(seconds, 50) * 1000, _percentile(seconds, 95) * 1000, statistics.median(rows)
        )


def compare(url: str, config: Path | None, sizes: Sequence[int], repeat: int) -> None:
    for size in sizes:
        console.print(
            f"[bold]{size:,} files[/bold]: osa-grid catalog (SQLite) and Rucio {url}", highlight=False
        )
        with database("sqlite", size, None) as catalog_url:
            catalog = Catalog.open(catalog_url)
            try:
                history = fill(catalog, size)
                analyze(catalog)
                ours = {q.name: measure(catalog, history, q, repeat, seed=size) for q in QUERIES}
            finally:
                catalog.close()
        side = RucioSide(url, config)
        try:
            rate = side.fill(history)
            theirs = {q.name: side.measure(history, q, repeat, seed=size) for q in QUERIES}
        finally:
            side.remove()
        show(size, history.files, history.rate, rate, ours, theirs)


def show(
    size: int, files: int, our_rate: float, rucio_rate: float, ours: dict[str, Timing], theirs: dict[str, Any]
) -> None:
    table = Table(title=f"{files:,} files: p50 / p95 ms (rows answered)", title_justify="left")
    for column in ("query", "osa-grid (SQLite)", "Rucio list_dids", "ratio p50 (Rucio / osa-grid)"):
        table.add_column(column, justify="left" if column == "query" else "right")
    for query in QUERIES:
        mine, other = ours[query.name], theirs[query.name]
        cell = f"{mine.p50:.1f} / {mine.p95:.1f} ({mine.rows:,.0f})"
        if isinstance(other, Timing):
            ratio = f"{other.p50 / mine.p50:.1f}x" if mine.p50 > 0 else "-"
            table.add_row(query.name, cell, f"{other.p50:.1f} / {other.p95:.1f} ({other.rows:,.0f})", ratio)
        else:
            table.add_row(query.name, cell, other, "-")
    table.add_row("registration (files/s)", f"{our_rate:,.0f}", f"{rucio_rate:,.0f}", "")
    console.print(table)
