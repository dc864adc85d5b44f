"""Batched decoding for the local engine (engine.batch_size > 0): several windows of speech
through Whisper at once with faster-whisper's BatchedInferencePipeline, which keeps a 2-core CPU
far busier than decoding one window after another (docs/ARCHITECTURE.md, "Batched decoding").

What it keeps of sequential decoding, and how:

- Windows: the stretches of speech Silero VAD finds (speakers.speech_regions, found once for
  the note of untranscribed speech, the speakers' windows and these; padded as the pipeline
  pads its own, `clips`), packed
  end to end (a pause between two shortened to GAP_S) while they fill at most FILL_S, nearly as
  the pipeline packs them (up to 30 s, so there are about as few windows as it would decode:
  with 3 s of silence left at the end, Whisper ends fewer windows' text early, and fewer
  windows need their end decoded again, bench/results/engine.md); a pause over MAX_PAUSE_S
  starts a new window, so no segment can stretch over a long silence. Each segment's times (and
  its words') are mapped from the window back to the audio (`Window.to_audio`).
- What the model hears: each window followed by true silence up to 30 s (`padded`: the
  pipeline pads the log-mel of a shorter clip with zeros, which is not silence, and tiny.en
  transcribed such windows worse); segment times are kept within the window (`inside`).
- The end of a window the pipeline leaves undecoded: Whisper sometimes ends a window's text
  early, or with a segment it does not close, which the pipeline drops; the sequential decoder
  would have decoded the rest in its next window. Here the rest (`_tail`) joins the next batch
  (or a last small one), at most TAIL_ROUNDS times; segments are given in time order, each once
  everything before it is decoded.
- Quality checks: a window's words are aligned when the task or speaker labelling asks for
  them, or when its decoding is `doubtful` (a low figure, few words for its time, a poor
  recording's batch); aligning is a pass of the decoder, a tenth of the time. A window whose
  decoding fails the checks (`failed`: the pipeline's figure, its window's as the sequential
  decoder's is; the compression ratio of its whole text, as the sequential decoder's; its
  words' mean) is decoded again on its own (below); a window that says one text again and
  again is kept up to where it began (`unlooped`) and the rest decoded again; and since a
  window of good speech can carry a segment of guesses (German after English), a segment of
  MIN_JUDGED words or more takes its own words' figure when lower (`judged`), so it is
  dropped as a failed window's segments are, not decoded again: at temperature 0 the
  sequential decoder gives the same.
- Segment timestamps: `without_timestamps=False` (the pipeline's default, True, gives one
  segment per window); word timestamps when asked.
- Progress and stopping: the pipeline is called once per batch (batches of equal size, at most
  batch_size windows), so each batch's segments come as soon as it is decoded (and a stopping
  engine stops at the next one), and only one batch's features are in memory.
- The temperature fallback: the pipeline decodes at one temperature, 0. A window whose result
  fails Whisper's quality checks, or that gave no segment at all, is decoded again on its own
  by the sequential decoder with the fallback temperatures after 0 (`alone`), as sequential
  decoding would have done; the last seconds of such a window, heard alone after a chunk that
  failed, are dropped with it (`heard_after_failure`).
- language, prompt, hotwords, translation, a task's temperature: the pipeline takes them as
  the sequential decoder does (the prompt starts every window; nothing is conditioned on the
  previous window's text, which faster-whisper's batched decoding never does).
"""

from __future__ import annotations

import bisect
import functools
import math
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from gateway import untranscribed

SAMPLE_RATE = 16000
CLIP_S = 30.0               # Whisper's window
PAD_S = 0.3                 # speech_regions pads a stretch of speech by 0.1 s, the pipeline's VAD by 0.4
FILL_S = 27.0               # seconds of a window packed with speech: fuller ones, Whisper often ends early
GAP_S = 0.2                 # silence between two stretches of speech packed in one window
SHORT_S = 10.0              # a window this short after a full one takes speech from its end (`balanced`)
MAX_PAUSE_S = 3.0           # a longer pause between two stretches starts a new window
MIN_TAIL_S = 1.0            # a window's end left undecoded (_tail) this long or longer is decoded again
TAIL_ROUNDS = 2             # times what is left of a window is decoded again
MIN_JUDGED = 3              # words a segment needs for its own words to be checked (fewer say little)
DOUBTFUL_LOGPROB = -0.38    # a window's pipeline figure below this: its words are aligned and checked
MIN_TOKENS_PER_S = 1.5      # fewer text tokens per second of a window's audio: the same
POOR_LOGPROB = -0.45        # a window of a batch whose lowest figure is below this: the same
FALLBACK = (0.2, 0.4, 0.6, 0.8, 1.0)  # faster-whisper's fallback temperatures after 0, which the batch used
Clip = tuple[float, float]  # start, end in seconds of the audio


