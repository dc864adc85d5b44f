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


def lines(segments: Iterable[dict[str, Any]]) -> tuple[list[Line], dict[str, int]]:
    """The transcript's segments, each speaker a colour (in order of first appearance)."""
    colours: dict[str, int] = {}
    out = []
    for i, seg in enumerate(segments):
        speaker = seg.get("speaker")
        colour = None
        if speaker is not None:
            colour = colours.setdefault(speaker, len(colours) % COLOURS)
        out.append(Line(i, float(seg["start_time"]), float(seg["end_time"]), speaker, colour, seg["text"]))
    return out, colours


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
