"""Security (issue 10): metadata never becomes shell code; secrets never reach logs or provenance; credential
files are private. Real runs through the CLI on the local backend, and the files the repo scripts wrote."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from osa_grid.catalog.store import Catalog
from osa_grid.services.files import register_paths

from .toyworld import ToyWorld

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# The step writes its arguments and what it was given in its environment to its output, as JSON.
ECHO = (
    "import json, os, sys; "
    "json.dump(dict(argv=sys.argv[1:-1], env=dict(os.environ)), open(sys.argv[-1], 'w'))"
)


def echo_production(argv: list[str], env: dict[str, str]) -> dict[str, object]:
    return {
        "name": "echo",
        "transformations": [
            {
                "name": "echo",
                "input": {"query": "data_level = R0"},
                "step": {
                    "argv": ["{python}", "-c", ECHO, *argv, "{output.echo}"],
                    "env": env,
                    "resources": {"cores": 1, "memory_gb": 0.1, "walltime": "1m"},
                },
                "outputs": [
                    {"name": "echo", "file_name": "echo_{run_id:05d}.json", "metadata": {"data_level": "E"}}
                ],
                "retry": {"max_attempts": 1},
            }
        ],
    }


def raw_file(world: ToyWorld, metadata: dict[str, object]) -> None:
    raw = world.root / "raw" / "LST-1.Run01807.0000.r0.csv"
    raw.parent.mkdir(parents=True)
    raw.write_text("event_id\n1\n")
    catalog = Catalog.open(world.catalog_url)
    try:
        register_paths(
            catalog,
            [raw],
            {"data_level": "R0", **metadata},
            name_pattern="LST-1.Run{run_id:d}.{subrun_id:d}.r0.csv",
            lfn_prefix="raw",
        )
    finally:
        catalog.close()


def test_metadata_reaching_a_command_is_passed_literally_never_to_a_shell(tmp_path: Path) -> None:
    world = ToyWorld(tmp_path)
    victim = tmp_path / "x"
    victim.mkdir()
    pwned = tmp_path / "pwned"
    hostile = [f"$(touch {pwned})", f"; rm -rf {victim}", f"`touch {pwned}` && touch {pwned} | cat *"]
    raw_file(world, {"source": hostile[0], "observer": hostile[1], "comment": hostile[2]})
    production = world.write_production(echo_production(["{source}", "{observer}", "{comment}"], {}))
    result = world.osa_grid("production", "run", str(production), "--no-live")
    assert result.returncode == 0, result.stderr
    written = json.loads(next((world.home / "data").rglob("echo_01807.json")).read_text())
    assert written["argv"] == hostile  # each value one argument, byte for byte
    assert not pwned.exists() and victim.is_dir()


def test_tokens_and_passwords_never_reach_logs_or_provenance(tmp_path: Path) -> None:
    world = ToyWorld(tmp_path)
    raw_file(world, {})
    secrets = {
        "OSA_GRID_RUCIO_PASSWORD": "pw-rucio-4711",
        "DIRACX_TOKEN": "tok-diracx-4712",
        "MY_API_KEY": "key-4713",
        "AWS_SECRET_ACCESS_KEY": "aws-4714",
        "DIRACX_CREDENTIALS": "cred-4715",
    }
    env = {**secrets, "CALIB_URL": "https://op:pw-url-4716@calib.example.org/db", "OMP_NUM_THREADS": "1"}
    argv = ["--password", "pw-arg-4717", "--api-key=key-arg-4718", "smtp://osa:pw-smtp-4719@mail.site:25"]
    production = world.write_production(echo_production(argv, env))
    result = world.osa_grid("-vv", "production", "run", str(production), "--no-live")
    assert result.returncode == 0, result.stderr
    # The step itself was given everything, unchanged: only what is recorded is redacted.
    written = json.loads(next((world.home / "data").rglob("echo_01807.json")).read_text())
    assert written["argv"] == argv and all(written["env"][k] == v for k, v in env.items())
    shown = world.osa_grid("provenance", next(iter(_lfns(world, "data_level = E"))))
    assert shown.returncode == 0, shown.stderr
    catalog = Catalog.open(world.catalog_url)
    try:
        [task] = catalog.tasks("echo")
        [row] = catalog.provenance(task.task_id)
        events = catalog.events(production="echo")
    finally:
        catalog.close()
    assert row["env"]["OMP_NUM_THREADS"] == "1" and row["env"]["DIRACX_TOKEN"] == "***"
    assert row["env"]["CALIB_URL"] == "https://op:***@calib.example.org/db"
    assert row["argv"][-5:-1] == ["--password", "***", "--api-key=***", "smtp://osa:***@mail.site:25"]
    recorded = {
        "provenance": json.dumps(row, default=str),
        "events": json.dumps(events, default=str),
        "logs": result.stderr + result.stdout,
        "provenance command": shown.stdout + shown.stderr,
    }
    assert "task_done" in result.stderr  # -vv: the shepherd's log lines are there to be searched
    for where, text in recorded.items():
        for secret in [*secrets.values(), "pw-url-4716", "pw-arg-4717", "key-arg-4718", "pw-smtp-4719"]:
            assert secret not in text, f"{secret} is in the {where}"


def _lfns(world: ToyWorld, query: str) -> list[str]:
    catalog = Catalog.open(world.catalog_url)
    try:
        return [f.lfn for f in catalog.query(query)]
    finally:
        catalog.close()


# Files holding a password, a key or a token, as the repo's service scripts write them.
CREDENTIAL_FILES = {
    "dirac": ["credentials.json", "server.env", "keys/jwks.json", "keys/legacy-api-key", "keys/state-key"],
    "rucio": ["etc/root.password", "etc/client/rucio.cfg", "etc/server/rucio.cfg"],
    "slurm": ["etc/slurmdbd.conf"],
}


@pytest.mark.parametrize("service", sorted(CREDENTIAL_FILES))
def test_credential_files_of_the_services_are_private(service: str) -> None:
    directory = Path(os.environ.get(f"OSA_GRID_{service.upper()}_DIR") or REPO / ".services" / service)
    if not directory.is_dir():
        reason = f"{directory} does not exist: start it with scripts/{service}/start.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    for name in CREDENTIAL_FILES[service]:
        path = directory / name
        assert path.is_file(), f"{path} was not written"
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} has mode {mode:o}: others can read a secret"
