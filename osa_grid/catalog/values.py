"""Typed metadata values <-> catalog rows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any

from osa_grid.core.metadata import MetaValue, check_key, check_value, sortable_text, value_type


def metadata_row(file_id: int, key: str, value: object) -> dict[str, Any]:
    checked = check_value(check_key(key), value)
    kind = value_type(checked)
    row: dict[str, Any] = {
        "file_id": file_id,
        "key": key,
        "vtype": kind,
        "vint": None,
        "vnum": None,
        "vstr": None,
    }
    if kind == "int":
        row["vint"] = checked
        row["vnum"] = float(checked)  # type: ignore[arg-type]
    elif kind == "float":
        row["vnum"] = checked
    else:
        row["vstr"] = sortable_text(checked)  # type: ignore[arg-type]
    return row


def metadata_rows(file_id: int, metadata: Mapping[str, object]) -> list[dict[str, Any]]:
    return [metadata_row(file_id, key, value) for key, value in metadata.items()]


def row_value(vtype: str, vint: int | None, vnum: float | None, vstr: str | None) -> MetaValue:
    if vtype == "int":
        return int(vint if vint is not None else 0)
    if vtype == "float":
        return float(vnum if vnum is not None else 0.0)
    text = vstr or ""
    if vtype == "date":
        return date.fromisoformat(text)
    if vtype == "datetime":
        return datetime.fromisoformat(text)
    return text


def collect(rows: Iterable[Any]) -> dict[int, dict[str, MetaValue]]:
    """Rows of (file_id, key, vtype, vint, vnum, vstr) -> metadata per file id."""
    found: dict[int, dict[str, MetaValue]] = {}
    for file_id, key, vtype, vint, vnum, vstr in rows:
        found.setdefault(file_id, {})[key] = row_value(vtype, vint, vnum, vstr)
    return found
