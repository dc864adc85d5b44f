"""The callback payload contract: parse and validate it, normalise segments, build it, hash it.

Success:  {"code": "0000", "message": "SUCCESS", "data": {"data": {"data": [segments],
           "usage_metadata": {...}}, "msg": "transcription completed", "success": true}, "task_id": ...}
Failure:  same shape, code != "0000", message "FAILED", data.success false, data.msg the
          reason, data.data null.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from operator import itemgetter
from typing import Annotated, Any, Optional

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from gateway.errors import BadRequest
from gateway.validation import describe_validation_error, location

SUCCESS_CODE = "0000"
MAX_SPEAKER = 64  # characters of a speaker label or name (a known speaker's: known_speakers.MAX_NAME)
COMPLETED_MSG = "transcription completed"


@dataclass(frozen=True)
class Word:
    word: str           # as the engine gives it (faster-whisper's has a leading blank, stripped when sent)
    start_time: float
    end_time: float


@dataclass(frozen=True)
class Segment:
    start_time: float
    end_time: float
    text: str
    speaker: Optional[str] = None
    words: tuple[Word, ...] = ()  # sent only to a task that asked for word timestamps
    # the decoder's figures (DETAILS), sent only to a task that asked for details; None: unknown
    avg_logprob: Optional[float] = None
    compression_ratio: Optional[float] = None
    no_speech_prob: Optional[float] = None
    temperature: Optional[float] = None
    tokens: Optional[tuple[int, ...]] = None
    seek: Optional[int] = None

    def as_dict(self) -> dict[str, Any]:
        return {"start_time": self.start_time, "end_time": self.end_time,
                "text": self.text, "speaker": self.speaker}


@dataclass(frozen=True)
class SpeakerTurn:
    """A stretch of one speaker's speech, found from the voice alone (speaker labelling): it
    covers what was said with or without a transcribed segment (a backchannel, a word whisper
    did not transcribe)."""

    start_time: float
    end_time: float
    speaker: str


@dataclass(frozen=True)
class Outcome:
    """What a provider produced for a task: segments and usage, or a failure reason."""

    success: bool
    segments: tuple[Segment | CallbackSegment, ...] = ()  # anything with start_time, end_time, text, speaker
    duration: float = 0.0
    output_tokens: int = 0
    prompt_tokens: int = 0
    error: str | None = None
    code: str = SUCCESS_CODE
    speaker_note: str | None = None   # why speakers could not be labelled; stored on the task, not sent
    note: str | None = None           # what the engine could not do (speech it could not transcribe); sent
    turns: tuple[SpeakerTurn | CallbackTurn, ...] = ()  # who spoke when; sent to a task that asked for them
    language: str | None = None       # the detected language's code; sent to a task that asked for details
    cancelled: bool = False           # a client cancelled the task (gateway/lifecycle.py); never from a callback

    @classmethod
    def failure(cls, reason: str, code: str = "5000") -> "Outcome":
        return cls(success=False, error=reason, code=code)

    @classmethod
    def cancellation(cls) -> "Outcome":
        """The result of a cancelled task: the failure shape, `data.msg` "cancelled"."""
        return cls(success=False, error=CANCELLED_MSG, code=CANCELLED_CODE, cancelled=True)


CANCELLED_MSG = "cancelled"
CANCELLED_CODE = "4090"  # the failure code of a cancelled task's callback (a client's doing: 4xxx)


DETAILS = ("avg_logprob", "compression_ratio", "no_speech_prob", "temperature", "tokens", "seek")


def normalise_segments(raw, duration: float, speaker: bool, words: bool = False,
                       details: bool = False) -> list[dict[str, Any]]:
    """The segments as sent: times clamped into [0, duration] and rounded to ms (-0.0 as 0.0),
    ordered by time, text stripped, empty ones dropped, speakers only if asked; dicts in the
    payload's shape. With `words`, each has its `words` (segment_words); with `details`, the
    decoder's figures it has (DETAILS)."""
    if duration <= 0.0:  # -0.0 too
        duration = 0.0
    extra = words or details
    out = []
    append = out.append
    for s in raw:  # min() and max() spelt out: this loop runs for every segment of every result
        text = s.text.strip()
        if not text:
            continue
        start = s.start_time
        if start <= 0.0:  # -0.0 too
            start = 0.0
        elif start > duration:
            start = duration
        start = round(start, 3)
        end = s.end_time
        if end <= start:  # -0.0 too
            end = start
        if end > duration:
            end = duration
        seg = {"start_time": start, "end_time": round(end, 3), "text": text,
               "speaker": s.speaker if speaker else None}
        if extra:  # one test per segment on the path without options
            _add_extras(seg, s, words, details)
        append(seg)
    out.sort(key=_BY_TIME)
    return out


