"""Bad input through the CLI, and two shepherds on one campaign (issue 10).

Representative bad campaign and production files, queries and settings: exit code 2, one message naming
the file, line and field, no traceback, and nothing written to the catalog. A second ``campaign submit``
or ``resume`` while the campaign's shepherd runs is refused; the first one finishes, running each task once.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from osa_grid.catalog import schema as s

from .test_campaign_cli import add_nights, assert_complete_once, status, write_campaign
from .toyworld import ToyWorld

pytestmark = pytest.mark.integration


def _catalog_rows(world: ToyWorld) -> dict[str, int]:
    """Rows of every table osa-grid writes a campaign, production or task to (files: the raw data only)."""
    catalog = world.catalog()
    try:
        with catalog.engine.connect() as conn:
            tables = (s.campaigns, s.productions, s.transformations, s.tasks, s.events, s.files, s.leases)
            return {t.name: conn.scalar(sa.select(sa.func.count()).select_from(t)) or 0 for t in tables}
    finally:
        catalog.close()


_SERIAL = itertools.count()


def _mangle(path: Path, change: object) -> Path:
    data = yaml.safe_load(path.read_text())
    change(data)  # type: ignore[operator]
    bad = path.with_name(f"bad{next(_SERIAL)}_{path.name}")  # each case its own file
    bad.write_text(yaml.safe_dump(data, sort_keys=False))
    return bad


def test_bad_campaigns_and_queries_exit_2_with_a_message_and_write_nothing(tmp_path: Path) -> None:
    world = ToyWorld(tmp_path)
    add_nights(world)
    good = write_campaign(world)
    before = _catalog_rows(world)
    production = tmp_path / "toy_production.yaml"
    broken_yaml = tmp_path / "broken.yaml"
    broken_yaml.write_text(good.read_text().replace("scope:", "scope: [", 1))
    nul = tmp_path / "nul.yaml"
    nul.write_text(good.read_text().replace("two-nights", "two\x00nights", 1))

    def traversal(data: dict) -> None:  # type: ignore[type-arg]
        prod = yaml.safe_load(production.read_text())
        prod["transformations"][0]["outputs"][0]["file_name"] = "../../../etc/dl1_{run_id}.csv"
        data["production"] = prod

    cases = {
        "YAML syntax": ([str(broken_yaml)], "broken.yaml:"),
        "NUL in a name": ([str(nul)], "nul.yaml"),
        "unknown key": ([str(_mangle(good, lambda d: d.update(priority="high")))], "priority"),
        "wrong type": (
            [str(_mangle(good, lambda d: d["limits"].update(max_jobs_in_flight="many")))],
            "limits.max_jobs_in_flight",
        ),
        "bad scope date": (
            [str(_mangle(good, lambda d: d["scope"]["nights"].update({"from": "2026-13-45"})))],
            "scope",
        ),
        "bad products query": (
            [str(_mangle(good, lambda d: d["products"].update(query="data_level = = DL2")))],
            "query",
        ),
        "path traversal in an output name": ([str(_mangle(good, traversal))], "file_name"),
        "missing file": ([str(tmp_path / "nope.yaml")], "nope.yaml"),
    }
    for what, (args, named) in cases.items():
        for command in (["campaign", "plan"], ["campaign", "submit"]):
            result = world.osa_grid(*command, *args, "--no-live" if command[1] == "submit" else "--json")
            assert result.returncode == 2, f"{what} ({command[1]}): {result.returncode} {result.stderr}"
            assert named in result.stderr, f"{what}: {result.stderr}"
            assert "Traceback" not in result.stderr + result.stdout, what
    for query in ("data_level = = DL1", "run_id in (1807", "night >= 2026-02-30", "x" * 5000 + " ="):
        result = world.osa_grid("query", query)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (query, result.stderr)
    assert _catalog_rows(world) == before  # nothing written by any of them


def test_a_second_shepherd_on_a_running_campaign_is_refused(tmp_path: Path) -> None:
    world = ToyWorld(tmp_path)
    add_nights(world)
    record = tmp_path / "executions.log"
    path = write_campaign(world, record=record, sleep=1.5)  # still running for both refusals under load
    first = world.start("campaign", "submit", str(path), "--no-live")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not record.exists():
            time.sleep(0.2)  # the campaign's shepherd is running its steps
        assert first.poll() is None
        for args in (["submit", str(path), "--no-live"], ["resume", "two-nights", "--no-live"]):
            second = world.osa_grid("campaign", *args)
            assert second.returncode in (1, 2), second.stdout + second.stderr
            assert "another shepherd" in second.stderr and "Traceback" not in second.stderr
        _, err = first.communicate(timeout=240)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert status(world)["status"] == "done"
    assert_complete_once(world, record)
