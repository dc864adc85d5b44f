"""Leases: a task or a delivery claimed by one loop at a time (a task's lease renewed while it
runs, released, or handed to its provider; a delivery's until its attempt is recorded); an
expired lease is claimed again, and a process that stops gives back what it holds.

Every claim is one transaction: the row is selected `FOR UPDATE SKIP LOCKED` (on PostgreSQL,
rows other claims hold are skipped rather than waited for) and leased to its owner."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

from sqlalchemy import Select, and_, or_, update
from sqlmodel import col, select

from gateway.db import Database
from gateway.models import Asset, Delivery, DeliveryStatus, Task, TaskStatus, utcnow


def claim_statement(table, *where, order_by) -> Select:
    """The one shape of every claim, of a task or a delivery: the first row of `table` matching
    `where` in `order_by` order, locked by the claiming transaction (FOR UPDATE SKIP LOCKED on
    PostgreSQL: a row another claim holds is skipped, never waited for; SQLite has one writer)."""
    return select(table).where(*where).order_by(*order_by).limit(1).with_for_update(skip_locked=True)


def lease_free(table, now: datetime):
    """The row holds no lease, or one that has expired."""
    return or_(col(table.lease_expires_at).is_(None), col(table.lease_expires_at) < now)


# --- tasks --------------------------------------------------------------------------------


async def claim_task(db: Database, owner: str, lease_s: float, providers: list[str]) -> Task | None:
    """Atomically take the oldest runnable task: queued (and not waiting out a retry delay), or
    processing with an expired lease (its worker died, or its provider never called back)."""
    now = utcnow()
    async with db.session() as s:
        stmt = claim_statement(Task, col(Task.provider).in_(providers),
                               or_(and_(Task.status == TaskStatus.QUEUED, lease_free(Task, now)),
                                   and_(Task.status == TaskStatus.PROCESSING, col(Task.lease_expires_at) < now)),
                               order_by=(col(Task.created_at), col(Task.id)))
        task = (await s.exec(stmt)).first()
        if task is None:
            return None
        task.status = TaskStatus.PROCESSING
        task.lease_owner = owner
        task.lease_expires_at = now + timedelta(seconds=lease_s)
        task.attempts += 1
        task.submitting_at = None
        task.started_at = task.started_at or now
        task.updated_at = now
        s.add(task)
    return task


async def renew_lease(db: Database, task_id: str, owner: str, lease_s: float,
                      progress: float | None = None) -> bool:
    """Extend our lease (and store progress); False if the lease is no longer ours."""
    now = utcnow()
    values: dict[str, Any] = {"lease_expires_at": now + timedelta(seconds=lease_s), "updated_at": now}
    if progress is not None:
        values["progress"] = round(progress, 4)
    async with db.session() as s:
        res = await s.exec(update(Task).where(Task.id == task_id, Task.lease_owner == owner,
                                              Task.status == TaskStatus.PROCESSING).values(**values))
        return res.rowcount == 1


async def release_task(db: Database, task_id: str, owner: str, error: str | None = None,
                       delay_s: float = 0.0) -> None:
    """Give a claimed task back to the queue after a retryable error, claimable again after
    `delay_s` (queued tasks keep their not-before time in lease_expires_at)."""
    await _release(db, owner, Task.id == task_id, error=error, delay_s=delay_s)


async def release_owned_tasks(db: Database, owner: str) -> list[str]:
    """Shutdown: give back every task `owner` still holds, claimable at once; their ids."""
    return await _release(db, owner)


async def _release(db: Database, owner: str, *where, error: str | None = None,
                   delay_s: float = 0.0) -> list[str]:
    now = utcnow()
    async with db.session() as s:
        res = await s.exec(update(Task).where(Task.lease_owner == owner, Task.status == TaskStatus.PROCESSING,
                                              *where)
                           .values(status=TaskStatus.QUEUED, lease_owner=None, submitting_at=None,
                                   lease_expires_at=now + timedelta(seconds=delay_s) if delay_s > 0 else None,
                                   error=error, updated_at=now)
                           .returning(Task.id))
        return list(res.scalars())


async def mark_submitting(db: Database, task_id: str, owner: str) -> None:
    """The request creating the task's upstream job is being sent (Job.submitting): from now until
    its upstream id is stored, a callback for an unknown id of that provider may be its own."""
    async with db.session() as s:
        await s.exec(update(Task).where(Task.id == task_id, Task.lease_owner == owner,
                                        Task.status == TaskStatus.PROCESSING).values(submitting_at=utcnow()))


def upstream_owner(provider: str) -> str:
    return f"upstream:{provider}"


async def await_upstream(db: Database, task_id: str, owner: str, provider: str, upstream_id: str,
                         wait_s: float) -> bool:
    """Store the provider's task id and hand the lease to the provider for `wait_s`: its callback
    completes the task; if none comes, the lease expires and a worker fails the task."""
    now = utcnow()
    async with db.session() as s:
        res = await s.exec(update(Task).where(Task.id == task_id, Task.lease_owner == owner,
                                              Task.status == TaskStatus.PROCESSING)
                           .values(upstream_task_id=upstream_id, submitting_at=None,
                                   lease_owner=upstream_owner(provider),
                                   lease_expires_at=now + timedelta(seconds=wait_s), updated_at=now))
        return res.rowcount == 1


# --- deliveries ---------------------------------------------------------------------------


@dataclass
class Claimed:
    """A delivery leased to this process, with its task and the task's file name (for plugins)."""

    delivery: Delivery
    task: Task
    filename: str | None

    @property
    def body(self) -> str:
        return self.task.result_json


