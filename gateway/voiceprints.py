"""Voiceprints: a voice as one vector, and known voices matched to the clusters of a task.

A voiceprint is the L2-normed mean of the GE2E embeddings (gateway/speakers.py) of the windows
sliding through a voice's speech (Silero VAD regions of each stretch of audio given). Matching
is an open-set decision: a cluster is named only when its centre is at least `threshold`
(cosine similarity) from a known voice, one-to-one (two clusters never get the same name; the
closest pairs are decided first). The threshold is measured by bench/known_speakers.py.

Plain functions of arrays, except that `voiceprint` loads the encoder (once per process).
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


class TooLittleSpeech(ValueError):
    """The audio holds less speech than a voiceprint needs."""


@dataclass(frozen=True)
class KnownVoice:
    name: str
    voiceprint: np.ndarray  # L2-normed, DIMENSIONS float32


GAP = np.zeros(int(0.3 * speakers.SAMPLE_RATE), np.float32)  # between stretches joined


def voiceprint(pieces: Iterable[np.ndarray]) -> np.ndarray:
    """The voiceprint of one voice from stretches of 16 kHz audio of it (joined with short pauses,
    so that stretches shorter than a window count too); TooLittleSpeech when they hold less than
    MIN_SPEECH_S of speech."""
    audio = np.concatenate([part for piece in pieces for part in (piece, GAP)] or [GAP])
    duration = len(audio) / speakers.SAMPLE_RATE
    regions = speakers.speech_regions(audio) if duration >= speakers.WINDOW_S else []
    speech = sum(end - begin for begin, end in regions)
    if speech < MIN_SPEECH_S:
        raise TooLittleSpeech(f"{speech:.1f} s of speech was found; a voiceprint needs at least "
                              f"{MIN_SPEECH_S:.1f} s of the voice speaking")
    starts, _ = speakers.window_starts(regions, duration, STEP_S)
    return normed(speakers.embed_windows(speakers.load_encoder(), audio, starts).mean(axis=0))


def normed(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def to_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def from_bytes(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def to_text(vector: np.ndarray) -> str:
    """A voiceprint as base64 (in a task's options)."""
    return base64.b64encode(to_bytes(vector)).decode()


def from_text(text: str) -> np.ndarray:
    return from_bytes(base64.b64decode(text))


def match(centres: Mapping[int, np.ndarray], known: Sequence[KnownVoice], threshold: float) -> dict[int, str]:
    """The name of each cluster (by its L2-normed centre) whose voice is a known one: a name's
    similarity is that of its closest voiceprint (a name may have several); pairs at least
    `threshold` alike, decided closest first, each cluster and each name used once."""
    if not centres or not known:
        return {}
    names = sorted({voice.name for voice in known})
    labels = list(centres)
    prints = np.stack([voice.voiceprint for voice in known])
    alike = np.stack([centres[label] for label in labels]) @ prints.T  # clusters x voiceprints
    by_name = np.stack([alike[:, [v.name == name for v in known]].max(axis=1) for name in names], axis=1)
    out: dict[int, str] = {}
    for flat in np.argsort(-by_name, axis=None, kind="stable"):
        row, col = divmod(int(flat), len(names))
        if by_name[row, col] < threshold:
            break
        if labels[row] not in out and names[col] not in out.values():
            out[labels[row]] = names[col]
    return out
