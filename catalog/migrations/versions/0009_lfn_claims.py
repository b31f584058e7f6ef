"""lfn claims: a task claims its outputs' LFNs before storing them, so no product is written over another

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08 01:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lfn_claims",
        sa.Column("lfn", sa.String(length=1024), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("lfn"),
    )
    op.create_index("ix_lfn_claims_task_id", "lfn_claims", ["task_id"])


def downgrade() -> None:
    op.drop_index("ix_lfn_claims_task_id", table_name="lfn_claims")
    op.drop_table("lfn_claims")
