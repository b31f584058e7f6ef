"""The Rucio side of ``bench/catalog.py --rucio URL``: the same history in a Rucio scope, the same queries.

The history of ``bench/catalog_history.py`` is registered in a real Rucio server (replicas on an RSE in
bulk with ``add_replicas``, the metadata under the CTAO names with ``set_dids_metadata_bulk``, tagged
``osa__bench = <token>`` so that runs on the same server stay apart), then each list query of the fixed set
runs through ``list_dids`` with the filters ``osa-grid query --where rucio`` uses, and the table puts its
p50/p95 next to osa-grid's catalog (SQLite, the same files) with the ratio. Queries list_dids cannot
express (a glob) or that have no Rucio counterpart (provenance, run summaries) are shown as such.

    RUCIO_CONFIG=.services/rucio/etc/client/rucio.cfg \
        python bench/catalog.py --rucio http://127.0.0.1:18480 --sizes 20000 --repeat 10
"""

from __future__ import annotations

import random
import secrets
import statistics
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
BATCH = 1000


class RucioSide:
    """A scope of a real Rucio holding the benchmark's history, asked with list_dids."""

    def __init__(self, url: str, config: Path | None) -> None:
        self.store = RucioStore(
            Path("."), "lst", "LST_TAPE", "LST_CACHE", "LST_DL3", [], config=config, url=url
        )
        self.tag = f"b{secrets.token_hex(4)}"

    def fill(self, history: Fill) -> float:
        """Register the files of the history's runs; returns files per second."""
        from catalog_history import dl3_file, subrun_files

        client = self.store.client()
        files = [
            f
            for run in history.runs
            for f in (*subrun_files(run, "DL1"), *subrun_files(run, "DL2"), dl3_file(run))
        ]
        start = time.perf_counter()
        for first in range(0, len(files), BATCH):
            chunk = files[first : first + BATCH]
            records = [
                {"scope": "lst", "name": self._name(f.lfn), "bytes": f.size, "adler32": f.checksum}
                for f in chunk
            ]
            self.store._call("add replicas", client.add_replicas, RSE, records)
            dids = [
                {
                    "scope": "lst",
                    "name": self._name(f.lfn),
                    "meta": {**to_ctao(f.metadata), "osa__bench": self.tag},
                }
                for f in chunk
            ]
            self.store._call("set metadata", client.set_dids_metadata_bulk, dids)
        return len(files) / (time.perf_counter() - start)

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
        rate = side.fill(history)
        theirs = {q.name: side.measure(history, q, repeat, seed=size) for q in QUERIES}
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
