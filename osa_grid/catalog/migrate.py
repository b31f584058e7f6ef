"""Bring a catalog database to the newest schema revision (alembic)."""

from __future__ import annotations

import argparse

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from osa_grid.resources import shipped


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(shipped("catalog") / "migrations"))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    config = Config()
    config.set_main_option("script_location", str(shipped("catalog") / "migrations"))
    return ScriptDirectory.from_config(config).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Migrate to head; a no-op (one small query) when the catalog is already there."""
    head = head_revision()
    with engine.connect() as connection:
        if current_revision(connection) == head:
            return
    with engine.begin() as connection:
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
    with engine.begin() as connection:
        command.revision(_config(connection), message=args.message, autogenerate=True)


if __name__ == "__main__":
    main()
