"""A task's end of life: deleted (its transcript, search rows, subtitle files, deliveries,
receipts, partial texts, and its audio unless another task uses it), cancelled (through the
door, as a result: the failure shape with `data.msg` "cancelled"), and an asset deleted. The
API's handlers, the dashboard's buttons and the retention sweep (gateway/retention.py) call these.

A deleted task leaves a tombstone: its row with status `deleted` and every field that held data
cleared (url, callback_url, error, notes, options, result, asset), kept so that a late result for
it is acknowledged and ignored by the door (which locks the same row: a delete and a result never
interleave) and every endpoint answers 404 for it; the retention sweep removes tombstones after a
day. Files go only after the transaction that removed their rows has committed."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import delete, func, update
from sqlmodel import col, select

from gateway import views
from gateway.db import Database
from gateway.decisions import ACCEPTED
from gateway.errors import ApiError, NotFound
from gateway.models import (Asset, CallbackReceipt, Delivery, DeliveryAttempt, PartialSegment, Task, TaskStatus,
                            Transcript, utcnow)
from gateway.notify import DELIVERIES, Notifier, task_done_channel
from gateway.payloads import Outcome
from gateway.plugins import Plugins
from gateway.storage import on_disk
from gateway.tenants import ADMIN, Caller

if TYPE_CHECKING:
    from gateway.ingest import Ingestor

log = structlog.get_logger(__name__)

DELETED_HOOK = "transcript_deleted"
BUSY = (TaskStatus.QUEUED, TaskStatus.PROCESSING)  # an asset such a task uses cannot be deleted
# What a tombstone clears of a task (it keeps its id, provider, upstream id, model, times, attempts).
TOMBSTONE = {"status": TaskStatus.DELETED, "asset_id": None, "url": None, "callback_url": None, "error": None,
             "note": None, "speaker_note": None, "options": None, "language": None, "result_json": None,
             "result_sha256": None, "lease_owner": None, "lease_expires_at": None, "submitting_at": None,
             "progress": 0.0}


@dataclass
class Removed:
    """What one transaction removed: the tasks (to tell plugins) and the files (to unlink)."""

    task_ids: list[str] = field(default_factory=list)
    asset_ids: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


# --- tasks ---------------------------------------------------------------------------------


async def delete_task(db: Database, plugins: Plugins | None, task_id: str, caller: Caller = ADMIN) -> str:
    """DELETE /transcriptions/{task_id}: everything the task left goes (404 for an unknown or
    deleted task; a second delete is 404)."""
    task = await views.get_task(db, task_id, caller)
    removed = await delete_tasks(db, plugins, [task.id])
    if not removed.task_ids:  # deleted meanwhile by another request
        raise NotFound(f"task {task_id!r} not found")
    log.info("task.deleted", task_id=task.id, key_name=caller.name, audio_deleted=bool(removed.asset_ids))
    return task.id


async def delete_tasks(db: Database, plugins: Plugins | None, task_ids: list[str]) -> Removed:
    """Delete these tasks in one transaction, then their files, then tell the plugins."""
    async with db.session() as s:
        removed = await remove_tasks(s, task_ids)
    await finish(plugins, removed)
    return removed


async def remove_tasks(s, task_ids: list[str], now: datetime | None = None) -> Removed:
    """Within the session's transaction: the tasks' rows (not deleted yet) locked in id order,
    made tombstones (deleted at `now`), every row they left removed, and the assets no other task
    uses with them."""
    removed = Removed()
    if not task_ids:
        return removed
    tasks = (await s.exec(select(Task).where(col(Task.id).in_(task_ids), Task.status != TaskStatus.DELETED)
                          .order_by(col(Task.id)).with_for_update())).all()
    ids = [t.id for t in tasks]
    if not ids:
        return removed
    candidates = sorted({t.asset_id for t in tasks if t.asset_id})
    deliveries = select(Delivery.id).where(col(Delivery.task_id).in_(ids))
    await s.exec(delete(DeliveryAttempt).where(col(DeliveryAttempt.delivery_id).in_(deliveries)))
    for table in (Delivery, CallbackReceipt, Transcript, PartialSegment):
        await s.exec(delete(table).where(col(table.task_id).in_(ids)))
    await s.exec(update(Task).where(col(Task.id).in_(ids)).values(**TOMBSTONE, updated_at=now or utcnow()))
    removed.task_ids = ids
    if candidates:
        # the assets locked before their use is counted: two deletes of the tasks sharing one
        # asset take turns, and the second sees the first's tombstone
        await s.exec(select(Asset.id).where(col(Asset.id).in_(candidates)).with_for_update())
        used = set((await s.exec(select(Task.asset_id).where(col(Task.asset_id).in_(candidates)))).all())
        removed.asset_ids, removed.paths = await drop_assets(s, [a for a in candidates if a not in used])
    return removed


async def finish(plugins: Plugins | None, removed: Removed) -> None:
    """After the commit: the removed assets' files unlinked, each plugin told of each task."""
    for path in removed.paths:
        await on_disk(Path(path).unlink, True)
    for task_id in removed.task_ids:
        await tell_plugins(plugins, task_id)


