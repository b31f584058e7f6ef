"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22 00:12:54.421342
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("query", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "events",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("production", sa.String(length=128), nullable=True),
        sa.Column("task_id", sa.String(length=64), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=True),
        sa.Column("to_state", sa.String(length=16), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_task_id", ["task_id"], unique=False)

    op.create_table(
        "files",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("lfn", sa.String(length=1024), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("checksum", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("lfn"),
    )
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_files_task_id"), ["task_id"], unique=False)

    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("holder", sa.String(length=256), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "productions",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "tasks",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("production", sa.String(length=128), nullable=False),
        sa.Column("transformation", sa.String(length=128), nullable=False),
        sa.Column("group_key", sa.String(length=512), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default="0", nullable=False),
        sa.Column("failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("backend", sa.String(length=32), nullable=True),
        sa.Column("job_id", sa.String(length=128), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("workdir", sa.Text(), nullable=True),
        sa.Column("resources", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("task_id"),
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.create_index("ix_tasks_production_state", ["production", "state"], unique=False)
        batch_op.create_index(
            "ix_tasks_production_transformation", ["production", "transformation"], unique=False
        )

    op.create_table(
        "dataset_files",
        sa.Column("dataset_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("file_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["file_id"], ["files.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("dataset_id", "file_id"),
    )
    op.create_table(
        "file_metadata",
        sa.Column("file_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("vtype", sa.String(length=8), nullable=False),
        sa.Column("vint", sa.BigInteger(), nullable=True),
        sa.Column("vnum", sa.Double(), nullable=True),
        sa.Column("vstr", sa.String(length=1024), nullable=True),
        sa.ForeignKeyConstraint(["file_id"], ["files.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("file_id", "key"),
    )
    with op.batch_alter_table("file_metadata", schema=None) as batch_op:
        batch_op.create_index("ix_file_metadata_key_vint", ["key", "vint"], unique=False)
        batch_op.create_index("ix_file_metadata_key_vnum", ["key", "vnum"], unique=False)
        batch_op.create_index("ix_file_metadata_key_vstr", ["key", "vstr"], unique=False)

    op.create_table(
        "provenance",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("argv", sa.JSON(), nullable=False),
        sa.Column("env", sa.JSON(), nullable=False),
        sa.Column("software", sa.JSON(), nullable=False),
        sa.Column("config_digest", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=256), nullable=False),
        sa.Column("backend", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.String(length=128), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.task_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("provenance", schema=None) as batch_op:
        batch_op.create_index("ix_provenance_task_id", ["task_id"], unique=False)

    op.create_table(
        "replicas",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("file_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("store", sa.String(length=64), nullable=False),
        sa.Column("pfn", sa.String(length=2048), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["file_id"], ["files.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("file_id", "store", name="uq_replicas_file_store"),
    )
    op.create_table(
        "task_inputs",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("file_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["files.id"],
        ),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.task_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("task_id", "file_id"),
    )
    with op.batch_alter_table("task_inputs", schema=None) as batch_op:
        batch_op.create_index("ix_task_inputs_file_id", ["file_id"], unique=False)

    op.create_table(
        "transformations",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("production", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("cursor", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["production"],
            ["productions.name"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("production", "name", name="uq_transformations_production_name"),
    )
    op.create_table(
        "pending_inputs",
        sa.Column("transformation_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("file_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("group_key", sa.String(length=512), nullable=False),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["files.id"],
        ),
        sa.ForeignKeyConstraint(
            ["transformation_id"],
            ["transformations.id"],
        ),
        sa.PrimaryKeyConstraint("transformation_id", "file_id"),
    )


def downgrade() -> None:
    op.drop_table("pending_inputs")
    op.drop_table("transformations")
    with op.batch_alter_table("task_inputs", schema=None) as batch_op:
        batch_op.drop_index("ix_task_inputs_file_id")

    op.drop_table("task_inputs")
    op.drop_table("replicas")
    with op.batch_alter_table("provenance", schema=None) as batch_op:
        batch_op.drop_index("ix_provenance_task_id")

    op.drop_table("provenance")
    with op.batch_alter_table("file_metadata", schema=None) as batch_op:
        batch_op.drop_index("ix_file_metadata_key_vstr")
        batch_op.drop_index("ix_file_metadata_key_vnum")
        batch_op.drop_index("ix_file_metadata_key_vint")

    op.drop_table("file_metadata")
    op.drop_table("dataset_files")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_production_transformation")
        batch_op.drop_index("ix_tasks_production_state")

    op.drop_table("tasks")
    op.drop_table("productions")
    op.drop_table("leases")
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_files_task_id"))

    op.drop_table("files")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_task_id")

    op.drop_table("events")
    op.drop_table("datasets")
