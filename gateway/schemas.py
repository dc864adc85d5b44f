"""The models of what the API answers (the `data` of each success envelope) and of its query
strings. Handlers build their answers through these models, and `gateway.openapi` describes the
API from them, so the description and the answers are one thing."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer

from gateway.errors import BadRequest
from gateway.payloads import DETAILS
from gateway.validation import describe_validation_error

TaskStatusName = Literal["queued", "processing", "completed", "failed", "cancelled"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an answer field without its model fails at once


class UploadData(_Model):
    asset_id: str = Field(pattern=r"^re_\d+$", examples=["re_657929111888723968"])


class TaskIdData(_Model):
    task_id: str = Field(pattern=r"^[0-9a-f]{32}$", examples=["ec2449885ba84c4f943a80ff0633158e"])


class _Sparse(_Model):
    """An answer whose optional keys in `ABSENT` are left out (not null) when they hold nothing, so
    an answer that has none of them is exactly as it always was."""

    ABSENT: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _absent_keys(self, handler) -> dict[str, Any]:
        out = handler(self)
        for key in self.ABSENT:
            if out.get(key) is None:
                out.pop(key, None)
        return out


class Word(_Model):
    word: str
    start_time: float = Field(ge=0)
    end_time: float = Field(ge=0)


ASKED = "; only for a task that asked for it"


class Segment(_Sparse):
    ABSENT = ("words",) + DETAILS

    start_time: float = Field(ge=0)
    end_time: float = Field(ge=0)
    text: str
    speaker: Optional[str] = Field(description="SPEAKER_00, SPEAKER_01, … when the task asked speaker=true")
    words: Optional[list[Word]] = Field(None, description="the segment's words, within its times, with "
                                                          "word_timestamps=true; absent otherwise")
    avg_logprob: Optional[float] = Field(None, description="the decoder's average log-probability" + ASKED)
    compression_ratio: Optional[float] = Field(None, description="the text's gzip compression ratio" + ASKED)
    no_speech_prob: Optional[float] = Field(None, description="the probability of no speech" + ASKED)
    temperature: Optional[float] = Field(None, description="the decoding temperature" + ASKED)
    tokens: Optional[list[int]] = Field(None, description="the decoder's token ids" + ASKED)
    seek: Optional[int] = Field(None, description="the decoder's window offset, in frames" + ASKED)


class Turn(_Model):
    start_time: float = Field(ge=0)
    end_time: float = Field(ge=0)
    speaker: str = Field(description="the speaker's label or name, as in the segments")


TURNS = ("who spoke when, from the voices alone: each stretch of one speaker's speech, also where "
         "nothing was transcribed; with speaker=true, absent when speakers could not be labelled")


class UsageMetadata(_Model):
    duration: float = Field(ge=0)
    model: str
    output_tokens: int = Field(ge=0)
    prompt_tokens: int = Field(ge=0)


NOTE = "what the engine could not do, e.g. speech it could not transcribe, with its time span"


class _Noted(_Sparse):
    """An answer with an optional `note`: absent (not null) when there is nothing to note."""

    ABSENT = ("note",)

    note: Optional[str] = Field(None, description=NOTE + "; absent when there is nothing to note")


class TranscriptResult(_Noted):
    """The callback payload's data.data."""

    ABSENT = ("note", "language", "turns")

    data: list[Segment]
    usage_metadata: UsageMetadata
    language: Optional[str] = Field(None, description="the detected language's code" + ASKED)
    turns: Optional[list[Turn]] = Field(None, description=TURNS)


class SyncData(_Noted):
    ABSENT = ("note", "turns")

    model: str
    items: list[Segment]
    task_id: str
    turns: Optional[list[Turn]] = Field(None, description=TURNS)


class DeliveryView(_Model):
    target: str = Field(description="a webhook URL, or plugin:<name>")
    kind: Literal["webhook", "plugin"]
    status: Literal["pending", "delivered", "dead"]
    attempts: int = Field(ge=0)
    last_status_code: Optional[int]
    last_error: Optional[str]


