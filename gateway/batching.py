"""Batched decoding for the local engine (engine.batch_size > 0): several windows of speech
through Whisper at once with faster-whisper's BatchedInferencePipeline, which keeps a 2-core CPU
far busier than decoding one window after another (docs/ARCHITECTURE.md, "Batched decoding").

What it keeps of sequential decoding, and how:

- Windows: the stretches of speech Silero VAD finds (as the pipeline itself finds them), joined
  while the window from the first one's start to the last one's end lasts at most CLIP_S. So
  each window is audio as it was (its pauses in it), no segment can be longer than a window,
  and times need no mapping back from speech glued together (the pipeline's own VAD glues up
  to 30 s of speech across any silence).
- What the model hears: each window followed by true silence up to 30 s (`padded`: the
  pipeline pads the log-mel of a shorter clip with zeros, which is not silence, and tiny.en
  transcribed such windows worse); segment times are kept within the window (`inside`).
- Quality checks per segment: the pipeline's log-probability is its window's, so words are
  always aligned and each segment's own words are checked too (`failed`).
- Segment timestamps: `without_timestamps=False` (the pipeline's default, True, gives one
  segment per window); word timestamps when asked.
- Progress and stopping: the pipeline is called once per batch, so each batch's segments come
  as soon as it is decoded (and a stopping engine stops at the next one), and only one
  batch's features are in memory. The first batch is small and the next ones grow
  (batch_edges), so the first texts come early, as they did.
- The temperature fallback: the pipeline decodes at one temperature. A window whose result
  fails Whisper's quality checks (untranscribed.failed) is decoded again on its own by the
  sequential decoder with the fallback temperatures, as sequential decoding would have done.
- language, prompt, hotwords, translation, a task's temperature: the pipeline takes them as
  the sequential decoder does (the prompt starts every window; nothing is conditioned on the
  previous window's text, which faster-whisper's batched decoding never does).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterator, Sequence

import numpy as np

from gateway import untranscribed

SAMPLE_RATE = 16000
CLIP_S = 30.0               # Whisper's window
VAD = {"max_speech_duration_s": CLIP_S, "min_silence_duration_ms": 160}  # the batched pipeline's own

MIN_TAIL_S = 1.0            # a window's end left undecoded (_tail) this long or longer is decoded again
FIRST_BATCH = 2             # windows in the first batch (batch_edges)
TAIL_ROUNDS = 2             # times a batch's leftovers are decoded again
Clip = tuple[float, float]  # start, end in seconds of the audio


def clips(audio: np.ndarray) -> list[Clip]:
    """The windows batched decoding works on (module docstring), in time order."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    found = get_speech_timestamps(audio, VadOptions(**VAD))
    return joined([(c["start"] / SAMPLE_RATE, c["end"] / SAMPLE_RATE) for c in found])


def joined(regions: Sequence[Clip], limit: float = CLIP_S) -> list[Clip]:
    """Consecutive stretches of speech joined while the whole lasts at most `limit` seconds; a
    stretch longer than that alone (VAD splits them before) is cut to `limit`."""
    out: list[Clip] = []
    for start, end in regions:
        if out and end - out[-1][0] <= limit:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, min(end, start + limit)))
    return out


def batched(model, audio: np.ndarray, windows: Sequence[Clip], batch_size: int,
            settings: dict[str, Any]) -> tuple[Iterator, str]:
    """`model`'s segments of `windows` of `audio`, decoded up to `batch_size` windows at a time
    (batch_edges; lazily, a batch per step), and the language: the one asked, else the one the first batch detects.
    `settings` are the sequential decoder's keyword arguments (language, beam_size, task,
    initial_prompt, hotwords, temperature, word_timestamps)."""
    cuts = batch_edges(len(windows), batch_size)
    first, language = _batch(model, audio, windows[:cuts[1]], settings)
    settings = {**settings, "language": language}  # every batch in the language of the first

    def rest() -> Iterator:
        yield from first
        for a, b in zip(cuts[1:], cuts[2:]):
            yield from _batch(model, audio, windows[a:b], settings)[0]

    return rest(), language


def batch_edges(n: int, batch_size: int) -> list[int]:
    """Where the batches of `n` windows begin, and n: the first batch FIRST_BATCH windows, each
    next one twice as many, up to batch_size; so the first texts and progress come about as
    soon as sequential decoding gives them, and a long file soon goes batch_size at a time.
    A batch takes the windows left after it too when they are fewer than itself and it stays
    within batch_size (a last small batch costs about what a full one does)."""
    edges, size = [0], min(FIRST_BATCH, batch_size)
    while edges[-1] < n:
        left = n - edges[-1] - size
        edges.append(n if left < size and size + left <= batch_size else min(n, edges[-1] + size))
        size = min(2 * size, batch_size)
    return edges


