"""Reading audio for the local engine: its length checked first, then decoded in blocks.

A small file can declare, or simply hold, hours of audio (a 72 KB FLAC of 10 hours of
silence), and decoding a whole file into one array costs memory in proportion to its length.
So a file is read twice, never whole:

1. `measure`: the container's declared duration is checked against the limit before anything
   is decoded, then the file is decoded once without keeping a sample (the samples counted,
   at the file's own rate), stopping as soon as the count passes the limit, since metadata
   can lie or be missing. Decoding is cheap next to transcribing (docs/ARCHITECTURE.md has
   the figures); the count is also the exact duration progress is measured against.
2. `blocks`: the audio resampled to 16 kHz mono float32, handed over in blocks of about
   engine.block_s seconds (10 minutes, 38 MB), each cut at the quietest moment near its end so that a cut rarely falls
   in a word. Memory is bounded by one block, whatever the file's length.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

SAMPLE_RATE = 16000
LAST_BLOCK = 0.1       # the last block is at least this share of a block (or the whole file): no sliver alone
CUT_SEARCH_S = 10.0    # a block ends at the quietest CUT_FRAME_S within its last CUT_SEARCH_S
CUT_FRAME_S = 0.1
GROUP_SAMPLES = 500_000  # decoded samples resampled at a time (as faster-whisper does)
TICK_S = 60.0          # `measure` calls its `tick` after every this many seconds of audio counted


class AudioError(Exception):
    """The input is not audio we can decode, or is too long; the task fails with this reason."""


class AudioTooLong(AudioError):
    """The audio is longer than server.max_audio_s."""


@dataclass(frozen=True)
class Block:
    """Decoded audio (16 kHz mono float32) beginning `offset` seconds into the file."""

    offset: float
    samples: np.ndarray

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def too_long(max_s: float, found: str) -> AudioTooLong:
    return AudioTooLong(f"the audio is longer than server.max_audio_s ({max_s:g} s): {found}")


def declared_duration(container) -> float | None:
    """The longest duration the container's metadata declares (seconds), None when it declares none."""
    found = []
    if container.duration is not None:
        found.append(container.duration / 1_000_000)  # in AV_TIME_BASE units
    stream = container.streams.audio[0]
    if stream.duration is not None and stream.time_base is not None:
        found.append(float(stream.duration * stream.time_base))
    return max(found, default=None)


def check_audio(path: str) -> None:
    """AudioError unless the file opens as a container with an audio stream (its header only,
    nothing decoded): what a request that names its file as audio is checked with at once."""
    with _opened(path):
        pass


def measure(path: str, max_s: float, tick: Callable[[], None] = lambda: None) -> float:
    """The audio's duration in seconds, checked against `max_s` (AudioTooLong) from the
    metadata, then while decoding; AudioError when it is not audio or holds no samples.
    `tick()` is called now and then (it may raise to stop)."""
    with _opened(path) as container:
        declared = declared_duration(container)
    if declared is not None and declared > max_s:
        raise too_long(max_s, f"its metadata declares {declared:g} s")
    seconds, next_tick = 0.0, TICK_S
    with contextlib.closing(_decoded(path)) as frames:
        for frame in frames:
            seconds += frame.samples / frame.sample_rate
            if seconds > max_s:
                raise too_long(max_s, f"decoding passed {max_s:g} s"
                               + (f" (its metadata declares {declared:g} s)" if declared is not None else ""))
            if seconds >= next_tick:
                tick()
                next_tick += TICK_S
    if seconds == 0:
        raise AudioError("the file contains no audio samples")
    return seconds


