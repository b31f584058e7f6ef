"""Data managers: where files live and how products are stored, chosen by name in the settings."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, cast

from osa_grid.errors import BadInput

if TYPE_CHECKING:
    from osa_grid.config import Settings
    from osa_grid.ports import DataManager

# Data manager name -> "module:function" building it from the settings.
DATA_MANAGERS: dict[str, str] = {
    "local": "osa_grid.data.local:from_settings",
    "rucio": "osa_grid.data.rucio:from_settings",
}


def data_manager_from_settings(name: str, settings: Settings) -> DataManager:
    target = DATA_MANAGERS.get(name)
    if target is None:
        raise BadInput(f"unknown data manager {name!r} (known: {', '.join(sorted(DATA_MANAGERS))})")
    module_name, _, function_name = target.partition(":")
    return cast("DataManager", getattr(importlib.import_module(module_name), function_name)(settings))
