"""Terminal output prints data as it is: markup in metadata, names or errors is never interpreted."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner, Result

from osa_grid.catalog.store import Catalog
from osa_grid.cli.app import app
from osa_grid.cli.common import terminal
from tests.helpers import make_file

# A closing tag with no opening one (Rich raised MarkupError), a hyperlink, a style, an emoji code.
VALUES = ["[/bold]", "[link=http://x]y[/link]", "[red]", "Crab[/bold] :smile: [b]x\\"]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    try:
        catalog.register_files(
            [
                make_file(f"/odd/{i}{value}.txt", source=value, night="2024-01-15")
                for i, value in enumerate(VALUES)
            ]
        )
    finally:
        catalog.close()
    return tmp_path


def run(home: Path, *args: str) -> Result:
    env = {"OSA_GRID_HOME": str(home), "OSA_GRID_CATALOG_URL": f"sqlite:///{home / 'catalog.sqlite'}"}
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("value", VALUES)
def test_query_tables_print_metadata_literally(home: Path, value: str) -> None:
    table = run(home, "query", "exists source", "--fields", "lfn,source").stdout
    assert value in table and f"/odd/{VALUES.index(value)}{value}.txt" in table
    groups = run(home, "query", "exists source", "--group-by", "source").stdout
    assert value in groups


def test_provenance_tree_prints_the_name_literally(home: Path) -> None:
    lfn = f"/odd/3{VALUES[3]}.txt"
    assert lfn in run(home, "provenance", lfn).stdout


def test_datasets_print_their_query_literally(home: Path) -> None:
    query = 'source = "[/bold] [link=http://x]y[/link]"'
    run(home, "datasets", "create", "odd", "--query", query)
    assert query in run(home, "datasets", "list").stdout
    assert json.loads(run(home, "datasets", "show", "odd", "-f", "json").stdout)["query"] == query


def test_the_terminal_console_reads_no_markup_and_no_emoji_codes() -> None:
    buffer = io.StringIO()
    out: Console = terminal(file=buffer, width=200, color_system="truecolor", highlight=False)
    out.print(VALUES[3], "[link=http://x]y[/link]")
    text = buffer.getvalue()
    assert "Crab[/bold] :smile: [b]x\\ [link=http://x]y[/link]" in text
    assert "\x1b]8;" not in text  # no terminal hyperlink
