"""task indexes that keep a shepherd pass independent of the finished tasks

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 04:00:00.000000
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Both new indexes start with (production, state): the old two-column index is redundant.
    op.drop_index("ix_tasks_production_state", table_name="tasks")
    op.create_index(
        "ix_tasks_production_state_transformation", "tasks", ["production", "state", "transformation"]
    )
    op.create_index("ix_tasks_ready_queue", "tasks", ["production", "state", "created_at", "task_id"])


def downgrade() -> None:
    op.drop_index("ix_tasks_ready_queue", table_name="tasks")
    op.drop_index("ix_tasks_production_state_transformation", table_name="tasks")
    op.create_index("ix_tasks_production_state", "tasks", ["production", "state"])
