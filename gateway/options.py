"""A task's engine options beyond the columns every task has (model, language, speaker hints):
what the memories API's `word_timestamps`, `speaker_turns`, `prompt`, `hotwords`,
`known_speakers` and the OpenAI API's `prompt`, `temperature`, translation, segment details and
known speakers ask of the provider.

Stored as JSON in `task.options`, NULL when every option is at its default, so a task that asks
for nothing new is stored, run and delivered exactly as before.
"""

from __future__ import annotations

import json
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from gateway.models import Task
from gateway.payloads import strict_text
from gateway.voiceprints import KnownVoice, from_text, to_text

Text = strict_text()


class KnownSpeaker(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Text
    voiceprint: Text  # base64 of the float32 embedding, or several (gateway/voiceprints.py)
    narrowband: Optional[Text] = None  # base64 of the telephone band's (tasks submitted before it: none)

    @classmethod
    def of(cls, voice: KnownVoice) -> "KnownSpeaker":
        return cls(name=voice.name, voiceprint=to_text(voice.voiceprint),
                   narrowband=None if voice.narrowband is None else to_text(voice.narrowband))


class TaskOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    word_timestamps: StrictBool = False  # each segment of the result gets its `words`
    speaker_turns: StrictBool = False  # the result gets its `turns` (who spoke when; with speaker=true)
    prompt: Optional[strict_text(4000)] = None  # the decoder's initial prompt
    hotwords: Optional[strict_text(1000)] = None  # words to favour
    temperature: Optional[float] = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    translate: StrictBool = False  # into English (the OpenAI API's /v1/audio/translations)
    details: StrictBool = False  # each segment keeps the decoder's figures (OpenAI verbose_json)
    # the voices to name (the memories API's known_speakers, the OpenAI API's known_speaker_*),
    # as their voiceprints were when the task was submitted: the audio is never kept
    known_speakers: tuple[KnownSpeaker, ...] = ()

    def known_voices(self) -> tuple[KnownVoice, ...]:
        return tuple(KnownVoice(k.name, from_text(k.voiceprint), None if k.narrowband is None else from_text(k.narrowband))
                     for k in self.known_speakers)

    def dump(self) -> str | None:
        """The JSON stored in task.options: None when every option is at its default."""
        fields = self.model_dump(exclude_defaults=True, mode="json")
        return json.dumps(fields, sort_keys=True, separators=(",", ":")) if fields else None


DEFAULT = TaskOptions()


def options_of(task: Task) -> TaskOptions:
    """A task's options (the defaults for a task stored without any)."""
    return TaskOptions.model_validate_json(task.options) if task.options else DEFAULT
