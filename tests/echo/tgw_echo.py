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
the task asks speaker=true (otherwise SPEAKER_00) and is never part of the text. Any other file
(real audio) is one 2 s segment naming its size and the start of its sha256. The settings make
it slow (`delay_s`, reporting progress as it goes) or failing (`fail`: every attempt, for good;
`failing_attempts`: the first n attempts, to be retried).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path

from pydantic import Field

from gateway.hookspecs import hookimpl
from gateway.payloads import Outcome, Segment
from gateway.providers import Job, PermanentError, Provider, ProviderSettings, RetryableError

SEGMENT_S = 2.0
LABEL = re.compile(r"(SPEAKER_\d\d): ")


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


def transcript(data: bytes, speaker: bool) -> tuple[tuple[Segment, ...], float]:
    """The segments and duration the echo provider gives for a file's bytes."""
    lines = script_lines(data)
    segments = []
    for i, line in enumerate([binary_text(data)] if lines is None else lines):
        match = LABEL.match(line)
        text = line[match.end():] if match else line
        label = (match.group(1) if match else "SPEAKER_00") if speaker else None
        segments.append(Segment(i * SEGMENT_S, (i + 1) * SEGMENT_S, text, label))
    return tuple(segments), len(segments) * SEGMENT_S


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
        steps = 10
        for step in range(steps):
            job.progress(step / steps)
            await asyncio.sleep(settings.delay_s / steps)
        segments, duration = transcript(data, job.task.speaker)
        return Outcome(success=True, segments=segments, duration=duration)


@hookimpl
def register_providers(register):
    register("echo", EchoProvider)
