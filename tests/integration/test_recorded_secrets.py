"""Secrets written inline in a production or campaign YAML (issue 19): the step gets them, nothing recorded
keeps them (the catalog's definition and file text, provenance, events, what the commands show)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from osa_grid.catalog import schema

from .test_security import echo_production, raw_file
from .toyworld import ToyWorld

pytestmark = pytest.mark.integration

ENV = {"DB_PASSWORD": "pw-env-5711", "OMP_NUM_THREADS": "1"}
# "--password=..." as one argument, a parameter put in a command line by a template, a mysql -p password.
ARGV = ["--password=pw-arg-5713", "{api_token}", "mysql", "-ppw-mysql-5716"]
SECRETS = ["pw-env-5711", "pw-arg-5713", "tok-param-5714", "pw-desc-5715", "pw-mysql-5716"]


def secret_production(name: str = "echo") -> dict[str, Any]:
    production = echo_production(ARGV, ENV)
    production["name"] = name
    production["description"] = "reads https://op:pw-desc-5715@calib.example.org/db"
    production["parameters"] = {"api_token": "tok-param-5714"}
    return production


def stored_production(world: ToyWorld, name: str) -> dict[str, Any]:
    catalog = world.catalog()
    try:
        with catalog.engine.connect() as conn:
            row = conn.execute(sa.select(schema.productions).where(schema.productions.c.name == name)).one()
    finally:
        catalog.close()
    return {"definition": row.definition, "source": row.source}


def assert_hidden(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret} is in the {where}"


def test_inline_secrets_reach_the_step_and_nothing_recorded(tmp_path: Path) -> None:
    world = ToyWorld(tmp_path)
    raw_file(world, {})
    production = world.write_production(secret_production())
    result = world.osa_grid("-vv", "production", "run", str(production), "--no-live")
    assert result.returncode == 0, result.stderr
    written = json.loads(next((world.home / "data").rglob("echo_01807.json")).read_text())
    assert written["argv"] == ["--password=pw-arg-5713", "tok-param-5714", "mysql", "-ppw-mysql-5716"]
    assert written["env"]["DB_PASSWORD"] == "pw-env-5711"

    stored = stored_production(world, "echo")
    step = stored["definition"]["transformations"][0]["step"]
    assert step["env"] == {"DB_PASSWORD": "***", "OMP_NUM_THREADS": "1"}
    assert step["argv"][3:7] == ["--password=***", "{api_token}", "mysql", "-p***"]
    assert stored["definition"]["parameters"] == {"api_token": "***"}
    assert stored["source"] is not None and "api_token: ***" in stored["source"]
    catalog = world.catalog()
    try:
        [task] = catalog.tasks("echo")
        [row] = catalog.provenance(task.task_id)
        events = catalog.events(production="echo")
    finally:
        catalog.close()
    assert row["argv"][3:7] == ["--password=***", "***", "mysql", "-p***"]
    status = world.osa_grid("production", "status", "echo")  # from the recorded definition
    assert status.returncode == 0, status.stderr
    recorded = {
        "stored definition": json.dumps(stored, default=str),
        "provenance": json.dumps(row, default=str),
        "events": json.dumps(events, default=str),
        "logs": result.stderr + result.stdout,
        "status": status.stdout + status.stderr,
    }
    for where, text in recorded.items():
        assert_hidden(where, text)


def test_a_campaign_runs_with_its_secrets_and_the_catalog_keeps_none(tmp_path: Path) -> None:
    world = ToyWorld(tmp_path)
    raw_file(world, {})
    campaign: dict[str, Any] = {
        "name": "secret-campaign",
        "production": secret_production("inline"),
        "scope": {"query": "data_level = R0"},
        "backend": {"name": "local", "options": {"max_cores": 1}},
    }
    path = world.root / "campaign.yaml"
    path.write_text(yaml.safe_dump(campaign, sort_keys=False))
    result = world.osa_grid("campaign", "submit", str(path), "--no-live")
    assert result.returncode == 0, result.stdout + result.stderr
    written = json.loads(next((world.home / "data").rglob("echo_01807.json")).read_text())
    assert written["argv"][1] == "tok-param-5714" and written["env"]["DB_PASSWORD"] == "pw-env-5711"
    catalog = world.catalog()
    try:
        row = catalog.campaign("secret-campaign")
        assert row is not None
        [task] = catalog.tasks("secret-campaign")
        provenance = catalog.provenance(task.task_id)
    finally:
        catalog.close()
    assert row.definition["secrets_hidden"] is True
    assert_hidden("campaign row", json.dumps(row.definition))
    assert_hidden("production row", json.dumps(stored_production(world, "secret-campaign"), default=str))
    assert_hidden("provenance", json.dumps(provenance, default=str))

    # Running again reads the secrets from the file: a file that no longer says what was submitted is refused.
    campaign["production"]["description"] = "changed"
    path.write_text(yaml.safe_dump(campaign, sort_keys=False))
    resumed = world.osa_grid("campaign", "resume", "secret-campaign", "--no-live")
    assert resumed.returncode == 2, resumed.stdout + resumed.stderr
    assert "which has changed since the campaign was submitted" in " ".join(resumed.stderr.split())
    path.unlink()
    gone = world.osa_grid("campaign", "resume", "secret-campaign", "--no-live")
    assert gone.returncode == 2 and "which is gone" in " ".join(gone.stderr.split())
