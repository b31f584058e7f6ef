"""The local-filesystem data store: products live under one root directory, at their LFN."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from osa_grid.config import Settings
from osa_grid.core.templates import check_relative_path
from osa_grid.errors import BadInput, InputFileMissing, OutputClash, StorageError
from osa_grid.ports import NewFile, Replica, StageState, StageStatus

# errno values of a link(2) that the filesystem does not support (the rename is done without it).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS})


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

    def store(self, source: Path, lfn: str, replace: bool = False) -> Replica:
        """Move a product into place atomically: readers see the whole file or none of it.

        A file already at the LFN's place is never replaced, unless ``replace`` (the caller holds the LFN's
        claim and knows that file is its own unregistered leftover). Nothing lands outside the data root.
        """
        destination = self.path_of(lfn)
        try:
            if source.is_symlink():
                raise StorageError(f"{source} is a symbolic link (to {os.readlink(source)}): not a product")
            self._make_directory(destination.parent, lfn)
            try:
                _place(source, destination, replace)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                self._copy_across(source, destination, replace)
        except OSError as exc:
            raise StorageError(f"cannot store {lfn} at {destination}: {exc.strerror or exc}") from exc
        return Replica(lfn, self.name, str(destination))

    def discard(self, lfn: str) -> None:
        """Remove a product ``store`` put in place that will not be registered (its task failed)."""
        try:
            self.path_of(lfn).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot remove the unregistered product {lfn}: {exc.strerror or exc}"
            ) from exc

    def _make_directory(self, directory: Path, lfn: str) -> None:
        """The LFN's directory, checked before and after it is made: a symbolic link must not lead outside."""
        for _ in range(2):
            if not directory.resolve().is_relative_to(self.root):
                raise StorageError(
                    f"cannot store {lfn}: {directory} leads to {directory.resolve()}, outside the data root "
                    f"{self.root} (a symbolic link in the store?)"
                )
            directory.mkdir(parents=True, exist_ok=True)

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
    def _copy_across(source: Path, destination: Path, replace: bool) -> None:
        """Another filesystem: copy next to the target, flush, then rename; never leave a partial file."""
        staging = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.part")
        try:
            shutil.copyfile(source, staging)
            with staging.open("rb") as handle:
                os.fsync(handle.fileno())
            _place(staging, destination, replace)
        finally:
            with contextlib.suppress(OSError):
                staging.unlink(missing_ok=True)
        source.unlink()


def _place(source: Path, destination: Path, replace: bool) -> None:
    """Rename ``source`` to ``destination`` (one filesystem); unless ``replace``, never over an existing file.

    A hard link fails if the destination exists (atomically, where a check and a rename would race); where
    the filesystem has no hard links, the check and the rename.
    """
    if replace:
        os.replace(source, destination)
        return
    try:
        os.link(source, destination, follow_symlinks=False)
    except FileExistsError:
        raise OutputClash(
            f"{destination} exists already and is not replaced: a registered product never changes "
            "(a file there that is no product must be removed by hand)"
        ) from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if os.path.lexists(destination):
            raise OutputClash(f"{destination} exists already and is not replaced") from None
        os.replace(source, destination)
        return
    source.unlink()


def from_settings(settings: Settings) -> LocalStore:
    return LocalStore(settings.data_directory)