async def tell_plugins(plugins: Plugins | None, task_id: str, names: list[str] | None = None) -> None:
    """Each plugin implementing transcript_deleted (or those of `names`) removes what it wrote
    for the task; one that fails is logged with its reason, and the others are still told."""
    if plugins is not None:
        await plugins.tell_each(DELETED_HOOK, names if names is not None else plugins.implementing(DELETED_HOOK),
                                task_id, task_id=task_id)


# --- cancelling ----------------------------------------------------------------------------


async def cancel_task(db: Database, ingestor: Ingestor, notifier: Notifier, task_id: str,
                      caller: Caller = ADMIN) -> Task:
    """POST /transcriptions/{task_id}/cancel: a queued or processing task's result becomes the
    cancellation (through the door, so a result arriving at the same time is either first, and
    the cancel is 409, or ignored), its webhooks and plugins get the failure shape; 409 for a
    finished task. A worker running it stops at its next progress report (gateway/loops.py)."""
    task = await views.get_task(db, task_id, caller)
    result = await ingestor.ingest(task.id, Outcome.cancellation(), provider=task.provider)
    if result.outcome != ACCEPTED:
        task = await views.get_task(db, task.id, caller)
        raise ApiError(f"task {task.id} is {task.status}; only a queued or processing task can be cancelled", 409)
    notifier.wake(DELIVERIES)
    notifier.wake(task_done_channel(task.id))
    log.info("task.cancelled", task_id=task.id, key_name=caller.name, was=task.status)
    return await views.get_task(db, task.id, caller)


async def stopped(db: Database, task_id: str) -> bool:
    """The task was cancelled or deleted (a run of it should stop)."""
    async with db.session() as s:
        status = (await s.exec(select(Task.status).where(Task.id == task_id))).first()
    return status is None or status in TaskStatus.STOPPED


# --- assets --------------------------------------------------------------------------------


async def delete_asset(db: Database, asset_id: str, caller: Caller = ADMIN) -> str:
    """DELETE /{asset_id}: the file and its row go (finished tasks that used it keep their
    transcripts, without audio); 409 while a queued or processing task uses it."""
    asset = await views.get_asset(db, asset_id, caller)
    async with db.session() as s:
        present, busy = await lock_assets(s, [asset.id])
        if not present:
            raise NotFound(f"asset {asset_id!r} not found")
        if busy:
            raise ApiError(f"asset {asset.id} is used by {busy[asset.id]} queued or processing task(s); cancel them "
                           "or wait until they finish", 409)
        _, paths = await drop_assets(s, present)
    await finish(None, Removed(paths=paths))
    log.info("asset.deleted", asset_id=asset.id, key_name=caller.name)
    return asset.id


async def lock_assets(s, asset_ids: list[str]) -> tuple[list[str], dict[str, int]]:
    """Within the session's transaction: the tasks using these assets locked, then the assets
    (tasks before assets, as a task's delete locks them: never a deadlock); (the ids that exist,
    how many queued or processing tasks use each of those that such tasks use)."""
    await s.exec(select(Task.id).where(col(Task.asset_id).in_(asset_ids)).order_by(col(Task.id)).with_for_update())
    present = list((await s.exec(select(Asset.id).where(col(Asset.id).in_(asset_ids)).order_by(col(Asset.id))
                                 .with_for_update())).all())
    busy = (await s.exec(select(Task.asset_id, func.count()).where(col(Task.asset_id).in_(present),
                                                                    col(Task.status).in_(BUSY))
                         .group_by(Task.asset_id))).all()
    return present, dict(busy)


async def drop_assets(s, asset_ids: list[str]) -> tuple[list[str], list[str]]:
    """Within the session's transaction: these assets' rows removed, the tasks that used them
    left without one; (their ids, their files' paths, to unlink after the commit)."""
    if not asset_ids:
        return [], []
    rows = (await s.exec(select(Asset.id, Asset.path).where(col(Asset.id).in_(asset_ids)))).all()
    await s.exec(update(Task).where(col(Task.asset_id).in_(asset_ids)).values(asset_id=None))
    await s.exec(delete(Asset).where(col(Asset.id).in_(asset_ids)))
    return [r[0] for r in rows], [r[1] for r in rows]
