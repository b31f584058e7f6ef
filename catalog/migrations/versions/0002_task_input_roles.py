"""task input roles

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 00:44:00.348885
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("task_inputs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("role", sa.String(length=64), server_default="input", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("task_inputs", schema=None) as batch_op:
        batch_op.drop_column("role")
