"""Metadata read from file names: ``LST-1.{stream:d}.Run{run_id:d}.{subrun_id:d}.fits.fz``.

Matching is a dynamic programme over (piece, position), not a regular expression: a regex with many
untyped fields backtracks exponentially on a name that does not match (20 fields on a 200-character
name ran for minutes). Here each (piece, position) pair is decided once, so a match costs at most
pieces x length^2 steps. The preferences are a regex's: an untyped field is as short as possible
(``{a}_{b}`` on ``x_y_z`` gives ``a = x``), a number as long as possible.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from osa_grid.core.metadata import MetaValue, parse_literal
from osa_grid.errors import BadInput

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::(d|int|f|float|s|str))?\}")
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_FLOAT_CHARACTERS = frozenset("0123456789+-.eE")
# No file system holds a longer file name; a longer text cannot be one and is never matched.
MAX_NAME_LENGTH = 1024
# Far more than any real name carries; bounds the matcher's depth.
MAX_FIELDS = 64


@dataclass(frozen=True)
class _Field:
    name: str
    kind: str  # "" (typed like a literal), "d", "f" or "s"


_KINDS = {"": "", "d": "d", "int": "d", "f": "f", "float": "f", "s": "s", "str": "s"}


class NamePattern:
    """A file-name template, compiled: ``match(name)`` gives each field's text, or None."""

    def __init__(self, template: str) -> None:
        self.template = template
        self._pieces = _pieces(template)

    def match(self, name: str) -> dict[str, str] | None:
        if len(name) > MAX_NAME_LENGTH:
            return None
        return _Matcher(self._pieces, name).groups()

    def metadata(self, name: str) -> dict[str, MetaValue] | None:
        """The typed metadata the name carries, or None when it does not match."""
        groups = self.match(name)
        if groups is None:
            return None
        kinds = {p.name: p.kind for p in self._pieces if isinstance(p, _Field)}
        return {key: _typed(kinds[key], text) for key, text in groups.items()}


def _pieces(template: str) -> list[str | _Field]:
    pieces: list[str | _Field] = []
    position = 0
    seen: set[str] = set()
    for match in _FIELD.finditer(template):
        _check_literal(template, template[position : match.start()])
        if match.start() > position:
            pieces.append(template[position : match.start()])
        name = match.group(1)
        if len(seen) == MAX_FIELDS:
            raise BadInput(f"name pattern {template!r}: more than {MAX_FIELDS} fields")
        if name in seen:
            raise BadInput(f"name pattern {template!r}: field {{{name}}} appears twice")
        seen.add(name)
        pieces.append(_Field(name, _KINDS[match.group(2) or ""]))
        position = match.end()
    rest = template[position:]
    _check_literal(template, rest)
    if rest:
        pieces.append(rest)
    return pieces


class _Matcher:
    """One name against one template's pieces; ``fits(i, pos)``: can pieces[i:] match name[pos:]?"""

    def __init__(self, pieces: list[str | _Field], name: str) -> None:
        self.pieces = pieces
        self.name = name
        self.fits = lru_cache(maxsize=None)(self._fits)

    def groups(self) -> dict[str, str] | None:
        if not self.fits(0, 0):
            return None
        found: dict[str, str] = {}
        position = 0
        for index, piece in enumerate(self.pieces):
            if isinstance(piece, str):
                position += len(piece)
                continue
            end = next(e for e in self._ends(index, piece, position) if self.fits(index + 1, e))
            found[piece.name] = self.name[position:end]
            position = end
        return found

    def _fits(self, index: int, position: int) -> bool:
        if index == len(self.pieces):
            return position == len(self.name)
        piece = self.pieces[index]
        if isinstance(piece, str):
            return self.name.startswith(piece, position) and self.fits(index + 1, position + len(piece))
        return any(self.fits(index + 1, end) for end in self._ends(index, piece, position))

    def _ends(self, index: int, field: _Field, position: int) -> Iterator[int]:
        """Where the field at ``index`` may end, in the order a regular expression would try them."""
        kind = field.kind
        if kind == "d":
            number = _INT.match(self.name, position)
            if number is not None:
                digits_from = position + (self.name[position] in "+-")
                yield from range(number.end(), digits_from, -1)
        elif kind == "f":
            run = position
            while run < len(self.name) and self.name[run] in _FLOAT_CHARACTERS:
                run += 1
            yield from (e for e in range(run, position, -1) if _FLOAT.fullmatch(self.name, position, e))
        else:
            yield from self._text_ends(index, position)

    def _text_ends(self, index: int, position: int) -> Iterator[int]:
        # Shortest first; when a literal follows, only where it occurs can the field end.
        following = self.pieces[index + 1] if index + 1 < len(self.pieces) else None
        if following is None:
            if len(self.name) > position:
                yield len(self.name)
            return
        if isinstance(following, str):
            end = self.name.find(following, position + 1)
            while end != -1:
                yield end
                end = self.name.find(following, end + 1)
            return
        yield from range(position + 1, len(self.name) + 1)


def _typed(kind: str, text: str) -> MetaValue:
    if kind == "d":
        return int(text)
    if kind == "f":
        return float(text)
    if kind == "s":
        return text
    return parse_literal(text)


def name_pattern(template: str) -> NamePattern:
    """The template compiled (checked: well-formed fields, each named once)."""
    return NamePattern(template)


def _check_literal(template: str, text: str) -> None:
    if "{" in text or "}" in text:
        raise BadInput(
            f"name pattern {template!r}: malformed field near {text!r} (use {{name}} or {{name:d|f|s}})"
        )


def metadata_from_name(template: str, name: str) -> dict[str, MetaValue]:
    found = name_pattern(template).metadata(name)
    if found is None:
        raise BadInput(f"file name {name!r} does not match the pattern {template!r}")
    return found