def _add_extras(seg: dict[str, Any], s, words: bool, details: bool) -> None:
    if words:
        seg["words"] = segment_words(s.words or (), seg["start_time"], seg["end_time"])
    if details:
        for key in DETAILS:
            if (value := getattr(s, key)) is not None:
                seg[key] = list(value) if key == "tokens" else value


def normalise_turns(raw, duration: float) -> list[dict[str, Any]]:
    """The speaker turns as sent: times clamped into [0, duration] and rounded to ms, ordered by
    time, those left without length dropped."""
    out = []
    for t in raw:
        start = round(min(t.start_time, duration), 3) if t.start_time > 0.0 else 0.0  # -0.0 too
        end = round(min(t.end_time, duration), 3)
        if end > start:
            out.append({"start_time": start, "end_time": end, "speaker": t.speaker})
    out.sort(key=_BY_TIME)
    return out


def segment_words(words, start: float, end: float) -> list[dict[str, Any]]:
    """A segment's words as sent: text stripped, empty ones dropped, times clamped into the
    segment's [start, end] (already normalised) and rounded to ms."""
    out = []
    for w in words:
        text = w.word.strip()
        if not text:
            continue
        a = min(max(w.start_time, start), end)
        out.append({"word": text, "start_time": round(a, 3), "end_time": round(min(max(w.end_time, a), end), 3)})
    return out


_BY_TIME = itemgetter("start_time", "end_time")


def build_payload(task_id: str, outcome: Outcome, *, model: str, speaker: bool, words: bool = False,
                  details: bool = False, turns: bool = False) -> dict[str, Any]:
    """The callback payload for `outcome`, as stored and sent: a success's segments normalised
    (speakers kept only for a task that asked, words, speaker turns, the decoder's figures and
    language only for one that asked for them), its model the task's `model` alias."""
    if not outcome.success:
        return {"code": outcome.code, "message": "FAILED",
                "data": {"data": None, "msg": outcome.error or "transcription failed", "success": False},
                "task_id": task_id}
    duration = outcome.duration if outcome.duration > 0.0 else 0.0  # max() would keep -0.0
    result = {
        "data": normalise_segments(outcome.segments, duration, speaker, words, details),
        "usage_metadata": {"duration": round(duration, 3), "model": model,
                           "output_tokens": outcome.output_tokens, "prompt_tokens": outcome.prompt_tokens},
    }
    if outcome.note:  # absent when there is nothing to note: the payload as it always was
        result["note"] = outcome.note
    if speaker and turns and outcome.turns and (spoken := normalise_turns(outcome.turns, duration)):
        result["turns"] = spoken
    if details and outcome.language:
        result["language"] = outcome.language
    return {
        "code": SUCCESS_CODE,
        "message": "SUCCESS",
        "data": {
            "data": result,
            "msg": COMPLETED_MSG,
            "success": True,
        },
        "task_id": task_id,
    }


