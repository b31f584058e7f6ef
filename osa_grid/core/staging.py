"""The staging window (pure): which offline files to ask for next, so that disk use stays bounded.

Files are asked for task by task, oldest task first, so that whole tasks come online (a half-staged task
runs nothing). Files staged and not yet released count against the window; a task larger than the whole
window is still staged when nothing else is, so that it cannot wait for ever.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    max_files: int
    max_bytes: int


@dataclass(frozen=True)
class WaitingTask:
    task_id: str
    # Input files (lfn -> size) neither online nor asked for yet.
    offline: Mapping[str, int]


def next_requests(
    tasks: Sequence[WaitingTask], window: Window, used_files: int, used_bytes: int
) -> list[str]:
    """The LFNs to stage now, in order."""
    chosen: dict[str, int] = {}
    files, size = used_files, used_bytes
    for task in tasks:
        wanted = {lfn: n for lfn, n in task.offline.items() if lfn not in chosen}
        if not wanted:
            continue
        more_files, more_bytes = files + len(wanted), size + sum(wanted.values())
        alone = files == 0 and size == 0
        if not alone and (more_files > window.max_files or more_bytes > window.max_bytes):
            break  # in order: a small later task must not overtake a big earlier one for ever
        chosen.update(wanted)
        files, size = more_files, more_bytes
    return list(chosen)
