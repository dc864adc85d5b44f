"""What the pages show, as plain data: times, speakers' colours, highlighted snippets. No HTML
here: the templates escape everything."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

COLOURS = 8  # speaker colours in style.css: .spk-0 … .spk-7


def clock(seconds: float | None) -> str:
    """1:02:03 or 2:03 (minutes:seconds); empty when unknown."""
    if seconds is None:
        return ""
    total = int(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def when(value: datetime | str | None) -> str:
    """A timestamp as `2026-12-01 19:45:04 UTC`."""
    if value is None:
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class Line:
    index: int
    start: float
    end: float
    speaker: str | None
    colour: int | None
    text: str


def lines(segments: Iterable[dict[str, Any]],
          turns: Iterable[dict[str, Any]] = ()) -> tuple[list[Line], dict[str, int]]:
    """The transcript's segments, each speaker a colour (in order of first appearance, the
    transcript's speakers first, then a voice heard only in the speaker turns)."""
    colours: dict[str, int] = {}
    out = []
    for i, seg in enumerate(segments):
        speaker = seg.get("speaker")
        colour = None
        if speaker is not None:
            colour = colours.setdefault(speaker, len(colours) % COLOURS)
        out.append(Line(i, float(seg["start_time"]), float(seg["end_time"]), speaker, colour, seg["text"]))
    for turn in turns:
        colours.setdefault(turn["speaker"], len(colours) % COLOURS)
    return out, colours


@dataclass(frozen=True)
class Bar:
    """A speaker turn on the timeline: where it starts and how wide it is, in per mille of the audio."""

    start: float
    end: float
    speaker: str
    colour: int
    x: float
    width: float


def timeline(turns: Iterable[dict[str, Any]], colours: dict[str, int], duration: float | None) -> list[Bar]:
    """The speaker turns as bars across the audio: its `duration`, or the last turn's end when
    that is later or the duration is unknown (no bars when both are 0)."""
    turns = list(turns)
    length = max([duration or 0.0, *(float(t["end_time"]) for t in turns)])
    if length <= 0:
        return []
    scale = 1000 / length
    return [Bar(float(t["start_time"]), float(t["end_time"]), t["speaker"], colours[t["speaker"]],
                round(float(t["start_time"]) * scale, 2),
                round(max(float(t["end_time"]) - float(t["start_time"]), 0.0) * scale, 2)) for t in turns]


def speaking_times(segments: Iterable[dict[str, Any]], turns: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Seconds each speaker speaks: by the speaker turns when the result has them (they cover
    speech no segment holds), else by the segments."""
    spans = list(turns) or [s for s in segments if s.get("speaker") is not None]
    out: dict[str, float] = {}
    for span in spans:
        out[span["speaker"]] = out.get(span["speaker"], 0.0) + float(span["end_time"]) - float(span["start_time"])
    return out


_MATCH = re.compile(r"\[([^\[\]]*)\]")


def snippet_pieces(snippet: str) -> list[tuple[str, bool]]:
    """The search index's snippet (matches in [ ]) as (text, is_match) pieces to show."""
    pieces, at = [], 0
    for m in _MATCH.finditer(snippet):
        if m.start() > at:
            pieces.append((snippet[at:m.start()], False))
        pieces.append((m.group(1), True))
        at = m.end()
    if at < len(snippet):
        pieces.append((snippet[at:], False))
    return pieces