@dataclass(frozen=True)
class Window:
    """Stretches of the audio (start, end), in time order, laid end to end with the pause
    between two of them shortened to GAP_S at most: what the model hears as one 30-s window."""

    pieces: tuple[Clip, ...]

    @property
    def start(self) -> float:
        return self.pieces[0][0]

    @property
    def end(self) -> float:
        return self.pieces[-1][1]

    @cached_property
    def at(self) -> tuple[float, ...]:
        """Where each piece begins in the window."""
        out, t, last = [], 0.0, self.start
        for start, end in self.pieces:
            t += min(start - last, GAP_S)
            out.append(t)
            t, last = t + end - start, end
        return tuple(out)

    @cached_property
    def length(self) -> float:
        """Seconds of the window that hold audio (the rest is silence)."""
        return self.at[-1] + self.pieces[-1][1] - self.pieces[-1][0]

    def to_audio(self, t: float) -> float:
        """The audio's time of `t` seconds into the window (a time in a gap: its piece's end)."""
        at = self.at
        i = max(0, bisect.bisect_right(at, t) - 1)
        start, end = self.pieces[i]
        return min(max(start + t - at[i], start), end)

    def after(self, t: float) -> Window:
        """What of the window lies after `t` seconds into it."""
        cut = self.to_audio(t)
        return Window(tuple((max(start, cut), end) for start, end in self.pieces if end > cut))


def clips(regions: Sequence[Clip], duration: float) -> list[Window]:
    """The windows batched decoding works on (module docstring), in time order, from the
    stretches of speech `regions` (speakers.speech_regions: found once for the note, the
    speakers' windows and these) in `duration` seconds of audio: each widened by PAD_S as far as
    halfway to its neighbours (the pipeline's own VAD pads them so), one longer than FILL_S cut
    in equal parts."""
    parts: list[Clip] = []
    for i, (start, end) in enumerate(regions):
        before = (regions[i - 1][1] + start) / 2 if i else 0.0
        after = (end + regions[i + 1][0]) / 2 if i + 1 < len(regions) else duration
        start, end = max(start - PAD_S, before), min(end + PAD_S, after)
        n = math.ceil((end - start) / FILL_S)
        parts += [(start + k * (end - start) / n, start + (k + 1) * (end - start) / n) for k in range(n)]
    return packed(parts, FILL_S)


def packed(regions: Sequence[Clip], limit: float = CLIP_S) -> list[Window]:
    """Consecutive stretches of speech packed into windows (`Window`) while they fill at most
    `limit` seconds and no pause between them is longer than MAX_PAUSE_S; a stretch longer than
    `limit` alone (`clips` splits them before) is cut to `limit`. A short window that goes on from
    the one before it takes stretches from its end (`balanced`)."""
    out: list[Window] = []
    for start, end in regions:
        end = min(end, start + limit)
        if out and start - out[-1].end <= MAX_PAUSE_S:
            grown = Window(out[-1].pieces + ((start, end),))
            if grown.length <= limit:
                out[-1] = grown
                continue
        out.append(Window(((start, end),)))
    for i in range(1, len(out)):
        if out[i].start - out[i - 1].end <= MAX_PAUSE_S:
            out[i - 1:i + 1] = balanced(out[i - 1], out[i], limit)
    return out


def balanced(before: Window, short: Window, limit: float) -> list[Window]:
    """`before` and the window after it, `short`, with stretches moved from the end of `before`
    to `short` while `short` is under SHORT_S and stays the shorter: Whisper hears a second or two
    alone with little to go on (the last second of tests/test_language.py's German, alone in a
    window, was heard as English words of good probability; in a window with the German before
    it, it fails the checks, as sequential decoding's 30-s window does)."""
    while short.length < SHORT_S and len(before.pieces) > 1:
        rest, moved = Window(before.pieces[:-1]), Window(before.pieces[-1:] + short.pieces)
        if moved.length > limit or moved.length > rest.length:
            break
        before, short = rest, moved
    return [before, short]


