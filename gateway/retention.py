"""Retention: `[retention] transcripts_days` and `audio_days` (0 = keep forever, the default).

The sweep, run by every worker process every `retention.sweep_s` (gateway/loops.py), deletes
finished tasks that finished longer ago than transcripts_days exactly as DELETE does
(`lifecycle.remove_tasks`: transcript, search rows, subtitle files, deliveries, receipts, and
their audio unless another task uses it), and uploaded files older than audio_days that no queued
or processing task uses (`lifecycle.drop_assets`: the tasks keep their transcripts). It also
removes the tombstones of tasks deleted more than a day ago (a late result for one is then an
unknown task). It works in batches of at most BATCH rows, each batch one transaction; at most one
process sweeps at a time: each batch's transaction takes a PostgreSQL advisory lock (a process that
cannot get it leaves the sweep to the one that has it), and SQLite has a single writer.
`tgw_retention_deleted_total{kind}` counts what it removed."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Awaitable, Callable

import structlog
from sqlalchemy import delete, exists, text
from sqlmodel import col, select

from gateway import lifecycle, metrics
from gateway.config import RetentionConfig
from gateway.db import Database
from gateway.models import Asset, Task, TaskStatus, utcnow
from gateway.plugins import Plugins

log = structlog.get_logger(__name__)

BATCH = 100
TOMBSTONE_DAYS = 1  # how long a deleted task's tombstone answers late results with "ignored"
SWEEP_LOCK = 0x7467775F726574  # a PostgreSQL advisory lock key: "tgw_ret"
FINISHED = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


async def sweep(db: Database, plugins: Plugins | None, cfg: RetentionConfig, now: datetime | None = None,
                batch: int = BATCH) -> dict[str, int]:
    """Delete what is older than the configured days at `now` (the real clock by default): the
    counts removed, by kind (transcript, audio, tombstone)."""
    now = now or utcnow()
    counts = {"transcript": 0, "audio": 0, "tombstone": 0}
    if cfg.transcripts_days:
        cutoff = now - timedelta(days=cfg.transcripts_days)
        expired = (select(Task.id).where(col(Task.status).in_(FINISHED), col(Task.finished_at) < cutoff)
                   .order_by(col(Task.id)).limit(batch))

        async def expired_tasks(s) -> lifecycle.Removed:
            return await lifecycle.remove_tasks(s, list((await s.exec(expired)).all()), now)

        await _in_batches(db, plugins, counts, batch, expired_tasks)
    if cfg.audio_days:
        cutoff = now - timedelta(days=cfg.audio_days)
        busy = exists().where(Task.asset_id == Asset.id, col(Task.status).in_(lifecycle.BUSY))
        old = select(Asset.id).where(col(Asset.created_at) < cutoff, ~busy).order_by(col(Asset.id)).limit(batch)

        async def old_audio(s) -> lifecycle.Removed:
            present, used = await lifecycle.lock_assets(s, list((await s.exec(old)).all()))
            ids, paths = await lifecycle.drop_assets(s, [a for a in present if a not in used])
            return lifecycle.Removed(asset_ids=ids, paths=paths)

        await _in_batches(db, plugins, counts, batch, old_audio)
    counts["tombstone"] = await _purge_tombstones(db, now - timedelta(days=TOMBSTONE_DAYS), batch)
    if any(counts.values()):
        log.info("retention.swept", **counts)
    return counts


async def _in_batches(db: Database, plugins: Plugins | None, counts: dict[str, int], batch: int,
                      step: Callable[..., Awaitable[lifecycle.Removed]]) -> None:
    """Run `step(session)` one transaction at a time while it removes a whole batch; after each
    commit its files and the plugins' share (lifecycle.finish), and the counts."""
    while True:
        async with db.session() as s:
            if not await _sole_sweeper(s, db):
                log.info("retention.skipped", reason="another process is sweeping")
                return
            removed = await step(s)
        await lifecycle.finish(plugins, removed)
        for task_id in removed.task_ids:
            log.info("task.deleted", task_id=task_id, key_name="retention")
        for asset_id in removed.asset_ids:
            log.info("asset.deleted", asset_id=asset_id, key_name="retention")
        for kind, n in (("transcript", len(removed.task_ids)), ("audio", len(removed.asset_ids))):
            counts[kind] += n
            if n:
                metrics.RETENTION_DELETED.labels(kind).inc(n)
        if len(removed.task_ids or removed.asset_ids) < batch:
            return


async def _sole_sweeper(s, db: Database) -> bool:
    """This transaction may sweep: it holds the sweep's advisory lock until it ends (PostgreSQL);
    on SQLite the transaction holds the database's one write lock already."""
    if db.sqlite:
        return True
    conn = await s.connection()
    return bool((await conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": SWEEP_LOCK})).scalar())


async def _purge_tombstones(db: Database, cutoff: datetime, batch: int) -> int:
    purged = 0
    while True:
        async with db.session() as s:
            old = (select(Task.id).where(Task.status == TaskStatus.DELETED, col(Task.updated_at) < cutoff)
                   .limit(batch))
            n = (await s.exec(delete(Task).where(col(Task.id).in_(old)))).rowcount
        purged += n
        if n < batch:
            return purged
