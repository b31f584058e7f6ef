"""Data managers: where files live and how products are stored; chosen by name (``create_data_manager``)."""

from __future__ import annotations

import importlib
from typing import Any

from osa_grid.errors import BadInput
from osa_grid.ports import DataManager

DATA_MANAGERS: dict[str, str] = {
    "local": "osa_grid.data.local:LocalStore",
}


def create_data_manager(name: str, **options: Any) -> DataManager:
    target = DATA_MANAGERS.get(name)
    if target is None:
        raise BadInput(f"unknown data manager {name!r} (known: {', '.join(sorted(DATA_MANAGERS))})")
    module_name, _, factory = target.partition(":")
    manager: DataManager = getattr(importlib.import_module(module_name), factory)(**options)
    return manager
