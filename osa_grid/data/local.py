"""The local-filesystem data store: products live under one root directory, at their LFN."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from osa_grid.config import Settings
from osa_grid.core.templates import check_relative_path
from osa_grid.errors import BadInput, InputFileMissing, StorageError
from osa_grid.ports import NewFile, Replica, StageState, StageStatus


class LocalStore:
    name = "local"
    stages = False  # everything is on disk already

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
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, destination)
        except OSError:
            self._copy_across(source, destination)
        return Replica(lfn, self.name, str(destination))

    def online(self, replica: Replica) -> bool:
        return replica.store == self.name and replica.state == "available"

    def resolve(self, query: str) -> list[NewFile]:
        raise BadInput("the local store keeps no metadata of its own: the catalog answers (osa-grid query)")

    def stage(self, lfns: Sequence[str], lifetime: int) -> dict[str, str]:
        return {lfn: f"local:{lfn}" for lfn in lfns}

    def stage_status(self, requests: Mapping[str, str]) -> dict[str, StageStatus]:
        return {lfn: StageStatus(StageState.ONLINE) for lfn in requests}

    def release(self, request_ids: Sequence[str]) -> None:
        """Nothing to release: the store keeps its files."""

    def register(self, files: Sequence[NewFile], dataset: str) -> list[NewFile]:
        return list(files)  # the catalog is the local store's only index

    @staticmethod
    def _copy_across(source: Path, destination: Path) -> None:
        """Another filesystem: copy next to the target, flush, then rename; never leave a partial file."""
        staging = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.part")
        try:
            shutil.copyfile(source, staging)
            with staging.open("rb") as handle:
                os.fsync(handle.fileno())
            os.replace(staging, destination)
        except OSError as exc:
            staging.unlink(missing_ok=True)
            raise StorageError(f"cannot store {destination}: {exc.strerror or exc}") from exc
        source.unlink()


def from_settings(settings: Settings) -> LocalStore:
    return LocalStore(settings.data_directory)
