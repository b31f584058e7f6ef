"""Engines per database kind: each kind's connection set-up in one place."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from osa_grid.core.redaction import redact_text
from osa_grid.errors import BadInput, CatalogError
from osa_grid.system import private_directory

# Execution option set on connections that write (``Catalog.transaction``).
WRITER_OPTION = "osa_grid_writer"
# Any constant: the PostgreSQL advisory lock that orders file registrations.
_REGISTRATION_LOCK = 0x05A6_0001


def _sqlite(url: sa.URL) -> Engine:
    database = url.database
    if database and database != ":memory:":
        # The catalog holds every task's history: a directory made for it is this user's only.
        private_directory(Path(database).expanduser().parent)
    engine = sa.create_engine(url, connect_args={"timeout": 60})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        # Transactions are begun by the listener below, not by the driver's own guesswork.
        dbapi_connection.isolation_level = None
        # WAL lets readers (status, query) run while a shepherd writes; NORMAL sync is safe under WAL.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        # 128 MiB of page cache instead of 2: a planning pass inserts into several task-id indexes at once,
        # and with the default cache their pages leave it (and are written out again) between batches.
        cursor.execute("PRAGMA cache_size=-131072")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        # A writer takes the write lock at BEGIN: two writers never read the same state and both act on it,
        # and ids are handed out in commit order. Readers stay deferred and never block anyone.
        immediate = connection.get_execution_options().get(WRITER_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


# Any constant: the PostgreSQL advisory lock that lets one process at a time migrate the catalog.
_MIGRATION_LOCK = 0x05A6_0002


def _postgresql_migration_lock(connection: sa.Connection) -> None:
    connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})


MIGRATION_LOCKS: dict[str, Callable[[sa.Connection], None]] = {
    "postgresql": _postgresql_migration_lock,
}


def serialize_migrations(connection: sa.Connection) -> None:
    """One migration at a time: two commands opening a new catalog at once must not both create it.

    SQLite's writers already queue at BEGIN IMMEDIATE (``WRITER_OPTION``); a deferred transaction that
    read first and then wrote would be refused at once ("database is locked") instead of waiting.
    """
    lock = MIGRATION_LOCKS.get(connection.dialect.name)
    if lock is not None:
        lock(connection)


def _postgresql_registration_lock(connection: sa.Connection) -> None:
    # Ids come from a sequence at insert time, not commit time: without this, a registration that commits
    # late could carry an id below the planner's cursor and never be seen.
    connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _REGISTRATION_LOCK})


REGISTRATION_LOCKS: dict[str, Callable[[sa.Connection], None]] = {
    "postgresql": _postgresql_registration_lock,
}


def serialize_registrations(connection: sa.Connection) -> None:
    """Make file registrations commit in id order (SQLite's immediate writers already do)."""
    lock = REGISTRATION_LOCKS.get(connection.dialect.name)
    if lock is not None:
        lock(connection)


def _sqlite_ids(connection: sa.Connection, table: sa.Table, count: int) -> list[int]:
    # The ids SQLite would give (max + 1 on): the write lock taken at BEGIN IMMEDIATE keeps them ours.
    last = connection.scalar(sa.select(sa.func.max(table.c.id))) or 0
    return list(range(last + 1, last + 1 + count))


def _postgresql_ids(connection: sa.Connection, table: sa.Table, count: int) -> list[int]:
    # One round trip for the whole block, from the sequence the column's default draws from.
    block = sa.text(
        "SELECT nextval(CAST(pg_get_serial_sequence(:table, 'id') AS regclass))"
        " FROM generate_series(1, :count)"
    )
    return sorted(connection.scalars(block, {"table": table.name, "count": count}))


ID_BLOCKS: dict[str, Callable[[sa.Connection, sa.Table, int], list[int]]] = {
    "sqlite": _sqlite_ids,
    "postgresql": _postgresql_ids,
}


def reserve_ids(connection: sa.Connection, table: sa.Table, count: int) -> list[int]:
    """``count`` new ids of ``table.id``, ascending, for rows inserted with their id (COPY, executemany).

    Call it after ``serialize_registrations``: the ids are then handed out in commit order.
    """
    return ID_BLOCKS[connection.dialect.name](connection, table, count)


def _postgresql(url: sa.URL) -> Engine:
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return sa.create_engine(url, pool_pre_ping=True)


ENGINE_FACTORIES: dict[str, Callable[[sa.URL], Engine]] = {
    "sqlite": _sqlite,
    "postgresql": _postgresql,
}


# What a user may write (the error for any other URL says so).
SUPPORTED_URLS = (
    "sqlite:///PATH, postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE (or postgresql+psycopg://...)"
)


def create_engine(url_text: str) -> Engine:
    try:
        url = make_url(url_text)
    except sa.exc.ArgumentError as exc:
        shown = redact_text(url_text)
        raise BadInput(
            f"catalog URL {shown!r} is not a database URL; supported URL schemes: {SUPPORTED_URLS}"
        ) from exc
    # The password never appears in a message (it did for a typo such as postgersql://).
    shown = url.render_as_string(hide_password=True)
    factory = ENGINE_FACTORIES.get(url.get_backend_name())
    if factory is None:
        raise BadInput(
            f"catalog URL {shown!r}: unsupported database {url.get_backend_name()!r}; "
            f"supported URL schemes: {SUPPORTED_URLS}"
        )
    try:
        return factory(url)
    except sa.exc.NoSuchModuleError as exc:  # postgresql+nodriver://
        raise BadInput(
            f"catalog URL {shown!r}: unknown driver {url.drivername!r}; "
            f"supported URL schemes: {SUPPORTED_URLS}"
        ) from exc
    except ImportError as exc:
        raise CatalogError(f"the driver for {url.get_backend_name()} is not installed: {exc}") from exc
