"""Task planning: which tasks the data calls for. Pure functions, no I/O."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter

from osa_grid.core.metadata import Metadata, MetaValue
from osa_grid.core.models import Grouping, RetryPolicy, Transformation
from osa_grid.core.query import literal_text


# slots: a backlog is planned 50,000 files at a time, and each record without a __dict__ is ~100 bytes less.
@dataclass(frozen=True, slots=True)
class FileRecord:
    id: int
    lfn: str
    metadata: Metadata


@dataclass(frozen=True, slots=True)
class PlannedTask:
    task_id: str
    transformation: str
    group_key: str
    inputs: tuple[FileRecord, ...]  # sorted by LFN


@dataclass
class GroupingOutcome:
    tasks: list[PlannedTask] = field(default_factory=list)
    # Files that wait in an open group, with the group they wait in.
    pending: list[tuple[FileRecord, str]] = field(default_factory=list)


def input_query(production: str, transformation: Transformation) -> str:
    """The query a transformation's inputs are selected with.

    With declared parents (``input.from``), only their outputs in this production qualify: two productions
    over the same raw data never take each other's intermediate files.
    """
    parents = transformation.input.parents
    if not parents:
        return transformation.input.query
    names = ", ".join(literal_text(p) for p in parents)
    scope = f"production = {literal_text(production)} and transformation in ({names})"
    return f"({transformation.input.query}) and {scope}"


def task_id(production: str, transformation: Transformation, lfns: Iterable[str]) -> str:
    """Stable identity of a task: the same inputs always give the same id, so planning is idempotent."""
    return TaskIds(production, transformation).of(sorted(lfns))


class TaskIds:
    """Task ids of one transformation's tasks: the parts they share are hashed once, not once per task."""

    def __init__(self, production: str, transformation: Transformation) -> None:
        self._prefix = hashlib.sha256(
            _nul_terminated((production, transformation.name, transformation.version))
        )

    def of(self, sorted_lfns: Sequence[str]) -> str:
        """The id of a task over these input LFNs, given sorted."""
        digest = self._prefix.copy()
        digest.update(_nul_terminated(sorted_lfns))
        return digest.hexdigest()[:32]


def _nul_terminated(parts: Sequence[str]) -> bytes:
    # The bytes the id has always hashed: every part followed by a NUL.
    return ("\x00".join(parts) + "\x00").encode() if parts else b""


_BY_LFN = attrgetter("lfn")


def plan_groups(
    production: str,
    transformation: Transformation,
    candidates: Sequence[FileRecord],
    flush: bool,
) -> GroupingOutcome:
    """Group candidate files (new ones plus those already waiting) into tasks.

    ``flush`` closes incomplete groups: runs with missing sub-runs, a by_size remainder, ``all``.
    """
    grouping = transformation.grouping
    ids = TaskIds(production, transformation)
    unique = sorted({f.lfn: f for f in candidates}.values(), key=_BY_LFN)
    if grouping.mode == "per_file":  # the bulk of a backlog: one task per file, no grouping to do
        return GroupingOutcome(
            tasks=[PlannedTask(ids.of((f.lfn,)), transformation.name, f.lfn, (f,)) for f in unique]
        )
    outcome = GroupingOutcome()
    for key, members in _groups(grouping, unique).items():
        for chunk, complete in _chunks(grouping, members):
            if complete or flush:
                # Members come sorted by LFN and unique, so every chunk is too.
                lfns = [f.lfn for f in chunk]
                outcome.tasks.append(PlannedTask(ids.of(lfns), transformation.name, key, tuple(chunk)))
            else:
                outcome.pending += [(f, key) for f in chunk]
    return outcome


def _groups(grouping: Grouping, files: Sequence[FileRecord]) -> dict[str, list[FileRecord]]:
    """Files (sorted by LFN) by group, each group in the files' order."""
    groups: dict[str, list[FileRecord]] = defaultdict(list)
    for record in files:
        groups[group_key(grouping, record)].append(record)
    return groups


