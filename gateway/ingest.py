"""The one door every result enters through: `ingest(task_id, outcome)`, idempotent on task_id.

The first valid result wins: it is stored (task, transcript, segments) together with one
delivery per target, in a single transaction. An identical repeat is acknowledged and
ignored (`duplicate`); a different one is refused (`conflict`) and changes nothing. Every
call leaves a CallbackReceipt saying which of these happened.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from dataclasses import dataclass

import structlog
from sqlalchemy import insert
from sqlmodel import col, select

from gateway import metrics
from gateway.config import Config
from gateway.db import Database
from gateway.deliveries import PLUGIN_PREFIX
from gateway.models import (CallbackReceipt, Delivery, Segment, Task, TaskStatus, Transcript,
                            utcnow)
from gateway.notify import DELIVERIES, publish, task_done_channel
from gateway.payloads import Outcome, build_payload, normalise_segments, outcome_sha256
from gateway.plugins import Plugins

log = structlog.get_logger(__name__)

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
CONFLICT = "conflict"
UNKNOWN_TASK = "unknown_task"


@dataclass(frozen=True)
class IngestResult:
    outcome: str
    task_id: str | None


def delivery_targets(task: Task, config: Config, plugins: Plugins | None, success: bool) -> list[tuple[str, str]]:
    """(target, kind) for every place a finished task goes: its callback_url, webhooks.urls,
    and each loaded plugin that implements transcript_completed (or transcript_failed)."""
    urls = ([task.callback_url] if task.callback_url else []) + list(config.webhooks.urls)
    targets = [(u, "webhook") for u in dict.fromkeys(urls)]
    if plugins is not None:
        hook = "transcript_completed" if success else "transcript_failed"
        targets += [(PLUGIN_PREFIX + name, "plugin") for name in plugins.delivery_targets(hook)]
    return targets


def _final_payload(task: Task, outcome: Outcome) -> dict:
    if outcome.success:
        duration = max(outcome.duration, 0.0)
        outcome = Outcome(success=True, duration=duration, model=task.model,
                          segments=normalise_segments(list(outcome.segments), duration, task.speaker),
                          output_tokens=outcome.output_tokens, prompt_tokens=outcome.prompt_tokens)
    return build_payload(task.id, outcome)


def body_sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


async def find_task_id(db: Database, provider: str, external_id: str) -> str | None:
    """Our task for a remote provider's callback: the one whose upstream id is the payload's task_id.
    (A `local` callback carries our own task_id; ingest finds and checks that task itself.)"""
    async with db.session() as s:
        row = await s.exec(select(Task.id).where(Task.provider == provider,
                                                 Task.upstream_task_id == external_id))
        return row.first()


async def _submission_in_flight(db: Database, provider: str) -> bool:
    """A worker holds a task of `provider` that has no upstream id yet (it is being submitted)."""
    async with db.session() as s:
        row = await s.exec(select(Task.id).where(Task.provider == provider, Task.status == TaskStatus.PROCESSING,
                                                 col(Task.upstream_task_id).is_(None)).limit(1))
        return row.first() is not None


async def find_task_id_waiting(db: Database, provider: str, external_id: str, wait_s: float,
                               step_s: float = 0.1) -> str | None:
    """find_task_id; for a remote provider, a callback may overtake the storing of the upstream id
    it answers (the service calls back before our submission has committed): while some task of
    that provider is being submitted, look again for up to `wait_s` seconds."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        task_id = await find_task_id(db, provider, external_id)
        if task_id is not None or asyncio.get_running_loop().time() >= deadline:
            return task_id
        if not await _submission_in_flight(db, provider):
            return await find_task_id(db, provider, external_id)  # one may have been stored meanwhile
        await asyncio.sleep(step_s)


async def ingest(db: Database, config: Config, task_id: str | None, outcome: Outcome, *,
                 provider: str, plugins: Plugins | None, external_task_id: str | None = None,
                 raw_sha256: str = "") -> IngestResult:
    """Store the first result for `task_id` and schedule its deliveries; repeats change nothing."""
    bound = log.bind(task_id=task_id, provider=provider)
    async with db.session() as s:
        task = None
        if task_id is not None:
            task = (await s.exec(select(Task).where(Task.id == task_id, Task.provider == provider)
                                 .with_for_update())).first()  # a result completes only its provider's task
        if task is None:
            result = IngestResult(UNKNOWN_TASK, None)
        else:
            payload = _final_payload(task, outcome)
            digest = outcome_sha256(payload)
            if task.result_sha256 is None:
                await _store(s, task, outcome, payload, digest, delivery_targets(task, config, plugins, outcome.success))
                await publish(s, DELIVERIES, task_done_channel(task.id))
                result = IngestResult(ACCEPTED, task.id)
            elif task.result_sha256 == digest:
                result = IngestResult(DUPLICATE, task.id)
            else:
                result = IngestResult(CONFLICT, task.id)
        s.add(CallbackReceipt(provider=provider, external_task_id=external_task_id or task_id,
                              task_id=result.task_id, body_sha256=raw_sha256 or "-",
                              outcome=result.outcome))
    if result.outcome == ACCEPTED:
        metrics.observe_result(task, outcome.success, outcome.duration)
    else:
        metrics.observe_repeat(provider, result.outcome)
    bound.info("ingest", outcome=result.outcome, success=outcome.success)
    return result


async def _store(s, task: Task, outcome: Outcome, payload: dict, digest: str,
                 targets: list[tuple[str, str]]) -> None:
    now = utcnow()
    task.result_json = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    task.result_sha256 = digest
    task.status = TaskStatus.COMPLETED if outcome.success else TaskStatus.FAILED
    task.error = None if outcome.success else payload["data"]["msg"]
    task.speaker_note = outcome.speaker_note if outcome.success and task.speaker else None
    task.progress = 1.0 if outcome.success else task.progress
    task.lease_owner = None
    task.lease_expires_at = None
    task.finished_at = now
    task.updated_at = now
    s.add(task)
    if outcome.success:
        inner = payload["data"]["data"]
        segs = inner["data"]
        s.add(Transcript(task_id=task.id, model=task.model, duration=inner["usage_metadata"]["duration"],
                         segment_count=len(segs), text=" ".join(x["text"] for x in segs)))
        await s.flush()  # no ORM relationships: parents first, so foreign keys hold
        if segs:  # one executemany; as ORM objects each row would be an INSERT … RETURNING of its own
            await s.exec(insert(Segment), params=[
                {"task_id": task.id, "idx": i, "start_time": x["start_time"], "end_time": x["end_time"],
                 "speaker": x["speaker"], "text": x["text"]} for i, x in enumerate(segs)])
    for target, kind in targets:
        s.add(Delivery(id=uuid.uuid4().hex, task_id=task.id, target=target, kind=kind,
                       next_attempt_at=now))
