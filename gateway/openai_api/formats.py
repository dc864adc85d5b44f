"""A completed task rendered in each response_format of the OpenAI API, as the `openai` package's
types read them (Transcription, TranscriptionVerbose, TranscriptionDiarized, Translation(Verbose),
and plain strings for text, srt and vtt). Plain functions of the stored result (the callback
payload's `data.data`).

What a provider did not give is filled in: a segment without the decoder's figures (`seek`,
`tokens`, `temperature`, `avg_logprob`, `compression_ratio`, `no_speech_prob`) gets 0 (and [] for
`tokens`); a result without a detected `language` gives the one the task asked for, else
"english"; verbose_json `words` are those of the segments that have them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from gateway import subtitles
from gateway.openai_api import answers
from gateway.languages import name_of
from gateway.payloads import Segment

JSON = "application/json"
TRANSCRIBE, TRANSLATE = "transcribe", "translate"
DETAILS_DEFAULTS = {"seek": 0, "tokens": [], "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 0.0,
                    "no_speech_prob": 0.0}


@dataclass(frozen=True)
class Shape:
    """What the client asked the answer to look like."""

    response_format: str = "json"
    task: str = TRANSCRIBE  # or TRANSLATE
    language: str | None = None  # asked for (a code)
    words: bool = False  # verbose_json: `words`
    segments: bool = True  # verbose_json: `segments`


def text_of(segments: Iterable[dict[str, Any]]) -> str:
    return " ".join(s["text"] for s in segments)


def usage(result: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's duration usage: the audio's seconds."""
    return {"type": "duration", "seconds": result["usage_metadata"]["duration"]}


def as_json(result: dict[str, Any], shape: Shape) -> dict[str, Any]:
    """`json`: Transcription (a translation's: Translation, the text alone)."""
    text = text_of(result["data"])
    return {"text": text} if shape.task == TRANSLATE else {"text": text, "usage": usage(result)}


def verbose_segment(index: int, seg: dict[str, Any]) -> dict[str, Any]:
    """TranscriptionSegment: our segment, with the decoder's figures where the provider gave them."""
    out = {"id": index, "start": seg["start_time"], "end": seg["end_time"], "text": seg["text"]}
    for key, default in DETAILS_DEFAULTS.items():
        out[key] = seg.get(key, default)
    return out


def words_of(segments: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """TranscriptionWord of every word the segments carry, in order."""
    return [{"word": w["word"].strip(), "start": w["start_time"], "end": w["end_time"]}
            for s in segments for w in s.get("words") or ()]


def verbose_json(result: dict[str, Any], shape: Shape) -> dict[str, Any]:
    """`verbose_json`: TranscriptionVerbose (TranslationVerbose): `segments` unless only word
    timestamps were asked for, `words` when they were."""
    language = "english" if shape.task == TRANSLATE else name_of(result.get("language") or shape.language)
    out: dict[str, Any] = {"task": shape.task, "language": language, "duration": result["usage_metadata"]["duration"],
                           "text": text_of(result["data"])}
    if shape.segments:
        out["segments"] = [verbose_segment(i, s) for i, s in enumerate(result["data"])]
    if shape.words:
        out["words"] = words_of(result["data"])
    if shape.task == TRANSCRIBE:
        out["usage"] = usage(result)
    return out


def speaker_letter(n: int) -> str:
    """A, B, … Z, AA, AB, …: the n-th speaker (from 0) as OpenAI labels speakers."""
    letters = ""
    n += 1
    while n:
        n, rest = divmod(n - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def speaker_labels(segments: Iterable[dict[str, Any]]) -> dict[str | None, str]:
    """Our labels (SPEAKER_00, SPEAKER_01, … in order of first appearance) as letters; any other
    label (a known speaker's name) stays as it is."""
    labels: dict[str | None, str] = {}
    lettered = 0
    for s in segments:
        label = s.get("speaker")
        if label in labels:
            continue
        if label is None or (label.startswith("SPEAKER_") and label[8:].isdigit()):
            labels[label], lettered = speaker_letter(lettered), lettered + 1
        else:
            labels[label] = label
    return labels


def diarized_json(result: dict[str, Any], shape: Shape) -> dict[str, Any]:
    """`diarized_json`: TranscriptionDiarized, speakers `A`, `B`, …"""
    labels = speaker_labels(result["data"])
    segments = [{"type": "transcript.text.segment", "id": f"seg_{i}", "start": s["start_time"], "end": s["end_time"],
                 "text": s["text"], "speaker": labels[s.get("speaker")]} for i, s in enumerate(result["data"])]
    return {"task": TRANSCRIBE, "duration": result["usage_metadata"]["duration"], "text": text_of(result["data"]),
            "segments": segments, "usage": usage(result)}


def _segments(result: dict[str, Any]) -> list[Segment]:
    return [Segment(s["start_time"], s["end_time"], s["text"], s.get("speaker")) for s in result["data"]]


def render(result: dict[str, Any], shape: Shape) -> tuple[bytes, str]:
    """The answer's body and media type for `shape.response_format`."""
    fmt = shape.response_format
    if fmt in JSON_FORMATS:
        build, model = JSON_FORMATS[fmt]
        return model.model_validate(build(result, shape)).model_dump_json(exclude_none=True).encode(), JSON
    if fmt == "text":
        return (text_of(result["data"]) + "\n").encode(), "text/plain"
    if fmt in ("srt", "vtt"):
        return subtitles.render(fmt, _segments(result)).encode(), subtitles.MEDIA_TYPES[fmt]
    raise ValueError(f"unknown response_format {fmt!r}")


JSON_FORMATS = {"json": (as_json, answers.Transcription), "verbose_json": (verbose_json, answers.TranscriptionVerbose),
                "diarized_json": (diarized_json, answers.TranscriptionDiarized)}
