"""Known speakers: voices enrolled by name, as voiceprints (embeddings, never the audio), owned by
the key that enrolled them; and the voices a request names, resolved when it is submitted.

A voice's voiceprints (voiceprints.Enrolment) are made from a file, from part of an asset, or from
the segments of one label of a completed task (`voice_spans`). A name may be enrolled more than
once (from several files): matching takes its closest voiceprint. The caller sees and uses only
its own speakers (an admin key every one); any other is 404, as tasks are.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Optional, Sequence, Union

import numpy as np
import structlog
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, StrictStr, ValidationError, \
    model_validator
from sqlmodel import col, select

from gateway import audio, voiceprints
from gateway.db import Database
from gateway.errors import ApiError, BadRequest, NotFound
from gateway.models import Asset, Speaker, Task, TaskStatus
from gateway.payloads import MAX_SPEAKER, no_nul, result_of, strict_text
from gateway.tenants import Caller, owner_filter, visible
from gateway.validation import describe_validation_error
from gateway.voiceprints import ENCODER, KnownVoice

log = structlog.get_logger(__name__)

MAX_NAME = MAX_SPEAKER  # what a result's speaker may hold, at /callbacks and in the search index
MAX_ENROL_S = 600.0  # seconds of audio a voiceprint is made from, at most
MAX_KNOWN = 100  # voiceprints one request may name
_LABEL = re.compile(r"SPEAKER_\d+")


def check_name(value: str) -> str:
    """A speaker's name: NFC, blanks around it dropped, 1 to MAX_NAME characters, none of them a
    control character, and not a SPEAKER_NN label (those are the voices nobody has named)."""
    name = unicodedata.normalize("NFC", value).strip()
    if not name:
        raise ValueError("is empty; give the speaker's name")
    if len(name) > MAX_NAME:
        raise ValueError(f"is {len(name)} characters long; at most {MAX_NAME}")
    if not all(ch.isprintable() for ch in name):
        raise ValueError("holds a control character (a line break, a tab, ...); give a name on one line")
    if _LABEL.fullmatch(name):
        raise ValueError("is how unnamed voices are labelled (SPEAKER_NN); give the speaker's name")
    return name


SpeakerName = Annotated[StrictStr, AfterValidator(no_nul), AfterValidator(check_name)]
Text = strict_text(255)


class EnrolRequest(BaseModel):
    """JSON body of POST /speakers: the voice of part of an asset, or of a label in a completed task
    (a file is enrolled with multipart `name` + `file`)."""

    model_config = ConfigDict(extra="forbid")

    name: SpeakerName = Field(description=f"1 to {MAX_NAME} characters, not SPEAKER_NN")
    asset_id: Optional[Text] = Field(None, description="an uploaded file of the voice")
    start_time: Optional[float] = Field(None, ge=0, allow_inf_nan=False, description="with asset_id: from (s)")
    end_time: Optional[float] = Field(None, gt=0, allow_inf_nan=False, description="with asset_id: to (s)")
    task_id: Optional[Text] = Field(None, description="a completed task with speaker labels")
    speaker: Optional[Text] = Field(None, description="with task_id: the label whose voice it is, e.g. SPEAKER_01")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.asset_id is None) == (self.task_id is None):
            raise ValueError("give exactly one of asset_id or task_id" if self.asset_id else
                             "asset_id or task_id is required (or send multipart name + file)")
        if self.task_id is not None and self.speaker is None:
            raise ValueError("speaker is required with task_id: the label whose voice to enrol")
        if self.asset_id is not None and self.speaker is not None:
            raise ValueError("speaker is only meaningful with task_id")
        if self.task_id is not None and (self.start_time is not None or self.end_time is not None):
            raise ValueError("start_time and end_time are only meaningful with asset_id")
        if self.start_time is not None and self.end_time is not None and self.start_time >= self.end_time:
            raise ValueError(f"start_time ({self.start_time:g}) must be before end_time ({self.end_time:g})")
        return self


class FileEnrolment(BaseModel):
    """The multipart fields of POST /speakers beside its `file`."""

    model_config = ConfigDict(extra="forbid")

    name: SpeakerName


def parse(model: type[BaseModel], body: Any) -> Any:
    """`body` as `model`, or a 400 naming the field."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise BadRequest(describe_validation_error(exc, empty="body", strip_value_error=True,
                                                   messages={"extra_forbidden": "unknown field",
                                                             "missing": "is required"})) from None


