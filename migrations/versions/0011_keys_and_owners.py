"""api_key (keys made by `transcribe-gateway keys create`, stored as digests) and the owner of
every task and asset: existing rows belong to "admin" (the keys of server.api_keys)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: Union[str, None] = "0010"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _owner() -> sa.Column:
    return sa.Column("owner", sa.String(length=64), nullable=False, server_default="admin")


def upgrade() -> None:
    op.create_table(
        "api_key",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("digest"),
    )
    with op.batch_alter_table("asset") as batch:
        batch.add_column(_owner())
    with op.batch_alter_table("task") as batch:
        batch.add_column(_owner())
    op.create_index("ix_task_owner_created", "task", ["owner", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_task_owner_created", table_name="task")
    with op.batch_alter_table("task") as batch:
        batch.drop_column("owner")
    with op.batch_alter_table("asset") as batch:
        batch.drop_column("owner")
    op.drop_table("api_key")
