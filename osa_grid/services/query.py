"""Metadata queries as the CLI runs them: checked against the catalog, then listed, counted or grouped.

The work happens in the database (``Catalog.match``, ``count_matching``, ``group_counts``): sorting,
grouping and limits are SQL, and file details are fetched a chunk at a time, so a listing of a
million files never holds more than one chunk of metadata in memory.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import date
from typing import Protocol, runtime_checkable

from osa_grid.catalog.querysql import SortKey, file_columns
from osa_grid.catalog.store import Catalog, CatalogFile
from osa_grid.core import query as querylang
from osa_grid.errors import BadInput

CHUNK = 500  # files whose metadata and replicas are read together
FILE_FIELDS = (*file_columns(), "replicas")
# Where a query can run. "rucio" is answered by the Rucio data manager (see MetadataSearch).
WHERE = ("catalog", "rucio")


def checked_query(
    catalog: Catalog, text: str, key_types: Mapping[str, Collection[str]] | None = None
) -> querylang.Node:
    """Parse a query and check its keys and value types against what the catalog holds."""
    node = querylang.parse(text)
    known = catalog.metadata_keys() if key_types is None else key_types
    querylang.check_against_catalog(node, known, text)
    return node


def names(option: str, text: str) -> list[str]:
    """A comma-separated option value: ``night,run_id``."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or not all(items):
        raise BadInput(f"{option} {text!r}: expected names separated by commas, e.g. night,run_id")
    return items


def check_fields(option: str, fields: Sequence[str], key_types: Mapping[str, object]) -> None:
    unknown = [f for f in fields if f not in FILE_FIELDS and f not in key_types]
    if unknown:
        known = ", ".join(FILE_FIELDS)
        raise BadInput(
            f"{option}: unknown field {unknown[0]!r}: not a metadata key of any file, nor one of {known}"
        )


def sort_keys(text: str, key_types: Mapping[str, object]) -> list[SortKey]:
    """``night,-run_id``: ascending night, then descending run_id."""
    keys = [SortKey(item.removeprefix("-"), item.startswith("-")) for item in names("--sort", text)]
    check_fields("--sort", [k.key for k in keys if k.key != "replicas"], key_types)
    if any(k.key == "replicas" for k in keys):
        raise BadInput("--sort: files cannot be sorted by their replicas")
    return keys


def files_of(
    catalog: Catalog, node: querylang.Node, sort: Sequence[SortKey] = (), limit: int | None = None
) -> Iterator[CatalogFile]:
    """The matching files with metadata and replicas, in order, read a chunk at a time."""
    ids = [file_id for file_id, _ in catalog.match(node, sort, limit)]
    for start in range(0, len(ids), CHUNK):
        yield from catalog.files_by_id(ids[start : start + CHUNK])


def plain(value: object) -> object:
    """A value as JSON holds it: dates and datetimes as ISO text."""
    return value.isoformat() if isinstance(value, date) else value


def field_value(item: CatalogFile, name: str) -> object:
    """A file attribute or metadata value by field name (None when the file has no such key)."""
    attributes: dict[str, object] = {
        "lfn": item.lfn,
        "size": item.size,
        "adler32": item.checksum,
        "created_at": item.created_at,
        "task_id": item.task_id,
        "replicas": [r.pfn for r in item.replicas],
    }
    return plain(attributes[name] if name in attributes else item.metadata.get(name))


def default_fields(catalog: Catalog, node: querylang.Node, limit: int = 8) -> list[str]:
    """The metadata keys a table shows when none are asked for (production names are in the LFN)."""
    keys = [k for k in catalog.match_keys(node) if k not in ("production", "transformation")]
    return keys[:limit]


# ------------------------------------------------------------------------------------- --where


@runtime_checkable
class MetadataSearch(Protocol):
    """A data manager that can answer a metadata query itself (Rucio: ``list_dids`` with filters).

    The Rucio data manager implements it; ``osa-grid query --where rucio`` then runs the same query
    there, so that both answers can be compared.
    """

    def search(self, node: querylang.Node, limit: int | None) -> list[str]:
        """The names of the matching files."""
        ...


def external_search(where: str, configured: str, data_manager: object) -> MetadataSearch:
    """The data manager that answers ``--where NAME``, or a clear error saying why there is none."""
    if where not in WHERE:
        raise BadInput(f"--where {where!r}: expected one of {', '.join(WHERE)}")
    if configured != where:
        raise BadInput(
            f"--where {where}: the {where} data manager is not configured "
            f"(settings: data_manager = {configured!r})"
        )
    if not isinstance(data_manager, MetadataSearch):
        raise BadInput(f"--where {where}: the {where} data manager cannot search metadata")
    return data_manager