def batched(model, audio: np.ndarray, windows: Sequence[Window], batch_size: int,
            settings: dict[str, Any]) -> tuple[Iterator, str]:
    """`model`'s segments of `windows` of `audio` in time order, decoded up to `batch_size`
    windows at a time (lazily, a batch per step), and the language: the one asked, else the
    one the first batch detects. `settings` are the sequential decoder's keyword arguments
    (language, beam_size, task, initial_prompt, hotwords, temperature, word_timestamps)."""
    per = math.ceil(len(windows) / math.ceil(len(windows) / batch_size))  # batches of equal size
    queue = list(windows)
    first, language = _decoded(model, audio, queue[:per], settings, round_of={})
    settings = {**settings, "language": language}  # every batch in the language of the first

    def segments() -> Iterator:
        done, left, rounds = [], queue[per:], {}
        results = first
        while True:
            tails = []
            for window, got, tail in results:
                done += got
                if tail and rounds.get(window, 0) < TAIL_ROUNDS:
                    rounds[tail] = rounds.get(window, 0) + 1
                    tails.append(tail)
            done.sort(key=lambda s: s.start)
            pending = [w.start for w in tails] + [w.start for w in left[:1]]
            until = min(pending, default=math.inf)
            ready = [s for s in done if s.start < until]
            done = done[len(ready):]
            yield from ready
            if not pending:
                return
            batch = tails + left[:max(0, min(per, batch_size - len(tails)))]
            left = left[len(batch) - len(tails):]
            results, _ = _decoded(model, audio, batch, settings, rounds)

    return segments(), language


def _decoded(model, audio: np.ndarray, windows: Sequence[Window], settings: dict[str, Any],
             round_of: dict) -> tuple[list[tuple[Window, list, Window | None]], str]:
    """(window, its segments in the audio's times, what of it is left to decode or None) of each
    window, decoded together by the pipeline, and the language. A window whose decoding failed
    Whisper's quality checks, or that gave no segment at all the first time, is decoded `alone`."""
    # a pipeline per call: it is a thin wrapper, and keeps a run's state (last_speech_timestamp)
    segments, info = _pipeline(model, windows, bool(settings.get("word_timestamps"))).transcribe(
        padded(audio, windows), clip_timestamps=[{"start": i * CLIP_S, "end": (i + 1) * CLIP_S}
                                                 for i in range(len(windows))],
        batch_size=len(windows), without_timestamps=False, **{**settings, "word_timestamps": True})
    by_seek: dict[int, list] = {}
    for s in segments:
        by_seek.setdefault(s.seek, []).append(s)
    fallback = "temperature" not in settings  # the task asked no temperature of its own
    out = []
    for i, window in enumerate(windows):
        got = [inside(shifted(s, -i * CLIP_S), window) for s in by_seek.get(_seek(model, i * CLIP_S), [])]
        got = unlooped([s for s in got if s.start < window.length])
        if (not got and window not in round_of) or (fallback and failed(got)):
            again = {**settings, "language": info.language, "temperature": FALLBACK}
            out.append((window, alone(model, audio, window, again), None))
        else:  # what is left of a window that gave nothing when decoded again is not speech
            tail = _tail(window, got) if got else None
            out.append((window, [in_audio(kept(judged(s), settings), window) for s in got], tail))
    return out, info.language


def doubtful(figure: float, text_tokens: int, length: float, lowest: float) -> bool:
    """True when a window's decoding may be one its words fail (`failed`, `judged`), so they are
    worth aligning when no one asked for them (docs/ARCHITECTURE.md, "Quality checks by the words
    too"): its pipeline figure is low, or it gave few text tokens for its `length` seconds of
    audio (21 s of German heard as "I'm feeling like" twice, at -0.16), or the lowest figure of
    its batch, `lowest`, says the recording is poor (a telephone line, noise, a codec: there,
    windows at -0.25 carried segments of guesses). Measured on the engine bench's accuracy set
    and conversations, bench/realistic.py's conditions and English followed by four other
    languages: every window whose words changed what was kept is doubtful; 7 in 73 of clean
    speech are."""
    return figure < DOUBTFUL_LOGPROB or text_tokens < MIN_TOKENS_PER_S * length or lowest < POOR_LOGPROB


