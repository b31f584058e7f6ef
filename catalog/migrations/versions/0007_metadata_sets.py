"""metadata sets: keys shared by many files (a run's night, source...) stored once per combination

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 18:45:00.000000

New files keep their shared keys (shared_metadata_keys, seeded below) in a metadata set their
files.set_id points at. Files registered before keep theirs in file_metadata: metadata_keys and
set_metadata_keys say where each key has values, and queries read both places where a key has both,
so nothing needs moving.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MetadataText = sa.String(1024).with_variant(sa.String(1024, collation="C"), "postgresql")

# What LST-1 data shares per run, per run and data level, or per production (lstchain's and
# LSTOSA's run-level keys); per-file keys (subrun_id, start, ...) stay in file_metadata.
DEFAULT_SHARED_KEYS = (
    "telescope",
    "tel_id",
    "night",
    "run_id",
    "run_type",
    "n_subruns",
    "n_data_runs",
    "source",
    "source_ra",
    "source_dec",
    "wobble",
    "zenith",
    "azimuth",
    "stream",
    "evb_preprocessing",
    "data_level",
    "mc_production",
    "lstchain_version",
    "production",
    "campaign",
)


def upgrade() -> None:
    shared = op.create_table(
        "shared_metadata_keys",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.bulk_insert(shared, [{"key": key} for key in DEFAULT_SHARED_KEYS])
    op.create_table(
        "metadata_sets",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("digest"),
    )
    op.create_table(
        "set_metadata",
        sa.Column("set_id", BigId, nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("vtype", sa.String(length=8), nullable=False),
        sa.Column("vint", sa.BigInteger(), nullable=True),
        sa.Column("vnum", sa.Double(), nullable=True),
        sa.Column("vstr", MetadataText, nullable=True),
        sa.ForeignKeyConstraint(["set_id"], ["metadata_sets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("set_id", "key"),
        sqlite_with_rowid=False,
    )
    for column in ("vnum", "vstr"):
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(
            f"ix_set_metadata_key_{column}",
            "set_metadata",
            ["key", column, "set_id"],
            sqlite_where=where,
            postgresql_where=where,
        )
    op.create_table(
        "set_metadata_keys",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("vtype", sa.String(length=8), nullable=False),
        sa.PrimaryKeyConstraint("key", "vtype"),
    )
    # A plain ADD COLUMN (NULL for every file so far) on both databases: no table rebuild.
    op.add_column("files", sa.Column("set_id", BigId, nullable=True))
    op.create_index("ix_files_set_id", "files", ["set_id", "id"])


def downgrade() -> None:
    bind = op.get_bind()
    # Back into file_metadata, so that the files registered since keep their shared keys.
    bind.execute(
        sa.text(
            "INSERT INTO file_metadata (file_id, key, vtype, vint, vnum, vstr)"
            " SELECT f.id, m.key, m.vtype, m.vint, m.vnum, m.vstr"
            " FROM files f JOIN set_metadata m ON m.set_id = f.set_id"
        )
    )
    bind.execute(
        sa.text(
            "INSERT INTO metadata_keys (key, vtype) SELECT key, vtype FROM set_metadata_keys s"
            " WHERE NOT EXISTS (SELECT 1 FROM metadata_keys k WHERE k.key = s.key AND k.vtype = s.vtype)"
        )
    )
    op.drop_index("ix_files_set_id", table_name="files")
    # ALTER TABLE ... DROP COLUMN on SQLite too (3.35+): a batch rebuild would drop the old files table,
    # and with it, through ON DELETE CASCADE, every file's metadata and replicas.
    bind.execute(sa.text("ALTER TABLE files DROP COLUMN set_id"))
    op.drop_table("set_metadata_keys")
    for column in ("vnum", "vstr"):
        op.drop_index(f"ix_set_metadata_key_{column}", table_name="set_metadata")
    op.drop_table("set_metadata")
    op.drop_table("metadata_sets")
    op.drop_table("shared_metadata_keys")
