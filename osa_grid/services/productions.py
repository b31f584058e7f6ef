"""Reading production files (with ``include:`` of shipped or neighbouring transformation files)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from osa_grid.catalog.store import Catalog, TaskRow
from osa_grid.core.loading import Document, build_nightly_workflow, build_production, parse_yaml
from osa_grid.core.models import Production
from osa_grid.core.nightly import NightlyWorkflow
from osa_grid.core.redaction import hidden_values, redact_production, redact_source
from osa_grid.core.states import ACTIVE, OperatorAction, TaskState
from osa_grid.errors import ProductionInvalid
from osa_grid.resources import shipped
from osa_grid.services.workspace import Workspace

MAX_INCLUDE_DEPTH = 1


def load_production(path: Path) -> Production:
    return build_production(load_document(path))


def load_document(path: Path) -> Document:
    document = _read(path)
    expand_includes(document, path)
    return document


def read_document(path: Path) -> Document:
    """A YAML file with the origin of every value (a campaign file, a production file before includes)."""
    return _read(path)


def expand_includes(document: Document, path: Path) -> None:
    """Replace the ``- include: FILE`` items of a production's transformations (``path``: its file)."""
    transformations = document.data.get("transformations") if isinstance(document.data, dict) else None
    if isinstance(transformations, list):
        for index, item in enumerate(transformations):
            if isinstance(item, dict) and "include" in item:
                _include(document, path, index, item)


def _read(path: Path) -> Document:
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ProductionInvalid(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ProductionInvalid(f"{path}: cannot be read: {exc}") from exc
    return parse_yaml(text, str(path))


def _include(document: Document, path: Path, index: int, item: dict[str, Any]) -> None:
    """``- include: name.yaml`` (plus optional overrides of top-level keys): a transformation from a file."""
    where = document.origin(("transformations", index))
    target = _find_include(path, str(item["include"]), str(where))
    included = _read(target)
    if not isinstance(included.data, dict):
        raise ProductionInvalid(f"{target}: a transformation file must hold a mapping")
    overrides = {k: v for k, v in item.items() if k != "include"}
    document.graft(("transformations", index), included)
    document.data["transformations"][index].update(overrides)


def _find_include(production_file: Path, name: str, where: str) -> Path:
    for base in (production_file.parent, shipped("transformations")):
        candidate = base / name
        if candidate.is_file():
            return candidate
    raise ProductionInvalid(
        f"{where}: include {name!r} found neither next to the production nor in transformations/"
    )


def load_nightly_workflow(path: Path) -> NightlyWorkflow:
    return build_nightly_workflow(load_document(path))


def definition_of(production: Production) -> dict[str, Any]:
    """The production as the catalog keeps it and users see it: secrets written in it hidden.

    Steps run from the ``Production`` itself, with the real values; a campaign, which runs from the catalog,
    reads them again from its file (``services.campaign``).
    """
    return redact_production(production.model_dump(mode="json", by_alias=True))


def digest_of(production: Production) -> str:
    """The digest of what is recorded (a digest of the secrets too would let one test guesses of them)."""
    return hashlib.sha256(json.dumps(definition_of(production), sort_keys=True).encode()).hexdigest()


def hides_secrets(production: Production) -> bool:
    return definition_of(production) != production.model_dump(mode="json", by_alias=True)


def source_to_record(text: str, production: Production, also_hidden: set[str]) -> str | None:
    """A production file's text as the catalog keeps it: the values ``definition_of`` hides hidden in it."""
    real = production.model_dump(mode="json", by_alias=True)
    return redact_source(text, hidden_values(real, definition_of(production)) | also_hidden)


def save_production(
    catalog: Catalog, production: Production, source: str | None, also_hidden: set[str] | None = None
) -> bool:
    """Store the production as it may be recorded; ``source``: the text of its file (a campaign's file: its
    own hidden values in ``also_hidden``)."""
    recorded = None if source is None else source_to_record(source, production, also_hidden or set())
    return catalog.save_production(
        production.name, definition_of(production), digest_of(production), recorded
    )


def production_from_definition(definition: dict[str, Any]) -> Production:
    """A production as stored in the catalog (already validated when it was saved)."""
    return Production.model_validate(definition)


def change_states(
    workspace: Workspace,
    production: str,
    action: OperatorAction,
    task_ids: list[str] | None = None,
    transformation: str | None = None,
) -> list[TaskRow]:
    """An operator's action on tasks (retry, cancel); jobs of tasks taken out of a backend are cancelled."""
    changed = workspace.catalog.set_states(
        production,
        list(action.sources),
        action.target,
        action.kind,
        task_ids=task_ids,
        transformation=transformation,
        reset_failures=action.target == TaskState.READY,
    )
    active = [row for row in changed if row.job_id and row.state in ACTIVE]
    for backend_name in {row.backend for row in active if row.backend}:
        workspace.backend(backend_name).cancel(
            [row.job_id for row in active if row.backend == backend_name and row.job_id]
        )
    return changed
