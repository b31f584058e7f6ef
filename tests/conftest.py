"""Shared fixtures: a catalog on SQLite (always) and on PostgreSQL (``-m integration``)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from osa_grid.catalog.store import Catalog

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _postgresql_database() -> Iterator[str]:
    """A fresh, empty database on the machine's PostgreSQL, dropped afterwards."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"osagrid_test_{secrets.token_hex(6)}"
    try:
        with admin.connect() as conn:
            # template0 never has connections, so concurrent test runs can copy it at the same time.
            conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE template0'))
    except (sa.exc.OperationalError, ImportError) as exc:
        admin.dispose()
        reason = f"PostgreSQL not reachable at 127.0.0.1:5432: {getattr(exc, 'orig', None) or exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            # FORCE ends connections a test left open (an engine not disposed, a failed thread).
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty catalog database (not yet migrated)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/catalog.sqlite"
    else:
        yield from _postgresql_database()


@pytest.fixture
def postgresql_url() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL (for end-to-end runs with a PostgreSQL catalog)."""
    yield from _postgresql_database()


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    """A migrated catalog, closed at teardown."""
    opened = Catalog.open(catalog_url)
    try:
        yield opened
    finally:
        opened.close()
