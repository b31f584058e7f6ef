"""The environment a step runs with: what its transformation declares, on top of a safe base.

A step never inherits the whole environment of the process that starts it: the shepherd's holds the catalog
URL with its password, ``DIRACX_TOKEN``, the Rucio password. From the environment where the job runs (the
shepherd's for the local backend, the compute node's for SLURM, the pilot's for DIRAC) a step gets only

- the *safe base*: variables that say which software runs and how (paths, locale, threads, the scheduler's
  job variables), never who may do what - ``SAFE_NAMES`` and the ``SAFE_PREFIXES`` patterns;
- the names its transformation lists in ``step.inherit`` and the operator lists in the setting
  ``step_env_passthrough`` (a grid proxy, a proxy server: declared, never implied);

and then the transformation's ``step.env``, which wins over both. A name is exact (``X509_USER_PROXY``) or a
pattern ending in ``*`` (``X509_*``). A variable that only a pattern admits is dropped when its name or its
value looks like a secret (``*_TOKEN``, ``https://user:pw@host``): a secret reaches a step only by its exact
name. Standard library only: the SLURM and DIRAC job runners import this on the node.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from osa_grid.core.redaction import is_secret_name, redact_text

# Exact names of the safe base.
SAFE_NAMES = frozenset(
    {
        # who and where: the step's own account, home and scratch space
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "HOSTNAME",
        "TMPDIR",
        "TERM",
        # which software runs: search paths and the Python environment
        "PATH",
        "LD_LIBRARY_PATH",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONUNBUFFERED",
        "PYTHONIOENCODING",
        "PYTHONDONTWRITEBYTECODE",
        "VIRTUAL_ENV",
        # locale and time zone
        "LANG",
        "LANGUAGE",
        "TZ",
        # threads of the numerical libraries, and the caches and back ends lstchain and ctapipe use
        "VECLIB_MAXIMUM_THREADS",
        "MPLBACKEND",
        "MPLCONFIGDIR",
        # which certificate authorities to trust (public trust anchors, no credential)
        "X509_CERT_DIR",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
    }
)
# Patterns of the safe base (a variable they admit must not look like a secret, see the module's text).
SAFE_PREFIXES = ("LC_", "CONDA_", "XDG_", "OMP_", "MKL_", "OPENBLAS_", "NUMBA_", "NUMEXPR_", "SLURM_")
# An exact variable name, or a pattern: a name's beginning followed by "*".
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\*?$")


def check_names(names: Iterable[str]) -> list[str]:
    """The names, each an environment variable name or a ``PREFIX*`` pattern; ValueError names a bad one."""
    checked = []
    for name in names:
        if not NAME_PATTERN.match(name):
            raise ValueError(
                f"{name!r} is not an environment variable name (letters, digits, _) or a NAME* pattern"
            )
        checked.append(name)
    return checked


def step_environment(
    inherited: Mapping[str, str], declared: Mapping[str, str], inherit: Iterable[str] = ()
) -> dict[str, str]:
    """A step's environment: the safe base and the ``inherit`` names from ``inherited``, then ``declared``."""
    exact = set(SAFE_NAMES)
    prefixes = list(SAFE_PREFIXES)
    for name in inherit:
        if name.endswith("*"):
            prefixes.append(name[:-1])
        else:
            exact.add(name)
    patterns = tuple(prefixes)
    environment = {
        name: value
        for name, value in inherited.items()
        if name in exact or (name.startswith(patterns) and not _looks_secret(name, value))
    }
    environment.update(declared)
    return environment


def _looks_secret(name: str, value: str) -> bool:
    return is_secret_name(name) or redact_text(value) != value
