"""The local-filesystem data store: products live under one root directory, at their LFN."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from osa_grid.config import Settings
from osa_grid.core.templates import check_relative_path
from osa_grid.errors import InputFileMissing
from osa_grid.ports import Replica


class LocalStore:
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def path_of(self, lfn: str) -> Path:
        return self.root / check_relative_path(lfn)

    def locate(self, lfn: str, replicas: Sequence[Replica]) -> Path:
        for replica in replicas:
            if replica.store == self.name and replica.state == "available":
                path = Path(replica.pfn)
                if path.is_file():
                    return path
                raise InputFileMissing(f"{lfn}: its replica {path} does not exist (was it moved or deleted?)")
        raise InputFileMissing(f"{lfn}: no available replica in the local store")

    def store(self, source: Path, lfn: str) -> Replica:
        """Move a product into place atomically: readers see the whole file or none of it."""
        destination = self.path_of(lfn)
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, destination)
        except OSError:
            # Another filesystem: copy next to the target, flush, then rename.
            staging = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.part")
            shutil.copyfile(source, staging)
            with staging.open("rb") as handle:
                os.fsync(handle.fileno())
            os.replace(staging, destination)
            source.unlink()
        return Replica(lfn, self.name, str(destination))


def from_settings(settings: Settings) -> LocalStore:
    return LocalStore(settings.data_directory)
