"""Voiceprints: a voice as vectors, and known voices matched to the clusters of a task.

A voiceprint is the L2-normed mean of the GE2E embeddings (gateway/speakers.py) of the windows
sliding through a voice's speech (Silero VAD regions of each stretch of audio given). GE2E's
embeddings move with the recording: the same voice on a telephone line, in noise or in a
reverberant room is further from its clean self than two voices are from each other on one
line (bench/results/known_speakers.md). So an enrolment keeps several (`Enrolment`): of the
audio as given, of it with noise added and with a room's echo added (`noisy`, `reverberant`:
multi-condition enrolment), and of its telephone band (`band_limited`), as given and with
noise added; and a
task whose audio is narrowband (`narrowband`: nothing above 3.8 kHz, as a telephone call
is) is matched with the telephone-band voiceprints, at a threshold of their own (voices on one
narrow band are more alike).

Matching is an open-set decision: a cluster is named only when its centre is at least the
threshold (cosine similarity) from a known voice, one-to-one (two clusters never get the same
name; the clearest pairs are decided first). The thresholds are measured by
bench/known_speakers.py (a voice heard for one sentence needs no more than one heard for three).

Plain functions of arrays, except that `embedded` loads the encoder (once per process).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from gateway import speakers

ENCODER = "resemblyzer-ge2e/1"  # the encoder voiceprints are made with; stored beside each one
DIMENSIONS = 256
MIN_SPEECH_S = speakers.WINDOW_S  # speech a voiceprint needs at least: one embedding window
STEP_S = 0.5  # between windows


BAND = (300.0, 3400.0)  # the telephone band (Hz)
HIGH_HZ = 3800.0  # above it a telephone call has nothing
NARROWBAND_SHARE = 5e-5  # energy above HIGH_HZ / energy in BAND below which audio is narrowband
NOISE_SNR_DB = 10.0  # the noise an enrolment is also heard in
ECHO_S = 0.6  # the reverberation time (RT60) of the room an enrolment is also heard in


class TooLittleSpeech(ValueError):
    """The audio holds less speech than a voiceprint needs."""


@dataclass(frozen=True)
class KnownVoice:
    name: str
    voiceprint: np.ndarray  # L2-normed, DIMENSIONS float32; or several, one per row (`Enrolment.wide`)
    narrowband: np.ndarray | None = None  # of the telephone band, one or more (enrolled before it: None)

    def prints(self, narrow: bool) -> tuple[np.ndarray, bool]:
        """The voiceprints (one per row) to match a task's clusters with, and whether they are the
        telephone band's: those for narrowband audio when the voice has them."""
        if narrow and self.narrowband is not None:
            return self.narrowband.reshape(-1, DIMENSIONS), True
        return self.voiceprint.reshape(-1, DIMENSIONS), False


@dataclass(frozen=True)
class Enrolment:
    """What an enrolment keeps of a voice: voiceprints (one per row) of its audio as given, with
    noise added and with a room's echo added; and of its telephone band, as given and with noise
    added (a noisy call: bench/results/known_speakers.md)."""

    wide: np.ndarray  # 3 x DIMENSIONS
    narrowband: np.ndarray  # 2 x DIMENSIONS


GAP = np.zeros(int(0.3 * speakers.SAMPLE_RATE), np.float32)  # between stretches joined


def enrolment(pieces: Iterable[np.ndarray]) -> Enrolment:
    """The voiceprints an enrolment keeps of one voice from stretches of 16 kHz audio of it
    (`speech_windows`, TooLittleSpeech): each of the same windows of its speech, found in the
    audio as given; the noise is the same in the wideband and the telephone-band ones."""
    audio, starts = speech_windows(pieces)
    rng = np.random.default_rng(0)  # the same audio always gives the same voiceprints
    heard_in_noise = noisy(audio, rng)
    return Enrolment(np.stack([embedded(audio, starts), embedded(heard_in_noise, starts),
                               embedded(reverberant(audio, rng), starts)]),
                     np.stack([embedded(band_limited(audio), starts),
                               embedded(band_limited(heard_in_noise), starts)]))