def grouping_metadata(grouping: Grouping) -> tuple[str, ...]:
    """The metadata keys grouping reads: all that planning needs of a file besides its id and LFN."""
    if grouping.mode != "by_run":
        return ()
    return (*grouping.keys, *([grouping.size_key] if grouping.size_key else []))


def group_key(grouping: Grouping, record: FileRecord) -> str:
    if grouping.mode == "per_file":
        return record.lfn
    if grouping.mode == "by_run":
        return ",".join(f"{key}={record.metadata.get(key, '?')}" for key in grouping.keys)
    return "all"


def _chunks(grouping: Grouping, members: list[FileRecord]) -> Iterable[tuple[list[FileRecord], bool]]:
    """Split a group into task-sized chunks, each marked complete or not (per_file never groups)."""
    if grouping.mode == "by_run":
        yield members, _run_complete(grouping, members)
    elif grouping.mode == "by_size":
        size = grouping.size or 1
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            yield chunk, len(chunk) == size
    else:
        yield members, False


def _run_complete(grouping: Grouping, members: Sequence[FileRecord]) -> bool:
    """A run is complete when it has as many files as its files say it should have."""
    if grouping.size_key is None:
        return False
    expected = {m.metadata.get(grouping.size_key) for m in members}
    if len(expected) != 1:
        return False
    (count,) = expected
    return isinstance(count, int) and len(members) >= count


def common_metadata(inputs: Sequence[FileRecord]) -> dict[str, MetaValue]:
    """The metadata all inputs agree on: what a task's outputs may inherit."""
    if not inputs:
        return {}
    shared = dict(inputs[0].metadata)
    for record in inputs[1:]:
        shared = {k: v for k, v in shared.items() if k in record.metadata and record.metadata[k] == v}
    return shared


@dataclass(frozen=True)
class RetryDecision:
    action: str  # "retry", "veto" or "fail"
    scale_memory: float = 1.0
    scale_walltime: float = 1.0
    reason: str = ""


def decide_retry(
    policy: RetryPolicy, failures: int, kind: str, exit_code: int | None, same_as_last: bool = False
) -> RetryDecision:
    """What to do after a task's ``failures``-th failure (counting this one).

    ``same_as_last``: this failure repeats the previous one exactly (same class and exit code).
    """
    if kind == "clash":
        # The same inputs render the same LFNs: another attempt would only find them taken again.
        return RetryDecision("veto", reason="its outputs' LFNs are taken: another attempt would clash again")
    rule = next((r for r in policy.rules if r.matches(kind, exit_code)), None)
    if rule is not None and rule.action == "veto":
        return RetryDecision("veto", reason=f"retry rule vetoes {kind} (exit code {exit_code})")
    if policy.veto_repeated_error and same_as_last:
        return RetryDecision("veto", reason="the same error twice in a row")
    if failures >= policy.max_attempts:
        return RetryDecision("fail", reason=f"failed {failures} time(s), the limit is {policy.max_attempts}")
    if rule is None:
        return RetryDecision("retry", reason=f"attempt {failures + 1} of {policy.max_attempts}")
    return RetryDecision(
        "retry",
        scale_memory=rule.scale_memory,
        scale_walltime=rule.scale_walltime,
        reason=f"attempt {failures + 1} of {policy.max_attempts} by retry rule",
    )


def ancestors(parents: Mapping[str, Sequence[str]], name: str) -> set[str]:
    found: set[str] = set()
    stack = list(parents.get(name, ()))
    while stack:
        current = stack.pop()
        if current not in found:
            found.add(current)
            stack.extend(parents.get(current, ()))
    return found


def upstream_drained(
    parents: Mapping[str, Sequence[str]],
    name: str,
    unfinished: Mapping[str, int],
    waiting: Mapping[str, int],
) -> bool:
    """True when no ancestor can produce more files: none has unfinished tasks or files waiting in groups."""
    return all(unfinished.get(a, 0) == 0 and waiting.get(a, 0) == 0 for a in ancestors(parents, name))
