"""Text from data (RunCatalog fields, file names, step errors) is printed as it is, never as markup."""

from __future__ import annotations

from pathlib import Path

import pytest

from osa_grid.services.files import register_paths
from osa_grid.steps.toy import make_inputs

from .test_nightly import NIGHT_DIR, RUNS, Site
from .toyworld import ToyWorld, toy_production

pytestmark = pytest.mark.integration

# A closing tag without an opening one (Rich raised MarkupError), a terminal hyperlink and a style.
MARKUP = "Crab[/bold][link=file:x]y[/link][red]"


def _squeezed(text: str) -> str:
    """Table cells fold long text over lines and frame it: compare without frames and white space."""
    return "".join(text.replace("│", "").split())


def test_a_run_catalog_source_is_printed_literally_by_nightly_status_and_run(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.run_summary(RUNS)
    catalog = site.base / "monitoring" / "RunCatalog" / f"RunCatalog_{NIGHT_DIR}.ecsv"
    catalog.parent.mkdir(parents=True)
    catalog.write_text(
        "# %ECSV 1.0\n# ---\n# delimiter: ','\n# schema: astropy-2.0\n"
        f"run_id,source_name,source_ra,source_dec\n1807,{MARKUP},83.6,22.0\n"
    )
    status = site.nightly("status")
    assert status.returncode == 0, status.stderr
    assert "Traceback" not in status.stderr
    assert MARKUP in status.stdout
    run = site.nightly("run", "--once", "--poll", "0.2")
    assert run.returncode == 0, run.stderr
    assert MARKUP in run.stdout


def test_a_step_error_is_printed_literally_by_production_run_and_status(tmp_path: Path) -> None:
    world = ToyWorld(tmp_path)
    # The replica's path is in the error of the task whose input went missing: put markup in it.
    odd = tmp_path.joinpath("Crab[", "bold][link=file:x]y[", "link][red]")
    paths = make_inputs(odd, [1807], 2, 20)
    catalog = world.catalog()
    try:
        register_paths(
            catalog,
            paths,
            {"data_level": "R0", "n_subruns": 2, "run_type": "DATA"},
            name_pattern="LST-1.Run{run_id:d}.{subrun_id:d}.r0.csv",
            lfn_prefix="raw",
        )
    finally:
        catalog.close()
    paths[0].unlink()
    production = world.write_production(toy_production())
    run = world.osa_grid("production", "run", str(production), "--no-live")
    assert run.returncode == 1, run.stderr  # the vetoed task, not a crash
    assert "Traceback" not in run.stderr
    assert MARKUP in _squeezed(run.stdout)
    status = world.osa_grid("production", "status", "toy")
    assert status.returncode == 0, status.stderr
    assert MARKUP in _squeezed(status.stdout)