def speech_windows(pieces: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stretches of 16 kHz audio of one voice joined with short pauses (so that stretches shorter
    than a window count too), and the starts (s) of the embedding windows through their speech;
    TooLittleSpeech when they hold less than MIN_SPEECH_S of it."""
    audio = np.concatenate([part for piece in pieces for part in (piece, GAP)] or [GAP])
    duration = len(audio) / speakers.SAMPLE_RATE
    regions = speakers.speech_regions(audio) if duration >= speakers.WINDOW_S else []
    speech = sum(end - begin for begin, end in regions)
    if speech < MIN_SPEECH_S:
        raise TooLittleSpeech(f"{speech:.1f} s of speech was found; a voiceprint needs at least "
                              f"{MIN_SPEECH_S:.1f} s of the voice speaking")
    starts, _ = speakers.window_starts(regions, duration, STEP_S)
    return audio, starts


def embedded(audio: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The L2-normed mean embedding of the windows of `audio` at `starts`."""
    return normed(speakers.embed_windows(speakers.load_encoder(), audio, starts).mean(axis=0))


def band_limited(audio: np.ndarray) -> np.ndarray:
    """`audio` (16 kHz) with nothing outside the telephone BAND."""
    spectrum = np.fft.rfft(audio)
    hz = np.fft.rfftfreq(len(audio), 1 / speakers.SAMPLE_RATE)
    spectrum[(hz < BAND[0]) | (hz > BAND[1])] = 0
    return np.fft.irfft(spectrum, len(audio)).astype(np.float32)


def noisy(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`audio` with noise (its spectrum falling as 1/f^1.5, between pink and brown) added
    NOISE_SNR_DB below the level of its speech."""
    spectrum = np.fft.rfft(rng.standard_normal(len(audio)))
    spectrum /= np.maximum(np.arange(len(spectrum)), 1) ** 0.75
    noise = np.fft.irfft(spectrum, len(audio))
    noise /= np.std(noise) or 1.0
    speech = audio[np.abs(audio) > 10 ** (-50 / 20)]
    level = float(np.sqrt(np.mean(np.square(speech)))) if len(speech) else 0.01
    return (audio + noise * level / 10 ** (NOISE_SNR_DB / 20)).astype(np.float32)


def reverberant(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`audio` as heard in a room: convolved with decaying noise (reverberation time ECHO_S)
    after the direct sound, at its peak level."""
    t = np.arange(int(ECHO_S * speakers.SAMPLE_RATE)) / speakers.SAMPLE_RATE
    response = rng.standard_normal(len(t)) * np.exp(-6.9 * t / ECHO_S)
    response[0] = 1.0
    out = np.convolve(audio, response / np.sqrt(np.sum(np.square(response))))[:len(audio)]
    peak = float(np.max(np.abs(out))) if len(out) else 0.0
    return (out * (float(np.max(np.abs(audio))) / peak if peak else 1.0)).astype(np.float32)


def band_energies(audio: np.ndarray) -> tuple[float, float]:
    """The energy of `audio` (16 kHz) above HIGH_HZ and in the telephone BAND, summed over 1-s
    frames (Hann-windowed; `narrowband` of their sums across a file's blocks)."""
    size = speakers.SAMPLE_RATE
    frames = audio[:len(audio) // size * size].reshape(-1, size)
    if not len(frames):
        return 0.0, 0.0
    power = np.square(np.abs(np.fft.rfft(frames * np.hanning(size).astype(np.float32), axis=1)))  # no leakage
    hz = np.fft.rfftfreq(size, 1 / size)
    return float(power[:, hz > HIGH_HZ].sum()), float(power[:, (hz >= BAND[0]) & (hz <= BAND[1])].sum())


def narrowband(high: float, band: float) -> bool:
    """True when audio with these `band_energies` is narrowband (a telephone call's band)."""
    return band > 0 and high / band < NARROWBAND_SHARE


def normed(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def to_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def from_bytes(raw: bytes) -> np.ndarray:
    """A voiceprint, or several (one per row), as `to_bytes` wrote them."""
    vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    return vector if len(vector) == DIMENSIONS else vector.reshape(-1, DIMENSIONS)


def to_text(vector: np.ndarray) -> str:
    """A voiceprint as base64 (in a task's options)."""
    return base64.b64encode(to_bytes(vector)).decode()


def from_text(text: str) -> np.ndarray:
    return from_bytes(base64.b64decode(text))


def match(centres: Mapping[int, np.ndarray], known: Sequence[KnownVoice], threshold: float,
          narrowband_threshold: float, narrow: bool = False) -> dict[int, str]:
    """The name of each cluster (by its L2-normed centre) whose voice is a known one. A name's
    similarity is that of its closest voiceprint (a name may have several); it must reach
    `threshold`, or `narrowband_threshold` when the audio is `narrow` and the telephone band's
    voiceprints are compared. Pairs are decided by how far they are above theirs, clearest
    first, each cluster and each name used once."""
    if not centres or not known:
        return {}
    names = sorted({voice.name for voice in known})
    labels = list(centres)
    stacked = np.stack([centres[label] for label in labels])
    above = np.full((len(labels), len(names)), -np.inf)
    for voice in known:
        prints, band = voice.prints(narrow)
        col = names.index(voice.name)
        alike = (stacked @ prints.T).max(axis=1) - (narrowband_threshold if band else threshold)
        above[:, col] = np.maximum(above[:, col], alike)
    out: dict[int, str] = {}
    for flat in np.argsort(-above, axis=None, kind="stable"):
        row, col = divmod(int(flat), len(names))
        if above[row, col] < 0:
            break
        if labels[row] not in out and names[col] not in out.values():
            out[labels[row]] = names[col]
    return out