@functools.cache
def _pipeline_class(base: type) -> type:
    class Pipeline(base):
        """faster-whisper's pipeline aligning the words of a batch's windows only where they are
        wanted or the window is `doubtful` (aligning is a pass of the decoder over a window: a
        tenth of its time); the other windows' segments have no words."""

        def __init__(self, model, windows: Sequence[Window], words: bool) -> None:
            super().__init__(model)
            self.windows, self.words = list(windows), words

        def generate_segment_batched(self, features, tokenizer, options):
            self.encoded, outputs = super().generate_segment_batched(features, tokenizer, options)
            return self.encoded, outputs

        def forward(self, features, tokenizer, chunks_metadata, options):
            out = super().forward(features, tokenizer, chunks_metadata, replace(options, word_timestamps=False))
            windows, self.windows = self.windows[:len(out)], self.windows[len(out):]
            figures = [got[0]["avg_logprob"] if got else 0.0 for got in out]
            aligned = [i for i, (got, window) in enumerate(zip(out, windows)) if self.words or (got and doubtful(
                figures[i], sum(t < tokenizer.eot for s in got for t in s["tokens"]), window.length, min(figures)))]
            for s in (s for got in out for s in got):
                s["words"] = []
            if aligned and self.encoded.device != "cpu":  # its rows are copied on a CPU only
                aligned = list(range(len(out)))
            if aligned:
                sizes = [int(math.ceil(m["duration"]) * self.model.frames_per_second) for m in chunks_metadata]
                self.last_speech_timestamp = self.model.add_word_timestamps(
                    [out[i] for i in aligned], tokenizer, encoder_rows(self.encoded, aligned),
                    [sizes[i] for i in aligned], options.prepend_punctuations, options.append_punctuations,
                    self.last_speech_timestamp)
            return out

    return Pipeline


def encoder_rows(encoded, kept: Sequence[int]):
    """The encoder's output (a CTranslate2 StorageView on a CPU, a window a row) of the windows `kept`."""
    if len(kept) == encoded.shape[0]:
        return encoded
    import ctranslate2

    return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.asarray(encoded)[list(kept)]))


def _pipeline(model, windows: Sequence[Window], words: bool):
    """A batched pipeline for `windows`, aligning words always when `words`, else as `doubtful` says."""
    import faster_whisper

    return _pipeline_class(faster_whisper.BatchedInferencePipeline)(model, windows, words)


def unlooped(segments: Sequence) -> Sequence:
    """A window's `segments` up to where Whisper began saying one of them again and again (the
    first of the repeated text), when their whole text fails the compression check: the rest
    of the window is then decoded again (`_tail`), as the sequential decoder's next window would
    begin there. tiny.en heard German after English as "Good morning to you." 16 times, segment
    after segment, each passing the checks."""
    if not segments or not untranscribed.failed(0.0, _compression("".join(s.text for s in segments))):
        return segments
    texts = [s.text.strip().lower() for s in segments]
    again = next((j for j, t in enumerate(texts) if t in texts[:j]), None)
    return segments if again is None else segments[:texts.index(texts[again])]


def _compression(text: str) -> float:
    from faster_whisper.transcribe import get_compression_ratio

    return get_compression_ratio(text)


def failed(segments: Sequence) -> bool:
    """True when a window's `segments` fail Whisper's quality checks: the pipeline's figure (the
    window's log-probability, each segment's compression ratio), the compression ratio of the
    window's whole text (the sequential decoder's: the pipeline's is each segment's, and a window
    heard as "Good morning to you." 16 times passed segment by segment), or the mean
    log-probability of all their words when aligned. The pipeline's figure counts the timestamp
    tokens, and a window can pass on them: tiny.en heard 21 s of German as nothing, then "I'm
    feeling like" twice, at -0.16, with words at -1.7 on average (tests/test_language.py);
    sequential decoding's checks fail it."""
    if not segments:
        return False
    heard = mean_logprob([w for s in segments for w in s.words or ()])
    whole = _compression("".join(s.text for s in segments))
    return any(untranscribed.failed(min(s.avg_logprob, heard), max(s.compression_ratio, whole)) for s in segments)


def judged(segment):
    """`segment` with the mean log-probability of its own words as its figure when that is lower
    than its window's and it has MIN_JUDGED words or more, or was sampled at a fallback
    temperature (the engine drops it when that fails the check): the figure is its window's, so a
    window of good speech could carry a segment of guesses (the German half of
    tests/test_language.py's clip, heard as "I hope you enjoyed this video"); and a sampled
    text's figure is its sampling's (that German heard at 0.6 as " A.t." at -0.98, again and
    again, in 1 run of 15)."""
    words = segment.words or ()
    if not words or (len(words) < MIN_JUDGED and not segment.temperature):
        return segment
    own = mean_logprob(words)
    return replace(segment, avg_logprob=own) if own < segment.avg_logprob else segment


def mean_logprob(words: Sequence) -> float:
    """The mean log-probability of `words` (aligned by faster-whisper); 0.0 for none."""
    return float(np.mean(np.log(np.maximum([w.probability for w in words], 1e-6)))) if words else 0.0


