"""Engines per database kind: each kind's connection set-up in one place."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from osa_grid.errors import BadInput, CatalogError


def _sqlite(url: sa.URL) -> Engine:
    database = url.database
    if database and database != ":memory:":
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 60})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets readers (status, query) run while a shepherd writes; NORMAL sync is safe under WAL.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    return engine


def _postgresql(url: sa.URL) -> Engine:
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return sa.create_engine(url, pool_pre_ping=True)


ENGINE_FACTORIES: dict[str, Callable[[sa.URL], Engine]] = {
    "sqlite": _sqlite,
    "postgresql": _postgresql,
}


def create_engine(url_text: str) -> Engine:
    try:
        url = make_url(url_text)
    except sa.exc.ArgumentError as exc:
        raise BadInput(f"catalog URL {url_text!r} is not a database URL: {exc}") from exc
    factory = ENGINE_FACTORIES.get(url.get_backend_name())
    if factory is None:
        known = ", ".join(sorted(ENGINE_FACTORIES))
        raise BadInput(f"catalog URL {url_text!r}: unsupported database {url.get_backend_name()!r} ({known})")
    try:
        return factory(url)
    except ImportError as exc:
        raise CatalogError(f"the driver for {url.get_backend_name()} is not installed: {exc}") from exc
