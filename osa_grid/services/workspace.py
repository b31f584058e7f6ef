"""A workspace: settings plus the catalog, data manager and backend they name, opened on demand."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from osa_grid.backends import backend_from_settings
from osa_grid.catalog.store import Catalog
from osa_grid.config import Settings
from osa_grid.data import data_manager_from_settings
from osa_grid.ports import Backend, DataManager


@dataclass
class Workspace:
    settings: Settings
    _backends: list[Backend] = field(default_factory=list)

    @cached_property
    def catalog(self) -> Catalog:
        return Catalog.open(self.settings.catalog)

    @cached_property
    def data(self) -> DataManager:
        return data_manager_from_settings(self.settings.data_manager, self.settings)

    def backend(self, name: str | None = None) -> Backend:
        backend = backend_from_settings(name or self.settings.backend, self.settings)
        self._backends.append(backend)
        return backend

    @property
    def work_root(self) -> Path:
        return self.settings.work_directory

    def close(self) -> None:
        for backend in self._backends:
            backend.close()
        if "catalog" in self.__dict__:
            self.catalog.close()


@contextmanager
def open_workspace(settings: Settings) -> Iterator[Workspace]:
    workspace = Workspace(settings)
    try:
        yield workspace
    finally:
        workspace.close()
