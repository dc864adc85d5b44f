"""the search index holds speaker names of up to 64 characters (PostgreSQL's column held 32)

Revision ID: search_0002
Revises: search_0001
Create Date: 2026-12-02

A known speaker's name may have 64 characters (gateway/known_speakers.py MAX_NAME), and a
renamed or named label is indexed as it is: on PostgreSQL a name of more than 32 characters
failed the search plugin's delivery. SQLite does not enforce a VARCHAR's length: nothing to do
there. The downgrade cuts longer names to 32 characters.
"""
from typing import Sequence, Union

from alembic import op

revision: str = "search_0002"
down_revision: Union[str, None] = "search_0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE segment_index ALTER COLUMN speaker TYPE varchar(64)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE segment_index ALTER COLUMN speaker TYPE varchar(32) USING left(speaker, 32)")
