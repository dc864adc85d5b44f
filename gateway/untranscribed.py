"""Speech the model could not transcribe, found and said, so none is ever dropped silently.

The bundled model (Whisper tiny.en) knows English only, and no package ships an offline
spoken-language detector we could add (docs/ARCHITECTURE.md says what was considered). The
model's own signals show where it failed, whatever the reason (another language, singing,
noise over speech):

- a decoded window whose result failed Whisper's own quality checks at every temperature
  (average log-probability below -1, or compression ratio above 2.4: guessed or looping
  text) gives text that is not what was said: its segments are dropped;
- speech that voice activity detection finds, but no kept segment covers (Whisper skips a
  window it judges to hold no speech when its decoding also failed), is reported.

`uncovered(speech, segments)` gives those stretches; `note(...)` says so in one sentence, for
the task's `note` and the stored result's `data.data.note`.
"""

from __future__ import annotations

from typing import Iterable, Sequence

LOG_PROB_FAILED = -1.0      # faster-whisper's log_prob_threshold: below it a window's decoding failed
COMPRESSION_FAILED = 2.4    # faster-whisper's compression_ratio_threshold: above it the text loops
EDGE_S = 0.5                # slack around each segment: Whisper's segment edges are loose
MIN_SPAN_S = 1.0            # less untranscribed speech than this is a breath or a cough, not speech
JOIN_S = 2.0                # untranscribed stretches closer than this are told as one
MOSTLY = 0.9                # this share of the speech untranscribed: the audio as a whole is told
LISTED = 5                  # stretches named one by one in a note; the rest counted

Span = tuple[float, float]


def failed(avg_logprob: float, compression_ratio: float) -> bool:
    """True when a window's decoding failed Whisper's quality checks even at its last temperature."""
    return avg_logprob < LOG_PROB_FAILED or compression_ratio > COMPRESSION_FAILED


def uncovered(speech: Sequence[Span], segments: Iterable[Span]) -> list[Span]:
    """The stretches of `speech` (start, end in seconds, in time order) that no segment covers
    (each segment widened by EDGE_S), neighbours closer than JOIN_S joined, and only those
    holding at least MIN_SPAN_S of speech."""
    covered = sorted((max(0.0, a - EDGE_S), b + EDGE_S) for a, b in segments)
    gaps: list[Span] = []
    i = 0
    for begin, end in speech:
        at = begin
        while i < len(covered) and covered[i][1] <= at:
            i += 1
        j = i
        while at < end and j < len(covered) and covered[j][0] < end:
            if covered[j][0] > at:
                gaps.append((at, covered[j][0]))
            at = max(at, covered[j][1])
            j += 1
        if at < end:
            gaps.append((at, end))
    return [s for s in _joined(gaps) if s[2] >= MIN_SPAN_S]


def _joined(gaps: list[Span]) -> list[tuple[float, float, float]]:
    """(start, end, seconds of speech) of the gaps, those closer than JOIN_S joined."""
    out: list[list[float]] = []
    for a, b in gaps:
        if out and a - out[-1][1] < JOIN_S:
            out[-1][1] = b
            out[-1][2] += b - a
        else:
            out.append([a, b, b - a])
    return [tuple(x) for x in out]


def note(spans: Sequence[tuple[float, float, float]], speech: Sequence[Span], english_only: bool) -> str | None:
    """One sentence on what was not transcribed and why it may be, or None when nothing was missed."""
    if not spans:
        return None
    why = ("the model transcribes English only, and this speech may be in another language" if english_only
           else "the model could not make out words there")
    missed = sum(s[2] for s in spans)
    total = sum(b - a for a, b in speech)
    if english_only and total and missed >= MOSTLY * total:
        return (f"the audio does not seem to be in English: its speech ({_where(spans)}) could not be "
                f"transcribed, as the model transcribes English only")
    return f"speech {_where(spans)} could not be transcribed: {why}"


def _where(spans: Sequence[tuple[float, float, float]]) -> str:
    named = ", ".join(f"from {a:.1f} s to {b:.1f} s" for a, b, _ in spans[:LISTED])
    rest = spans[LISTED:]
    if rest:
        named += f", and {len(rest)} more stretches ({sum(s[2] for s in rest):.1f} s of speech)"
    return named
