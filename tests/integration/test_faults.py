"""Faults the shepherd must survive: a full output disk."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .toyworld import ToyWorld, toy_production

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB filesystem of its own (tmpfs), for the product store."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], capture_output=True
    )
    if mounted.returncode != 0:
        reason = f"cannot mount a small tmpfs (root needed): {mounted.stderr.decode().strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_output_disk_fails_tasks_cleanly_and_they_recover(tmp_path: Path, small_disk: Path) -> None:
    world = ToyWorld(tmp_path)
    world.add_raw([1807], subruns=3)
    filler = small_disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # leave no room at all
        while os.write(descriptor, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(descriptor)
    env_file = tmp_path / "osa-grid.toml"
    env_file.write_text(f'data_root = "{small_disk / "store"}"\n')
    path = world.write_production(toy_production(retries=1))
    result = world.osa_grid("--config", str(env_file), "production", "run", str(path), "--no-live")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    status = json.loads(
        world.osa_grid("--config", str(env_file), "production", "status", "toy", "--json").stdout
    )
    errors = [f["error"] for f in status["failed"]]
    assert len(errors) == 3 and all(e.startswith("storage") and "No space left" in e for e in errors)
    leftovers = [p for p in small_disk.rglob("*") if p.is_file() and p != filler]
    assert leftovers == [], "no partial product may stay in the store"
    assert world.osa_grid("query", "data_level = DL1", "--count").stdout.strip() == "0"

    filler.unlink()
    retried = world.osa_grid("--config", str(env_file), "production", "retry", "toy")
    assert retried.returncode == 0
    result = world.osa_grid("--config", str(env_file), "production", "run", str(path), "--no-live")
    assert result.returncode == 0, result.stderr
    assert world.osa_grid("query", "data_level = DL1", "--count").stdout.strip() == "3"
