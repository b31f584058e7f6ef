"""Registering files that already exist (raw data, external inputs) with their metadata."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from osa_grid.catalog.store import Catalog
from osa_grid.core.metadata import MetaValue, check_metadata
from osa_grid.core.names import metadata_from_name
from osa_grid.core.templates import check_relative_path
from osa_grid.data.checksums import adler32
from osa_grid.errors import InputFileMissing
from osa_grid.ports import NewFile, Replica


def register_paths(
    catalog: Catalog,
    paths: Sequence[Path],
    metadata: Mapping[str, MetaValue],
    name_pattern: str | None = None,
    lfn_prefix: str = "",
    store: str = "local",
) -> list[str]:
    """Register files in place (their replica is the path given), all or nothing."""
    new_files = []
    for path in paths:
        found = dict(metadata_from_name(name_pattern, path.name)) if name_pattern else {}
        found.update(metadata)
        lfn = f"{lfn_prefix.strip('/')}/{path.name}" if lfn_prefix else path.name
        new_files.append(describe_path(path, found, lfn, store))
    catalog.register_files(new_files)
    return [f.lfn for f in new_files]


def describe_path(path: Path, metadata: Mapping[str, MetaValue], lfn: str, store: str = "local") -> NewFile:
    """An existing file as the catalog will know it: size, adler32, metadata, its replica in place."""
    if not path.is_file():
        raise InputFileMissing(f"{path}: no such file")
    resolved = path.resolve()
    lfn = check_relative_path(lfn)
    found = dict(metadata)
    return NewFile(
        lfn=lfn,
        size=resolved.stat().st_size,
        checksum=adler32(resolved),
        metadata=check_metadata(found),
        replicas=(Replica(lfn, store, str(resolved)),),
    )
