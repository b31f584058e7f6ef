"""query catalog at scale: covering partial metadata indexes, metadata_keys, dataset freezing

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 01:14:51.107873

file_metadata becomes a WITHOUT ROWID table on SQLite (one b-tree keyed by (file_id, key) instead of a
rowid table plus its primary-key index) and its text column compares bytewise on PostgreSQL
(COLLATE "C"), so that ranges and prefix globs use the index. The three (key, value) indexes become
two partial (key, value, file_id) indexes.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
NEW_INDEXES = {"ix_file_metadata_key_vnum": "vnum", "ix_file_metadata_key_vstr": "vstr"}
OLD_INDEXES = {
    "ix_file_metadata_key_vint": "vint",
    "ix_file_metadata_key_vnum": "vnum",
    "ix_file_metadata_key_vstr": "vstr",
}


def upgrade() -> None:
    op.create_table(
        "metadata_keys",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("vtype", sa.String(length=8), nullable=False),
        sa.PrimaryKeyConstraint("key", "vtype"),
    )
    op.execute("INSERT INTO metadata_keys (key, vtype) SELECT DISTINCT key, vtype FROM file_metadata")
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("description", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("frozen_at", sa.DateTime(timezone=True), nullable=True))
    for name in OLD_INDEXES:
        op.drop_index(name, table_name="file_metadata")
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_file_metadata(with_rowid=False)
    else:
        op.alter_column("file_metadata", "vstr", type_=sa.String(1024, collation="C"), existing_nullable=True)
    for name, column in NEW_INDEXES.items():
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(
            name, "file_metadata", ["key", column, "file_id"], sqlite_where=where, postgresql_where=where
        )


def downgrade() -> None:
    for name in NEW_INDEXES:
        op.drop_index(name, table_name="file_metadata")
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_file_metadata(with_rowid=True)
    else:
        op.alter_column("file_metadata", "vstr", type_=sa.String(1024), existing_nullable=True)
    for name, column in OLD_INDEXES.items():
        op.create_index(name, "file_metadata", ["key", column])
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_column("frozen_at")
        batch_op.drop_column("description")
    op.drop_table("metadata_keys")


def _rebuild_file_metadata(with_rowid: bool) -> None:
    """SQLite cannot change a table's rowid-ness in place: copy into a new table, in key order."""
    op.create_table(
        "file_metadata_new",
        sa.Column("file_id", BigId, nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("vtype", sa.String(length=8), nullable=False),
        sa.Column("vint", sa.BigInteger(), nullable=True),
        sa.Column("vnum", sa.Double(), nullable=True),
        sa.Column("vstr", sa.String(length=1024), nullable=True),
        sa.ForeignKeyConstraint(["file_id"], ["files.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("file_id", "key"),
        sqlite_with_rowid=with_rowid,
    )
    op.execute(
        "INSERT INTO file_metadata_new (file_id, key, vtype, vint, vnum, vstr) "
        "SELECT file_id, key, vtype, vint, vnum, vstr FROM file_metadata ORDER BY file_id, key"
    )
    op.drop_table("file_metadata")
    op.rename_table("file_metadata_new", "file_metadata")
