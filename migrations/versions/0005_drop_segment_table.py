"""drop the segment table: every segment is in task.result_json (the stored callback payload,
what the API and the webhooks serve) and, as rows, in the search plugin's segment_index. A
third copy, read by nothing, was 40 % of the database work of storing a result. A downgrade
rebuilds the rows from result_json, so either direction keeps every segment.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: Union[str, None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# The rows a downgrade restores: each completed task's payload segments, numbered from 0.
_BACKFILL = {
    "sqlite": """
        INSERT INTO segment (task_id, idx, start_time, end_time, speaker, text)
        SELECT t.task_id, CAST(s.key AS INTEGER), json_extract(s.value, '$.start_time'),
               json_extract(s.value, '$.end_time'), json_extract(s.value, '$.speaker'),
               json_extract(s.value, '$.text')
        FROM transcript t JOIN task ON task.id = t.task_id,
             json_each(task.result_json, '$.data.data.data') s""",
    "postgresql": """
        INSERT INTO segment (task_id, idx, start_time, end_time, speaker, text)
        SELECT t.task_id, s.n - 1, (s.value->>'start_time')::float, (s.value->>'end_time')::float,
               s.value->>'speaker', s.value->>'text'
        FROM transcript t JOIN task ON task.id = t.task_id,
             jsonb_array_elements(task.result_json::jsonb #> '{data,data,data}') WITH ORDINALITY AS s(value, n)""",
}


def upgrade() -> None:
    op.drop_table("segment")


def downgrade() -> None:
    op.create_table(
        "segment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.String(length=32), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("start_time", sa.Float(), nullable=False),
        sa.Column("end_time", sa.Float(), nullable=False),
        sa.Column("speaker", sa.String(length=32), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["transcript.task_id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task_id", "idx", name="uq_segment_task_idx"),
    )
    op.execute(_BACKFILL[op.get_bind().dialect.name])
