"""The data model (SQLModel tables). The schema itself only changes through Alembic migrations."""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from typing import Optional

from sqlalchemy import Column, Index, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

OWNER_MAX = 64  # a key's name, which owns what it creates (gateway/tenants.py)


def owner_field() -> str:
    """The key name that created the row; rows older than keys (migration 0011) are "admin"'s."""
    return Field(default="admin", max_length=OWNER_MAX, sa_column_kwargs={"server_default": "admin"})


def utcnow() -> datetime:
    """Aware UTC: what every timestamp column holds."""
    return datetime.now(timezone.utc)


def time_ordered_id() -> str:
    """32 hex digits of a version-7 UUID: the milliseconds since 1970, then random bits. Ids made
    one after the other sort one after the other, so an index on them grows at its end instead
    of at a random page for every row: task ids (every task_id column and index: results mostly
    arrive in the order tasks were made) and delivery ids (what it saves: docs/ARCHITECTURE.md)."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    return f"{value & ~(0xF << 76) & ~(0x3 << 62) | 0x7 << 76 | 0x2 << 62:032x}"


class TaskStatus:
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # Internal: a deleted task's tombstone (every field that held data cleared), so a late result
    # for it is acknowledged and ignored; every endpoint answers 404 for it (gateway/lifecycle.py).
    DELETED = "deleted"
    ALL = (QUEUED, PROCESSING, COMPLETED, FAILED, CANCELLED)  # what the API shows and filters by
    TERMINAL = (COMPLETED, FAILED, CANCELLED, DELETED)  # nothing changes it any more
    STOPPED = (CANCELLED, DELETED)  # a run of such a task stops; a result for it is ignored


class DeliveryStatus:
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"
    ALL = (PENDING, DELIVERED, DEAD)


class Asset(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=40)
    filename: str = Field(max_length=255)
    content_type: str = Field(max_length=255)
    size: int
    sha256: str = Field(max_length=64)
    path: str = Field(max_length=1024)
    created_at: datetime = Field(default_factory=utcnow)
    owner: str = owner_field()


class Task(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("provider", "upstream_task_id", name="uq_task_provider_upstream"),
        Index("ix_task_status_lease", "status", "lease_expires_at"),
        Index("ix_task_created", "created_at", "id"),
        Index("ix_task_owner_created", "owner", "created_at", "id"),  # a tenant's page of tasks
    )

    id: str = Field(primary_key=True, max_length=32)
    asset_id: Optional[str] = Field(default=None, foreign_key="asset.id", max_length=40)
    url: Optional[str] = Field(default=None, max_length=2048)
    model: str = Field(max_length=100)
    speaker: bool = False
    language: Optional[str] = Field(default=None, max_length=16)
    num_speakers: Optional[int] = None
    min_speakers: Optional[int] = None
    max_speakers: Optional[int] = None
    # Why speakers could not be labelled on a speaker=true task (then every segment is SPEAKER_00).
    speaker_note: Optional[str] = Field(default=None, sa_column=Column(Text))
    # What the engine could not do (speech it could not transcribe); also in the stored result.
    note: Optional[str] = Field(default=None, sa_column=Column(Text))
    # The engine options asked for beyond these columns (gateway/options.py), JSON; NULL = none.
    options: Optional[str] = Field(default=None, sa_column=Column(Text))
    provider: str = Field(max_length=64)
    upstream_task_id: Optional[str] = Field(default=None, max_length=255)
    # When the request creating its upstream job was sent, until the upstream id is stored: a
    # callback for an id we do not know yet can only belong to such a submission.
    submitting_at: Optional[datetime] = None
    callback_url: Optional[str] = Field(default=None, max_length=2048)
    status: str = Field(default=TaskStatus.QUEUED, max_length=16)
    progress: float = 0.0
    attempts: int = 0
    lease_owner: Optional[str] = Field(default=None, max_length=255)
    lease_expires_at: Optional[datetime] = None
    error: Optional[str] = Field(default=None, sa_column=Column(Text))
    # The callback payload exactly as sent to webhooks, and the hash that makes ingest idempotent.
    result_json: Optional[str] = Field(default=None, sa_column=Column(Text))
    result_sha256: Optional[str] = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    started_at: Optional[datetime] = None
    finished_at: Optional[datetime] = None
    owner: str = owner_field()


class Transcript(SQLModel, table=True):
    """One per completed task: the idempotency anchor (primary key task_id)."""

    task_id: str = Field(primary_key=True, foreign_key="task.id", max_length=32)
    model: str = Field(max_length=100)
    duration: float
    segment_count: int
    text: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class PartialSegment(SQLModel, table=True):
    """A segment's text as the engine decoded it, while its task runs (gateway/partials.py):
    stored about once a second by the task loop, gone once the result is stored, and when the
    task is run again."""

    __tablename__ = "partial_segment"

    task_id: str = Field(primary_key=True, foreign_key="task.id", max_length=32)
    seq: int = Field(primary_key=True)  # 0, 1, … in the order decoded
    start_time: float
    end_time: float
    text: str = Field(sa_column=Column(Text, nullable=False))


class Speaker(SQLModel, table=True):
    """An enrolled voice (gateway/known_speakers.py): a name and its voiceprint, the embedding
    alone (never the audio it was made from), owned by the key that enrolled it."""

    id: str = Field(primary_key=True, max_length=40)  # spk_<32 hex>
    name: str = Field(max_length=64)
    owner: str = Field(max_length=255, index=True)
    # float32, little-endian: one voiceprint, or several (of the audio as given, with noise, with
    # echo: voiceprints.Enrolment), each DIMENSIONS long
    embedding: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    # of the telephone band, matched with narrowband audio (voices enrolled before 0014: none)
    narrowband: Optional[bytes] = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    encoder: str = Field(max_length=64)  # the encoder that made it; only its own voiceprints are compared
    created_at: datetime = Field(default_factory=utcnow)


class Delivery(SQLModel, table=True):
    """One per (task, target); target is a webhook URL or `plugin:<name>`."""

    __table_args__ = (
        UniqueConstraint("task_id", "target", name="uq_delivery_task_target"),
        Index("ix_delivery_due", "status", "next_attempt_at"),
    )

    id: str = Field(primary_key=True, max_length=32)
    task_id: str = Field(foreign_key="task.id", max_length=32)  # uq_delivery_task_target finds by it
    target: str = Field(max_length=2048)
    kind: str = Field(max_length=16)
    status: str = Field(default=DeliveryStatus.PENDING, max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow)
    lease_owner: Optional[str] = Field(default=None, max_length=255)
    lease_expires_at: Optional[datetime] = None
    last_status_code: Optional[int] = None
    last_error: Optional[str] = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    delivered_at: Optional[datetime] = None


class DeliveryAttempt(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    delivery_id: str = Field(foreign_key="delivery.id", max_length=32, index=True)
    number: int
    started_at: datetime
    duration_ms: float
    status_code: Optional[int] = None
    error: Optional[str] = Field(default=None, sa_column=Column(Text))


class CallbackReceipt(SQLModel, table=True):
    """Every inbound result, from a provider callback or our own engine, and what became of it."""

    id: Optional[int] = Field(default=None, primary_key=True)
    provider: str = Field(max_length=64)
    external_task_id: Optional[str] = Field(default=None, max_length=255)
    task_id: Optional[str] = Field(default=None, max_length=32, index=True)
    body_sha256: str = Field(max_length=64)
    outcome: str = Field(max_length=32)
    detail: Optional[str] = Field(default=None, sa_column=Column(Text))
    received_at: datetime = Field(default_factory=utcnow)


class ApiKey(SQLModel, table=True):
    """A key made by `transcribe-gateway keys create` (gateway/keys.py): only its digest is kept.
    A revoked key's row stays (its name is never reused, so nobody inherits its data)."""

    __tablename__ = "api_key"

    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(max_length=OWNER_MAX, unique=True)
    digest: str = Field(max_length=64, unique=True)  # HMAC-SHA256 of the key, hex
    admin: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    last_used_at: Optional[datetime] = None  # updated at most once a minute (keys.LAST_USED_EVERY_S)
    revoked_at: Optional[datetime] = None
