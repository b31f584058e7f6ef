"""Staging on a real Rucio server when things go wrong: a killed shepherd, the server down, a stuck rule."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from osa_grid.catalog import staging as staging_rows
from osa_grid.data.rucio import STAGING_ACTIVITY, RawFile, RucioStore
from osa_grid.ports import StageState
from tests.integration.rucio_server import REPO, daemon, ensure_server, night_on_tape, token
from tests.integration.toyworld import OSA_GRID, ToyWorld, toy_production

pytestmark = pytest.mark.integration


@pytest.fixture
def rucio_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    config = ensure_server()
    monkeypatch.setenv("OSA_GRID_DATA_MANAGER", "rucio")
    monkeypatch.setenv("OSA_GRID_RUCIO_CONFIG", str(config))
    yield config


def _world(tmp_path: Path, tag: str) -> ToyWorld:
    world = ToyWorld(tmp_path / "world")
    world.root.mkdir()
    imported = world.osa_grid("site", "import", f"test_tag = {tag} and data_level = R0")
    assert imported.returncode == 0, imported.stderr
    return world


def _staging_rules(store: RucioStore, lfn: str) -> list[dict[str, object]]:
    """Every staging rule of our account on the file, whatever its state (expired ones too)."""
    account = store.client().account
    return [
        rule
        for rule in store.client().list_did_rules(store.scope, lfn)
        if rule["activity"] == STAGING_ACTIVITY and rule["account"] == account
    ]


def _wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _rows(world: ToyWorld) -> list[staging_rows.StagingRow]:
    catalog = world.catalog()
    try:
        return staging_rows.staging_rows(catalog)
    finally:
        catalog.close()


def _requested(world: ToyWorld) -> int:
    return len([r for r in _rows(world) if r.state == StageState.REQUESTED])


def _setting(config: Path, tmp_path: Path) -> tuple[str, RucioStore, list[RawFile], ToyWorld, Path]:
    """A night on tape, imported into a fresh workspace, and the toy production over it."""
    tag = token()
    store = RucioStore(tmp_path / "unused", "lst", "LST_TAPE", "LST_CACHE", "LST_DL3", ["DL3"], config=config)
    raw = night_on_tape(store, tmp_path / "raw", tag)
    world = _world(tmp_path, tag)
    return tag, store, raw, world, world.write_production(toy_production(name=f"toy{tag}"))


def test_restart_resumes_staging_without_duplicate_rules(rucio_env: Path, tmp_path: Path) -> None:
    tag, store, raw, world, production = _setting(rucio_env, tmp_path)

    # No transfer agent yet: the rules are made and stay replicating while the shepherd is killed.
    shepherd = world.start("production", "run", "--no-live", str(production))
    try:
        _wait_for(lambda: _requested(world) == 4, 60, "four staging requests")
    finally:
        os.kill(shepherd.pid, signal.SIGKILL)
        shepherd.communicate(timeout=30)
    rows = {r.lfn: r for r in _rows(world)}
    assert {lfn: len(_staging_rules(store, lfn)) for lfn in rows} == {f.lfn: 1 for f in raw}

    # The two other crash windows, made deterministic: a row written and its rule made but not recorded,
    # and a row written whose rule was never made (here: removed).
    made, never = sorted(rows)[:2]
    store.client().update_replication_rule(rows[never].request_id, {"lifetime": 0})
    daemon("judge-cleaner")
    assert _staging_rules(store, never) == []
    catalog = world.catalog()
    try:
        staging_rows.reserve(catalog, [rows[made].file_id, rows[never].file_id])
    finally:
        catalog.close()

    agent = world.start("site", "transfer", "--rse", "LST_CACHE", "--loop", "0.3")
    try:
        ran = world.osa_grid("production", "run", "--no-live", str(production), timeout=300)
    finally:
        agent.terminate()
        agent.communicate(timeout=30)
    assert ran.returncode == 0, ran.stdout + ran.stderr

    # One rule per file: the recorded one found again, the missing one made once.
    rules = {lfn: _staging_rules(store, lfn) for lfn in rows}
    assert {lfn: len(found) for lfn, found in rules.items()} == {f.lfn: 1 for f in raw}
    assert rules[made][0]["id"] == rows[made].request_id
    final = {r.lfn: r for r in _rows(world)}
    assert {r.state for r in final.values()} == {StageState.RELEASED}
    assert {lfn: r.request_id for lfn, r in final.items()} == {
        lfn: found[0]["id"] for lfn, found in rules.items()
    }

    catalog = world.catalog()
    try:
        counts = catalog.task_counts(f"toy{tag}")
        assert all(set(states) == {"done"} for states in counts.values()), counts
        assert {k: sum(v.values()) for k, v in counts.items()} == {
            "calibrate": 4,
            "merge": 2,
            "reconstruct": 2,
            "summarize": 1,
        }
    finally:
        catalog.close()
    # Every product registered once; the DL3 one published once in Rucio.
    assert [f.lfn for f in store.resolve(f"production = toy{tag} and data_level = DL3")] == [
        f"toy{tag}/v1/summary.csv"
    ]


def _server(action: str) -> None:
    subprocess.run(
        ["bash", str(REPO / "scripts" / "rucio" / f"{action}.sh")], check=True, capture_output=True
    )


def test_server_down_stuck_rule_and_bad_credentials(rucio_env: Path, tmp_path: Path) -> None:
    tag, store, raw, world, production = _setting(rucio_env, tmp_path)

    # The tape copy of one file is lost: the transfer agent fails for it and its rule becomes stuck.
    lost = next(f for f in raw if f.metadata["run_id"] == 1808 and f.metadata["subrun_id"] == 1)
    pfn = store.client().lfns2pfns("LST_TAPE", [f"lst:{lost.lfn}"])[f"lst:{lost.lfn}"]
    Path(urlparse(pfn).path).unlink()

    shepherd = world.start("production", "run", "--no-live", str(production))
    try:
        _wait_for(lambda: _requested(world) == 4, 60, "four staging requests")
        # The server goes away for a while mid-production; the shepherd waits it out.
        _server("stop")
        time.sleep(3)
        _server("start")
        agent = world.start("site", "transfer", "--rse", "LST_CACHE", "--loop", "0.3")
        try:
            out, err = shepherd.communicate(timeout=240)
        finally:
            agent.terminate()
            agent.communicate(timeout=30)
    finally:
        if shepherd.poll() is None:
            shepherd.kill()
            shepherd.communicate()
    # Stuck staging needs a person: the run ends, says why, and exits 1.
    assert shepherd.returncode == 1, out + err
    assert "Traceback" not in err
    assert err.count("data_service_unavailable") == 1, err
    assert "is unreachable" in err and err.count("data_service_back") == 1, err
    assert "staging is stuck" in out and lost.lfn in out and "failed" in out, out

    status = world.osa_grid("production", "status", "--json", f"toy{tag}")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert [s["lfn"] for s in report["staging_stuck"]] == [lost.lfn]
    assert (
        "transfer of" in report["staging_stuck"][0]["error"]
        and "failed" in report["staging_stuck"][0]["error"]
    )
    # Nothing failed for the outage; the task of the stuck file did not run; run 1807 went through.
    assert report["failed"] == []
    counts = report["counts"]
    assert counts["calibrate"] == {"done": 3, "staging": 1}, counts
    assert counts["merge"] == {"done": 1} and counts["reconstruct"] == {"done": 1}, counts

    # Refused credentials mid-pass (the stuck request is polled): one line, exit 1, the state intact.
    wrong = tmp_path / "wrong.cfg"
    wrong.write_text(
        rucio_env.read_text()
        .replace("password = ", "password = wrong")
        .replace("account = root", "account = nobody")
    )
    env = {**world.env(), "OSA_GRID_RUCIO_CONFIG": str(wrong)}
    refused = subprocess.run(
        [*OSA_GRID, "production", "run", "--no-live", str(production)],
        env=env,
        cwd=world.root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "refused our credentials" in refused.stderr and "Traceback" not in refused.stderr
    again = json.loads(world.osa_grid("production", "status", "--json", f"toy{tag}").stdout)
    assert again["counts"] == counts and [s["lfn"] for s in again["staging_stuck"]] == [lost.lfn]
