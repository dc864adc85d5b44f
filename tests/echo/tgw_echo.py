"""The test suite's echo provider: a plugin that registers provider `echo` (model alias `echo`)
through `register_providers`, as any third-party provider does. It answers at once with a
transcript read from the file itself, so the tests that only need a finished task do not wait
for whisper (which runs only where the engine itself is under test).

It is installed for the whole suite through its entry point: tests/conftest.py puts this folder,
with its `tgw_echo-1.0.dist-info`, on sys.path and PYTHONPATH (daemons started as subprocesses
load it too); like every provider it is active only where the configuration has a
`[providers.echo]` table.

What it "hears" (`transcript`): a UTF-8 text file is a script, one segment per non-empty line,
2 s each; a line may start with a label (`SPEAKER_01: Fine, thanks.`), which is its speaker when
the task asks speaker=true (otherwise SPEAKER_00) and is never part of the text; a line whose
text is in brackets (`SPEAKER_02: [mm-hm]`) is speech heard but not transcribed: its 2 s give
no segment, only a speaker turn. An audio file
whose metadata has a `comment` (`script_wav` writes one: a real WAV, for requests that must send
audio, as the OpenAI API's do) is the script in that comment. Any other file (real audio) is one
2 s segment naming its size and the start of its sha256. The settings make it slow (`delay_s`,
reporting progress as it goes) or failing (`fail`: every attempt, for good; `failing_attempts`:
the first n attempts, to be retried).

It honours the task's options (`gateway.options`): with `word_timestamps` each segment carries
its words, spread evenly over its 2 s; with `speaker_turns` (and speaker=true) the result has
turns, one for each run of lines of one label; with `details` the decoder's figures (`DETAILS`); the
language it reports is the one asked for, else "en". As the engine does, it tells each
segment's text while the task runs (`job.partial`), spread over its `delay_s` as its progress is.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path

from pydantic import Field

from gateway.hookspecs import hookimpl
from gateway.options import TaskOptions, options_of
from gateway.payloads import Outcome, Segment, SpeakerTurn, Word
from gateway.providers import Job, PermanentError, Provider, ProviderSettings, RetryableError

SEGMENT_S = 2.0
LABEL = re.compile(r"(SPEAKER_\d\d): ")
UNTRANSCRIBED = re.compile(r"\[.*\]")


class EchoSettings(ProviderSettings):
    models: dict[str, str] = {"echo": "echo"}
    delay_s: float = Field(0.0, ge=0)  # how long each attempt takes
    fail: str = ""  # every attempt fails for good with this reason
    failing_attempts: int = Field(0, ge=0)  # the first n attempts fail with a retryable error


def binary_text(data: bytes) -> str:
    return f"{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:12]}"


def script_lines(data: bytes) -> list[str] | None:
    """The lines of a text file; None for anything else (audio)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not all(ch.isprintable() or ch in "\t\r\n" for ch in text):
        return None
    return [line.strip() for line in text.splitlines() if line.strip()]


def audio_comment(path: Path) -> str | None:
    """The `comment` in an audio file's metadata (None for anything else)."""
    import av

    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            return container.metadata.get("comment") if container.streams.audio else None
    except Exception:  # not a container PyAV reads
        return None


def script_wav(path: Path, script: str, seconds: float = 0.5) -> Path:
    """A short silent WAV (16 kHz mono) carrying `script` as its `comment`: audio for any check,
    the script for the echo provider."""
    import av
    import numpy as np

    with av.open(str(path), "w", format="wav") as out:
        out.metadata["comment"] = script
        stream = out.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, int(16000 * seconds)), np.int16), format="s16", layout="mono")
        frame.rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return path


DETAILS = {"seek": 0, "tokens": (50364, 2425, 50464), "temperature": 0.0, "avg_logprob": -0.25,
           "compression_ratio": 1.1, "no_speech_prob": 0.01}


def spread_words(text: str, start: float, end: float) -> tuple[Word, ...]:
    """The words of `text`, each an equal share of [start, end]."""
    words = text.split()
    step = (end - start) / max(len(words), 1)
    return tuple(Word(w, round(start + i * step, 3), round(start + (i + 1) * step, 3)) for i, w in enumerate(words))


def transcript(data: bytes, speaker: bool, options: TaskOptions = TaskOptions(),
               comment: str | None = None) -> tuple[tuple[Segment, ...], float, tuple[SpeakerTurn, ...]]:
    """The segments, duration and speaker turns the echo provider gives for a file's bytes (and
    its audio `comment`)."""
    lines = script_lines(data)
    if lines is None and comment:
        lines = script_lines(comment.encode())
    lines = [binary_text(data)] if lines is None else lines
    segments, turns = [], []
    for i, line in enumerate(lines):
        match = LABEL.match(line)
        text = line[match.end():] if match else line
        label = (match.group(1) if match else "SPEAKER_00") if speaker else None
        start, end = i * SEGMENT_S, (i + 1) * SEGMENT_S
        if turns and turns[-1].speaker == label:
            turns[-1] = SpeakerTurn(turns[-1].start_time, end, label)
        else:
            turns.append(SpeakerTurn(start, end, label))
        if UNTRANSCRIBED.fullmatch(text):
            continue
        details = dict(DETAILS, seek=int(start * 100)) if options.details else {}
        segments.append(Segment(start, end, text, label,
                                words=spread_words(text, start, end) if options.word_timestamps else (),
                                **details))
    return tuple(segments), len(lines) * SEGMENT_S, tuple(turns) if speaker and options.speaker_turns else ()


class EchoProvider(Provider):
    Settings = EchoSettings
    supports_speaker = True

    async def run(self, job: Job) -> Outcome:
        settings: EchoSettings = self.settings
        if job.task.attempts <= settings.failing_attempts:
            raise RetryableError(f"echo: attempt {job.task.attempts} fails as configured")
        if settings.fail:
            raise PermanentError(settings.fail)
        async with job.audio() as path:
            data = Path(path).read_bytes()
            comment = audio_comment(path) if script_lines(data) is None else None
        segments, duration, turns = transcript(data, job.task.speaker, options_of(job.task), comment)
        told, steps = 0, 10
        for step in range(steps):  # the segments "decoded" one after the other over delay_s
            job.progress(step / steps)
            await asyncio.sleep(settings.delay_s / steps)
            while told < len(segments) and (told + 1) * steps <= (step + 1) * len(segments):
                job.partial(segments[told].start_time, segments[told].end_time, segments[told].text)
                told += 1
        return Outcome(success=True, segments=segments, duration=duration, language=job.task.language or "en",
                       turns=turns)


@hookimpl
def register_providers(register):
    register("echo", EchoProvider)
