"""A production on Rucio data, end to end: raw data on tape, staged through the window, DL3 registered."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from osa_grid.catalog.staging import staging_rows
from osa_grid.data.rucio import RucioStore
from osa_grid.ports import StageState
from tests.integration.rucio_server import daemon, ensure_server, night_on_tape, token
from tests.integration.toyworld import ToyWorld, toy_production

pytestmark = pytest.mark.integration


def test_production_stages_through_the_window_and_registers_dl3(tmp_path: Path) -> None:
    config = ensure_server()
    tag = token()
    store = RucioStore(tmp_path / "unused", "lst", "LST_TAPE", "LST_CACHE", "LST_DL3", ["DL3"], config=config)
    night_on_tape(store, tmp_path / "raw", tag)

    world = ToyWorld(tmp_path / "world")
    world.root.mkdir()
    env = {
        "OSA_GRID_DATA_MANAGER": "rucio",
        "OSA_GRID_RUCIO_CONFIG": str(config),
        "OSA_GRID_STAGING_WINDOW_FILES": "2",  # 4 raw files: the window must slide
    }
    os.environ.update(env)
    try:
        imported = world.osa_grid("site", "import", f"test_tag = {tag} and data_level = R0")
        assert imported.returncode == 0, imported.stderr
        production = world.write_production(toy_production(name=f"toy{tag}"))
        agent = world.start("site", "transfer", "--rse", "LST_CACHE", "--loop", "0.3")
        try:
            ran = world.osa_grid("production", "run", str(production), timeout=300)
        finally:
            agent.terminate()
            agent.communicate(timeout=30)
    finally:
        for key in env:
            os.environ.pop(key, None)
    assert ran.returncode == 0, ran.stdout + ran.stderr

    catalog = world.catalog()
    try:
        counts = catalog.task_counts(f"toy{tag}")
        assert all(set(states) == {"done"} for states in counts.values()), counts
        requested = [e for e in catalog.events() if e["kind"] == "staging_requested"]
        assert len(requested) >= 2 and all(e["detail"]["files"] <= 2 for e in requested)
        rows = staging_rows(catalog)
        assert len(rows) == 4 and {r.state for r in rows} == {StageState.RELEASED}
        rule_ids = [r.request_id for r in rows]
    finally:
        catalog.close()

    # The DL3 product, found by its CTAO metadata with the Python client and the official command line.
    found = store.resolve(f"production = toy{tag} and data_level = DL3")
    assert [f.lfn for f in found] == [f"toy{tag}/v1/summary.csv"]
    assert [r.store for r in found[0].replicas] == ["LST_DL3"]
    listed = subprocess.run(
        [
            str(Path(sys.executable).parent / "rucio"),
            "did",
            "list",
            "--short",
            "--filter",
            f"activity__name=toy{tag},data__level=DL3",
            "lst:*",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "RUCIO_CONFIG": str(config)},
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == [f"lst:toy{tag}/v1/summary.csv"]

    # Released rules expire: the judge-cleaner removes them.
    daemon("judge-cleaner")
    from rucio.common.exception import RuleNotFound

    for rule_id in rule_ids:
        with pytest.raises(RuleNotFound):
            store.client().get_replication_rule(rule_id)