class TaskSummary(_Model):
    task_id: str
    status: TaskStatusName
    progress: float = Field(ge=0, le=1)
    created_at: str
    updated_at: str
    error: Optional[str]
    model: str
    provider: str
    speaker: bool
    asset_id: Optional[str]
    url: Optional[str]
    attempts: int = Field(ge=0)
    speaker_note: Optional[str] = Field(description="why speaker labels could not be given, when they could not")
    note: Optional[str] = Field(description=NOTE + "; null when there is nothing to note")
    owner: str = Field(description='the name of the key that created it ("admin": a key of server.api_keys, '
                                   'or made while authentication was off)')


class TaskView(TaskSummary):
    result: Optional[TranscriptResult] = Field(description="the callback's data.data once completed")
    deliveries: list[DeliveryView]


class TaskPage(_Model):
    items: list[TaskSummary]
    next_cursor: Optional[str]


class CallbackAck(_Model):
    task_id: str
    outcome: Literal["accepted", "duplicate", "ignored"] = Field(
        description="ignored: the task was cancelled or deleted; nothing was stored")


class DeletedTask(_Model):
    task_id: str
    deleted: Literal[True]


class DeletedAsset(_Model):
    asset_id: str
    deleted: Literal[True]


class RedeliverData(_Model):
    task_id: str
    redelivering: int = Field(ge=0)


class SpeakerData(_Model):
    speaker_id: str = Field(pattern=r"^spk_[0-9a-f]{32}$", examples=["spk_3f1c0b9e6d2a4e5f8a7b6c5d4e3f2a1b"])
    name: str


class SpeakerView(SpeakerData):
    created_at: str
    encoder: str = Field(description="the voice encoder that made its voiceprint")


class SpeakerList(_Model):
    items: list[SpeakerView] = Field(description="the enrolled speakers the caller may see, oldest first")


class SpeakerDeleted(_Model):
    speaker_id: str
    deleted: Literal[True]


class RenameData(_Model):
    task_id: str
    renamed: dict[str, str] = Field(description="each label renamed, and its new name")
    enrolled: list[SpeakerData] = Field(description="the voices enrolled under their new names")
    not_enrolled: dict[str, str] = Field(description="the labels whose voice could not be enrolled, and why")
    plugins_failed: list[str] = Field(description="plugins that could not update what they made of the "
                                                  "transcript (the search index, subtitle files); logged")


class Health(_Model):
    status: Literal["ok"]


class Ready(_Model):
    database: Literal["ok"]
    engine: str = Field(description='"loaded", or why this process has none')
    speakers: str = Field(description='the speaker encoder: "loaded", "disabled (engine.speaker_labels = false)", '
                                      'or why this process has none')
    models: dict[str, str] = Field({}, description='each local model alias: "loaded" or "not loaded" (the default '
                                                   'model loads at start, the others on first use; none without a '
                                                   'worker in this process)')


# --- query strings -------------------------------------------------------------------------


class QueryModel(BaseModel):
    """A query string: values arrive as text; empty values count as absent."""

    model_config = ConfigDict(extra="ignore")  # unknown parameters are ignored, as HTTP caches add them

    @field_validator("limit", mode="before", check_fields=False)
    @classmethod
    def _limit(cls, v: Any) -> int:
        try:
            n = int(v)
        except (TypeError, ValueError):
            n = 0
        if not 1 <= n <= 100:
            raise ValueError("must be an integer from 1 to 100")
        return n


class ListQuery(QueryModel):
    status: Optional[TaskStatusName] = Field(None, description="only tasks in this status")
    limit: int = Field(20, ge=1, le=100, description="items per page")
    cursor: Optional[str] = Field(None, description="next_cursor of the previous page")
    owner: Optional[str] = Field(None, description="only tasks of the key of this name (an admin key's filter; "
                                                   "another key gets its own tasks of that name: none)")

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, v: Any) -> Any:
        if v not in get_args(TaskStatusName):
            raise ValueError(f"must be one of {', '.join(get_args(TaskStatusName))}")
        return v


class RedeliverQuery(QueryModel):
    target: Optional[str] = Field(None, description="only this target (a webhook URL or plugin:<name>)")


def parse_query(model: type[BaseModel], query) -> Any:
    """Validate a query string with `model`; BadRequest naming the first bad parameter."""
    values = {k: v for k, v in query.items() if v != ""}
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise BadRequest(describe_validation_error(exc, empty="query", strip_value_error=True,
                                                   messages={"extra_forbidden": "unknown parameter"})) from None
