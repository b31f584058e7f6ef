"""YAML text -> validated Production, with errors that name the file, the line and the field.

Pure: it takes text that a caller has read. Including other files is the caller's business
(``services.productions``); it passes their parsed documents in as already-loaded subtrees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError

from osa_grid.core.campaign import Campaign, software_problems
from osa_grid.core.models import Production
from osa_grid.core.nightly import NightlyWorkflow, column_transformations
from osa_grid.core.validation import check_production
from osa_grid.core.yaml_limits import compose
from osa_grid.errors import CampaignInvalid, ProductionInvalid

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Origin:
    source: str
    line: int  # 1-based

    def __str__(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass
class Document:
    """Plain data parsed from YAML, plus where each value came from."""

    data: Any
    origins: dict[Path, Origin] = field(default_factory=dict)

    def origin(self, path: Sequence[str | int]) -> Origin | None:
        """The origin of the deepest part of ``path`` that the document knows."""
        for end in range(len(path), -1, -1):
            found = self.origins.get(tuple(path[:end]))
            if found is not None:
                return found
        return None

    def part(self, path: Path) -> Document:
        """The subtree at ``path``, keeping where each of its values came from."""
        data = self.data
        for key in path:
            data = data[key]
        size = len(path)
        return Document(data, {k[size:]: v for k, v in self.origins.items() if k[:size] == path})

    def graft(self, path: Path, other: Document) -> None:
        """Put another document's data at ``path`` (used for ``include:``)."""
        parent = self.data
        for part in path[:-1]:
            parent = parent[part]
        parent[path[-1]] = other.data
        for sub, where in other.origins.items():
            self.origins[path + sub] = where


def parse_yaml(text: str, source: str) -> Document:
    try:
        node = compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProductionInvalid(f"{where}: not valid YAML: {problem}") from exc
    if node is None:
        raise ProductionInvalid(f"{source}: the file is empty")
    document = Document(data=None)
    document.data = _build(node, (), source, document.origins)
    return document


def _build(node: yaml.Node, path: Path, source: str, origins: dict[Path, Origin]) -> Any:
    origins[path] = Origin(source, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node, source)
            if key in result:
                line = key_node.start_mark.line + 1
                raise ProductionInvalid(f"{source}:{line}: key {key!r} appears twice")
            result[key] = _build(value_node, (*path, key), source, origins)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, index), source, origins) for index, item in enumerate(node.value)]
    return _scalar(node, source)


def _scalar(node: yaml.Node, source: str) -> Any:
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.ScalarNode):
        raise ProductionInvalid(f"{source}:{line}: a mapping key must be a plain value")
    try:
        return yaml.constructor.SafeConstructor().construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError) as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProductionInvalid(f"{source}:{line}: {node.value!r} cannot be read: {problem}") from exc


def build_production(document: Document) -> Production:
    """Validate the data as a Production; every problem is reported with its file and line."""
    if not isinstance(document.data, Mapping):
        raise ProductionInvalid(f"{document.origin(())}: a production must be a mapping")
    try:
        production = Production.model_validate(document.data)
    except ValidationError as exc:
        raise ProductionInvalid(_format(document, [(e["loc"], e["msg"]) for e in exc.errors()])) from exc
    problems = check_production(production)
    if problems:
        raise ProductionInvalid(_format(document, problems))
    return production


def build_nightly_workflow(document: Document) -> NightlyWorkflow:
    """A nightly workflow: its own fields, and its transformations checked like a production's."""
    if not isinstance(document.data, Mapping):
        raise ProductionInvalid(f"{document.origin(())}: a nightly workflow must be a mapping")
    try:
        workflow = NightlyWorkflow.model_validate(document.data)
    except ValidationError as exc:
        raise ProductionInvalid(_format(document, [(e["loc"], e["msg"]) for e in exc.errors()])) from exc
    generic = Production(name=workflow.name, transformations=workflow.transformations)
    problems = check_production(generic)
    names = {t.name for t in workflow.transformations}
    problems += [
        (("columns", label), f"unknown transformation {name!r}")
        for label in workflow.columns
        for name in column_transformations(workflow, label)
        if name not in names
    ]
    if problems:
        raise ProductionInvalid(_format(document, problems))
    return workflow


def build_campaign(document: Document) -> tuple[Campaign, Production]:
    """A campaign whose ``production`` holds the production's document (grafted from its file or inline)."""
    if not isinstance(document.data, Mapping):
        raise CampaignInvalid(f"{document.origin(())}: a campaign must be a mapping")
    try:
        campaign = Campaign.model_validate(document.data)
    except ValidationError as exc:
        problems = [(e["loc"], e["msg"]) for e in exc.errors()]
        raise CampaignInvalid(_format(document, problems, "campaign")) from exc
    production = build_production(document.part(("production",)))
    software = software_problems(campaign, production)
    if software:
        raise CampaignInvalid(_format(document, software, "campaign"))
    return campaign, production


def _format(
    document: Document, problems: Sequence[tuple[Sequence[str | int], str]], what: str = "production"
) -> str:
    lines = []
    for loc, message in problems:
        origin = document.origin(loc)
        dotted = ".".join(str(part) if isinstance(part, str) else f"[{part}]" for part in loc)
        dotted = dotted.replace(".[", "[")
        lines.append(f"{origin}: {dotted or '<top>'}: {message}")
    count = len(lines)
    header = f"the {what} has {count} problem{'s' if count > 1 else ''}:"
    return "\n  ".join([header, *lines])
