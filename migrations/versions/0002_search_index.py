"""search index of transcript segments: FTS5 on SQLite, tsvector + GIN on PostgreSQL

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

The index is not a SQLModel table (a virtual table / a generated tsvector column); the
migration environment and the schema test leave `segment_index*` to this migration.
"""
from typing import Sequence, Union

from alembic import op

revision: str = "0002"
down_revision: Union[str, None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE VIRTUAL TABLE segment_index USING fts5("
            "text, task_id UNINDEXED, idx UNINDEXED, start_time UNINDEXED, end_time UNINDEXED, "
            "speaker UNINDEXED, created_at UNINDEXED, tokenize = 'porter unicode61')")
        return
    op.execute(
        "CREATE TABLE segment_index ("
        " task_id varchar(32) NOT NULL,"
        " idx integer NOT NULL,"
        " start_time double precision NOT NULL,"
        " end_time double precision NOT NULL,"
        " speaker varchar(32),"
        " text text NOT NULL,"
        " created_at timestamp with time zone NOT NULL,"
        " tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED,"
        " PRIMARY KEY (task_id, idx))")
    op.execute("CREATE INDEX ix_segment_index_tsv ON segment_index USING gin (tsv)")
    op.execute("CREATE INDEX ix_segment_index_created ON segment_index (created_at)")


def downgrade() -> None:
    op.execute("DROP TABLE segment_index")