def sendable(plugin_targets: list[str]):
    """The deliveries a process can send: every webhook, and those of the plugins it has loaded
    (`plugin_targets`, plugin:<name>); another process's plugin would fail here, attempt after
    attempt, until its delivery was dead."""
    return or_(Delivery.kind == "webhook", col(Delivery.target).in_(plugin_targets))


async def claim_delivery(db: Database, owner: str, lease_for: Callable[[str], float],
                         plugin_targets: list[str]) -> Claimed | None:
    """The sendable delivery due first, leased to `owner` for `lease_for(its target)` seconds."""
    now = utcnow()
    async with db.session() as s:
        stmt = claim_statement(Delivery, Delivery.status == DeliveryStatus.PENDING,
                               col(Delivery.next_attempt_at) <= now, lease_free(Delivery, now),
                               sendable(plugin_targets), order_by=(col(Delivery.next_attempt_at),))
        d = (await s.exec(stmt)).first()
        if d is None:
            return None
        d.lease_owner = owner
        d.lease_expires_at = now + timedelta(seconds=lease_for(d.target))
        s.add(d)
        task = await s.get(Task, d.task_id)
        filename = None
        if task.asset_id:
            filename = (await s.exec(select(Asset.filename).where(Asset.id == task.asset_id))).first()
    return Claimed(d, task, filename)


async def release_owned_deliveries(db: Database, owner: str) -> int:
    """Shutdown: give back the deliveries `owner` was sending, due again at once (a send that was
    cut off may have arrived: the receiver sees it again, with the same webhook-id)."""
    async with db.session() as s:
        res = await s.exec(update(Delivery).where(Delivery.lease_owner == owner,
                                                  Delivery.status == DeliveryStatus.PENDING)
                           .values(lease_owner=None, lease_expires_at=None, updated_at=utcnow()))
        return res.rowcount


async def next_due_in(db: Database, plugin_targets: list[str]) -> float | None:
    """Seconds until the earliest pending sendable delivery is due (None if there is none)."""
    async with db.session() as s:
        row = (await s.exec(select(Delivery.next_attempt_at)
                            .where(Delivery.status == DeliveryStatus.PENDING, sendable(plugin_targets))
                            .order_by(col(Delivery.next_attempt_at)).limit(1))).first()
    if row is None:
        return None
    return max(0.0, (row - utcnow()).total_seconds())
