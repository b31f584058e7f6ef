"""Printing lists of catalog files as a table or JSON lines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date

from rich.table import Table

from osa_grid.catalog.store import CatalogFile
from osa_grid.cli.common import console


def _plain(value: object) -> object:
    return value.isoformat() if isinstance(value, date) else value


def print_files(found: Sequence[CatalogFile], as_json: bool) -> None:
    if as_json:
        for item in found:
            record = {
                "lfn": item.lfn,
                "size": item.size,
                "adler32": item.checksum,
                "metadata": {k: _plain(v) for k, v in item.metadata.items()},
                "replicas": [r.pfn for r in item.replicas],
            }
            print(json.dumps(record, sort_keys=True))
        return
    keys = sorted({k for item in found for k in item.metadata} - {"production", "transformation"})
    table = Table(title=f"{len(found)} file(s)", title_justify="left")
    table.add_column("lfn", no_wrap=True)
    for key in keys[:8]:
        table.add_column(key)
    for item in found:
        table.add_row(item.lfn, *(str(_plain(item.metadata.get(k, ""))) for k in keys[:8]))
    console.print(table)
