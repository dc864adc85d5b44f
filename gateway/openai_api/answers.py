"""The models of what the OpenAI API answers, field for field as the `openai` package's types
(openai.types.audio.*, openai.types.Model): every JSON answer under /v1 is built through them
(`formats`, `catalogue`), and the OpenAPI document describes /v1 from them."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an answer field without its model fails at once


class DurationUsage(_Answer):
    type: Literal["duration"]
    seconds: float = Field(ge=0, description="the audio's duration")


class TokensUsage(_Answer):
    type: Literal["tokens"]
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class Transcription(_Answer):
    """response_format json (a translation's: `text` alone, openai's Translation)."""

    text: str
    usage: Optional[DurationUsage] = None


class TranscriptionSegment(_Answer):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class TranscriptionWord(_Answer):
    word: str
    start: float
    end: float


class TranscriptionVerbose(_Answer):
    """response_format verbose_json (a translation's: openai's TranslationVerbose, without usage)."""

    task: Literal["transcribe", "translate"]
    language: str
    duration: float
    text: str
    segments: Optional[list[TranscriptionSegment]] = None
    words: Optional[list[TranscriptionWord]] = None
    usage: Optional[DurationUsage] = None


class TranscriptionDiarizedSegment(_Answer):
    type: Literal["transcript.text.segment"]
    id: str
    start: float
    end: float
    text: str
    speaker: str = Field(description="A, B, … in order of first appearance, or a known speaker's name")


class TranscriptionDiarized(_Answer):
    """response_format diarized_json."""

    task: Literal["transcribe"]
    duration: float
    text: str
    segments: list[TranscriptionDiarizedSegment]
    usage: Optional[DurationUsage] = None


class TextDelta(_Answer):
    """A server-sent event of stream=true: more text."""

    type: Literal["transcript.text.delta"]
    delta: str


class TextDone(_Answer):
    """The last server-sent event of stream=true: the whole text."""

    type: Literal["transcript.text.done"]
    text: str
    usage: TokensUsage


class Model(_Answer):
    id: str
    object: Literal["model"]
    created: int = Field(description="when this gateway process started (Unix seconds)")
    owned_by: str = Field(description="the provider that serves the alias: local, openai, memories, …")


class ModelList(_Answer):
    object: Literal["list"]
    data: list[Model]


class ErrorDetail(_Answer):
    message: str
    type: str = Field(description="invalid_request_error (4xx) or server_error (5xx)")
    param: Optional[str] = Field(description="the request field at fault")
    code: Optional[str]


class ErrorBody(_Answer):
    """Every error under /v1."""

    error: ErrorDetail
