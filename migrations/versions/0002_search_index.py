"""search index of transcript segments: now the search plugin's own branch; kept as a no-op

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

This revision used to create the search index (`segment_index`: FTS5 on SQLite, tsvector + GIN
on PostgreSQL). The index belongs to the search plugin now, made by the plugin's own Alembic
branch (plugins/search/migrations, revision search_0001, which depends on this one) and only
where the plugin is loaded. The revision stays, doing nothing, because existing databases have
its id in their history and 0003 follows it. On those databases the search branch adopts the
tables this revision made (rows kept) the first time it is applied; a database downgraded
below 0002 before that keeps them (the search branch adopts them again later).
"""
from typing import Sequence, Union

revision: str = "0002"
down_revision: Union[str, None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