def padded(audio: np.ndarray, windows: Sequence[Window]) -> np.ndarray:
    """Each window's pieces of audio (Window.at), then silence up to CLIP_S, one window after
    the other (the pipeline pads the log-mel of a shorter window with zeros, which is not silence
    but a steady sound)."""
    size = int(CLIP_S * SAMPLE_RATE)
    out = np.zeros(len(windows) * size, np.float32)
    for i, window in enumerate(windows):
        for at, (start, end) in zip(window.at, window.pieces):
            piece = audio[int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)]
            begin = i * size + int(at * SAMPLE_RATE)
            piece = piece[:max(0, (i + 1) * size - begin)]
            out[begin:begin + len(piece)] = piece
    return out


def shifted(segment, by: float):
    """`segment` (and its words) `by` seconds later."""
    return _retimed(segment, lambda t: t + by)


def inside(segment, window: Window):
    """`segment` with its times (and its words') kept within the audio of `window`: the
    pipeline's can run past it (to the next whole second after it), into the silence after;
    and spanning its words, as the sequential decoder's segments do (the pipeline's last word
    can end after its segment)."""
    out = _retimed(segment, lambda t: min(max(t, 0.0), window.length))
    if out.words:
        out = replace(out, start=min(out.start, out.words[0].start), end=max(out.end, out.words[-1].end))
    return out


def in_audio(segment, window: Window):
    """`segment`, in the times of `window`, in the times of the audio; a segment spanning a
    pause the window left out lasts at most CLIP_S."""
    out = _retimed(segment, window.to_audio)
    return replace(out, end=min(out.end, out.start + CLIP_S))


def _retimed(segment, to):
    words = None if segment.words is None else [replace(w, start=to(w.start), end=to(w.end)) for w in segment.words]
    return replace(segment, start=to(segment.start), end=to(segment.end), words=words)


def _tail(window: Window, segments: Sequence) -> Window | None:
    """What of `window` its segments (in its times) leave undecoded: from the last one's end,
    when that is MIN_TAIL_S or more before the window's end. The pipeline drops a window's
    unfinished last segment (text after the last timestamp), and Whisper sometimes ends a
    window's text early; the sequential decoder decodes the rest in its next window."""
    end = segments[-1].end if segments else 0.0
    return window.after(end) if window.length - end >= MIN_TAIL_S else None


def _seek(model, start: float) -> int:
    """The `seek` the pipeline gives the segments of a window starting at `start` seconds."""
    return int(int(start * SAMPLE_RATE) / SAMPLE_RATE * model.frames_per_second)


def alone(model, audio: np.ndarray, window: Window, settings: dict[str, Any]) -> list:
    """The segments of one window decoded by the sequential decoder (with its temperature
    fallback), in the times of the whole audio, each `judged` by its words: a text sampled at a
    fallback temperature can pass the window's checks with the figure of its sampling ("in
    Dawson home in Smites and Stock." at 0.2, -0.88, for the last seconds of the German of
    tests/test_language.py), while its words' probabilities, from the model itself, say -1.02."""
    heard = padded(audio, [window])[:int(window.length * SAMPLE_RATE)]
    segments, _ = model.transcribe(heard, vad_filter=False, **{**settings, "word_timestamps": True})
    segments = heard_after_failure((judged(s) for s in segments), window.length, model.frames_per_second)
    return [in_audio(kept(s, settings), window) for s in segments]


def heard_after_failure(segments: Iterable, length: float, frames_per_second: float) -> Iterator:
    """`segments` of the sequential decoder (of one window, or of a whole file: `length`
    seconds of the audio it decoded), lazily, without those of a chunk that follows a failed one
    (every segment failing the checks) and begins less than SHORT_S before the end: the decoder
    goes on from the failed chunk's last timestamp, and Whisper hears those seconds alone, with
    nothing to go on; tiny.en heard the last 3 s of tests/test_language.py's German so, as "So, I
    can fight indoors and out in Smite and Stock." at 0.2, with words at -0.87, in 3 runs of 25
    (`balanced` is the same rule for the batch's windows). Each segment kept is given as soon as
    it comes: a chunk is judged by the one before it, which is decoded by then."""
    seek, after_failed, failing, dropping = None, False, True, False
    for s in segments:
        if s.seek != seek:  # a chunk begins: the one before it is complete
            if seek is not None and not dropping:
                after_failed = failing
            seek, failing = s.seek, True
            dropping = after_failed and length - seek / frames_per_second < SHORT_S
        if dropping:
            continue
        failing = failing and untranscribed.failed(s.avg_logprob, s.compression_ratio)
        yield s


def kept(segment, settings: dict[str, Any]):
    """`segment` with its words if the task or speaker labelling asked for them, else without."""
    return segment if settings.get("word_timestamps") else replace(segment, words=None)
