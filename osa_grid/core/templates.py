"""Templates for argv elements and file names: ``dl1_LST-1.Run{run_id:05d}.{subrun_id:04d}.h5``.

Placeholders are ``{name}`` or ``{name:format_spec}``; ``{{`` and ``}}`` stand for braces. Names may contain
dots (``{output.dl1}``), which is why Python's ``str.format`` (attribute access) is not used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from osa_grid.errors import TemplateError, UnsafeName

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}:]*)(?::([^{}]*))?\}|[{}]")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
MAX_NAME_LENGTH = 255


@dataclass(frozen=True)
class Field:
    name: str
    spec: str


def fields(template: str) -> list[Field]:
    """The placeholders of a template, checked for syntax."""
    found: list[Field] = []
    for match in _PLACEHOLDER.finditer(template):
        token = match.group(0)
        if token in ("{{", "}}"):
            continue
        if token in ("{", "}"):
            raise TemplateError(f"template {template!r}: unmatched {token!r} at position {match.start()}")
        name, spec = match.group(1), match.group(2) or ""
        if not _NAME.match(name):
            raise TemplateError(f"template {template!r}: {{{name}}} is not a valid placeholder name")
        _check_spec(template, name, spec)
        found.append(Field(name, spec))
    return found


def _check_spec(template: str, name: str, spec: str) -> None:
    """A format spec must suit at least one value type (``05d`` ints, ``>8`` anything, ``%Y%m%d`` dates)."""
    if not spec:
        return
    samples: tuple[object, ...] = (date(2000, 1, 1),) if "%" in spec else (0, 0.0, "x")
    for sample in samples:
        try:
            format(sample, spec)
            return
        except (ValueError, TypeError):
            continue
    raise TemplateError(f"template {template!r}: {{{name}:{spec}}} has an invalid format spec")


def render(template: str, values: Mapping[str, object], what: str = "template") -> str:
    """Render a template; a missing name or a spec that does not suit its value is a TemplateError."""

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        if token in ("{", "}"):
            raise TemplateError(f"{what} {template!r}: unmatched {token!r}")
        name, spec = match.group(1), match.group(2) or ""
        if name not in values:
            known = ", ".join(sorted(values)) or "nothing"
            raise TemplateError(f"{what} {template!r}: no value for {{{name}}} (known: {known})")
        try:
            return format(values[name], spec)
        except (ValueError, TypeError) as exc:
            raise TemplateError(
                f"{what} {template!r}: {{{name}:{spec}}} cannot format {values[name]!r}: {exc}"
            ) from exc

    return _PLACEHOLDER.sub(replace, template)


def whole_placeholder(template: str) -> Field | None:
    """The placeholder a template consists of, alone (``{run_id}``, ``{night:%Y%m%d}``); None otherwise."""
    match = _PLACEHOLDER.fullmatch(template)
    if match is None or match.group(1) is None:
        return None
    return Field(match.group(1), match.group(2) or "")


def render_directory(template: str, values: Mapping[str, object], what: str = "directory") -> str:
    """Render a directory template: a value may fill a path component, never add one (no ``/`` or ``\\``).

    The template's own slashes (``{production}/DL1/{night:%Y%m%d}``) make the levels; a value holding a
    separator would make others, so it is refused (``UnsafeName``), as it is in a file name.
    """
    for field in fields(template):
        text = str(values.get(field.name, ""))
        if "/" in text or "\\" in text:
            raise UnsafeName(
                f"{what} {template!r}: {{{field.name}}} = {text!r} contains '/' or '\\': "
                "a value cannot add a directory level"
            )
    return render(template, values, what)


def static_text(template: str) -> str:
    """The template with every placeholder replaced by ``x``: what is fixed in every rendering."""
    fields(template)
    return _PLACEHOLDER.sub(lambda m: {"{{": "{", "}}": "}"}.get(m.group(0), "x"), template)


def check_file_name(name: str) -> str:
    """A single path component built from metadata: no separators, no dot-dirs, no NUL."""
    if not name or name in (".", ".."):
        raise UnsafeName(f"file name {name!r} is empty or a directory reference")
    if "/" in name or "\\" in name or "\x00" in name:
        raise UnsafeName(f"file name {name!r} contains '/', '\\' or NUL")
    if len(name.encode()) > MAX_NAME_LENGTH:
        raise UnsafeName(f"file name {name[:40]!r}... is longer than {MAX_NAME_LENGTH} bytes")
    if any(ord(c) < 32 for c in name):
        raise UnsafeName(f"file name {name!r} contains control characters")
    return name


def check_relative_path(path: str) -> str:
    """A relative path (an LFN or a directory): every component must be a safe file name."""
    if path.startswith("/"):
        raise UnsafeName(f"path {path!r} must be relative")
    for part in path.split("/"):
        check_file_name(part)
    return path
