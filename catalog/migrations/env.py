"""Alembic environment for the osa-grid catalog; osa_grid.catalog.migrate passes the connection in."""

from alembic import context

from osa_grid.catalog.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