def canonical_json(obj: Any) -> str:
    """Keys sorted, no blanks, non-ASCII as it is: `json.dumps(obj, ensure_ascii=False,
    sort_keys=True, separators=(",", ":"))` to the byte for every payload build_payload makes,
    written by orjson (faster: docs/ARCHITECTURE.md). orjson spells floats below 1e-4 otherwise
    ("0.00001", not "1e-05"), which a payload never holds (its times are rounded to ms), and
    refuses integers beyond 64 bits and lone surrogates: those go through json."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def serialise_result(payload: dict[str, Any]) -> tuple[str, str]:
    """The payload as stored and sent (canonical JSON: sorted keys, so `task_id` comes last) and
    its identity for idempotency (the sha256 of the same text without `task_id`): one encoding."""
    body = canonical_json({k: v for k, v in payload.items() if k != "task_id"})
    assert max(payload) == "task_id"  # the one key after every other in sorted order
    return body[:-1] + ',"task_id":' + canonical_json(payload["task_id"]) + "}", \
        hashlib.sha256(body.encode()).hexdigest()


# --- inbound validation ------------------------------------------------------------------
# pydantic-core checks a callback's types and bounds without calling Python, which per string
# or segment would cost more than the parsing itself (a callback has dozens). The order of
# each segment's times is checked in one loop after, and NUL characters (which PostgreSQL
# cannot store) are looked for in the body's bytes: JSON can only spell one as \u0000.


class _Strict(BaseModel):
    # strict: as generate requests are, no "0" for a number nor 1 for true
    model_config = ConfigDict(extra="ignore", strict=True)


MAX_INT = 2 ** 63 - 1  # what a BIGINT and every JSON encoder the gateway uses hold


NUL_MESSAGE = "must not contain the NUL character (\\u0000)"


def no_nul(value: str) -> str:
    if "\x00" in value:  # PostgreSQL cannot store it; SQLite would: refused on both alike
        raise ValueError(NUL_MESSAGE)
    return value


def strict_text(max_length: int | None = None):
    """The type of a strict string field (no number for a string) without NUL characters, of at
    most `max_length` characters (checked before the NUL, so its error says "characters")."""
    return Annotated[str, StringConstraints(strict=True, max_length=max_length), AfterValidator(no_nul)]


class CallbackWord(_Strict):
    word: str = Field(max_length=500)
    start_time: float = Field(allow_inf_nan=False, ge=0)
    end_time: float = Field(allow_inf_nan=False, ge=0, description="not before start_time")


class CallbackSegment(_Strict):
    start_time: float = Field(allow_inf_nan=False, ge=0)
    end_time: float = Field(allow_inf_nan=False, ge=0, description="not before start_time")
    text: str
    speaker: Optional[str] = Field(default=None, max_length=MAX_SPEAKER)
    # kept for a task that asked for word timestamps, and for one that asked for details
    words: Optional[list[CallbackWord]] = Field(default=None, max_length=10000)
    avg_logprob: Optional[float] = Field(default=None, allow_inf_nan=False, le=0)
    compression_ratio: Optional[float] = Field(default=None, allow_inf_nan=False, ge=0)
    no_speech_prob: Optional[float] = Field(default=None, allow_inf_nan=False, ge=0, le=1)
    temperature: Optional[float] = Field(default=None, allow_inf_nan=False, ge=0, le=1)
    tokens: Optional[list[Annotated[int, Field(ge=0, le=MAX_INT)]]] = Field(default=None, max_length=10000)
    seek: Optional[int] = Field(default=None, ge=0, le=MAX_INT)


class CallbackTurn(_Strict):
    start_time: float = Field(allow_inf_nan=False, ge=0)
    end_time: float = Field(allow_inf_nan=False, ge=0, description="not before start_time")
    speaker: str = Field(max_length=MAX_SPEAKER)


class CallbackUsage(_Strict):
    duration: float = Field(allow_inf_nan=False, ge=0)
    model: Optional[str] = None
    output_tokens: int = Field(default=0, ge=0, le=MAX_INT)
    prompt_tokens: int = Field(default=0, ge=0, le=MAX_INT)


class CallbackResult(_Strict):
    data: list[CallbackSegment]
    usage_metadata: CallbackUsage
    note: Optional[str] = Field(default=None, max_length=4000,
                                description="what the engine could not do, e.g. speech it could not transcribe")
    language: Optional[str] = Field(default=None, max_length=16, description="the detected language's code")
    # kept for a task that asked for speaker turns
    turns: Optional[list[CallbackTurn]] = Field(default=None, max_length=100000,
                                                description="who spoke when, from the voices")


class CallbackData(_Strict):
    data: Optional[CallbackResult] = None
    msg: str = ""
    success: bool


class CallbackPayload(_Strict):
    """A callback payload as accepted at POST /callbacks/{provider} (and sent to webhooks)."""

    code: str
    message: str
    data: CallbackData
    task_id: str = Field(min_length=1, max_length=255)

    @model_validator(mode="after")
    def _consistent(self):
        ok = self.code == SUCCESS_CODE
        if ok != self.data.success:
            raise ValueError("code and data.success disagree")
        if ok and self.data.data is None:
            raise ValueError("data.data is required when the task succeeded")
        return self


def _loc(loc: tuple) -> str:
    return location(loc, brackets=True, empty="body")


PAYLOAD_ERROR = "invalid callback payload: "


def _invalid(where: str, msg: str) -> BadRequest:
    return BadRequest(f"{PAYLOAD_ERROR}{where}: {msg}")


def parse_callback(body: Any) -> tuple[str, Outcome]:
    """Validate an inbound callback payload: (its task_id, the Outcome); BadRequest naming the field."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    try:
        p = CallbackPayload.model_validate(body)
    except ValidationError as exc:
        raise BadRequest(describe_validation_error(exc, PAYLOAD_ERROR, brackets=True, empty="body",
                                                   messages={"missing": "is required"})) from None
    if (where := _nul_at(p.model_dump(), ())) is not None:
        raise _invalid(_loc(where), NUL_MESSAGE)
    return _outcome(p)


