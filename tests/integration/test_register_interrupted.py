"""A real ``osa-grid files register`` process sent SIGINT while it commits (PostgreSQL catalog).

The test holds the catalog's registration lock, so the process is caught inside its commit, waiting:
the interrupt lands there every time, and the lock is let go after it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from osa_grid.catalog.engines import _REGISTRATION_LOCK
from osa_grid.catalog.store import Catalog
from tests.integration.toyworld import OSA_GRID

pytestmark = pytest.mark.integration

FILES = 200


def _register(paths: list[Path], url: str, home: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OSA_GRID_HOME": str(home), "OSA_GRID_CATALOG_URL": url}
    command = [*OSA_GRID, "files", "register", *map(str, paths), "-m", "data_level=R0", "--lfn-prefix", "raw"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_until_blocked_on_the_lock(engine: sa.Engine, process: subprocess.Popen[str]) -> None:
    # This database's registration lock only: other tests share the server.
    waiting = sa.text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = :key"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ).bindparams(key=_REGISTRATION_LOCK)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        with engine.connect() as conn:
            if conn.scalar(waiting):
                return
        time.sleep(0.05)
    process.kill()
    pytest.fail("the registration never reached its commit")


def test_sigint_during_the_commit_reports_the_registration_and_a_rerun_is_a_no_op(
    postgresql_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    paths = [data / f"f{i:04d}.txt" for i in range(FILES)]
    for i, path in enumerate(paths):
        path.write_text(f"file {i}\n")
    Catalog.open(postgresql_url).close()  # migrated, so the process only registers
    engine = sa.create_engine(postgresql_url)
    try:
        with engine.connect() as holder:
            holder.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": _REGISTRATION_LOCK})
            process = _register(paths, postgresql_url, tmp_path)
            _wait_until_blocked_on_the_lock(engine, process)
            process.send_signal(signal.SIGINT)
            holder.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": _REGISTRATION_LOCK})
            holder.commit()
            out, err = process.communicate(timeout=120)
    finally:
        engine.dispose()
    assert process.returncode == 130, err
    assert f"registered {FILES} file(s)" in out
    assert "the registration was completed first" in err and "Traceback" not in err

    catalog = Catalog.open(postgresql_url)
    try:
        assert len(catalog.file_ids([f"raw/{p.name}" for p in paths])) == FILES
        ids_before = catalog.max_file_id()
        again = _register(paths, postgresql_url, tmp_path)
        out, err = again.communicate(timeout=120)
        assert again.returncode == 0, err
        assert f"registered 0 file(s); {FILES} already registered with the same content" in out
        assert catalog.max_file_id() == ids_before
    finally:
        catalog.close()
