"""Typed metadata values: what a file's metadata may hold and how it is stored."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Literal

from osa_grid.errors import BadInput

MetaValue = int | float | str | date | datetime
Metadata = Mapping[str, MetaValue]
ValueType = Literal["int", "float", "str", "date", "datetime"]

KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$")
MAX_STRING_LENGTH = 1024
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def value_type(value: object) -> ValueType:
    """The stored type of a metadata value; bools and other types are refused."""
    if isinstance(value, bool):
        raise BadInput(f"metadata value {value!r}: booleans are not a metadata type (use 0/1 or a string)")
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, datetime):  # before date: datetime is a date subclass
        return "datetime"
    if isinstance(value, date):
        return "date"
    if isinstance(value, str):
        return "str"
    raise BadInput(f"metadata value {value!r} has unsupported type {type(value).__name__}")


def check_key(key: str) -> str:
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        raise BadInput(
            f"metadata key {key!r} is not valid: letters, digits, '_' and '.', starting with a letter or '_'"
        )
    return key


def check_value(key: str, value: object) -> MetaValue:
    """Validate one metadata value; returns it unchanged."""
    value_type(value)
    if isinstance(value, str):
        if "\x00" in value:
            raise BadInput(f"metadata {key}: value contains a NUL character")
        if len(value) > MAX_STRING_LENGTH:
            raise BadInput(f"metadata {key}: value longer than {MAX_STRING_LENGTH} characters")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadInput(f"metadata {key}: {value} is not a metadata value (numbers must be finite)")
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise BadInput(f"metadata {key}: {value} does not fit in 64 bits")
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)  # naive times are UTC, as everywhere in osa-grid
    return value  # type: ignore[return-value]


def check_metadata(metadata: Mapping[str, object]) -> dict[str, MetaValue]:
    return {check_key(k): check_value(k, v) for k, v in metadata.items()}


def sortable_text(value: date | datetime | str) -> str:
    """Text form of a string-like value; ISO dates and datetimes sort like the values they stand for."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


def parse_literal(text: str) -> MetaValue:
    """The typed value of a literal as a user writes it on a command line (``run_id=1807``)."""
    if re.fullmatch(r"[+-]?\d+", text):
        return _integer(text)
    if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?", text):
        return float(text)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        try:
            return date.fromisoformat(text)
        except ValueError as exc:
            raise BadInput(f"{text!r} looks like a date but is not one: {exc}") from exc
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([+-]\d{2}:\d{2}|Z)?", text):
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
            sortable_text(value)  # stored and compared in UTC: 0001-01-01T00:00+01:00 is before year 1
        except (ValueError, OverflowError) as exc:
            raise BadInput(f"{text!r} looks like a datetime but is not one in UTC's range: {exc}") from exc
        return value
    return text


INT64_RANGE = (-(2**63), 2**63 - 1)


def _integer(text: str) -> int:
    """An integer the catalog can store (64-bit signed); a longer one is refused before Python converts it."""
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > 19:  # also beyond Python's int-string conversion limit (4300 digits): one message
        raise BadInput(
            f"integer {text[:20]}... ({len(digits)} digits) is out of range (64-bit signed integers)"
        )
    value = int(text)
    if not INT64_RANGE[0] <= value <= INT64_RANGE[1]:
        raise BadInput(f"integer {text} is out of range (64-bit signed integers)")
    return value
