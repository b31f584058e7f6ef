"""Metadata read from file names: ``LST-1.{stream:d}.Run{run_id:d}.{subrun_id:d}.fits.fz``."""

from __future__ import annotations

import re

from osa_grid.core.metadata import MetaValue, parse_literal
from osa_grid.errors import BadInput

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::(d|int|f|float|s|str))?\}")
_FLOAT = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_PATTERNS = {"d": r"[+-]?\d+", "int": r"[+-]?\d+", "f": _FLOAT, "float": _FLOAT}


def name_pattern(template: str) -> re.Pattern[str]:
    """A regular expression with one named group per ``{field}`` of the template."""
    pieces: list[str] = []
    position = 0
    seen: set[str] = set()
    for match in _FIELD.finditer(template):
        _check_literal(template, template[position : match.start()])
        pieces.append(re.escape(template[position : match.start()]))
        name, kind = match.group(1), match.group(2) or ""
        if name in seen:
            raise BadInput(f"name pattern {template!r}: field {{{name}}} appears twice")
        seen.add(name)
        pieces.append(f"(?P<{name}>{_PATTERNS.get(kind, '.+?')})")
        position = match.end()
    rest = template[position:]
    _check_literal(template, rest)
    pieces.append(re.escape(rest))
    return re.compile("^" + "".join(pieces) + "$")


def _check_literal(template: str, text: str) -> None:
    if "{" in text or "}" in text:
        raise BadInput(
            f"name pattern {template!r}: malformed field near {text!r} (use {{name}} or {{name:d|f|s}})"
        )


def metadata_from_name(template: str, name: str) -> dict[str, MetaValue]:
    pattern = name_pattern(template)
    match = pattern.match(name)
    if match is None:
        raise BadInput(f"file name {name!r} does not match the pattern {template!r}")
    kinds = dict(_FIELD.findall(template))
    found: dict[str, MetaValue] = {}
    for key, text in match.groupdict().items():
        kind = kinds.get(key, "")
        if kind in ("d", "int"):
            found[key] = int(text)
        elif kind in ("f", "float"):
            found[key] = float(text)
        elif kind in ("s", "str"):
            found[key] = text
        else:
            found[key] = parse_literal(text)
    return found
