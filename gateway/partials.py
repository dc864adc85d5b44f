"""A running task's text as it is decoded, for whoever follows it (the OpenAI API's streaming).

The local engine tells each segment it keeps as it decodes it (`Job.partial(start, end, text)`);
the task loop stores those in `partial_segment` about once a second (`store`, one transaction
per batch, which wakes `partial:<task_id>` in every process) until the result is stored: the
door (gateway/ingest.py) removes them in the same transaction, and a new attempt of the task
starts without them (`clear`). `follow` reads them from any process while the task runs.
"""

from __future__ import annotations

import json
from typing import AsyncIterator, Sequence

from sqlalchemy import delete
from sqlmodel import col, select

from gateway.db import Database
from gateway.errors import NotFound
from gateway.models import PartialSegment, Task, TaskStatus
from gateway.notify import Notifier, partial_channel, publish, task_done_channel
from gateway.payloads import result_of


async def store(db: Database, task_id: str, first_seq: int, segments: Sequence[tuple[float, float, str]]) -> None:
    """Store `segments` ((start, end, text) in decoding order) as numbers first_seq, first_seq+1, …"""
    async with db.session() as s:
        s.add_all([PartialSegment(task_id=task_id, seq=first_seq + i, start_time=start, end_time=end, text=text)
                   for i, (start, end, text) in enumerate(segments)])
        await publish(s, partial_channel(task_id))


async def clear(db: Database, task_id: str) -> None:
    """Remove what an earlier attempt of the task stored."""
    async with db.session() as s:
        await s.exec(delete(PartialSegment).where(col(PartialSegment.task_id) == task_id))


async def follow(db: Database, notifier: Notifier, task_id: str, poll_s: float) -> AsyncIterator[str]:
    """Each segment's text of task `task_id` as it is stored (checked when woken, or every
    `poll_s` seconds); once the task is completed or failed, the texts of its result not yet
    given, and then it returns: `" ".join` of everything it yielded is the result's text (the
    Transcript's), when the result holds what was streamed (it does for the local engine's
    tasks; speaker labelling may split a segment, and only the rest of it is given). NotFound
    for no such task."""
    names = (partial_channel(task_id), task_done_channel(task_id))
    streamed: list[str] = []
    seq = -1
    with notifier.subscribed(names[0]), notifier.subscribed(names[1]):
        while True:
            status, rows = await _read(db, task_id, seq)
            for row in rows:
                seq = row.seq
                streamed.append(row.text)
                yield row.text
            if status in TaskStatus.TERMINAL:
                async with db.session() as s:
                    task = await s.get(Task, task_id)
                result = result_of(json.loads(task.result_json)) if task.result_json else None
                for text in remainder(streamed, [x["text"] for x in (result or {}).get("data", ())]):
                    yield text
                return
            await notifier.wait(names[0], poll_s, names[1])


async def _read(db: Database, task_id: str, after: int) -> tuple[str, list[PartialSegment]]:
    """The task's status and its partial texts numbered after `after`."""
    async with db.session() as s:
        status = (await s.exec(select(Task.status).where(Task.id == task_id))).first()
        if status is None:
            raise NotFound(f"task {task_id!r} not found")
        rows = (await s.exec(select(PartialSegment).where(PartialSegment.task_id == task_id, PartialSegment.seq > after)
                             .order_by(col(PartialSegment.seq)))).all()
    return status, list(rows)


def remainder(streamed: Sequence[str], final: Sequence[str]) -> list[str]:
    """What of the final segments' texts `streamed` did not say yet, word by word: a segment said
    whole is left out, one said in part gives its other words, the others are given whole. Where
    the final text differs from what was streamed, it is given from that segment on as it is."""
    said = " ".join(streamed).split()
    out: list[str] = []
    at = 0
    for text in final:
        words = text.split()
        n = min(len(words), len(said) - at)
        if words[:n] != said[at:at + n]:
            at = len(said)  # it differs: nothing more is taken as said
            n = 0
        at += n
        if n < len(words):
            out.append(text if n == 0 else " ".join(words[n:]))
    return out
