"""Readers (query, status) run while a shepherd writes: no "database is locked", no wrong answers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from osa_grid.catalog.store import Catalog

from .toyworld import ToyWorld, toy_production

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> ToyWorld:
    url = None if request.param == "sqlite" else str(request.getfixturevalue("postgresql_url"))
    world = ToyWorld(tmp_path, url)
    world.add_raw([1807, 1808, 1809], subruns=6)
    return world


def test_many_readers_while_a_shepherd_writes(world: ToyWorld) -> None:
    shepherd = world.start("production", "run", str(world.write_production(toy_production())), "--no-live")
    errors: list[BaseException] = []
    answers: list[int] = []
    stop = threading.Event()

    def read() -> None:
        catalog = Catalog.open(world.catalog_url)
        done_seen = 0
        try:
            while not stop.is_set():
                counts = catalog.task_counts("toy")
                done = sum(states.get("done", 0) for states in counts.values())
                # Each read sees a committed state: finished tasks never disappear.
                assert done >= done_seen, f"done went from {done_seen} to {done}"
                done_seen = done
                found = catalog.query("data_level = R0 and run_id in (1807, 1808, 1809)")
                answers.append(len(found))
        except BaseException as exc:  # every failure of a reader is the test's failure
            errors.append(exc)
        finally:
            catalog.close()

    readers = [threading.Thread(target=read) for _ in range(6)]
    for reader in readers:
        reader.start()
    try:
        shepherd.wait(timeout=300)
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=30)
    assert shepherd.returncode == 0, shepherd.stderr.read() if shepherd.stderr else ""
    assert errors == []
    assert answers and set(answers) == {18}
