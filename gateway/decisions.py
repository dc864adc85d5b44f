"""The decisions of the door (gateway/ingest.py): given a batch of results and their tasks'
rows, what each result is (accepted, duplicate, conflict, unknown task) and the rows to write for
it: the task's update, its transcript, one delivery per target, its receipt. Plain functions,
no I/O: ingest locks the rows, calls plan_batch, writes the Plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from gateway.config import Config
from gateway.deliveries import PLUGIN_PREFIX
from gateway.models import Task, TaskStatus, time_ordered_id, utcnow
from gateway.options import options_of
from gateway.payloads import Outcome, build_payload, serialise_result
from gateway.plugins import Plugins

if TYPE_CHECKING:
    from gateway.ingest import _Item

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
CONFLICT = "conflict"
UNKNOWN_TASK = "unknown_task"
IGNORED = "ignored"  # the task was cancelled or deleted: acknowledged, nothing stored


@dataclass(frozen=True)
class IngestResult:
    outcome: str
    task_id: str | None


def delivery_targets(task: Task, config: Config, plugin_targets: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(target, kind) for every place a finished task goes: its callback_url, webhooks.urls, and
    `plugin_targets` (the plugins' share, the same for every task: see plugin_targets)."""
    urls = ([task.callback_url] if task.callback_url else []) + list(config.webhooks.urls)
    return [(u, "webhook") for u in dict.fromkeys(urls)] + plugin_targets


def plugin_targets(plugins: Plugins | None, success: bool) -> list[tuple[str, str]]:
    """(plugin:<name>, "plugin") for each loaded, active plugin implementing transcript_completed
    (or transcript_failed)."""
    if plugins is None:
        return []
    hook = "transcript_completed" if success else "transcript_failed"
    return [(PLUGIN_PREFIX + name, "plugin") for name in plugins.delivery_targets(hook)]


@dataclass
class Plan:
    """What one batch writes: rows for each table, and each item's answer."""
    now: datetime
    results: list[IngestResult] = field(default_factory=list)
    stored: list[dict | None] = field(default_factory=list)  # the task update, for accepted items
    transcripts: list[dict] = field(default_factory=list)
    deliveries: list[dict] = field(default_factory=list)
    receipts: list[dict] = field(default_factory=list)


def plan_batch(items: list[_Item], tasks: dict, config: Config, plugins: Plugins | None) -> Plan:
    """Decide each item (accepted, duplicate, conflict, unknown task; ignored for a cancelled or
    deleted task) and build the rows to write."""
    plan = Plan(now=utcnow())
    digests = {tid: t.result_sha256 for tid, t in tasks.items()}
    statuses = {tid: t.status for tid, t in tasks.items()}  # as this batch leaves them
    plugins_for = {success: plugin_targets(plugins, success) for success in (True, False)}
    for item in items:
        task = tasks.get(item.task_id)
        if task is not None and task.provider != item.provider:
            task = None  # a result completes only its provider's task
        stored = None
        # a deleted task (a tombstone, or gone) keeps no trace of what comes for it: no receipt
        gone = statuses[task.id] == TaskStatus.DELETED if task is not None else item.known is not None
        if gone or task is not None and statuses[task.id] in TaskStatus.STOPPED:
            result = IngestResult(IGNORED, item.task_id)
        elif item.known is not None:
            result = item.known
        elif task is None:
            result = IngestResult(UNKNOWN_TASK, None)
        else:
            options = options_of(task)
            payload = build_payload(task.id, item.outcome, model=task.model, speaker=task.speaker,
                                    words=options.word_timestamps, details=options.details,
                                    turns=options.speaker_turns)
            text, digest = serialise_result(payload)
            if digests[task.id] is None:
                digests[task.id] = digest
                stored = _plan_result(plan, task, item.outcome, payload, text, digest,
                                      delivery_targets(task, config, plugins_for[item.outcome.success]))
                statuses[task.id] = stored["status"]
                result = IngestResult(ACCEPTED, task.id)
            else:
                result = IngestResult(DUPLICATE if digests[task.id] == digest else CONFLICT, task.id)
        plan.results.append(result)
        plan.stored.append(stored)
        if result.task_id is not None and not gone:
            plan.receipts.append({"provider": item.provider, "external_task_id": item.external_task_id,
                                  "task_id": result.task_id, "body_sha256": item.raw_sha256,
                                  "outcome": result.outcome, "received_at": plan.now})
    return plan


def _status(outcome: Outcome) -> str:
    if outcome.success:
        return TaskStatus.COMPLETED
    return TaskStatus.CANCELLED if outcome.cancelled else TaskStatus.FAILED


def _plan_result(plan: Plan, task, outcome: Outcome, payload: dict, text: str, digest: str,
                 targets: list[tuple[str, str]]) -> dict:
    now = plan.now
    update = {"id": task.id, "result_json": text,
              "result_sha256": digest, "status": _status(outcome),
              "error": None if outcome.success else payload["data"]["msg"],
              "speaker_note": outcome.speaker_note if outcome.success and task.speaker else None,
              "note": outcome.note if outcome.success else None,
              "progress": 1.0 if outcome.success else task.progress,
              "lease_owner": None, "lease_expires_at": None, "finished_at": now, "updated_at": now}
    if outcome.success:
        inner = payload["data"]["data"]
        segs = inner["data"]
        plan.transcripts.append({"task_id": task.id, "model": task.model,
                                 "duration": inner["usage_metadata"]["duration"], "segment_count": len(segs),
                                 "text": " ".join(x["text"] for x in segs), "created_at": now})
    plan.deliveries += [{"id": time_ordered_id(), "task_id": task.id, "target": target, "kind": kind,
                         "next_attempt_at": now, "created_at": now, "updated_at": now}
                        for target, kind in targets]
    return update
