"""Bring a catalog database to the newest schema revision (alembic)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from osa_grid.resources import shipped

if TYPE_CHECKING:
    from alembic.config import Config

# alembic is imported only to migrate: opening an up-to-date catalog (every command) must not pay for it.


def _versions() -> list[str]:
    return sorted(p.name for p in (shipped("catalog") / "migrations" / "versions").glob("[0-9]*_*.py"))


def head_revision() -> str | None:
    """The newest revision: migrations are numbered ``000N_<what>.py`` with revision "000N", in a line."""
    names = _versions()
    return names[-1].partition("_")[0] if names else None


def _config(connection: Connection) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(shipped("catalog") / "migrations"))
    config.attributes["connection"] = connection
    return config


def current_revision(connection: Connection) -> str | None:
    if not sa.inspect(connection).has_table("alembic_version"):
        return None
    return connection.scalar(sa.text("SELECT version_num FROM alembic_version"))


def upgrade(engine: Engine) -> None:
    """Migrate to head; a no-op (one small query) when the catalog is already there."""
    with engine.connect() as connection:
        if current_revision(connection) == head_revision():
            return
    from alembic import command

    from osa_grid.catalog.engines import WRITER_OPTION, serialize_migrations

    # A writer from BEGIN on, under the migration lock: alembic reads the revision again inside, so the
    # second of two processes opening a new catalog waits for the first and then finds nothing to do.
    with engine.connect().execution_options(**{WRITER_OPTION: True}) as connection, connection.begin():
        serialize_migrations(connection)
        command.upgrade(_config(connection), "head")


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a new catalog migration from the schema's changes.")
    parser.add_argument("action", choices=["revision", "upgrade"])
    parser.add_argument("message", nargs="?", default="schema change")
    parser.add_argument("--url", required=True)
    args = parser.parse_args()
    from osa_grid.catalog.engines import create_engine

    engine = create_engine(args.url)
    if args.action == "upgrade":
        upgrade(engine)
        return
    from alembic import command

    with engine.begin() as connection:
        command.revision(_config(connection), message=args.message, autogenerate=True)


if __name__ == "__main__":
    main()
