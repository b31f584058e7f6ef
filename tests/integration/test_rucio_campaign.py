"""A campaign over two nights of raw data on tape in a real Rucio: its window, its plan, its dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from osa_grid.data.rucio import RawFile, RucioStore
from osa_grid.steps.toy import make_inputs
from tests.integration.rucio_server import ensure_server, token
from tests.integration.toyworld import ToyWorld, toy_production

pytestmark = pytest.mark.integration
NIGHTS = {"2024-01-15": 1807, "2024-01-16": 1808, "2024-01-17": 1809}  # the campaign takes the first two


def test_campaign_stages_through_its_window_and_fills_its_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ensure_server()
    tag = token()
    store = RucioStore(tmp_path / "unused", "lst", "LST_TAPE", "LST_CACHE", "LST_DL3", ["DL3"], config=config)
    raw = [
        RawFile(
            path,
            f"{tag}/R0/{night}/{path.name}",
            {
                "data_level": "R0",
                "night": night,
                "run_id": run,
                "subrun_id": int(path.name.split(".")[2]),
                "n_subruns": 2,
                "run_type": "DATA",
                "test_tag": tag,
            },
        )
        for night, run in NIGHTS.items()
        for path in make_inputs(tmp_path / "raw" / night, [run], 2, 20)
    ]
    assert store.register_raw(raw, "LST_TAPE", lambda f: f"{tag}_R0_{f.metadata['night']}") == 6

    # The settings' window (1000 files) would stage everything at once: the campaign's (2 files) must win.
    monkeypatch.setenv("OSA_GRID_RUCIO_CONFIG", str(config))
    world = ToyWorld(tmp_path / "world")
    world.root.mkdir()
    name = f"c{tag}"
    (world.root / "toy_production.yaml").write_text(
        yaml.safe_dump(toy_production(name="toy"), sort_keys=False)
    )
    campaign = world.root / "campaign.yaml"
    campaign.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "production": "toy_production.yaml",
                "scope": {"nights": {"from": "2024-01-15", "to": "2024-01-16"}, "query": f"test_tag = {tag}"},
                "backend": "local",
                "limits": {"staging": {"files": 2}},
                "software": {"packages": {"osa-grid": "0.1.0"}},
                "products": {"data_manager": "rucio"},
            },
            sort_keys=False,
        )
    )
    monkeypatch.setenv("OSA_GRID_DATA_MANAGER", "rucio")
    imported = world.osa_grid("site", "import", f"test_tag = {tag}")
    assert imported.returncode == 0, imported.stderr

    # The plan: files to stage per storage, from what Rucio holds now (tape copies are not online).
    plan = world.osa_grid("campaign", "plan", str(campaign), "--json")
    assert plan.returncode == 0, plan.stderr
    stores = json.loads(plan.stdout)["stores"]
    assert set(stores) == {"LST_TAPE"}
    assert stores["LST_TAPE"]["files"] == 4 and stores["LST_TAPE"]["to_stage_files"] == 4

    agent = world.start("site", "transfer", "--rse", "LST_CACHE", "--loop", "0.3")
    try:
        ran = world.osa_grid("campaign", "submit", str(campaign), "--no-live", timeout=300)
    finally:
        agent.terminate()
        agent.communicate(timeout=30)
    assert ran.returncode == 0, ran.stdout + ran.stderr

    catalog = world.catalog()
    try:
        counts = catalog.task_counts(name)
        assert all(set(states) == {"done"} for states in counts.values()), counts
        assert sum(counts["calibrate"].values()) == 4  # the third night is out of scope
        requested = [e["detail"]["files"] for e in catalog.events() if e["kind"] == "staging_requested"]
        assert len(requested) >= 2 and max(requested) <= 2, requested
    finally:
        catalog.close()

    # Products in the campaign's own dataset, found there and by metadata.
    content = [d["name"] for d in store.client().list_content("lst", name)]
    assert content == [f"{name}/v1/summary.csv"]
    assert [f.lfn for f in store.resolve(f"production = {name} and data_level = DL3")] == content
