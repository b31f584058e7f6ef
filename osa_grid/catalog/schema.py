"""Catalog tables (SQLAlchemy Core).

The alembic migrations under the top-level ``catalog/migrations`` directory must create exactly
these tables; a test compares the migrated database with this metadata.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

# SQLite only auto-increments INTEGER PRIMARY KEY columns, PostgreSQL wants BIGINT for big catalogs.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every database (SQLite forgets the zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the catalog; use timezone-aware UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


metadata = sa.MetaData()

files = sa.Table(
    "files",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("lfn", sa.String(1024), nullable=False, unique=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("checksum", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("task_id", sa.String(64), nullable=True, index=True),
    # The metadata set holding the file's shared keys (metadata_sets), if it has any. No foreign key:
    # sets are only ever added, in the transaction that registers their first file.
    sa.Column("set_id", BigId, nullable=True),
    sa.Index("ix_files_set_id", "set_id", "id"),
)

# Text compared by code point on PostgreSQL too, whose default collation may be linguistic: ranges
# (night in 2024-01-01..2024-03-31) and prefix globs (source ~ Mrk*) can then use the index.
MetadataText = sa.String(1024).with_variant(sa.String(1024, collation="C"), "postgresql")


def _typed_values(name: str, owner: str, owner_table: str) -> sa.Table:
    """One row per (owner, key). Values are typed: ints in vint (and vnum), floats in vnum, strings,
    dates and datetimes (ISO text, which sorts like the value) in vstr.

    The two partial indexes end with the owner's id, so a condition's matching owners come from the
    index alone (on SQLite, a WITHOUT ROWID table appends its primary key to every index anyway); int
    conditions narrow on vnum first (osa_grid.catalog.querysql), so vint needs no index of its own.
    """
    indexes = [
        sa.Index(
            f"ix_{name}_key_{column}",
            "key",
            column,
            owner,
            sqlite_where=sa.text(f"{column} IS NOT NULL"),
            postgresql_where=sa.text(f"{column} IS NOT NULL"),
        )
        for column in ("vnum", "vstr")
    ]
    return sa.Table(
        name,
        metadata,
        sa.Column(owner, BigId, sa.ForeignKey(f"{owner_table}.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("vtype", sa.String(8), nullable=False),
        sa.Column("vint", sa.BigInteger, nullable=True),
        sa.Column("vnum", sa.Double, nullable=True),
        sa.Column("vstr", MetadataText, nullable=True),
        *indexes,
        sqlite_with_rowid=False,
    )


def _key_types(name: str) -> sa.Table:
    """Every (key, stored type) pair a values table has had: what a query may ask for, without a scan."""
    return sa.Table(
        name,
        metadata,
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("vtype", sa.String(8), primary_key=True),
    )


file_metadata = _typed_values("file_metadata", "file_id", "files")
metadata_keys = _key_types("metadata_keys")

# Keys shared by many files (a run's night, source, pointing...) are stored once per distinct
# combination of their values, a metadata set, which its files point at (files.set_id): a range over
# nights then reads one index entry per run and data level, not one per file, and a registration
# writes a few rows per file instead of a dozen. Which keys: shared_metadata_keys (seeded by
# migration 0007); a key may also be in file_metadata (files registered before it was shared), and
# set_metadata_keys / metadata_keys say where each key has values, so queries read both only then.
shared_metadata_keys = sa.Table(
    "shared_metadata_keys",
    metadata,
    sa.Column("key", sa.String(128), primary_key=True),
)

metadata_sets = sa.Table(
    "metadata_sets",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    # sha256 of the set's typed values (osa_grid.catalog.store): one set per distinct combination.
    sa.Column("digest", sa.String(64), nullable=False, unique=True),
)

set_metadata = _typed_values("set_metadata", "set_id", "metadata_sets")
set_metadata_keys = _key_types("set_metadata_keys")

replicas = sa.Table(
    "replicas",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("file_id", BigId, sa.ForeignKey("files.id", ondelete="CASCADE"), nullable=False),
    sa.Column("store", sa.String(64), nullable=False),
    sa.Column("pfn", sa.String(2048), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("file_id", "store", name="uq_replicas_file_store"),
)

datasets = sa.Table(
    "datasets",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(256), nullable=False, unique=True),
    sa.Column("query", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("description", sa.Text, nullable=True),
    # Set when the dataset's file list was stored in dataset_files; until then the query decides.
    sa.Column("frozen_at", UTCDateTime, nullable=True),
)

dataset_files = sa.Table(
    "dataset_files",
    metadata,
    sa.Column("dataset_id", BigId, sa.ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("file_id", BigId, sa.ForeignKey("files.id", ondelete="CASCADE"), primary_key=True),
)

productions = sa.Table(
    "productions",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("definition", sa.JSON, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("source", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

transformations = sa.Table(
    "transformations",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("production", sa.String(128), sa.ForeignKey("productions.name"), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    # Highest files.id already looked at by the planner: a pass only reads newer files.
    sa.Column("cursor", sa.BigInteger, nullable=False, server_default="0"),
    sa.UniqueConstraint("production", "name", name="uq_transformations_production_name"),
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("task_id", sa.String(64), primary_key=True),
    sa.Column("production", sa.String(128), nullable=False),
    sa.Column("transformation", sa.String(128), nullable=False),
    sa.Column("group_key", sa.String(512), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("backend", sa.String(32), nullable=True),
    sa.Column("job_id", sa.String(128), nullable=True),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("workdir", sa.Text, nullable=True),
    sa.Column("resources", sa.JSON, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # The per-pass counts of unfinished tasks read this index alone, however many tasks have finished.
    sa.Index("ix_tasks_production_state_transformation", "production", "state", "transformation"),
    # The ready queue in its ORDER BY order: the next N ready tasks without sorting all of them.
    sa.Index("ix_tasks_ready_queue", "production", "state", "created_at", "task_id"),
    sa.Index("ix_tasks_production_transformation", "production", "transformation"),
)

task_inputs = sa.Table(
    "task_inputs",
    metadata,
    sa.Column("task_id", sa.String(64), sa.ForeignKey("tasks.task_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("file_id", BigId, sa.ForeignKey("files.id"), primary_key=True),
    # "input" for the files the task was planned from; a need's name for a side input resolved later.
    sa.Column("role", sa.String(64), nullable=False, server_default="input"),
    sa.Index("ix_task_inputs_file_id", "file_id"),
)

# Files that match a transformation but wait in an open group (e.g. a run not yet complete).
pending_inputs = sa.Table(
    "pending_inputs",
    metadata,
    sa.Column("transformation_id", BigId, sa.ForeignKey("transformations.id"), primary_key=True),
    sa.Column("file_id", BigId, sa.ForeignKey("files.id"), primary_key=True),
    sa.Column("group_key", sa.String(512), nullable=False),
)

# LFNs a task is about to store, claimed before any byte lands at the LFN's place: two tasks (or a new version
# of a transformation) whose outputs render to the same LFN never write over each other's product. A claim
# lives from just before its product is stored until it is registered (the files row then holds the LFN).
lfn_claims = sa.Table(
    "lfn_claims",
    metadata,
    sa.Column("lfn", sa.String(1024), primary_key=True),
    sa.Column("task_id", sa.String(64), nullable=False),
    sa.Column("claimed_at", UTCDateTime, nullable=False),
    sa.Index("ix_lfn_claims_task_id", "task_id"),
)

provenance = sa.Table(
    "provenance",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.String(64), sa.ForeignKey("tasks.task_id", ondelete="CASCADE"), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("argv", sa.JSON, nullable=False),
    sa.Column("env", sa.JSON, nullable=False),
    sa.Column("software", sa.JSON, nullable=False),
    sa.Column("config_digest", sa.String(64), nullable=False),
    sa.Column("host", sa.String(256), nullable=False),
    sa.Column("backend", sa.String(32), nullable=False),
    sa.Column("job_id", sa.String(128), nullable=True),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("ended_at", UTCDateTime, nullable=True),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Index("ix_provenance_task_id", "task_id"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("production", sa.String(128), nullable=True),
    sa.Column("task_id", sa.String(64), nullable=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("from_state", sa.String(16), nullable=True),
    sa.Column("to_state", sa.String(16), nullable=True),
    sa.Column("detail", sa.JSON, nullable=True),
    sa.Index("ix_events_task_id", "task_id"),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(256), primary_key=True),
    sa.Column("holder", sa.String(256), nullable=False),
    sa.Column("acquired_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
)

# Remote services (Rucio, DiracX) a shepherd cannot reach now: one row per service while the outage lasts,
# kept across shepherd restarts, so "down since" and the one alert per outage do not start over.
service_outages = sa.Table(
    "service_outages",
    metadata,
    sa.Column("service", sa.String(32), primary_key=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("since", UTCDateTime, nullable=False),
    sa.Column("last_error", sa.Text, nullable=False),
    sa.Column("last_failure_at", UTCDateTime, nullable=False),
    sa.Column("alerted_at", UTCDateTime, nullable=True),
)

# Campaigns (docs/campaigns.md): a production over a scope, with a backend and limits. The campaign's tasks
# are those of the production named ``production`` (the campaign's own name); ``status`` steers its shepherd.
campaigns = sa.Table(
    "campaigns",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("production", sa.String(128), nullable=False),
    sa.Column("file", sa.Text, nullable=True),
    sa.Column("definition", sa.JSON, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    # Set by ``campaign stop --kill``: the shepherd (or the stop command itself) cancels the running jobs.
    sa.Column("kill_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("backend", sa.String(32), nullable=False),
    sa.Column("limits", sa.JSON, nullable=False),
    # Tasks per step expected by the plan made at submission (status shows progress against it).
    sa.Column("expected", sa.JSON, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# Files asked to come online (from tape) for a production's tasks: one row per file, written before the data
# manager is asked (state "new"), so that a restart finds the request again instead of making a second one.
staging_requests = sa.Table(
    "staging_requests",
    metadata,
    sa.Column("file_id", BigId, sa.ForeignKey("files.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("request_id", sa.String(128), nullable=True),  # the Rucio rule id
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("requested_at", UTCDateTime, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index("ix_staging_requests_state", "state"),
)
