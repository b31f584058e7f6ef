"""Where the content shipped with osa-grid lives: catalog migrations, transformations, workflows."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def shipped(name: str) -> Path:
    """A top-level content directory: inside the wheel when installed, else in the source tree."""
    for candidate in (_PACKAGE / "_shipped" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"osa-grid is installed without its {name}/ directory")
