"""Checks across a production's transformations: names, parents, cycles, queries, templates.

Everything here is linear in the number of transformations, or output-sensitive: which outputs could feed a
query is found through an index of the outputs' fixed metadata (``Producers``), not by trying every pair, so a
production of thousands of transformations validates in about the time it takes to read it.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date

from osa_grid.core import query as querylang
from osa_grid.core import templates
from osa_grid.core.metadata import MetaValue, sortable_text
from osa_grid.core.models import Output, Production, Transformation
from osa_grid.errors import QuerySyntaxError

Problem = tuple[Sequence[str | int], str]


def check_production(production: Production) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[str] = set()
    for index, transformation in enumerate(production.transformations):
        name = transformation.name
        if name in seen:
            problems.append((("transformations", index, "name"), f"transformation {name!r} is defined twice"))
        seen.add(name)
    by_name = {t.name: t for t in reversed(production.transformations)}  # the first of a name wins
    for index, transformation in enumerate(production.transformations):
        problems += _check_transformation(production, by_name, index, transformation)
    if not problems:
        cycle = find_cycle(production)
        if cycle:
            problems.append((("transformations",), f"the transformations form a cycle: {' -> '.join(cycle)}"))
    return problems


def _check_transformation(
    production: Production, by_name: dict[str, Transformation], index: int, transformation: Transformation
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
    for parent in transformation.input.parents:
        if parent not in by_name:
            problems.append(((*base, "input", "from"), f"unknown parent transformation {parent!r}"))
        elif parent == transformation.name:
            problems.append(((*base, "input", "from"), "a transformation cannot be its own parent"))
        elif not _feeds(production, by_name[parent], node):
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


def _known(production: Production, parent: Transformation, output: Output) -> dict[str, MetaValue]:
    """What every file made by this output holds for sure."""
    return {**output.metadata, "production": production.name, "transformation": parent.name}


def _output_can_match(
    production: Production, parent: Transformation, output: Output, node: querylang.Node
) -> bool:
    """Could a file made by this output match the query? Inherited keys are unknown, so maybe."""
    return querylang.satisfiable(node, _known(production, parent, output), open_keys=output.inherit != "none")


def _feeds(production: Production, parent: Transformation, node: querylang.Node) -> bool:
    return any(_output_can_match(production, parent, output, node) for output in parent.outputs)


@dataclass(frozen=True)
class _Made:
    """One output of a transformation, as a query sees the files it makes."""

    transformation: str
    known: dict[str, MetaValue]
    open_keys: bool


class Producers:
    """Which transformations' outputs could match a query, without trying every output.

    The outputs' fixed metadata is indexed by key and value. A query that requires ``key = value`` (or
    ``key in (...)``) at its top level can only be matched by outputs holding that value or not fixing the
    key (open, inherited keys): only those candidates are tried with ``querylang.satisfiable``, with the
    answer it would give on every output. Build one per production and ask it many queries.
    """

    def __init__(self, production: Production) -> None:
        self._made = [
            _Made(t.name, _known(production, t, output), output.inherit != "none")
            for t in production.transformations
            for output in t.outputs
        ]
        self._by_value: dict[str, dict[Hashable, list[int]]] = {}
        self._unindexed: dict[str, list[int]] = {}  # outputs whose value for the key has no equality bucket
        for position, made in enumerate(self._made):
            for key, value in made.known.items():
                bucket = _equality_bucket(value)
                if bucket is None:
                    self._unindexed.setdefault(key, []).append(position)
                else:
                    self._by_value.setdefault(key, {}).setdefault(bucket, []).append(position)
        self._open_without: dict[str, list[int]] = {}  # key -> outputs for which the key is unknown

    def of(self, node: querylang.Node, besides: str = "") -> set[str]:
        """Names of the transformations (but ``besides``) whose outputs could match the query."""
        return {
            self._made[position].transformation
            for position in self._candidates(node)
            if self._made[position].transformation != besides
            and querylang.satisfiable(node, self._made[position].known, self._made[position].open_keys)
        }

    def _candidates(self, node: querylang.Node) -> Iterable[int]:
        best: list[int] | None = None
        for key, values in _required_values(node):
            found = self._holding(key, values)
            if found is not None and (best is None or len(found) < len(best)):
                best = found
        return range(len(self._made)) if best is None else sorted(set(best))

    def _holding(self, key: str, values: Sequence[MetaValue]) -> list[int] | None:
        """Outputs whose files could hold one of ``values`` for ``key`` (None: the values are not indexed)."""
        buckets = [_equality_bucket(value) for value in values]
        if any(bucket is None for bucket in buckets):
            return None
        by_value = self._by_value.get(key, {})
        found = [position for bucket in buckets for position in by_value.get(bucket, [])]
        return found + self._unindexed.get(key, []) + self._open_without_key(key)

    def _open_without_key(self, key: str) -> list[int]:
        if key not in self._open_without:
            self._open_without[key] = [
                position
                for position, made in enumerate(self._made)
                if made.open_keys and key not in made.known
            ]
        return self._open_without[key]


def _required_values(node: querylang.Node) -> Iterable[tuple[str, Sequence[MetaValue]]]:
    """``(key, values)`` for each top-level condition a matching file must meet with one of the values."""
    if isinstance(node, querylang.And):
        for item in node.items:
            yield from _required_values(item)
    elif isinstance(node, querylang.Comparison) and node.op == "=":
        yield node.key, (node.value,)
    elif isinstance(node, querylang.InList) and not node.negated:
        yield node.key, node.values


def _equality_bucket(value: object) -> Hashable | None:
    """Equal values (as ``querylang.compare`` sees them) share a bucket; None when there is none to share."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str | date):
        return ("text", sortable_text(value))
    if isinstance(value, int | float):
        try:
            return ("number", float(value))  # ints and floats compare in double precision
        except OverflowError:
            return ("number", "beyond a double")
    return None


