"""What a DIRAC job runs on the worker node: ``python -m osa_grid.backends.dirac_job DESCRIPTION [OUT ERR]``.

The JDL's Arguments name the job's description (``<spool>/jobs/<job id>.json``, written by the backend): the
task's argv, environment and work directory. The command replaces this process (no shell), so the job's exit
code is the command's own; its standard streams go to STDOUT and STDERR (the node's scratch files that become
the output sandbox), or to the task's own log files if not given. Standard library only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

from osa_grid.backends.slurm_runner import RUNNER_FAILED, Element, run


def read_description(path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(path.read_text())
    return data


def element_of(description: dict[str, object]) -> Element:
    return Element.from_json(json.dumps(description["element"]))


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 3):
        print("usage: python -m osa_grid.backends.dirac_job DESCRIPTION [STDOUT STDERR]", file=sys.stderr)
        return RUNNER_FAILED
    try:
        element = element_of(read_description(Path(argv[0])))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"osa-grid DIRAC job: no job description in {argv[0]}: {exc!r}", file=sys.stderr)
        return RUNNER_FAILED
    if len(argv) == 3:
        element = dataclasses.replace(element, stdout=argv[1], stderr=argv[2])
    return run(element, os.environ)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
