"""Registering files that already exist (raw data, external inputs) with their metadata."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from osa_grid.catalog.store import Catalog, CatalogFile
from osa_grid.core.metadata import MetaValue, check_metadata, value_type
from osa_grid.core.names import metadata_from_name
from osa_grid.core.templates import check_relative_path
from osa_grid.data.checksums import adler32
from osa_grid.errors import AlreadyRegistered, BadInput, InputFileMissing
from osa_grid.ports import NewFile, Replica


@dataclass(frozen=True)
class Registration:
    """What a registration did: the LFNs it added, those the catalog held already with the same content."""

    registered: list[str]
    unchanged: list[str]


def register_paths(
    catalog: Catalog,
    paths: Sequence[Path],
    metadata: Mapping[str, MetaValue],
    name_pattern: str | None = None,
    lfn_prefix: str = "",
    store: str = "local",
) -> list[str]:
    """Register files in place (their replica is the path given), all or nothing."""
    new_files = describe_paths(paths, metadata, name_pattern, lfn_prefix, store)
    catalog.register_files(new_files)
    return [f.lfn for f in new_files]


def describe_paths(
    paths: Sequence[Path],
    metadata: Mapping[str, MetaValue],
    name_pattern: str | None = None,
    lfn_prefix: str = "",
    store: str = "local",
) -> list[NewFile]:
    """The files as a registration will give them to the catalog (reads and checksums every one)."""
    new_files = []
    for path in paths:
        found = dict(metadata_from_name(name_pattern, path.name)) if name_pattern else {}
        found.update(metadata)
        lfn = f"{lfn_prefix.strip('/')}/{path.name}" if lfn_prefix else path.name
        new_files.append(describe_path(path, found, lfn, store))
    return new_files


def register_unless_unchanged(catalog: Catalog, new_files: Sequence[NewFile]) -> Registration:
    """Register the files; those registered already with the same content are left as they are.

    So a registration run again (after an interrupt, say) does nothing and succeeds. A file registered
    already with another size, adler32 or metadata is refused (a registered product never changes), and
    then nothing is registered. The check costs nothing when no LFN is registered yet: the catalog's own
    refusal names the LFNs to compare.
    """
    pending = list(new_files)
    unchanged: list[str] = []
    while True:
        try:
            catalog.register_files(pending)
        except AlreadyRegistered as clash:
            known = [f for f in pending if f.lfn in clash.lfns]
            _refuse_changes(catalog, known)
            unchanged += [f.lfn for f in known]
            pending = [f for f in pending if f.lfn not in clash.lfns]
        else:
            return Registration([f.lfn for f in pending], unchanged)


def _refuse_changes(catalog: Catalog, known: Sequence[NewFile]) -> None:
    """BadInput naming the files whose registered size, adler32 or metadata differ from the new ones."""
    registered = {
        f.lfn: f for f in catalog.files_by_id(list(catalog.file_ids([f.lfn for f in known]).values()))
    }
    changed = sorted(f.lfn for f in known if f.lfn in registered and not _same_content(registered[f.lfn], f))
    if changed:
        shown = ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else "")
        raise BadInput(
            f"{len(changed)} file(s) are already registered with another size, adler32 or metadata "
            f"(a registered file never changes; nothing was registered): {shown}"
        )


def _same_content(registered: CatalogFile, new: NewFile) -> bool:
    return (registered.size, registered.checksum) == (new.size, new.checksum) and _typed(
        registered.metadata
    ) == _typed(check_metadata(new.metadata))


def _typed(metadata: Mapping[str, MetaValue]) -> dict[str, tuple[str, MetaValue]]:
    """Values with their stored type: 1 and 1.0 are different metadata, although Python finds them equal."""
    return {key: (value_type(value), value) for key, value in metadata.items()}


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
