"""Campaign files (errors at file:line:field), scoping, software pins, the dry-run plan, product checks."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from osa_grid.core.campaign import InputFile, Scope, plan_campaign
from osa_grid.core.planner import FileRecord
from osa_grid.data.verify import clear_workdir, verify_product
from osa_grid.errors import BadInput, CampaignInvalid, OutputCheckFailed
from osa_grid.services.campaign import load_campaign

REPO = Path(__file__).resolve().parents[2]

PRODUCTION = """\
name: chain
transformations:
  - name: calibrate
    input: {query: data_level = R0 and run_type = DATA}
    step:
      argv: ["{python}", "-c", "pass", "{input}", "{output.dl1}"]
      software: [lstchain==0.12.3, ctapipe]
      resources: {walltime: 2m}
    outputs:
      - {name: dl1, file_name: "dl1_{run_id:05d}.{subrun_id:04d}.csv", metadata: {data_level: DL1}}
  - name: merge
    input: {query: data_level = DL1, from: calibrate}
    step:
      argv: ["{python}", "-c", "pass", "{output.run}", "{inputs}"]
      software: [lstchain]
      resources: {walltime: 10m, cores: 2}
    grouping: {mode: by_run, keys: [run_id], size_key: n_subruns}
    outputs:
      - {name: run, file_name: "dl1_{run_id:05d}.csv", metadata: {data_level: DL1_RUN}}