def _batch(model, audio: np.ndarray, windows: Sequence[Clip], settings: dict[str, Any]) -> tuple[list, str]:
    """One batch decoded: the segments of its windows in time order (what the pipeline left of a
    window decoded again, TAIL_ROUNDS times at most), and the language."""
    out, language, pending, again = [], settings["language"], list(windows), False
    for _ in range(1 + TAIL_ROUNDS):
        decoded, language = _decoded(model, audio, pending, {**settings, "language": language}, again)
        out += [s for _, segments, _ in decoded for s in segments]
        pending, again = [tail for _, _, tail in decoded if tail], True
        if not pending:
            break
    return sorted(out, key=lambda s: s.start), language


def _decoded(model, audio: np.ndarray, windows: Sequence[Clip], settings: dict[str, Any],
             again: bool) -> tuple[list[tuple[Clip, list, Clip | None]], str]:
    """(window, its segments, what of it is left to decode or None) of each window, decoded
    together by the pipeline, and the language. A window whose decoding failed Whisper's quality
    checks, or that gave no segment at all the first time (`again` false), is decoded `alone`."""
    from faster_whisper import BatchedInferencePipeline

    # a pipeline per call: it is a thin wrapper, and keeps a run's state (last_speech_timestamp)
    segments, info = BatchedInferencePipeline(model).transcribe(
        padded(audio, windows), clip_timestamps=[{"start": i * CLIP_S, "end": (i + 1) * CLIP_S}
                                                 for i in range(len(windows))],
        batch_size=len(windows), without_timestamps=False, **{**settings, "word_timestamps": True})
    words = settings.get("word_timestamps", False)
    by_seek: dict[int, list] = {}
    for s in segments:
        by_seek.setdefault(s.seek, []).append(s)
    fallback = "temperature" not in settings  # the task asked no temperature of its own
    out = []
    for i, window in enumerate(windows):
        got = [s for s in (shifted(s, window[0] - i * CLIP_S) for s in by_seek.get(_seek(model, i * CLIP_S), []))
               if s.start < window[1]]
        if (not got and not again) or (fallback and any(failed(s) for s in got)):
            out.append((window, alone(model, audio, window, {**settings, "language": info.language}), None))
        else:
            got = [inside(s if words else replace(s, words=None), window) for s in got]
            out.append((window, got, _tail(window, got)))
    return out, info.language


def failed(segment) -> bool:
    """True when `segment` failed Whisper's quality checks: the pipeline's log-probability is its
    window's, so a window of good speech could carry a segment of guesses (the German half of
    tests/test_language.py's clip, heard as "I hope you enjoyed this video"); its own words'
    mean log-probability is checked too."""
    own = np.mean(np.log(np.maximum([w.probability for w in segment.words or ()] or [1.0], 1e-6)))
    return untranscribed.failed(min(segment.avg_logprob, float(own)), segment.compression_ratio)


def padded(audio: np.ndarray, windows: Sequence[Clip]) -> np.ndarray:
    """Each window's audio followed by silence up to CLIP_S, one after the other (the pipeline
    pads the log-mel of a shorter window with zeros, which is not silence but a steady sound)."""
    size = int(CLIP_S * SAMPLE_RATE)
    out = np.zeros(len(windows) * size, np.float32)
    for i, (start, end) in enumerate(windows):
        piece = audio[int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)][:size]
        out[i * size:i * size + len(piece)] = piece
    return out


def shifted(segment, by: float):
    """`segment` (and its words) `by` seconds later."""
    words = None if segment.words is None else [replace(w, start=w.start + by, end=w.end + by)
                                                for w in segment.words]
    return replace(segment, start=segment.start + by, end=segment.end + by, words=words)


def inside(segment, window: Clip):
    """`segment` with its times (and its words') kept within `window`: the pipeline's can run
    past the window's end (to the next whole second after it), into the next window's."""
    start, end = window
    words = None if segment.words is None else [
        replace(w, start=min(max(w.start, start), end), end=min(max(w.end, start), end)) for w in segment.words]
    return replace(segment, start=min(max(segment.start, start), end), end=min(max(segment.end, start), end),
                   words=words)


def _tail(window: Clip, segments: Sequence) -> Clip | None:
    """What of `window` its segments leave undecoded: from the last one's end, when that is
    MIN_TAIL_S or more before the window's end. The pipeline drops a window's unfinished last
    segment (text after the last timestamp), which the sequential decoder decodes again in its
    next window."""
    end = segments[-1].end if segments else window[1]
    return (end, window[1]) if window[1] - end >= MIN_TAIL_S else None


def _seek(model, start: float) -> int:
    """The `seek` the pipeline gives the segments of a window starting at `start` seconds."""
    return int(int(start * SAMPLE_RATE) / SAMPLE_RATE * model.frames_per_second)


def alone(model, audio: np.ndarray, window: Clip, settings: dict[str, Any]) -> list:
    """The segments of one window decoded by the sequential decoder (with its temperature
    fallback), in the times of the whole audio."""
    start, end = window
    segments, _ = model.transcribe(audio[int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)], vad_filter=False,
                                   **settings)
    return [shifted(s, start) for s in segments]
