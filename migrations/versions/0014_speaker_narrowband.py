"""speaker: a telephone-band voiceprint beside the others (matched with narrowband audio)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: Union[str, None] = "0013"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # voices enrolled before it have none: they are matched with their voiceprint on any audio
    with op.batch_alter_table("speaker") as batch:
        batch.add_column(sa.Column("narrowband", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("speaker") as batch:
        batch.drop_column("narrowband")
