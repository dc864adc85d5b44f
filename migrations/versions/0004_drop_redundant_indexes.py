"""drop ix_segment_task_id and ix_delivery_task_id: each repeats the first column of a unique
constraint (uq_segment_task_idx, uq_delivery_task_target) that serves the same lookups, and
cost every inserted row one more index entry

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""
from typing import Sequence, Union

from alembic import op

revision: str = "0004"
down_revision: Union[str, None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.drop_index("ix_segment_task_id", table_name="segment")
    op.drop_index("ix_delivery_task_id", table_name="delivery")


def downgrade() -> None:
    op.create_index("ix_delivery_task_id", "delivery", ["task_id"], unique=False)
    op.create_index("ix_segment_task_id", "segment", ["task_id"], unique=False)
