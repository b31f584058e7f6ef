"""What one element of an osa-grid array job runs on the compute node: its task's command, without a shell.

The batch script of an array job is three lines of Python calling ``main(MANIFEST)``. The manifest (JSON
Lines, written by the SLURM backend before sbatch) has a header line, then one line per element with the
task's argv, environment, work directory and log files; ``SLURM_ARRAY_TASK_ID`` picks the line. The runner
sends its standard streams to the task's logs, changes to the work directory and ``execvpe``s the command,
so the job's exit status is the command's own. Standard library and light osa-grid modules only: it starts
once per task.

Exit codes of the runner itself, when the command never started: 125 (the manifest or the logs cannot be
used), 126 (the command is not executable), 127 (the command is not found) - as a shell would say.

The command gets the environment of core/stepenv.py: the safe base and the element's ``inherit`` names from
the job's environment, then the element's own ``env``; the shepherd's secrets, which sbatch or a pilot may
have handed to the job, stay out. The manifest and the logs are this user's only (the job runs as this user).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osa_grid.core.stepenv import step_environment
from osa_grid.system import PRIVATE_FILE_MODE

RUNNER_FAILED = 125
NOT_EXECUTABLE = 126
NOT_FOUND = 127
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Element:
    """One task of an array job, as written to the manifest."""

    task_id: str
    argv: list[str]
    env: dict[str, str]
    workdir: str
    stdout: str
    stderr: str
    # Names (or NAME* patterns) taken from the job's environment beyond the safe base.
    inherit: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Element:
        data: dict[str, Any] = json.loads(line)
        # An element written before "inherit" existed takes the safe base only; others miss nothing.
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def header_line(token: str, name: str, size: int) -> str:
    return json.dumps({"version": MANIFEST_VERSION, "token": token, "name": name, "size": size})


def read_header(path: Path) -> dict[str, Any]:
    with path.open() as manifest:
        header: dict[str, Any] = json.loads(manifest.readline())
    return header


def read_task_ids(path: Path) -> list[str]:
    """The task of every element, in element order (what adopt() maps array indexes with)."""
    with path.open() as manifest:
        manifest.readline()
        return [Element.from_json(line).task_id for line in manifest if line.strip()]


def read_element(path: Path, index: int) -> Element:
    if index < 0:
        raise ValueError(f"array index {index} is negative")
    with path.open() as manifest:
        manifest.readline()  # the header
        for number, line in enumerate(manifest):
            if number == index:
                return Element.from_json(line)
    raise ValueError(f"{path} has no element {index}")


def main(manifest: str, environ: Mapping[str, str] | None = None) -> int:
    """Run this array element's command in place of this process; returns only if it cannot start."""
    environ = os.environ if environ is None else environ
    try:
        element = read_element(Path(manifest), int(environ["SLURM_ARRAY_TASK_ID"]))
    except (KeyError, ValueError, TypeError, OSError) as exc:
        print(f"osa-grid runner: no command for this element of {manifest}: {exc!r}", file=sys.stderr)
        return RUNNER_FAILED
    return run(element, environ)


def run(element: Element, environ: Mapping[str, str]) -> int:
    """Run the element's command in place of this process (also the DIRAC job runner's last step)."""
    try:
        _redirect(Path(element.stdout), Path(element.stderr))
        os.chdir(element.workdir)
    except OSError as exc:
        print(f"osa-grid runner: task {element.task_id}: {exc}", file=sys.stderr)
        return RUNNER_FAILED
    try:
        os.execvpe(element.argv[0], element.argv, step_environment(environ, element.env, element.inherit))
    except (OSError, IndexError) as exc:
        # Now in the task's own stderr, where a shell's "command not found" would be.
        print(f"cannot start {element.argv[:1]!r}: {exc}", file=sys.stderr)
        return _exec_exit_code(exc)
    return RUNNER_FAILED  # not reached: execvpe returns only by raising


def _redirect(stdout: Path, stderr: Path) -> None:
    """Standard output and error to the task's log files (one file if both are the same); no input."""
    stdout.parent.mkdir(parents=True, exist_ok=True)
    stderr.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    out = os.open(stdout, flags, PRIVATE_FILE_MODE)
    err = out if stderr == stdout else os.open(stderr, flags, PRIVATE_FILE_MODE)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    for fd in {out, err, null}:
        if fd > 2:  # a descriptor that was free because a standard stream was closed is now in use
            os.close(fd)


def _exec_exit_code(exc: Exception) -> int:
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == 8:  # ENOEXEC
        return NOT_EXECUTABLE
    return NOT_FOUND