def need_queries(transformation: Transformation) -> list[querylang.Node]:
    """The side-input queries with their placeholders as unknown words: what any rendering may ask for."""
    return [querylang.parse_template(t).shape for t in transformation.input.needs.values()]


def feeders(production: Production) -> dict[str, set[str]]:
    """For each transformation, the others whose outputs could become its inputs or side inputs."""
    index = Producers(production)
    found: dict[str, set[str]] = {}
    for child in production.transformations:
        nodes = [querylang.parse(child.input.query), *need_queries(child)]
        found[child.name] = set().union(*(index.of(node, child.name) for node in nodes))
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
    for root in parents:
        if root in state:
            continue
        # Depth-first without recursion: a chain of thousands of transformations must not exhaust the stack.
        path = [root]
        pending = [iter(parents[root])]
        state[root] = 1
        while pending:
            parent = next(pending[-1], None)
            if parent is None:
                state[path.pop()] = 2
                pending.pop()
            elif state.get(parent) == 1:
                return [*path[path.index(parent) :], parent]
            elif parent not in state:
                state[parent] = 1
                path.append(parent)
                pending.append(iter(parents.get(parent, [])))
    return []


def topological_order(production: Production) -> list[Transformation]:
    """Parents (declared or inferred) before children; ties keep the order of the file.

    A transformation's rank is one more than its parents' highest (0 without parents): the order is by rank,
    then by place in the file.
    """
    parents = dependencies(production)
    children: dict[str, list[str]] = {name: [] for name in parents}
    waiting = {name: len(set(names)) for name, names in parents.items()}
    for name, names in parents.items():
        for parent in set(names):
            if parent not in children:
                raise ValueError(f"unknown parent {parent!r} (check_production should have caught it)")
            children[parent].append(name)
    rank = dict.fromkeys(parents, 0)
    ready = [name for name, count in waiting.items() if count == 0]
    ranked = 0
    while ready:
        name = ready.pop()
        ranked += 1
        for child in children[name]:
            rank[child] = max(rank[child], rank[name] + 1)
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    if ranked < len(parents):
        raise ValueError("cycle in production (check_production should have caught it)")
    place = {t.name: position for position, t in enumerate(production.transformations)}
    return sorted(production.transformations, key=lambda t: (rank[t.name], place[t.name]))
