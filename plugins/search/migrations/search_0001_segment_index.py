"""the search plugin's index of transcript segments: FTS5 on SQLite, tsvector + GIN on PostgreSQL

Revision ID: search_0001
Revises: (the first of the search plugin's own branch)
Depends on: 0002
Create Date: 2026-12-01

Until the index became the plugin's, core migration 0002 created these tables. 0002 stays in
the core's history (existing databases record it) and does nothing now, so:
- on a database without the tables (a new one), this revision creates them;
- on one that the old 0002 made them in, they are adopted as they are, rows and all;
- downgrading the branch (`transcribe-gateway db downgrade search@base`) drops them on both.
It depends on 0002, as the tables used to come with it: below 0002 there is no search index.

The index is not a SQLModel table (a virtual table / a generated tsvector column); the
migration environment compares only the models' tables and leaves these to this branch.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "search_0001"
down_revision: Union[str, None] = None
branch_labels: Union[str, Sequence[str], None] = ("search",)
depends_on: Union[str, Sequence[str], None] = "0002"


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("segment_index"):
        return  # made by the core's 0002 before the index was the plugin's: adopted
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
