"""The real Rucio server of scripts/rucio/start.sh, for the integration tests (started if needed)."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest

from osa_grid.data.rucio import RawFile, RucioStore
from osa_grid.steps.toy import make_inputs

REPO = Path(__file__).resolve().parents[2]
RUCIO_DIR = Path(os.environ.get("OSA_GRID_RUCIO_DIR", REPO / ".services" / "rucio"))
SERVER_PYTHON = RUCIO_DIR / "venv" / "bin" / "python"
CLIENT_CONFIG = RUCIO_DIR / "etc" / "client" / "rucio.cfg"
SERVER_CONFIG = RUCIO_DIR / "etc" / "server" / "rucio.cfg"


def ensure_server() -> Path:
    """The client configuration of a running server; skips (fails under CI=true) when it cannot start."""
    try:
        started = subprocess.run(
            ["bash", str(REPO / "scripts" / "rucio" / "start.sh")],
            capture_output=True,
            text=True,
            timeout=600,
        )
        problem = started.stderr[-2000:] if started.returncode else ""
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem = str(exc)
    if problem:
        reason = f"the Rucio server could not be started (scripts/rucio/start.sh): {problem}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    os.environ["RUCIO_CONFIG"] = str(CLIENT_CONFIG)
    return CLIENT_CONFIG


def daemon(name: str, *args: str) -> None:
    """Run one pass of a server daemon (judge-cleaner, reaper) with the server's configuration."""
    env = {**os.environ, "RUCIO_CONFIG": str(SERVER_CONFIG)}
    subprocess.run(
        [str(RUCIO_DIR / "venv" / "bin" / f"rucio-{name}"), "--run-once", *args],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )


def token() -> str:
    """A marker that keeps one test's DIDs apart from every other's on the shared server."""
    return f"t{secrets.token_hex(5)}"


def night_on_tape(store: RucioStore, root: Path, tag: str) -> list[RawFile]:
    """Two runs of two sub-runs on the tape RSE, found by their tag."""
    raw = [
        RawFile(
            path,
            f"{tag}/R0/{path.name}",
            {
                "data_level": "R0",
                "night": "2024-01-15",
                "run_id": int(path.name.split(".")[1][3:]),
                "subrun_id": int(path.name.split(".")[2]),
                "n_subruns": 2,
                "run_type": "DATA",
                "test_tag": tag,
            },
        )
        for path in make_inputs(root, [1807, 1808], 2, 20)
    ]
    assert store.register_raw(raw, "LST_TAPE", lambda f: f"{tag}_R0_Run{f.metadata['run_id']:05d}") == 4
    return raw
