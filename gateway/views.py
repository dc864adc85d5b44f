"""Tasks as the API shows them: the status view, the list's pages and cursors, and waiting
for a task to finish."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import and_, or_
from sqlmodel import col, select

from gateway.db import Database
from gateway.errors import ApiError, BadRequest, NotFound
from gateway.models import Asset, Task, TaskStatus
from gateway.notify import task_done_channel
from gateway.payloads import result_of
from gateway.tenants import ADMIN, Caller, owner_filter, visible
from gateway.urls import redact


def iso(dt: datetime | None) -> str | None:
    return dt.isoformat().replace("+00:00", "Z") if dt else None


def task_view(task: Task, *, with_result: bool = True) -> dict[str, Any]:
    view = {
        "task_id": task.id,
        "status": task.status,
        "progress": round(task.progress, 4),
        "created_at": iso(task.created_at),
        "updated_at": iso(task.updated_at),
        "error": task.error,
        "model": task.model,
        "provider": task.provider,
        "speaker": task.speaker,
        "speaker_note": task.speaker_note,
        "note": task.note,
        "asset_id": task.asset_id,
        "url": redact(task.url),
        "attempts": task.attempts,
        "owner": task.owner,
    }
    if with_result:
        view["result"] = result_of(json.loads(task.result_json)) if task.result_json else None
    return view


async def get_task(db: Database, task_id: str, caller: Caller = ADMIN) -> Task:
    """The task, if `caller` may see it; else 404, the same as for an id that does not exist
    (or a deleted task's)."""
    async with db.session() as s:
        task = await s.get(Task, task_id)
    if task is None or task.status == TaskStatus.DELETED or not visible(caller, task.owner):
        raise NotFound(f"task {task_id!r} not found")
    return task


async def find_asset(db: Database, asset_id: str, caller: Caller = ADMIN) -> Asset | None:
    """The asset, if it exists and `caller` may see it."""
    async with db.session() as s:
        asset = await s.get(Asset, asset_id)
    return asset if asset is not None and visible(caller, asset.owner) else None


async def get_asset(db: Database, asset_id: str, caller: Caller = ADMIN) -> Asset:
    """The asset `caller` may see; 404 for an unknown or deleted one, or another key's."""
    asset = await find_asset(db, asset_id, caller)
    if asset is None:
        raise NotFound(f"asset {asset_id!r} not found")
    return asset


def _encode_cursor(task: Task) -> str:
    raw = f"{task.created_at.isoformat()}|{task.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    """A cursor of ours: an aware timestamp (what every timestamp column holds) and a task id."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, task_id = raw.split("|", 1)
        at = datetime.fromisoformat(created)
        if at.tzinfo is None:
            raise ValueError("naive timestamp")
        return at.astimezone(timezone.utc), task_id
    except (ValueError, UnicodeDecodeError, OverflowError):
        raise BadRequest("cursor: invalid cursor; use next_cursor from the previous page") from None


async def list_tasks(db: Database, status: str | None, limit: int, cursor: str | None, caller: Caller = ADMIN,
                     owner: str | None = None) -> dict[str, Any]:
    """A page of the tasks `caller` may see (only `owner`'s, when given), newest first, with an
    opaque cursor for the next page."""
    if status is not None and status not in TaskStatus.ALL:
        raise BadRequest(f"status: must be one of {', '.join(TaskStatus.ALL)}")
    stmt = (select(Task).where(owner_filter(caller, Task.owner, owner))
            .order_by(col(Task.created_at).desc(), col(Task.id).desc()).limit(limit + 1))
    stmt = stmt.where(Task.status == status) if status else stmt.where(Task.status != TaskStatus.DELETED)
    if cursor:
        created, task_id = _decode_cursor(cursor)
        stmt = stmt.where(or_(col(Task.created_at) < created,
                              and_(Task.created_at == created, col(Task.id) < task_id)))
    async with db.session() as s:
        rows = list((await s.exec(stmt)).all())
    page = rows[:limit]
    return {"items": [task_view(t, with_result=False) for t in page],
            "next_cursor": _encode_cursor(page[-1]) if len(rows) > limit else None}


async def wait_for_task(db: Database, notifier, task_id: str, timeout_s: float) -> Task:
    """Wait until the task is completed or failed (or the timeout passes); returns its latest state."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    with notifier.subscribed(task_done_channel(task_id)):
        while True:
            task = await get_task(db, task_id)
            remaining = deadline - asyncio.get_running_loop().time()
            if task.status in TaskStatus.TERMINAL or remaining <= 0:
                return task
            await notifier.wait(task_done_channel(task_id), min(0.5, remaining))


def unfinished_error(task: Task, waited_s: float, follow_up: str) -> ApiError:
    """What a request that waited for `task` answers when it did not complete: its failure (400
    when the input was at fault, code 4xxx, else 500), or 504 once `waited_s` passed, naming
    `follow_up` (where to poll)."""
    if task.status == TaskStatus.CANCELLED:
        return ApiError(f"transcription cancelled: task {task.id} was cancelled before it finished", 409)
    if task.status == TaskStatus.FAILED:
        code = json.loads(task.result_json)["code"]
        return ApiError(f"transcription failed: {task.error}", 400 if code.startswith("4") else 500)
    return ApiError(f"transcription still running after {waited_s:g}s; {follow_up}", 504)