def _nul_at(value: Any, loc: tuple) -> tuple | None:
    """Where the first string holding a NUL character is, or None."""
    if isinstance(value, str):
        return loc if "\x00" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return next((w for k, v in items if (w := _nul_at(v, (*loc, k))) is not None), None)


def parse_valid_callback(raw: bytes) -> tuple[str, Outcome] | None:
    """parse_callback's fast path for a valid body: pydantic parses and validates the bytes in one
    pass. None if anything may be wrong: then json.loads and parse_callback name the problem."""
    if b"\\u0000" in raw:
        return None
    try:
        p = CallbackPayload.model_validate_json(raw)
    except ValidationError:
        return None
    return _outcome(p)


BACKWARDS = "Value error, end_time is before start_time"


def _outcome(p: CallbackPayload) -> tuple[str, Outcome]:
    if not p.data.success:
        return p.task_id, Outcome.failure(p.data.msg or p.message or "transcription failed", code=p.code)
    inner = p.data.data
    for i, s in enumerate(inner.data):
        if s.end_time < s.start_time:
            raise _invalid(f"data.data.data[{i}]", BACKWARDS)
        if s.words:
            for j, w in enumerate(s.words):
                if w.end_time < w.start_time:
                    raise _invalid(f"data.data.data[{i}].words[{j}]", BACKWARDS)
    for i, t in enumerate(inner.turns or ()):
        if t.end_time < t.start_time:
            raise _invalid(f"data.data.turns[{i}]", BACKWARDS)
    return p.task_id, Outcome(  # the validated segments as they are: ingest normalises them into dicts
        success=True, segments=tuple(inner.data), duration=inner.usage_metadata.duration,
        output_tokens=inner.usage_metadata.output_tokens, prompt_tokens=inner.usage_metadata.prompt_tokens,
        note=inner.note or None, language=inner.language or None, turns=tuple(inner.turns or ()),
    )


def result_of(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The status endpoint's `result`: the callback's data.data."""
    return payload.get("data", {}).get("data")