def check_known_speakers(value: Any) -> Any:
    """A request's known_speakers: true, or a list of 1 to MAX_KNOWN valid names (repeats dropped)."""
    if value is True:
        return True
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ValueError("must be a list of enrolled speakers' names, or true for every one")
    if not value:
        raise ValueError("is an empty list; name at least one enrolled speaker, or leave it out")
    if len(value) > MAX_KNOWN:
        raise ValueError(f"names {len(value)} speakers; at most {MAX_KNOWN}")
    names = []
    for name in value:
        try:
            names.append(check_name(no_nul(name)))
        except ValueError as exc:
            raise ValueError(f"the name {name[:MAX_NAME + 1]!r} {exc}") from None
    return list(dict.fromkeys(names))


KnownSpeakers = Annotated[Union[Literal[True], list[str]],
                          PlainValidator(check_known_speakers, json_schema_input_type=Union[Literal[True], list[str]])]


# --- the speaker table --------------------------------------------------------------------


def new_speaker_id() -> str:
    return f"spk_{secrets.token_hex(16)}"


def _visible(stmt, caller: Caller):
    return stmt.where(owner_filter(caller, Speaker.owner))


async def enrol(db: Database, caller: Caller, name: str, enrolment: voiceprints.Enrolment,
                session=None) -> Speaker:
    """A new Speaker row of `caller` (in `session` when given, else in its own transaction)."""
    row = Speaker(id=new_speaker_id(), name=name, owner=caller.name, embedding=voiceprints.to_bytes(enrolment.wide),
                  narrowband=voiceprints.to_bytes(enrolment.narrowband), encoder=ENCODER)
    if session is not None:
        session.add(row)
    else:
        async with db.session() as s:
            s.add(row)
    log.info("speaker.enrolled", speaker_id=row.id, owner=caller.name)
    return row


async def list_speakers(db: Database, caller: Caller) -> list[Speaker]:
    """The speakers `caller` may see, in the order they were enrolled."""
    async with db.session() as s:
        stmt = _visible(select(Speaker), caller).order_by(col(Speaker.created_at), col(Speaker.id))
        return list((await s.exec(stmt)).all())


async def delete_speaker(db: Database, caller: Caller, speaker_id: str) -> None:
    """The speaker's row gone (404 when `caller` may not see it, or there is none)."""
    async with db.session() as s:
        row = await s.get(Speaker, speaker_id)
        if row is None or not visible(caller, row.owner):
            raise NotFound(f"speaker {speaker_id!r} not found")
        await s.delete(row)
    log.info("speaker.deleted", speaker_id=speaker_id)


async def resolve(db: Database, caller: Caller, known: KnownSpeakers | None) -> tuple[KnownVoice, ...]:
    """The voices a request's `known_speakers` names (True: every one `caller` may see): 400 for a
    name `caller` has not enrolled, or more than MAX_KNOWN voiceprints."""
    if not known:
        return ()
    stmt = _visible(select(Speaker), caller).where(Speaker.encoder == ENCODER)
    if known is not True:
        stmt = stmt.where(col(Speaker.name).in_(known))
    async with db.session() as s:
        rows = list((await s.exec(stmt.order_by(col(Speaker.created_at)).limit(MAX_KNOWN + 1))).all())
    if known is not True:
        missing = [name for name in dict.fromkeys(known) if name not in {r.name for r in rows}]
        if missing:
            raise BadRequest(f"known_speakers: no enrolled speaker named {missing[0]!r}; enrol the voice with "
                             "POST /speakers first (GET /speakers lists them)")
    if len(rows) > MAX_KNOWN:
        raise BadRequest(f"known_speakers: names more than {MAX_KNOWN} voiceprints; name fewer speakers")
    return tuple(KnownVoice(r.name, voiceprints.from_bytes(r.embedding),
                            None if r.narrowband is None else voiceprints.from_bytes(r.narrowband)) for r in rows)


# --- voiceprints of audio -----------------------------------------------------------------

Span = tuple[float, float]


