# A frozen copy of migrations/versions/0002_search_index.py as it was before the search index became
# the search plugin's own branch (main at 98c0580): tests/test_plugin_migrations.py builds a database
# exactly as those migrations made it. Never edit it.
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
        # Rows in an ordinary table (indexed by task, so replacing a task's rows is a B-tree
        # lookup, not a scan of the whole index), their text in an external-content FTS5
        # table kept in step by triggers.
        op.execute(
            "CREATE TABLE segment_index ("
            " id INTEGER PRIMARY KEY,"
            " task_id VARCHAR(32) NOT NULL,"
            " idx INTEGER NOT NULL,"
            " start_time FLOAT NOT NULL,"
            " end_time FLOAT NOT NULL,"
            " speaker VARCHAR(32),"
            " text TEXT NOT NULL,"
            " created_at VARCHAR(40) NOT NULL,"
            " UNIQUE (task_id, idx))")
        op.execute("CREATE INDEX ix_segment_index_created ON segment_index (created_at)")
        op.execute("CREATE VIRTUAL TABLE segment_index_fts USING fts5("
                   "text, content = 'segment_index', content_rowid = 'id', tokenize = 'porter unicode61')")
        op.execute("CREATE TRIGGER segment_index_ai AFTER INSERT ON segment_index BEGIN "
                   "INSERT INTO segment_index_fts (rowid, text) VALUES (new.id, new.text); END")
        op.execute("CREATE TRIGGER segment_index_ad AFTER DELETE ON segment_index BEGIN "
                   "INSERT INTO segment_index_fts (segment_index_fts, rowid, text) "
                   "VALUES ('delete', old.id, old.text); END")
        op.execute("CREATE TRIGGER segment_index_au AFTER UPDATE ON segment_index BEGIN "
                   "INSERT INTO segment_index_fts (segment_index_fts, rowid, text) "
                   "VALUES ('delete', old.id, old.text); "
                   "INSERT INTO segment_index_fts (rowid, text) VALUES (new.id, new.text); END")
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
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE segment_index_fts")  # its triggers go with segment_index below
    op.execute("DROP TABLE segment_index")
