"""speaker labelling: task.min_speakers, task.max_speakers, task.speaker_note

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: Union[str, None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("task") as batch:
        batch.add_column(sa.Column("min_speakers", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_speakers", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("speaker_note", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("task") as batch:
        batch.drop_column("speaker_note")
        batch.drop_column("max_speakers")
        batch.drop_column("min_speakers")
