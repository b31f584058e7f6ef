"""Backends that run job specs: a local process pool, SLURM (sbatch/squeue/sacct) and DIRAC (DiracX).

Backends are named in configuration; ``create_backend`` imports one only when it is asked for,
so a machine without a batch system's client libraries can still use the others.
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Any, cast

from osa_grid.errors import BadInput

if TYPE_CHECKING:
    from osa_grid.config import Settings
    from osa_grid.ports import Backend

# Backend name -> "module:factory"; the factory is called with the backend's options.
BACKENDS: dict[str, str] = {
    "local": "osa_grid.backends.local:LocalBackend",
    "slurm": "osa_grid.backends.slurm:SlurmBackend",
    "dirac": "osa_grid.backends.dirac:DiracBackend",
}
# Backend name -> "module:function" building the backend from the settings.
FROM_SETTINGS: dict[str, str] = {
    "local": "osa_grid.backends.local:from_settings",
    "slurm": "osa_grid.backends.slurm:from_settings",
    "dirac": "osa_grid.backends.dirac:from_settings",
}


def backend_from_settings(name: str, settings: Settings) -> Backend:
    """The backend called ``name``, configured from the settings (what the services use)."""
    target = FROM_SETTINGS.get(name)
    if target is None:
        raise BadInput(f"unknown backend {name!r}; known backends: {', '.join(sorted(FROM_SETTINGS))}")
    module_name, _, function_name = target.partition(":")
    return cast("Backend", getattr(importlib.import_module(module_name), function_name)(settings))


def create_backend(name: str, **options: Any) -> Backend:
    """The backend called ``name``, built with ``options``; ``BadInput`` for unknown names or options."""
    target = BACKENDS.get(name)
    if target is None:
        raise BadInput(f"unknown backend {name!r}; known backends: {', '.join(sorted(BACKENDS))}")
    module_name, _, factory_name = target.partition(":")
    factory = getattr(importlib.import_module(module_name), factory_name)
    # Check the options against the signature first: a typo in a config file is bad input,
    # while a TypeError raised inside the factory would be a bug and must not be disguised.
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        raise BadInput(f"backend {name!r}: {exc}") from None
    return cast("Backend", factory(**options))
