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


def echo_production(
    argv: list[str], env: dict[str, str], inherit: list[str] | None = None, name: str = "echo"
) -> dict[str, object]:
    return {
        "name": name,
        "transformations": [
            {
                "name": "echo",
                "input": {"query": "data_level = R0"},
                "step": {
                    "argv": ["{python}", "-c", ECHO, *argv, "{output.echo}"],
                    "env": env,
                    "inherit": inherit or [],
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


def test_tokens_and_passwords_never_reach_logs_or_provenance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = ToyWorld(tmp_path)
    monkeypatch.setenv("OSA_GRID_RUCIO_PASSWORD", "pw-shepherd-4720")  # the shepherd's own, not declared
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
    # The step was given what its transformation declares, unchanged (only what is recorded is redacted),
    # and not the shepherd's own secret of the same name.
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
        for secret in [
            *secrets.values(),
            *["pw-url-4716", "pw-arg-4717", "key-arg-4718", "pw-smtp-4719", "pw-shepherd-4720"],
        ]:
            assert secret not in text, f"{secret} is in the {where}"


# What a shepherd's environment holds and no step may see unless its transformation declares it.
SHEPHERD_SECRETS = {
    "OSA_GRID_RUCIO_PASSWORD": "pw-rucio-4731",
    "DIRACX_TOKEN": "tok-diracx-4732",
    "MY_API_KEY": "key-4733",
    "DATABASE_URL": "postgresql://osa:pw-db-4734@db.site/osa",
}


def shepherd_with_secrets(world: ToyWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shepherd's environment: its secrets, its catalog URL with a password, a grid proxy."""
    for name, value in SHEPHERD_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("X509_USER_PROXY", "/tmp/x509up_u4735")
    monkeypatch.setenv("OSA_GRID_STEP_ENV_PASSTHROUGH", '["SITE_SCRATCH"]')
    monkeypatch.setenv("SITE_SCRATCH", "/scratch/osa")
    assert "OSA_GRID_CATALOG_URL" in world.env()


def check_step_environment(env: dict[str, str]) -> None:
    """Declared, inherited by name, passed by the operator's setting and the safe base: nothing else."""
    for name in [*SHEPHERD_SECRETS, "OSA_GRID_CATALOG_URL", "OSA_GRID_HOME", "OSA_GRID_STEP_ENV_PASSTHROUGH"]:
        assert name not in env, f"{name} of the shepherd reached the step"
    assert env["DECLARED"] == "yes" and env["X509_USER_PROXY"] == "/tmp/x509up_u4735"
    assert env["SITE_SCRATCH"] == "/scratch/osa"
    assert env["PATH"] == os.environ["PATH"] and env.get("PYTHONPATH") == os.environ.get("PYTHONPATH")


def private(path: Path) -> bool:
    """Readable by this user only."""
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def test_a_step_gets_its_declared_environment_and_the_safe_base_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = ToyWorld(tmp_path)
    raw_file(world, {})
    shepherd_with_secrets(world, monkeypatch)
    production = world.write_production(echo_production([], {"DECLARED": "yes"}, inherit=["X509_USER_PROXY"]))
    result = world.osa_grid("production", "run", str(production), "--no-live")
    assert result.returncode == 0, result.stderr
    written = json.loads(next((world.home / "data").rglob("echo_01807.json")).read_text())
    check_step_environment(written["env"])
    # The home holds the catalog and the tasks' logs: this user's only; so are the logs themselves.
    assert private(world.home) and private(world.home / "work")
    logs = list((world.home / "work").rglob("*.log"))
    assert logs and all(private(log) for log in logs)


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