"""


def _campaign(tmp_path: Path, text: str, production: str = PRODUCTION) -> Path:
    (tmp_path / "chain.yaml").write_text(production)
    path = tmp_path / "campaign.yaml"
    path.write_text(text)
    return path


def test_a_campaign_scopes_the_roots_and_runs_under_its_own_name(tmp_path: Path) -> None:
    path = _campaign(
        tmp_path,
        "name: two-nights\nproduction: chain.yaml\n"
        "scope:\n  nights: {from: 2024-01-01, to: 2024-01-02}\n  runs: [1808, 1807]\n"
        "backend: {name: slurm, options: {partition: short}}\nlimits: {max_jobs_in_flight: 5}\n"
        "software: {packages: {lstchain: 0.12.3}, container: lst.sif}\n",
    )
    loaded = load_campaign(path)
    production = loaded.production
    assert production.name == "two-nights"
    calibrate, merge = production.transformations
    assert calibrate.input.query == (
        "(data_level = R0 and run_type = DATA) and night in 2024-01-01..2024-01-02 and run_id in (1807, 1808)"
    )
    assert merge.input.query == "data_level = DL1"  # follows its parent
    # The campaign's pin reaches every step; a step's own container would have won over the campaign's.
    assert calibrate.step.pins == {"lstchain": "0.12.3"} and merge.step.pins == {"lstchain": "0.12.3"}
    assert merge.step.container == "lst.sif"
    assert loaded.campaign.backend.name == "slurm" and loaded.campaign.limits.max_jobs_in_flight == 5
    assert load_campaign(path).digest == loaded.digest


def test_errors_name_the_file_the_line_and_the_field(tmp_path: Path) -> None:
    path = _campaign(
        tmp_path,
        "name: c1\nproduction: chain.yaml\nscope:\n  runs: [1807]\nlimits:\n  max_jobs: 3\n",
    )
    with pytest.raises(CampaignInvalid) as caught:
        load_campaign(path)
    assert f"{path}:6: limits.max_jobs: Extra inputs are not permitted" in str(caught.value)

    path = _campaign(tmp_path, "name: c1\nproduction: chain.yaml\nscope: {}\n")
    with pytest.raises(CampaignInvalid, match=r"campaign.yaml:3: scope: Value error, a scope needs"):
        load_campaign(path)

    path = _campaign(tmp_path, "name: c1\nproduction: chain.yaml\nscope: {query: 'night >'}\n")
    with pytest.raises(CampaignInvalid, match=r"campaign.yaml:3: scope.query: "):
        load_campaign(path)

    # A problem in the production is reported in the production's file.
    broken = PRODUCTION.replace("size_key: n_subruns", "size_key: n_subruns, size: 3")
    path = _campaign(tmp_path, "name: c1\nproduction: chain.yaml\nscope: {runs: [1]}\n", broken)
    with pytest.raises(BadInput, match=r"chain.yaml:17: transformations\[1\].grouping: "):
        load_campaign(path)


def test_a_campaign_refuses_to_mix_versions(tmp_path: Path) -> None:
    path = _campaign(
        tmp_path,
        "name: c1\nproduction: chain.yaml\nscope: {runs: [1]}\nsoftware: {packages: {lstchain: 0.12.4}}\n",
    )
    with pytest.raises(CampaignInvalid) as caught:
        load_campaign(path)
    assert (
        "chain.yaml:7: production.transformations[0].step.software: "
        "lstchain==0.12.3 mixes versions: the campaign uses lstchain==0.12.4"
    ) in str(caught.value)
    mixed = PRODUCTION.replace("software: [lstchain]", "software: [lstchain==0.11.0]")
    path = _campaign(tmp_path, "name: c1\nproduction: chain.yaml\nscope: {runs: [1]}\n", mixed)
    with pytest.raises(CampaignInvalid, match=r"lstchain==0.11.0 mixes versions: step calibrate uses"):
        load_campaign(path)


def test_an_inline_production_with_includes(tmp_path: Path) -> None:
    loaded = load_campaign(REPO / "workflows" / "toy_campaign.yaml")
    assert [t.name for t in loaded.production.transformations] == [
        "pedestal",
        "calibrate",
        "merge",
        "reconstruct",
        "summarize",
    ]
    assert loaded.production.transformations[-1].outputs[0].verify == "csv"
    pedestal = loaded.production.transformations[0]
    assert pedestal.input.query.endswith("and night in 2026-11-21..2026-11-22")


def test_scope_conditions() -> None:
    assert Scope(query="source = Crab").condition() == "(source = Crab)"
    assert Scope.model_validate(
        {"nights": {"from": date(2024, 1, 3), "to": date(2024, 1, 3)}}
    ).condition() == ("night in 2024-01-03..2024-01-03")
    with pytest.raises(ValueError, match="ends"):
        Scope.model_validate({"nights": {"from": "2024-01-03", "to": "2024-01-01"}})
    with pytest.raises(ValueError, match="run numbers"):
        Scope.model_validate({"runs": ["1807"]})


def _raw(night: str, run: int, subruns: int, stores: tuple[tuple[str, str], ...]) -> list[InputFile]:
    return [
        InputFile(
            FileRecord(
                run * 100 + s,
                f"raw/{run}.{s}",
                {
                    "data_level": "R0",
                    "run_type": "DATA",
                    "night": date.fromisoformat(night),
                    "run_id": run,
                    "subrun_id": s,
                    "n_subruns": 3,
                },
            ),
            1000,
            stores,
        )
        for s in range(subruns)
    ]


def test_the_plan_counts_the_whole_chain_stage_and_cost(tmp_path: Path) -> None:
    path = _campaign(tmp_path, "name: c1\nproduction: chain.yaml\nscope: {runs: [1, 2, 3]}\n")
    production = load_campaign(path).production
    disk = (("disk", "available"),)
    tape = (("tape", "nearline"),)
    files = _raw("2024-01-01", 1, 3, disk) + _raw("2024-01-01", 2, 3, tape) + _raw("2024-01-02", 3, 2, disk)
    plan = plan_campaign(production, {"calibrate": files}, {"merge": [30.0, 90.0]}, slots=4)
    steps = {s.name: s for s in plan.steps}
    assert steps["calibrate"].tasks == 8 and steps["calibrate"].cost_source == "declared"
    assert steps["calibrate"].seconds_per_task == 120.0
    # Run 3 lacks a sub-run: merge waits for it (by_run never flushes on its own).
    assert steps["merge"].tasks == 2 and steps["merge"].waiting_files == 2
    assert steps["merge"].cost_source == "measured" and steps["merge"].seconds_per_task == 60.0
    assert plan.input_files == 8 and plan.input_bytes == 8000
    assert vars(plan.stores["tape"]) == {
        "files": 3,
        "bytes": 3000,
        "to_stage_files": 3,
        "to_stage_bytes": 3000,
    }
    assert plan.stores["disk"].to_stage_files == 0 and plan.stores["disk"].files == 5
    assert plan.cpu_hours == pytest.approx((8 * 120 + 2 * 2 * 60) / 3600)
    # Waves of 4 slots: 2 waves of calibrate, 1 of merge (2 tasks x 2 cores).
    assert plan.wall_hours == pytest.approx((2 * 120 + 1 * 60) / 3600)
    assert plan.expected() == {"calibrate": 8, "merge": 2}
    assert json.loads(json.dumps(plan.as_json()))["steps"][1]["cost"] == "measured"


def test_products_are_opened_before_registration(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("a,b\n1,2\n")
    verify_product("csv", good, "table")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b\n1,2\n3\n")
    with pytest.raises(OutputCheckFailed, match=r"output table: ragged\.csv is not a valid csv file: row 3"):
        verify_product("csv", ragged, "table")
    with pytest.raises(OutputCheckFailed, match="not a valid json file: JSONDecodeError"):
        verify_product("json", good, "table")
    with pytest.raises(OutputCheckFailed, match="not a valid hdf5 file"):
        verify_product("hdf5", good, "dl1")
    with pytest.raises(OutputCheckFailed, match="not a valid fits file"):
        verify_product("fits", good, "dl3")
    h5py = pytest.importorskip("h5py")
    h5 = tmp_path / "dl1.h5"
    with h5py.File(h5, "w") as handle:
        handle["dl1/event/parameters"] = [1.0, 2.0]
    verify_product("hdf5", h5, "dl1")
    with h5py.File(tmp_path / "empty.h5", "w"):
        pass
    with pytest.raises(OutputCheckFailed, match="no group or dataset"):
        verify_product("hdf5", tmp_path / "empty.h5", "dl1")


def test_a_finished_task_keeps_only_its_logs(tmp_path: Path) -> None:
    (tmp_path / "stdout.log").write_text("out")
    (tmp_path / "stderr.log").write_text("err")
    (tmp_path / "input-copy.fits").write_text("x")
    (tmp_path / "scratch").mkdir()
    (tmp_path / "scratch" / "part.h5").write_text("x")
    clear_workdir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stderr.log", "stdout.log"]