def blocks(path: str, block_s: float) -> Iterator[Block]:
    """The audio as consecutive Blocks of about `block_s` seconds (engine.block_s), each but the
    last cut at the quietest moment near its end; the last is 0.1 to 1.1 x block_s long (or the
    whole file). Each block is filled in a buffer of its own, so what is held at once is the
    block being filled and the one its consumer still works on."""
    size = int(block_s * SAMPLE_RATE)
    full = int(size * (1 + LAST_BLOCK))
    buffer, held, offset = np.empty(full, np.float32), 0, 0
    for chunk in _resampled(path):
        while len(chunk):
            taken = min(full - held, len(chunk))
            buffer[held:held + taken] = chunk[:taken]
            held, chunk = held + taken, chunk[taken:]
            if held == full:
                cut = quiet_cut(buffer[:size])
                yield Block(offset / SAMPLE_RATE, buffer[:cut])
                fresh = np.empty(full, np.float32)
                fresh[:full - cut] = buffer[cut:]  # no reference to the block just handed over stays here
                buffer, held, offset = fresh, full - cut, offset + cut
    if held:
        yield Block(offset / SAMPLE_RATE, buffer[:held])


def decode(path: str) -> np.ndarray:
    """The whole audio as one array (16 kHz mono float32): for short clips only (tests,
    benches); the engine reads files with `measure` and `blocks`."""
    return np.concatenate(list(_resampled(path)) or [np.zeros(0, np.float32)])


def quiet_cut(audio: np.ndarray) -> int:
    """Where to end a block of `audio`: the middle of its quietest CUT_FRAME_S within the last
    CUT_SEARCH_S (by RMS; the latest of equals), as a sample index."""
    frame = int(CUT_FRAME_S * SAMPLE_RATE)
    first = max(0, len(audio) - int(CUT_SEARCH_S * SAMPLE_RATE))
    frames = audio[first:first + (len(audio) - first) // frame * frame].reshape(-1, frame)
    if not len(frames):
        return len(audio)
    loudness = np.mean(np.square(frames, dtype=np.float64), axis=1)
    quietest = len(loudness) - 1 - int(np.argmin(loudness[::-1]))  # the latest of equally quiet frames
    return first + quietest * frame + frame // 2


# --- PyAV --------------------------------------------------------------------------------
# Decoding runs inside generators: an exception raised there is the file's fault and becomes an
# AudioError, while one raised by their consumer (EngineStopped, say) never enters them.


@contextlib.contextmanager
def _opened(path: str):
    """The file opened by PyAV; any failure to open or decode it (PyAV raises many types for
    many kinds of garbage) becomes an AudioError whose reason does not name our storage path."""
    import av

    path = str(path)
    try:
        with av.open(path, mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioError("the file could not be decoded as audio (it has no audio stream)")
            yield container
    except AudioError:
        raise
    except Exception as exc:
        reason = getattr(exc, "strerror", None) or str(exc).replace(path, "<input>")
        raise AudioError(f"the file could not be decoded as audio ({type(exc).__name__}: {reason})") from None


def _decoded(path: str) -> Iterator:
    """The decoded frames of the first audio stream, frames the decoder finds invalid skipped."""
    import av

    with _opened(path) as container:
        frames = container.decode(audio=0)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                return
            except av.error.InvalidDataError:
                continue
            frame.pts = None  # the resampler checks timestamps, which damaged files get wrong
            yield frame


def _grouped(frames: Iterator) -> Iterator:
    """The frames joined into frames of GROUP_SAMPLES (resampling many small frames one by one
    takes twice as long)."""
    import av

    fifo = av.audio.fifo.AudioFifo()
    for frame in frames:
        fifo.write(frame)
        if fifo.samples >= GROUP_SAMPLES:
            yield fifo.read()
    if fifo.samples:
        yield fifo.read()


def _resampled(path: str) -> Iterator[np.ndarray]:
    """The audio as float32 chunks at 16 kHz mono, one per decoded frame (converted as
    faster-whisper's decode_audio does: to signed 16 bit by FFmpeg's resampler, then scaled)."""
    import av

    resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    try:
        with contextlib.closing(_grouped(_decoded(path))) as frames:
            for frame in itertools.chain(frames, [None]):  # None flushes the resampler
                for out in resampler.resample(frame):
                    yield out.to_ndarray().reshape(-1).astype(np.float32) / np.float32(32768.0)
    finally:
        del resampler
        gc.collect()  # PyAV frees the resampler's buffers only on a collection (faster-whisper #390)
