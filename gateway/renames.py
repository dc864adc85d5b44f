"""Naming a completed task's speakers: its labels renamed in the stored result (one UPDATE, so a
reader sees the old result or the new one), the voices of those labels enrolled in the same
transaction, then the plugins told (`transcript_updated`: the search index, subtitle files).

The result's sha256 stays that of the result as first accepted: a provider repeating its
callback is still a duplicate, not a conflict.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlmodel import select

from gateway import known_speakers, views
from gateway.db import Database
from gateway.deliveries import task_info_of
from gateway.errors import ApiError, BadRequest
from gateway.models import Asset, Speaker, Task, utcnow
from gateway.payloads import serialise_result
from gateway.plugins import Plugins, transcript_from_payload
from gateway.tenants import Caller
from gateway.audio import AudioError
from gateway.voiceprints import TooLittleSpeech

log = structlog.get_logger(__name__)

MAX_RENAMES = 64


@dataclass
class Renamed:
    task_id: str
    renamed: dict[str, str]
    enrolled: list[Speaker] = field(default_factory=list)
    not_enrolled: dict[str, str] = field(default_factory=dict)  # label -> why its voice was not enrolled
    plugins_failed: list[str] = field(default_factory=list)


def parse_renames(body: Any) -> dict[str, str]:
    """{label: name}: a non-empty JSON object of at most MAX_RENAMES labels, each name valid
    (known_speakers.check_name); 400 naming the label otherwise."""
    if not isinstance(body, dict) or not body:
        raise BadRequest('body must be a JSON object of labels and names, e.g. {"SPEAKER_01": "Alice"}')
    if len(body) > MAX_RENAMES:
        raise BadRequest(f"body: {len(body)} labels; at most {MAX_RENAMES} at once")
    out = {}
    for label, name in body.items():
        if not isinstance(name, str):
            raise BadRequest(f"{label}: the name must be a string")
        try:
            out[label] = known_speakers.check_name(name)
        except ValueError as exc:
            raise BadRequest(f"{label}: the name {exc}") from None
    return out


def renamed_payload(result_json: str, renames: dict[str, str]) -> str:
    """The stored payload with each renamed label's segments and turns carrying the new name."""
    payload = json.loads(result_json)
    result = payload["data"]["data"]
    for item in [*result["data"], *result.get("turns", ())]:
        item["speaker"] = renames.get(item["speaker"], item["speaker"])
    return serialise_result(payload)[0]


async def rename_speakers(db: Database, plugins: Plugins | None, public_url: str, caller: Caller,
                          task_id: str, body: Any) -> Renamed:
    """POST /transcriptions/{task_id}/speakers, and the dashboard's form: rename, enrol, tell plugins."""
    renames = parse_renames(body)
    task = await views.get_task(db, task_id, caller)
    source = await known_speakers.task_audio(db, task)
    for label in renames:
        known_speakers.check_labels(source.result, [label], task.id, field=label)
    out = Renamed(task.id, renames)
    prints = {}
    for label, name in renames.items():
        try:
            prints[label] = await asyncio.to_thread(known_speakers.voiceprint_of, source.path,
                                                    known_speakers.label_spans(source.result, label), float("inf"))
        except (AudioError, TooLittleSpeech) as exc:
            out.not_enrolled[label] = str(exc)
    new_json = renamed_payload(task.result_json, renames)
    async with db.session() as s:
        stmt = select(Task).where(Task.id == task.id)
        current = (await s.exec(stmt if db.sqlite else stmt.with_for_update())).one()
        if current.result_json != task.result_json:
            raise ApiError(f"task {task.id}'s speakers were renamed meanwhile; nothing changed, send the "
                           "renames again", 409)
        current.result_json, current.updated_at = new_json, utcnow()
        s.add(current)
        for label, voiceprint in prints.items():
            out.enrolled.append(await known_speakers.enrol(db, caller, renames[label], voiceprint, session=s))
        asset = await s.get(Asset, task.asset_id) if task.asset_id else None
    log.info("transcript.speakers_renamed", task_id=task.id, labels=len(renames), enrolled=len(out.enrolled))
    task.result_json = new_json
    out.plugins_failed = await tell_plugins(plugins, task, asset.filename if asset else None, public_url)
    return out


async def tell_plugins(plugins: Plugins | None, task: Task, filename: str | None, public_url: str) -> list[str]:
    """Each plugin implementing `transcript_updated` called with the task's transcript as it is now;
    the names of those that failed (each logged with its reason)."""
    if plugins is None:
        return []
    transcript = transcript_from_payload(json.loads(task.result_json))
    return await plugins.tell_each("transcript_updated", plugins.delivery_targets("transcript_updated"), task.id,
                                   task=task_info_of(task, filename, public_url), transcript=transcript)
