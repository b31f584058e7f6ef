"""osa-grid metadata keys <-> CTAO data-model keys as Rucio stores them: the one place of that mapping.

CTAO's bulk data management (BDMS) flattens the data model with ``__`` (``data__level``,
``instance__obs_id``). osa-grid keys without a data-model name keep their name behind the ``osa__`` prefix,
so that none of them can fall on one of Rucio's own DID columns (``version``, ``campaign``, ``task_id`` ...):
a Rucio filter cannot mix those columns with JSON keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime

from osa_grid.core.metadata import MetaValue

TO_CTAO: dict[str, str] = {
    "data_level": "data__level",
    "data_type": "data__type",
    "run_id": "instance__obs_id",
    "night": "instance__observing_night",
    "tel_id": "instance__ae_id",
    "software_version": "activity__software__version",
    "software": "activity__software__name",
    "production": "activity__name",
    "t_min": "observation__coverage__time__t_min",
    "t_max": "observation__coverage__time__t_max",
}
FROM_CTAO: dict[str, str] = {ctao: key for key, ctao in TO_CTAO.items()}
OTHER_PREFIX = "osa__"


def ctao_key(key: str) -> str:
    return TO_CTAO.get(key, OTHER_PREFIX + key)


def osa_key(key: str) -> str | None:
    """The osa-grid key of a Rucio metadata key; None for keys osa-grid did not write."""
    if key in FROM_CTAO:
        return FROM_CTAO[key]
    if key.startswith(OTHER_PREFIX) and len(key) > len(OTHER_PREFIX):
        return key[len(OTHER_PREFIX) :]
    return None


def ctao_value(value: MetaValue) -> int | float | str:
    """JSON holds no dates: they go as ISO text, which sorts like the date (filters compare them)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def to_ctao(metadata: Mapping[str, MetaValue]) -> dict[str, int | float | str]:
    return {ctao_key(key): ctao_value(value) for key, value in metadata.items()}


def from_ctao(metadata: Mapping[str, object]) -> dict[str, MetaValue]:
    """The osa-grid metadata in a DID's metadata; keys of others and non-scalar values are left out."""
    found: dict[str, MetaValue] = {}
    for key, value in metadata.items():
        name = osa_key(key)
        if name is not None and isinstance(value, int | float | str) and not isinstance(value, bool):
            found[name] = value
    return found