def stretches(path: str, spans: Sequence[Span] | None, max_audio_s: float) -> list[np.ndarray]:
    """The audio of each span of the file (seconds; None: the whole file), decoded block by block so
    that only the spans are held; spans past MAX_ENROL_S in all are left out, a whole file longer
    than that is refused (audio.AudioError)."""
    duration = audio.measure(path, max_audio_s)
    if spans is None:
        if duration > MAX_ENROL_S:
            raise audio.AudioError(f"the audio is {duration:.0f} s long; a voiceprint is made from at most "
                                   f"{MAX_ENROL_S:.0f} s of one voice (give start_time and end_time)")
        spans = [(0.0, duration)]
    kept, total = [], 0.0
    for start, end in sorted(spans):
        end = min(end, duration, start + MAX_ENROL_S - total)
        if end > start:
            kept.append((start, end))
            total += end - start
    pieces: list[list[np.ndarray]] = [[] for _ in kept]
    if not kept:
        return []
    for block in audio.blocks(path, MAX_ENROL_S):
        begin, finish = block.offset, block.offset + block.duration
        for i, (start, end) in enumerate(kept):
            if start < finish and end > begin:
                a, b = (int(round((max(start, begin) - begin) * audio.SAMPLE_RATE)),
                        int(round((min(end, finish) - begin) * audio.SAMPLE_RATE)))
                pieces[i].append(block.samples[a:b].copy())
        if finish >= kept[-1][1]:
            break
    return [np.concatenate(p) for p in pieces if p]


def voiceprint_of(path: str, spans: Sequence[Span] | None, max_audio_s: float) -> voiceprints.Enrolment:
    """The voiceprints of the voice in `spans` of the file (blocking: run it on a thread);
    audio.AudioError, voiceprints.TooLittleSpeech."""
    return voiceprints.enrolment(stretches(path, spans, max_audio_s))


async def voiceprint_or_400(path: str, spans: Sequence[Span] | None, max_audio_s: float,
                            field: str) -> voiceprints.Enrolment:
    """voiceprint_of on a thread, its refusals as 400s naming `field`."""
    try:
        return await asyncio.to_thread(voiceprint_of, path, spans, max_audio_s)
    except (audio.AudioError, voiceprints.TooLittleSpeech) as exc:
        raise BadRequest(f"{field}: {exc}", param=field) from None


def label_spans(result: dict, label: str) -> list[Span]:
    """The (start, end) of every turn of `label` in a stored result (`payloads.result_of`), or of
    every segment of it in a result without turns."""
    return [(s["start_time"], s["end_time"]) for s in result.get("turns") or result["data"]
            if s.get("speaker") == label]


def labels_of(result: dict) -> list[str]:
    """The result's speakers, the transcript's first (a voice heard only in the turns after)."""
    return list(dict.fromkeys(s["speaker"] for s in [*result["data"], *result.get("turns", ())] if s.get("speaker")))


@dataclass(frozen=True)
class TaskAudio:
    """A completed task's result and the file of its audio."""

    task: Task
    result: dict
    path: str


async def task_audio(db: Database, task: Task) -> TaskAudio:
    """A completed, speaker-labelled task's result and audio: 409 when it is not completed, has no
    labels, or its audio is no longer stored."""
    if task.status != TaskStatus.COMPLETED:
        raise ApiError(f"task {task.id} is {task.status}; its voices can be named once it is completed", 409)
    if not task.speaker:
        raise ApiError(f"task {task.id} was transcribed without speaker=true: it has no speaker labels", 409)
    path = None
    if task.asset_id is not None:
        async with db.session() as s:
            asset = await s.get(Asset, task.asset_id)
        if asset is not None and Path(asset.path).exists():
            path = asset.path
    if path is None:
        where = f"asset {task.asset_id}" if task.asset_id else "its url's download"
        raise ApiError(f"task {task.id}'s audio ({where}) is no longer stored, so its voices cannot be "
                       "enrolled", 409)
    return TaskAudio(task, result_of(json.loads(task.result_json)), path)


def check_labels(result: dict, labels: Iterable[str], task_id: str, field: str = "speaker") -> None:
    """400 for a label that is not one of the task's."""
    present = labels_of(result)
    for label in labels:
        if label not in present:
            raise BadRequest(f"{field}: task {task_id} has no speaker {label!r}; its speakers are "
                             f"{', '.join(present) or 'none'}")
