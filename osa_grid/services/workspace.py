"""A workspace: settings plus the catalog, data manager and backend they name, opened on demand.

The osa-grid home and the work root are made readable by their user only (0700) when osa-grid makes them: they
hold the catalog, the commands and environments of tasks (the backends' manifests) and the tasks' logs. An
existing home that others may enter keeps its mode (it may be shared on purpose) and gets a warning.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from logging import WARNING
from pathlib import Path

from osa_grid.backends import backend_from_settings
from osa_grid.catalog.store import Catalog
from osa_grid.config import Settings
from osa_grid.data import data_manager_from_settings
from osa_grid.logs import event, get_logger
from osa_grid.ports import Backend, DataManager
from osa_grid.system import private_directory

log = get_logger("workspace")


@dataclass
class Workspace:
    settings: Settings
    _backends: list[Backend] = field(default_factory=list)

    def __post_init__(self) -> None:
        settings = self.settings
        if None in (settings.catalog_url, settings.data_root, settings.work_root):
            _private_home(settings.home)

    @cached_property
    def catalog(self) -> Catalog:
        return Catalog.open(self.settings.catalog)

    @cached_property
    def data(self) -> DataManager:
        return data_manager_from_settings(self.settings.data_manager, self.settings)

    def backend(self, name: str | None = None) -> Backend:
        private_directory(self.work_root)
        backend = backend_from_settings(name or self.settings.backend, self.settings)
        self._backends.append(backend)
        return backend

    @property
    def work_root(self) -> Path:
        """Where tasks run and backends keep their state, made (private) if missing."""
        work_root = self.settings.work_directory
        private_directory(work_root)
        return work_root

    def close(self) -> None:
        for backend in self._backends:
            backend.close()
        if "catalog" in self.__dict__:
            self.catalog.close()


def _private_home(home: Path) -> None:
    """Make the home if missing (0700), or warn when others may enter the existing one."""
    try:
        still_open = private_directory(home)
    except OSError:
        return  # a command that only reads needs no home; one that writes there says why it cannot
    if still_open:
        event(
            log,
            "home_not_private",
            level=WARNING,
            home=home.resolve(),
            mode=oct(home.stat().st_mode & 0o777),
            effect="others may read the catalog and the tasks' logs there: chmod 700 it",
        )


@contextmanager
def open_workspace(settings: Settings) -> Iterator[Workspace]:
    workspace = Workspace(settings)
    try:
        yield workspace
    finally:
        workspace.close()
