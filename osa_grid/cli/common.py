"""What every command shares: settings from the global options, and errors turned into exit codes."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from osa_grid.config import Settings, load_settings
from osa_grid.errors import OsaGridError

P = ParamSpec("P")
R = TypeVar("R")


def terminal(**options: Any) -> Console:
    """A console that prints every string as it is: never read as Rich markup (``[/bold]`` would crash,
    ``[link=...]`` would make a hyperlink) nor as emoji codes. File names, metadata, RunCatalog fields and
    step errors are data (DESIGN.md, "Trust boundaries"); styles are given as ``rich.text.Text``.
    """
    return Console(markup=False, emoji=False, **options)


# Output that is piped or logged should not be wrapped at 80 columns.
console = terminal(width=None if sys.stdout.isatty() else 160)
errors = terminal(stderr=True, width=None if sys.stderr.isatty() else 160)


def settings_of(ctx: typer.Context) -> Settings:
    options: dict[str, Any] = ctx.obj or {}
    config_file: Path | None = options.get("config")
    overrides = {k: v for k, v in options.items() if k != "config"}
    return load_settings(config_file, **overrides)


def handle_errors(function: Callable[P, R]) -> Callable[P, R]:
    """One clear message and the error's exit code (2 = bad input, 1 = failure); never a traceback."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except OsaGridError as exc:
            errors.print(Text.assemble(("error: ", "bold red"), str(exc)), highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            errors.print(
                "interrupted: the catalog holds every state change so far; run the command again to resume"
            )
            raise typer.Exit(130) from None

    return wrapper
