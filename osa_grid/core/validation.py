"""Checks across a production's transformations: names, parents, cycles, queries, templates."""

from __future__ import annotations

from collections.abc import Sequence

from osa_grid.core import query as querylang
from osa_grid.core import templates
from osa_grid.core.models import Output, Production, Transformation
from osa_grid.errors import QuerySyntaxError

Problem = tuple[Sequence[str | int], str]


def check_production(production: Production) -> list[Problem]:
    problems: list[Problem] = []
    names = [t.name for t in production.transformations]
    for index, name in enumerate(names):
        if names.index(name) != index:
            problems.append((("transformations", index, "name"), f"transformation {name!r} is defined twice"))
    for index, transformation in enumerate(production.transformations):
        problems += _check_transformation(production, index, transformation)
    if not problems:
        cycle = find_cycle(production)
        if cycle:
            problems.append((("transformations",), f"the transformations form a cycle: {' -> '.join(cycle)}"))
    return problems


def _check_transformation(
    production: Production, index: int, transformation: Transformation
) -> list[Problem]:
    base: tuple[str | int, ...] = ("transformations", index)
    problems: list[Problem] = []
    try:
        node = querylang.parse(transformation.input.query)
    except QuerySyntaxError as exc:
        return [((*base, "input", "query"), str(exc))]
    for name, template in transformation.input.needs.items():
        try:
            querylang.parse_template(template)
        except QuerySyntaxError as exc:
            problems.append(((*base, "input", "needs", name), str(exc)))
    known = {t.name for t in production.transformations}
    for parent in transformation.input.parents:
        if parent not in known:
            problems.append(((*base, "input", "from"), f"unknown parent transformation {parent!r}"))
        elif parent == transformation.name:
            problems.append(((*base, "input", "from"), "a transformation cannot be its own parent"))
        elif not _feeds(production, production.transformation(parent), node):
            problems.append(
                (
                    (*base, "input", "query"),
                    f"no output of parent {parent!r} can match {transformation.input.query!r}",
                )
            )
    if _feeds(production, transformation, node):
        problems.append(
            (
                (*base, "outputs"),
                f"the outputs of {transformation.name!r} could match its own input query "
                f"{transformation.input.query!r} and feed it for ever: give them metadata the query excludes "
                "(e.g. outputs metadata data_level: DL1 with a query on data_level = R0)",
            )
        )
    problems += _check_templates(base, transformation)
    return problems


def _output_can_match(
    production: Production, parent: Transformation, output: Output, node: querylang.Node
) -> bool:
    """Could a file made by this output match the query? Inherited keys are unknown, so maybe."""
    known = {**output.metadata, "production": production.name, "transformation": parent.name}
    return querylang.satisfiable(node, known, open_keys=output.inherit != "none")


def _feeds(production: Production, parent: Transformation, node: querylang.Node) -> bool:
    return any(_output_can_match(production, parent, output, node) for output in parent.outputs)


def need_queries(transformation: Transformation) -> list[querylang.Node]:
    """The side-input queries with their placeholders as unknown words: what any rendering may ask for."""
    return [querylang.parse_template(t).shape for t in transformation.input.needs.values()]


def producers(production: Production, node: querylang.Node, besides: str = "") -> set[str]:
    """Transformations whose outputs could match the query."""
    return {t.name for t in production.transformations if t.name != besides and _feeds(production, t, node)}


def feeders(production: Production) -> dict[str, set[str]]:
    """For each transformation, the others whose outputs could become its inputs or side inputs."""
    found: dict[str, set[str]] = {}
    for child in production.transformations:
        nodes = [querylang.parse(child.input.query), *need_queries(child)]
        found[child.name] = set().union(*(producers(production, node, child.name) for node in nodes))
    return found


def dependencies(production: Production) -> dict[str, list[str]]:
    """Declared parents plus every transformation whose outputs could become inputs."""
    inferred = feeders(production)
    return {t.name: sorted(set(t.input.parents) | inferred[t.name]) for t in production.transformations}


def _check_templates(base: tuple[str | int, ...], transformation: Transformation) -> list[Problem]:
    places: list[tuple[tuple[str | int, ...], str]] = [
        ((*base, "step", "argv", position), element)
        for position, element in enumerate(transformation.step.argv)
    ]
    places += [((*base, "step", "env", key), value) for key, value in transformation.step.env.items()]
    problems: list[Problem] = []
    outputs = {f"output.{o.name}" for o in transformation.outputs}
    outputs |= {f"output.{o.name}.metadata" for o in transformation.outputs if o.metadata_file}
    needs = {f"needs.{name}" for name in transformation.input.needs}
    for where, template in places:
        for field in templates.fields(template):
            if field.name.startswith("output.") and field.name not in outputs:
                problems.append((where, f"{{{field.name}}} names no declared output"))
            if field.name.startswith("needs.") and field.name not in needs:
                problems.append((where, f"{{{field.name}}} names no declared need (input.needs)"))
            if field.name == "input" and transformation.grouping.mode != "per_file":
                problems.append((where, "{input} is one file: with grouping by several files use {inputs}"))
    return problems


def find_cycle(production: Production) -> list[str]:
    """A list of names forming a cycle of dependencies, or [] when the graph is a DAG."""
    parents = dependencies(production)
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(name: str) -> list[str]:
        state[name] = 1
        path.append(name)
        for parent in parents.get(name, []):
            if state.get(parent) == 1:
                return [*path[path.index(parent) :], parent]
            if parent not in state:
                found = visit(parent)
                if found:
                    return found
        path.pop()
        state[name] = 2
        return []

    for name in parents:
        if name not in state:
            found = visit(name)
            if found:
                return found
    return []


def topological_order(production: Production) -> list[Transformation]:
    """Parents (declared or inferred) before children; ties keep the order of the file."""
    parents = dependencies(production)
    done: set[str] = set()
    ordered: list[Transformation] = []
    remaining = list(production.transformations)
    while remaining:
        ready = [t for t in remaining if all(p in done for p in parents[t.name])]
        if not ready:
            raise ValueError("cycle in production (check_production should have caught it)")
        for transformation in ready:
            ordered.append(transformation)
            done.add(transformation.name)
        remaining = [t for t in remaining if t.name not in done]
    return ordered
