"""Transcript renderings: SRT and WebVTT cues that follow subtitle conventions, plain text, JSON.

Cues have at most 2 lines of at most 42 characters and last at most 7 s; they never overlap.
Speakers are named where they change: "SPEAKER_01: …" in SRT, a <v SPEAKER_01> voice span in WebVTT.
A segment too long for one cue is split at word boundaries, each word's time interpolated
from its share of the segment's characters; a word longer than a line is broken into pieces of
a line each, so no cue ever exceeds its 2 lines.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from gateway.payloads import Segment

MAX_CHARS = 42
MAX_LINES = 2
MAX_CUE_S = 7.0
FORMATS = ("srt", "vtt", "txt", "json")
MEDIA_TYPES = {"srt": "application/x-subrip", "vtt": "text/vtt", "txt": "text/plain", "json": "application/json"}


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    lines: tuple[str, ...]
    speaker: str | None = None


def wrap(words: list[str], width: int = MAX_CHARS) -> list[str]:
    """Greedy word wrap of words no longer than `width`."""
    lines: list[str] = []
    for word in words:
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def _word_times(seg: Segment, words: list[str]) -> list[tuple[float, float]]:
    """Each word's (start, end), by its share of the segment's characters."""
    total = sum(len(w) + 1 for w in words)
    span = seg.end_time - seg.start_time
    times, pos = [], 0
    for w in words:
        start = seg.start_time + span * pos / total
        pos += len(w) + 1
        times.append((start, seg.start_time + span * pos / total))
    return times


def line_words(text: str, width: int) -> list[str]:
    """The words of `text`, each longer than `width` broken into pieces of `width` characters."""
    return [word[i:i + width] for word in text.split() for i in range(0, len(word), width)]


def segment_cues(seg: Segment, width: int) -> list[Cue]:
    words = line_words(seg.text, width)
    if not words:
        return []
    times = _word_times(seg, words)
    cues: list[Cue] = []
    first = 0
    for i in range(1, len(words) + 1):
        at_end = i == len(words)
        if not at_end:
            candidate = words[first:i + 1]
            fits = (len(wrap(candidate, width)) <= MAX_LINES
                    and times[i][1] - times[first][0] <= MAX_CUE_S)
            if fits:
                continue
        cues.append(Cue(times[first][0], times[i - 1][1], tuple(wrap(words[first:i], width)), seg.speaker))
        first = i
    return cues


def make_cues(segments: Iterable[Segment], prefix_speaker: bool = True) -> list[Cue]:
    """Cues for all segments, in order, without overlaps; with `prefix_speaker`, the first cue
    after each change of speaker starts with "SPEAKER_xx: "."""
    out: list[Cue] = []
    previous = None
    for seg in segments:
        label = f"{seg.speaker}: " if (seg.speaker and prefix_speaker and seg.speaker != previous) else ""
        previous = seg.speaker
        seg_for_text = Segment(seg.start_time, seg.end_time, label + seg.text if label else seg.text, seg.speaker)
        for cue in segment_cues(seg_for_text, MAX_CHARS):
            start = max(cue.start, out[-1].end) if out else cue.start
            end = max(cue.end, start + 0.001)
            out.append(Cue(round(start, 3), round(end, 3), cue.lines, cue.speaker))
    return out


def _ts(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(segments: Iterable[Segment]) -> str:
    blocks = []
    for n, cue in enumerate(make_cues(segments), 1):
        blocks.append(f"{n}\n{_ts(cue.start, ',')} --> {_ts(cue.end, ',')}\n" + "\n".join(cue.lines))
    return "\n\n".join(blocks) + ("\n" if blocks else "")


def to_vtt(segments: Iterable[Segment]) -> str:
    blocks = ["WEBVTT"]
    for cue in make_cues(segments, prefix_speaker=False):
        text = "\n".join(cue.lines)
        if cue.speaker:
            text = f"<v {cue.speaker}>{text}"
        blocks.append(f"{_ts(cue.start, '.')} --> {_ts(cue.end, '.')}\n{text}")
    return "\n\n".join(blocks) + "\n"


def to_txt(segments: Iterable[Segment]) -> str:
    return "".join(f"{s.speaker}: {s.text}\n" if s.speaker else f"{s.text}\n" for s in segments)


def render(fmt: str, segments: Iterable[Segment], result: dict | None = None) -> str:
    segments = list(segments)
    if fmt == "srt":
        return to_srt(segments)
    if fmt == "vtt":
        return to_vtt(segments)
    if fmt == "txt":
        return to_txt(segments)
    if fmt == "json":
        return json.dumps(result, ensure_ascii=False, indent=2) + "\n"
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def write_atomic(path: Path, text: str) -> None:
    """Write via a temp file in the same folder and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
