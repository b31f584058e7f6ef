"""Datasets ("baskets"): named queries, frozen to their file list on demand.

A dataset is used in any query as ``in dataset NAME``, so also as (part of) a transformation's
input query. A live dataset is its query, inlined where it is used: files registered later join it.
A frozen dataset is the list of files its query matched when it was frozen (``dataset_files``):
what a campaign processes stays fixed while the catalog grows.
"""

from __future__ import annotations

from typing import Any

from osa_grid.catalog.store import Catalog, Dataset
from osa_grid.services.query import checked_query


def create(
    catalog: Catalog, name: str, query: str, description: str | None = None, frozen: bool = False
) -> Dataset:
    """A new dataset; its query is checked against the catalog's keys first (errors with a caret)."""
    checked_query(catalog, query)
    return catalog.create_dataset(name, query, description, frozen)


def as_record(dataset: Dataset) -> dict[str, Any]:
    """A dataset as JSON holds it."""
    return {
        "name": dataset.name,
        "query": dataset.query,
        "description": dataset.description,
        "kind": "frozen" if dataset.frozen_at else "live",
        "created_at": dataset.created_at.isoformat(),
        "frozen_at": dataset.frozen_at.isoformat() if dataset.frozen_at else None,
        "files": dataset.files,
        "size": dataset.size,
    }
